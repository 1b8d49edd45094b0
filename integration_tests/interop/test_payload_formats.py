"""Each payload format (JSON, msgpack, Avro, protobuf) round-trips every field type the
guide's events use through each real broker's adapter, in each mode the adapter writes
(#21). All four formats share one topic, so each run also shows a consumer decoding by
content type while producers use different formats.

Modes: Kafka writes binary or structured (``mode=``); Redis Streams, RabbitMQ, NATS
(JetStream and core), SQLite and PostgreSQL write binary only (headers or fields beside
the body); Redis Pub/Sub and SQS write structured only (one JSON document: non-JSON
data as ``data_base64``).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest

from eventbus import Context, Envelope, EventBus, Message
from integration_tests import harness
from tests.payloads.events import FORMATS, AllTypes, sample

pytestmark = pytest.mark.timeout(120)
WAIT = 30.0
CONTENT_TYPES = {
    "json": "application/json",
    "msgpack": "application/msgpack",
    "avro": "application/avro",
    "protobuf": "application/protobuf",
}
# target -> (broker the harness finds, how its URL is written, the mode it writes)
TARGETS = {
    "kafka-binary": ("kafka", "{url}", "binary"),
    "kafka-structured": ("kafka", "{url}?mode=structured", "structured"),
    "rabbitmq": ("rabbitmq", "{url}", "binary"),
    "nats-jetstream": ("nats", "{url}", "binary"),
    "nats-core": ("nats", "{url}", "binary"),
    "redis-streams": ("redis", "{url}", "binary"),
    "redis-pubsub": ("redis", "{url}", "structured"),
    "sqs": ("sqs", "{url}&wait_seconds=1", "structured"),
}


def broker_url(target: str) -> str:
    broker, template, _ = TARGETS[target]
    url = template.format(url=harness.require(broker).url)
    if target == "nats-core":
        return url.replace("nats://", "nats+core://", 1)
    if target == "redis-streams":
        return url.replace("redis://", "redis+streams://", 1)
    if broker == "sqs":
        # The emulator takes any credentials (as integration_tests/sqs does).
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    return url


def events() -> list[AllTypes]:
    """Two events of each format: every field set, then the optional ones flipped."""
    return [
        sample(cls, n, **({"note": None, "retries": 3, "gift": sample(cls).first} if n else {}))
        for cls in FORMATS.values()
        for n in (0, 1)
    ]


async def round_trip(url: str, topic: str) -> None:
    """Publish :func:`events` on ``topic`` (half with ``publish``, half with
    ``publish_many``) and check what one subscriber decodes, and its content types."""
    got: list[tuple[Message, Envelope]] = []
    sent = events()
    consumer = EventBus(url, source="payloads-consumer")
    earliest = None if url.startswith("sqs") else "earliest"

    @consumer.subscribe(topic, group=f"g-{topic}", start_from=earliest)
    async def handle(event: Message, ctx: Context) -> None:
        got.append((event, ctx.envelope))

    async with consumer, EventBus(url, source="payloads-producer") as producer:
        for message in sent[::2]:
            await producer.publish(message, topic=topic)
        await producer.publish_many(sent[1::2], topic=topic)

        async def all_in() -> None:
            while len(got) < len(sent):  # noqa: ASYNC110 - the handler signals nothing
                await asyncio.sleep(0.05)

        try:
            await asyncio.wait_for(all_in(), WAIT)
        except TimeoutError:
            raise AssertionError(f"{len(got)} of {len(sent)} events arrived") from None
    assert len({envelope.id for _, envelope in got}) == len(sent), "an event arrived twice"
    for message in sent:
        assert any(event == message for event, _ in got), f"{message!r} not received as sent"
    for event, envelope in got:
        name = next(name for name, cls in FORMATS.items() if isinstance(event, cls))
        assert envelope.datacontenttype == CONTENT_TYPES[name], name


@pytest.mark.parametrize("target", list(TARGETS))
def test_every_format_round_trips_through_the_broker(target: str) -> None:
    topic = f"it-payloads-{uuid.uuid4().hex[:10]}"
    asyncio.run(round_trip(broker_url(target), topic))


def test_every_format_round_trips_through_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    asyncio.run(round_trip(url, "it-payloads"))


@pytest.mark.asyncio
async def test_every_format_round_trips_through_postgres(postgres_url: str) -> None:
    await round_trip(postgres_url, "it-payloads")
