"""The test suite's shards: parts of it that run at once (``scripts/test_shards.py``).

Most of the suite waits on brokers, timers and redeliveries, so ``make test`` runs it
as two pytest processes at once, split by the brokers they use. With ``--shard NAME``,
this process runs only that shard's tests (the others are deselected); without it, it
runs them all, as ever. An option, not an environment variable, so a test that runs
pytest again (``scripts/mutants.py``, a suite on an example) never inherits it.

- ``sqs-kafka``: the conformance suite on the SQS targets (moto, FIFO, ElasticMQ, its FIFO) and
  on Kafka and Tansu, and ``integration_tests/sqs`` and ``integration_tests/kafka``.
  Each of these brokers is a process the shard's harness starts for itself (on ports
  of its own), so nothing the other shard does (a restart, a fault, a flood) reaches
  it, and the shard uses none of the brokers ``.ci/start-brokers`` shares.
- ``others``: everything else (unit tests, memory, RabbitMQ, Redis, NATS, PostgreSQL,
  SQLite, the chaos scenarios, the examples); it starts its own Kafka and moto where
  a test needs them.

Every test is in exactly one shard: :func:`shard_of` answers ``others`` unless a rule
above names another.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest

SHARDS = ("sqs-kafka", "others")
"""The shards, in the order ``scripts/test_shards.py`` starts them."""

_OWN_BROKER_TARGETS = ("sqs", "sqs-fifo", "sqs-elasticmq", "sqs-elasticmq-fifo", "kafka", "tansu")
_OWN_BROKER_FOLDERS = ("integration_tests/sqs/", "integration_tests/kafka/")


def shard_of(nodeid: str, params: Mapping[str, object]) -> str:
    """The shard of the test ``nodeid`` whose parametrisation is ``params``."""
    if nodeid.startswith("integration_tests/test_conformance.py::"):
        return "sqs-kafka" if params.get("target") in _OWN_BROKER_TARGETS else "others"
    if nodeid.startswith(_OWN_BROKER_FOLDERS):
        return "sqs-kafka"
    return "others"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--shard",
        default="",
        metavar="NAME",
        help=f"run only this shard's tests ({', '.join(SHARDS)}); scripts/test_shards.py "
        "runs them all at once",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    shard = str(config.getoption("shard") or "").strip()
    if not shard:
        return
    if shard not in SHARDS:
        raise pytest.UsageError(
            f"--shard {shard!r} names no shard; the shards are {', '.join(SHARDS)} "
            "(leave it out to run every test)"
        )
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        (keep if shard_of(item.nodeid, params) == shard else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
