"""Brokers in containers through testcontainers, when a container engine answers.

The images and settings match the top-level ``docker-compose.yml``. Readiness
is decided by the same protocol probes as every other way of finding a broker,
not by log lines.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from . import versions
from .probes import describe, wait_ready
from .processes import free_port

ENGINE_TIMEOUT = 3.0
READY_TIMEOUT = 120.0

# The versions the process path runs (docker-compose.yml's single brokers, the same).
IMAGES = {
    "kafka": versions.KAFKA_IMAGE,
    "rabbitmq": f"{versions.RABBITMQ_IMAGE}-management",
    "redis": versions.REDIS_IMAGE,
    "nats": versions.NATS_IMAGE,
    "sqs": versions.LOCALSTACK_IMAGE,
    "elasticmq": versions.ELASTICMQ_IMAGE,
}
PORTS = {
    "kafka": 9092,
    "rabbitmq": 5672,
    "redis": 6379,
    "nats": 4222,
    "sqs": 4566,
    "elasticmq": 9324,
}

_engine_checked = False
_engine_problem: str | None = None


def engine_problem() -> str | None:
    """``None`` when a container engine answers a ping, else why not (cached, bounded)."""
    global _engine_checked, _engine_problem
    if _engine_checked:
        return _engine_problem

    def ping() -> None:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=int(ENGINE_TIMEOUT))
        try:
            client.ping()
        finally:
            client.close()

    # docker.from_env() can block on an unresponsive socket; a thread with a
    # deadline keeps the test session from hanging on it.
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        pool.submit(ping).result(timeout=ENGINE_TIMEOUT + 1)
        _engine_problem = None
    except concurrent.futures.TimeoutError:
        _engine_problem = f"no container engine answered within {ENGINE_TIMEOUT:.0f}s"
    except Exception as exc:
        _engine_problem = f"no container engine reachable ({describe(exc)})"
    finally:
        pool.shutdown(wait=False)
    _engine_checked = True
    return _engine_problem


@dataclass
class StartedContainer:
    host: str
    port: int
    url: str
    stop: Callable[[], None]


def _docker_host() -> str:
    # With a remote engine (DOCKER_HOST=tcp://...) published ports live there.
    host = urlsplit(os.environ.get("DOCKER_HOST", "")).hostname
    return host if host and os.environ.get("DOCKER_HOST", "").startswith("tcp") else "127.0.0.1"


def broker_url(name: str, host: str, port: int) -> str:
    return {
        "kafka": f"kafka://{host}:{port}",
        "rabbitmq": f"amqp://guest:guest@{host}:{port}/",
        "redis": f"redis://{host}:{port}/0",
        "nats": f"nats://{host}:{port}",
        "sqs": f"sqs://{host}:{port}?region=us-east-1",
        "elasticmq": f"sqs://{host}:{port}?region=us-east-1",
    }[name]


def _configure(name: str, container: Any, host_port: int | None) -> None:
    if name == "kafka":
        # Kafka clients reconnect to the advertised address, so it must be the
        # host-side port; binding a fixed free host port makes that knowable
        # before the container starts.
        assert host_port is not None
        container.with_bind_ports(9092, host_port)
        container.with_envs(
            KAFKA_NODE_ID="1",
            KAFKA_PROCESS_ROLES="broker,controller",
            KAFKA_LISTENERS="PLAINTEXT://:9092,CONTROLLER://:9093",
            KAFKA_ADVERTISED_LISTENERS=f"PLAINTEXT://{_docker_host()}:{host_port}",
            KAFKA_CONTROLLER_LISTENER_NAMES="CONTROLLER",
            KAFKA_LISTENER_SECURITY_PROTOCOL_MAP="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            KAFKA_CONTROLLER_QUORUM_VOTERS="1@localhost:9093",
            KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR="1",
            KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR="1",
            KAFKA_TRANSACTION_STATE_LOG_MIN_ISR="1",
            KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS="0",
        )
    elif name == "nats":
        container.with_command("-js")
        container.with_exposed_ports(PORTS[name])
    elif name == "sqs":
        container.with_env("SERVICES", "sqs,sns")
        container.with_exposed_ports(PORTS[name])
    else:
        container.with_exposed_ports(PORTS[name])


def start_container(name: str) -> StartedContainer:
    """Start the ``name`` broker's container and wait until its protocol probe passes."""
    from testcontainers.core.container import DockerContainer

    container = DockerContainer(IMAGES[name])
    host_port = free_port() if name == "kafka" else None
    _configure(name, container, host_port)
    container.start()
    try:
        host = _docker_host() if name == "kafka" else container.get_container_host_ip()
        port = host_port or int(container.get_exposed_port(PORTS[name]))
        url = broker_url(name, host, port)
        wait_ready(name, url, READY_TIMEOUT)
    except Exception:
        container.stop()
        raise
    return StartedContainer(host=host, port=port, url=url, stop=container.stop)
