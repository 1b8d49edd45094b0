"""The suite's shards (the root conftest.py, scripts/test_shards.py): every test in exactly
one, the brokers each shard starts for itself kept in one, and the reports merged."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


shards = _load(ROOT / "conftest.py", "eventbus_test_shards_conftest")
CONFORMANCE = "integration_tests/test_conformance.py::TestConformance::test_x"


@pytest.mark.parametrize(
    "target", ["sqs", "sqs-fifo", "sqs-elasticmq", "sqs-elasticmq-fifo", "kafka", "tansu"]
)
def test_conformance_on_a_broker_the_shard_starts_itself_is_in_sqs_kafka(target: str) -> None:
    assert shards.shard_of(f"{CONFORMANCE}[{target}]", {"target": target}) == "sqs-kafka"


@pytest.mark.parametrize(
    "target", ["rabbitmq", "rabbitmq-quorum", "redis-streams", "nats", "postgres", "sqlite"]
)
def test_conformance_on_the_shared_brokers_is_in_others(target: str) -> None:
    assert shards.shard_of(f"{CONFORMANCE}[{target}]", {"target": target}) == "others"


@pytest.mark.parametrize(
    ("nodeid", "shard"),
    [
        ("integration_tests/sqs/test_sqs_adapter.py::test_a", "sqs-kafka"),
        ("integration_tests/kafka/test_kafka_idempotence.py::test_b[x]", "sqs-kafka"),
        # Chaos scenarios restart brokers of every kind, the shared ones too.
        ("integration_tests/chaos/test_crash_restart.py::test_c[kafka]", "others"),
        ("integration_tests/test_smoke_brokers.py::test_d[sqs]", "others"),
        ("tests/test_conformance_memory.py::TestMemoryConformance::test_e[memory]", "others"),
        ("examples/testing/test_shop_service.py::test_f", "others"),
    ],
)
def test_each_test_has_one_shard(nodeid: str, shard: str) -> None:
    assert shards.shard_of(nodeid, {}) == shard
    assert shard in shards.SHARDS


def test_an_unknown_shard_is_a_usage_error_naming_the_shards() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "--shard=sqs",
            "tests/test_shards.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "--shard 'sqs' names no shard; the shards are sqs-kafka, others" in (
        done.stdout + done.stderr
    )


def test_the_shards_junit_reports_merge_into_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = _load(ROOT / "scripts" / "test_shards.py", "eventbus_test_shards_runner")
    monkeypatch.setattr(runner, "REPORTS", tmp_path)

    def report(name: str, cases: list[str], failures: int, took: float, at: str) -> Path:
        path = tmp_path / f"junit-{name}.xml"
        suites = ET.Element("testsuites")
        suite = ET.SubElement(
            suites,
            "testsuite",
            name="pytest",
            errors="0",
            failures=str(failures),
            skipped="1",
            tests=str(len(cases)),
            time=str(took),
            timestamp=at,
        )
        for case in cases:
            ET.SubElement(suite, "testcase", classname="m", name=case, time="1.0")
        ET.ElementTree(suites).write(path)
        return path

    class Done:
        def __init__(self, junit: Path) -> None:
            self.junit = junit

    runner.merge_junit(
        [
            Done(report("a", ["t1", "t2"], 1, 30.0, "2026-12-07T00:46:10")),
            Done(report("b", ["t3"], 0, 50.0, "2026-12-07T00:46:02")),
        ]
    )
    merged = ET.parse(tmp_path / "junit.xml").getroot()
    (suite,) = merged.iter("testsuite")
    assert [case.get("name") for case in suite.iter("testcase")] == ["t1", "t2", "t3"]
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "2")
    assert suite.get("time") == "50.000"  # side by side: the longest shard
    assert suite.get("timestamp") == "2026-12-07T00:46:02"  # the run's start


def test_the_conformance_matrix_keeps_its_columns_whichever_shard_ran_first(tmp_path: Path) -> None:
    """The shards put the SQS and Kafka targets first in the merged report; the matrix
    keeps memory first and the suite's order of targets, a third party's after them."""
    gen_docs = _load(ROOT / "scripts" / "gen_docs.py", "eventbus_gen_docs_columns")
    suites = ET.Element("testsuites")
    suite = ET.SubElement(suites, "testsuite", name="pytest", timestamp="2026-12-07T00:46:02")
    for classname, target in [
        ("integration_tests.test_conformance.TestConformance", "sqs"),
        ("integration_tests.test_conformance.TestConformance", "kafka"),
        ("tests.test_x.TestMyBrokerConformance", "mybroker"),
        ("tests.test_conformance_memory.TestMemoryConformance", "memory"),
        ("integration_tests.test_conformance.TestConformance", "rabbitmq"),
    ]:
        ET.SubElement(suite, "testcase", classname=classname, name=f"test_a[{target}]")
    report = tmp_path / "junit.xml"
    ET.ElementTree(suites).write(report)
    matrix = gen_docs.conformance_matrix([report])
    header = next(line for line in matrix.splitlines() if line.startswith("| case |"))
    assert header == "| case | memory | kafka | rabbitmq | sqs | mybroker |"


def test_the_matrix_columns_are_the_suites_targets() -> None:
    from integration_tests.test_conformance import TARGETS

    gen_docs = _load(ROOT / "scripts" / "gen_docs.py", "eventbus_gen_docs_targets")
    memory = {"memory", "memory-structured", "memory-log"}
    assert [c for c in gen_docs.COLUMNS if c not in memory] == list(TARGETS)


def test_every_suite_target_is_in_the_shard_of_its_broker() -> None:
    """The targets whose broker the ``sqs-kafka`` shard's harness starts for itself
    (Kafka, Tansu, moto, ElasticMQ) are that shard's, every other target ``others``': a
    target added or renamed in the suite cannot fall into the wrong shard unnoticed."""
    from integration_tests.test_conformance import TARGETS

    own = {"kafka", "sqs", "elasticmq"}
    for target, (broker, _) in TARGETS.items():
        expected = "sqs-kafka" if broker in own else "others"
        got = shards.shard_of(f"{CONFORMANCE}[{target}]", {"target": target})
        assert got == expected, f"{target} (broker {broker}) is in {got}, not {expected}"
