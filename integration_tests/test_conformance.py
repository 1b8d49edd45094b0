"""The conformance suite against every real broker that has an adapter.

One parametrised fixture gives the suite a :class:`BrokerTarget` per broker; the
cases themselves live in :mod:`eventbus.testing` and are the same ones the memory
adapter passes. A broker that cannot be had is skipped, or fails the run when
``EVENTBUS_REQUIRE_BROKERS`` names it (CI sets ``all``).
"""

from __future__ import annotations

import os

import pytest

from eventbus.testing import BrokerTarget, ConformanceSuite
from integration_tests import harness
from integration_tests.kafka.targets import kafka_target
from integration_tests.nats.targets import nats_target
from integration_tests.postgres.target import postgres_target
from integration_tests.rabbitmq.node import conformance_node, delete_underneath
from integration_tests.redis.target import redis_target
from integration_tests.sqlite.target import sqlite_target
from integration_tests.sqs import target as sqs_targets

# Cases a particular broker build can't pass although the adapter claims the
# capability, with the reason. Each is documented in docs/adapters/<broker>.md.
TANSU_LIMITS: dict[str, str] = {
    "test_broker_restart_loses_nothing_acknowledged": (
        "Tansu's memory storage forgets every record and offset when it restarts "
        "(its S3 storage keeps them: EVENTBUS_TEST_KAFKA_STORAGE=s3); Apache Kafka runs this case"
    ),
    "test_crash_loop_dead_lettered_after_max_attempts": (
        "Tansu keeps no offset commit metadata (OffsetFetch returns it empty), where the "
        "Kafka adapter counts a record's runs across crashes (it warns once on such a "
        "broker); Apache Kafka runs this case"
    ),
    "test_resource_deleted_underneath_recovered_or_reported": (
        "Tansu creates a deleted topic again on the next produce, with its own partition "
        "count (4, not the adapter's), so the consumer sees no deletion and learns of the "
        "extra partition only at its next metadata refresh (metadata_max_age), and "
        "produce to that partition fails with UnknownError for a while; Apache Kafka runs "
        "this case"
    ),
}

# moto_server, the SQS/SNS emulator the harness runs (see docs/adapters/sqs.md).
MOTO_LIMITS: dict[str, str] = {
    "test_broker_restart_loses_nothing_acknowledged": (
        "moto_server keeps queues and messages in memory only, so a restart forgets them "
        "(SQS itself stores messages durably)"
    ),
    "test_foreign_message_keeps_its_payload_and_metadata": (
        "moto_server's SNS hands a Binary message attribute to SQS as base64 text, and its "
        "ReceiveMessage then fails with HTTP 500 for the whole queue; AWS delivers Binary "
        "attributes with raw delivery. integration_tests/sqs/test_sqs_dead_letters.py runs "
        "the case's checks with binary values sent straight to a queue, text ones through SNS"
    ),
    "test_competing_consumers_split_exactly_once": (
        "moto_server (5.2.5) serves requests on threads and its ReceiveMessage takes no lock "
        "(moto/sqs/models.py: a visible message is checked, copied, then marked received), "
        "so two consumers polling one queue at once can both receive the same message: seen "
        "once in about 15 full runs (one of 40 events handled twice). AWS standard queues "
        "are at-least-once too; the case runs on ElasticMQ (sqs-elasticmq)"
    ),
}

# ElasticMQ (harness/sqs_emulators.py): where it differs from SQS (docs/adapters/sqs.md).
ELASTICMQ_LIMITS: dict[str, str] = {
    "test_broker_restart_loses_nothing_acknowledged": (
        "the harness keeps ElasticMQ's messages in memory, so a restart forgets them (AWS "
        "stores a message durably before it answers). ElasticMQ 1.6.11's H2 message "
        "storage is off because it races with receives: a write failing on a message "
        "received meanwhile leaves its SendMessage unanswered for 21 s, then HTTP 503, and "
        "the SDK sends the message again (harness/sqs_emulators.py); with it on, this case "
        "also lost a send acknowledged as ElasticMQ stopped in 4 of 11 runs"
    )
}

# Message counts of heavy cases, scaled per broker: slow brokers get fewer
# messages rather than a skipped case.
SCALE = {"kafka": 0.25, "tansu": 0.25}

# Target name -> (harness broker, Kafka build). "kafka" is Apache Kafka wherever
# the harness can run it (CI requires it: EVENTBUS_TEST_KAFKA=apache); "tansu"
# runs the same suite on Tansu, which catches client-compatibility issues.
TARGETS: dict[str, tuple[str, str | None]] = {
    "kafka": ("kafka", None),
    "tansu": ("kafka", "tansu"),
    "rabbitmq": ("rabbitmq", None),
    "rabbitmq-quorum": ("rabbitmq", "quorum"),
    "redis-streams": ("redis", None),
    "redis-pubsub": ("redis", None),
    "nats": ("nats", None),
    "nats-core": ("nats", None),
    "sqs": ("sqs", None),
    "sqs-fifo": ("sqs", None),
    # The SQS adapter on ElasticMQ too (#25; harness/sqs_emulators.py): SQS without SNS,
    # so the adapter's queue topology.
    "sqs-elasticmq": ("elasticmq", None),
    "sqs-elasticmq-fifo": ("elasticmq", None),
    "sqlite": ("sqlite", None),
    "postgres": ("postgres", None),
}

# Options the SQS targets add to the harness URL. Short long-polls make closing a
# subscription quick (it lets its poll finish, see eventbus_sqs.consumer). A
# receive whose reply is lost when the fault proxy drops connections hides its
# messages for one visibility timeout, as on AWS; 10 s keeps that recovery
# within the reconnect cases' 30 s wait (the heartbeat still covers long handlers).
SQS_BASE = "wait_seconds=1"
SQS_OPTIONS = {
    "sqs": SQS_BASE,
    "sqs-fifo": f"{SQS_BASE}&fifo=true",
    "sqs-elasticmq": f"{SQS_BASE}&topology=queue",
    "sqs-elasticmq-fifo": f"{SQS_BASE}&topology=queue&fifo=true",
}
SQS_VISIBILITY = "visibility_timeout=10"


def _target(name: str) -> BrokerTarget:
    # Kafka clients reconnect to the advertised address, so the fault proxy can only
    # sit in front of a broker the harness starts with the proxy as its advertised
    # listener: the suite then uses that broker for every case.
    broker, flavour = TARGETS[name]
    if broker == "rabbitmq":
        return _rabbitmq_target(name, flavour)
    if broker == "redis":  # a private restartable server (integration_tests/redis/target.py)
        return redis_target(name, SCALE.get(name, 1.0))
    if broker == "nats":
        return nats_target(name)
    if broker == "sqlite":  # a temporary file; its fault hooks hold the write lock
        return sqlite_target(name)
    if broker == "postgres":  # a database of its own, through a fault proxy
        return postgres_target(name)
    endpoint, proxy = harness.require_faulty(broker, flavour)
    if broker in ("sqs", "elasticmq"):
        return _sqs_target(name, endpoint, proxy)
    return kafka_target(
        name,
        endpoint,
        proxy,
        SCALE.get(name, 1.0),
        TANSU_LIMITS if endpoint.flavour == "tansu" else {},
    )


def _rabbitmq_target(name: str, queue_type: str | None) -> BrokerTarget:
    # A private node (restartable) behind a proxy; every case goes through the
    # proxy, so the reconnect cases break the very connections the adapter uses.
    harness.require("rabbitmq")  # a missing broker fails under EVENTBUS_REQUIRE_BROKERS
    node = conformance_node()
    url = node.url
    if queue_type is not None:
        url += ("&" if "?" in url else "?") + f"queue_type={queue_type}"
    # No short_lease: the adapter declares lease=False (RabbitMQ's consumer_timeout
    # cannot be kept alive by a client; docs/adapters/rabbitmq.md).
    return BrokerTarget(
        name=name,
        url=url,
        faults=node.proxy,
        faulty_url=url,
        scale=SCALE.get(name, 1.0),
        restart=node.restart,
        delete_underneath=delete_underneath(node.direct_url or node.url),
    )


@pytest.fixture(scope="module", params=list(TARGETS))
def target(request: pytest.FixtureRequest) -> BrokerTarget:
    """One real broker at a time, reached through a fault proxy."""
    return _target(str(request.param))


class TestConformance(ConformanceSuite):
    """The shared suite, run per broker."""


def _sqs_target(name: str, endpoint: harness.Endpoint, proxy: harness.FaultProxy) -> BrokerTarget:
    # The adapter takes credentials only from the standard AWS chain; the emulator
    # accepts any, so the environment gets dummy ones unless real ones are set.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    url = f"{endpoint.url}&{SQS_OPTIONS[name]}&{SQS_VISIBILITY}"
    return BrokerTarget(
        name=name,
        url=url,
        faults=proxy,
        faulty_url=url,
        scale=SCALE.get(name, 1.0),
        # SQS FIFO's dedupe window (declared: dedupe_window=300) skips the cases that
        # publish one event id twice through Capability.no_dedupe_window.
        limits=ELASTICMQ_LIMITS if name.startswith("sqs-elasticmq") else MOTO_LIMITS,
        restart=endpoint.restart,
        delete_underneath=sqs_targets.delete_underneath(url),
        short_lease=sqs_targets.short_lease(endpoint.url, SQS_OPTIONS[name]),
    )
