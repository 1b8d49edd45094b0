"""docker-compose.yml's single brokers are the versions the tests run: the process
path's packages and jars, the same images testcontainers starts. (The clusters are
checked in ``tests/test_compose_clusters.py``.) This machine has no container
engine, so it is the file that is checked, against the harness."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from integration_tests.harness import containers, versions

ROOT = Path(__file__).resolve().parents[1]
SERVICES: dict[str, dict[str, Any]] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())[
    "services"
]
# compose service -> the broker name testcontainers starts it under
SINGLE = {
    "kafka": "kafka",
    "rabbitmq": "rabbitmq",
    "redis": "redis",
    "nats": "nats",
    "localstack": "sqs",
    "elasticmq": "elasticmq",
}


def test_every_single_broker_is_checked_here() -> None:
    singles = {name for name, service in SERVICES.items() if not service.get("profiles")}
    assert singles == {*SINGLE, "postgres"}


@pytest.mark.parametrize("service", sorted(SINGLE))
def test_each_single_broker_is_the_image_testcontainers_starts(service: str) -> None:
    assert SERVICES[service]["image"] == containers.IMAGES[SINGLE[service]]


@pytest.mark.parametrize("broker", sorted(versions.PACKAGE_VERSIONS))
def test_each_packaged_broker_runs_the_process_paths_version(broker: str) -> None:
    image = SERVICES[broker]["image"]
    tag = image.split(":", 1)[1]
    assert tag.split("-")[0] == versions.PACKAGE_VERSIONS[broker], image


def test_kafka_runs_the_harness_jars_version() -> None:
    assert SERVICES["kafka"]["image"] == f"apache/kafka:{versions.kafka_dist.KAFKA_VERSION}"


def test_postgres_is_the_major_version_installed() -> None:
    assert SERVICES["postgres"]["image"] == versions.POSTGRES_IMAGE
    installed = sorted(
        p.parents[1].name for p in Path("/usr/lib/postgresql").glob("*/bin/postgres")
    )
    if not installed:
        pytest.skip("no postgresql package on this machine")
    assert installed == [versions.POSTGRES_MAJOR]
