"""Dead letters (eventbus.deadletters): the envelope, shrinking it to the broker's size
limit, publishing it, reading it back, the old import paths; a failing message whose
dead letter is too big, end to end; and replay reaching the group that failed it, not
every group again."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections import Counter
from collections.abc import Sequence

import pytest

from eventbus import DeadLetters, Envelope, Event, EventBus, MemoryAdapter, RetryPolicy, codec
from eventbus.adapter import Adapter, RawMessage, ReadRecord
from eventbus.adapter_names import broker_dedupe_id
from eventbus.deadletters import (
    DLQ_EXTENSIONS,
    UNDECODABLE_TYPE,
    DeadLetterRecord,
    dead_letter,
    dead_letter_envelope,
    dlq_topic,
    publish_dead_letter,
)
from eventbus.envelope import parse_time, utcnow
from eventbus.errors import (
    BatchPublishError,
    BrokerConnectionError,
    DeadLetterPublishError,
    InfrastructureError,
    MessageTooLargeError,
    PublishError,
    UnsupportedOperationError,
)
from tests.bus_support import dead_letters, run


def memory_url(limit: int | None = None) -> str:
    query = "" if limit is None else f"?max_message_bytes={limit}"
    return f"memory://{uuid.uuid4()}{query}"


def test_dlq_topic_name() -> None:
    assert dlq_topic("orders", "billing") == "orders.billing.dlq"


def _raise_and_catch() -> ValueError:
    try:
        raise ValueError("card declined for order A-1")
    except ValueError as exc:
        return exc


def test_dead_letter_envelope_keeps_the_event_and_says_why() -> None:
    original = Envelope.create(
        type="OrderPlaced",
        source="orders",
        data=b'{"id":1}',
        correlationid="corr-1",
        partitionkey="k",
        extensions={"tenant": "acme"},
    )
    exc = _raise_and_catch()
    before = utcnow()
    dead = dead_letter_envelope(
        original,
        reason="ValueError: card declined",
        topic="orders",
        group="billing",
        attempts=3,
        exc=exc,
    )
    for name in (
        "id",
        "type",
        "source",
        "time",
        "data",
        "correlationid",
        "partitionkey",
        "dataversion",
    ):
        assert getattr(dead, name) == getattr(original, name), name
    ext = dead.extensions
    assert ext["tenant"] == "acme"
    assert ext["dlqreason"] == "ValueError: card declined"
    assert ext["dlqattempts"] == "3"
    assert ext["dlqtopic"] == "orders" and ext["dlqgroup"] == "billing"
    assert ext["dlqexception"] == "builtins.ValueError"
    assert ext["dlqmessage"] == "card declined for order A-1"
    assert "Traceback" in ext["dlqtraceback"] and "_raise_and_catch" in ext["dlqtraceback"]
    assert before <= parse_time(ext["dlqfailedat"]) <= utcnow()
    assert set(ext) <= {"tenant", *DLQ_EXTENSIONS}


def test_dead_letter_envelope_without_exception_and_when_dead_lettered_again() -> None:
    first = dead_letter_envelope(
        Envelope.create(type="t", source="s"),
        reason="r1",
        topic="a",
        group="g",
        attempts=1,
        exc=_raise_and_catch(),
    )
    again = dead_letter_envelope(first, reason="r2", topic="b", group="h", attempts=2)
    assert again.extensions["dlqreason"] == "r2" and again.extensions["dlqtopic"] == "b"
    assert "dlqexception" not in again.extensions and "dlqtraceback" not in again.extensions
    assert again.id == first.id


def test_dead_letter_envelope_truncates_long_text() -> None:
    huge = RuntimeError("x" * 5000)
    dead = dead_letter_envelope(
        Envelope.create(type="t", source="s"),
        reason="r",
        topic="a",
        group="g",
        attempts=1,
        exc=huge,
    )
    assert len(dead.extensions["dlqmessage"]) == 1000
    assert len(dead.extensions["dlqtraceback"]) <= 4000


def _deep_failure(depth: int = 40) -> BaseException:
    """An exception with a long traceback, as a failure deep in a library has."""
    cause: BaseException | None = None
    for step in range(depth):
        try:
            raise RuntimeError(f"layer {step} gave up") from cause
        except RuntimeError as exc:
            cause = exc
    try:
        raise RuntimeError("downstream said no") from cause
    except RuntimeError as exc:
        return exc


def _dead(data: bytes = b'{"id": 1}', **ext: str) -> Envelope:
    original = Envelope.create(
        type="t.order", source="orders", data=data, correlationid="corr", extensions=ext
    )
    return dead_letter_envelope(
        original,
        reason="RuntimeError: downstream said no",
        topic="orders",
        group="billing",
        attempts=3,
        exc=_deep_failure(),
    )


async def _publish_with_limit(dead: Envelope, limit: int) -> tuple[Envelope, Envelope]:
    url = memory_url(limit)
    sent = await publish_dead_letter(MemoryAdapter(url), dead, topic="orders", group="billing")
    (stored,) = await dead_letters(url, "orders", "billing", 1)
    return sent, stored


def test_a_dead_letter_that_fits_is_published_whole() -> None:
    async def scenario() -> None:
        dead = _dead()
        sent, stored = await _publish_with_limit(dead, 1024 * 1024)
        assert sent == dead == stored

    run(scenario)


def test_a_dead_letter_over_the_limit_first_loses_the_head_of_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        dead = _dead()
        tb = dead.extensions["dlqtraceback"]
        bare = dead.evolve(
            extensions={k: v for k, v in dead.extensions.items() if k != "dlqtraceback"}
        )
        sent, stored = await _publish_with_limit(dead, codec.largest_size(bare) + 1500)
        kept = stored.extensions["dlqtraceback"]
        assert stored == sent
        assert "truncated" in kept and len(kept) < len(tb)
        assert tb.endswith(kept.split("\n", 1)[1])  # the tail, where the error is
        assert "RuntimeError: downstream said no" in kept
        assert stored.data == dead.data and stored.extensions["dlqmessage"]
        assert "dlqdropped" not in stored.extensions

    with caplog.at_level(logging.WARNING):
        run(scenario)
    assert any("traceback truncated" in r.getMessage() for r in caplog.records)


def test_then_drops_the_traceback() -> None:
    async def scenario() -> None:
        dead = _dead()
        bare = dead.evolve(
            extensions={k: v for k, v in dead.extensions.items() if k != "dlqtraceback"}
        )
        _, stored = await _publish_with_limit(dead, codec.largest_size(bare) + 100)
        assert "dlqtraceback" not in stored.extensions
        assert stored.extensions["dlqdropped"] == "traceback"
        assert stored.data == dead.data
        assert stored.extensions["dlqmessage"] == "downstream said no"

    run(scenario)


def test_then_keeps_only_the_reason_and_a_reference_to_the_event() -> None:
    async def scenario() -> None:
        dead = _dead(data=b"x" * 3000, tenant="acme")
        _, stored = await _publish_with_limit(dead, 3000)
        for name in ("id", "type", "source", "time", "correlationid"):
            assert getattr(stored, name) == getattr(dead, name), name
        assert stored.data == b"" and stored.datacontenttype is None
        ext = stored.extensions
        assert ext["dlqreason"] == "RuntimeError: downstream said no"
        assert (ext["dlqtopic"], ext["dlqgroup"], ext["dlqattempts"]) == ("orders", "billing", "3")
        assert ext["dlqdropped"] == "traceback,message,data,extensions"
        assert "tenant" not in ext and "dlqmessage" not in ext
        record = DeadLetterRecord.from_envelope(stored)
        assert record.dropped == ("traceback", "message", "data", "extensions")
        assert not record.replayable

    run(scenario)


def test_a_dead_letter_that_cannot_fit_at_all_is_an_infrastructure_error() -> None:
    async def scenario() -> None:
        adapter = MemoryAdapter(memory_url(200))
        with pytest.raises(DeadLetterPublishError, match="does not fit the 200-byte limit"):
            await publish_dead_letter(adapter, _dead(), topic="orders", group="billing")

    run(scenario)


class BrokenDLQ(MemoryAdapter):
    """Publishes fine, except to dead-letter topics: the broker went away meanwhile."""

    async def publish(self, topic: str, envelopes: Sequence[Envelope]) -> None:
        if topic.endswith(".dlq"):
            raise BrokerConnectionError("memory broker unreachable")
        await super().publish(topic, envelopes)


def test_a_failed_dlq_publish_is_an_infrastructure_error_naming_the_event() -> None:
    async def scenario() -> None:
        dead = _dead()
        with pytest.raises(DeadLetterPublishError) as info:
            await dead_letter(
                BrokenDLQ(memory_url()),
                dead,
                reason="r",
                topic="orders",
                group="billing",
                attempts=1,
            )
        assert isinstance(info.value, InfrastructureError)
        assert isinstance(info.value.__cause__, BrokerConnectionError)
        assert dead.id in str(info.value) and "orders.billing.dlq" in str(info.value)

    run(scenario)


class RefusesTracebacks(MemoryAdapter):
    """Passes the envelope size check, but its encoding of anything with a traceback is
    too big: refused by the adapter's own check (``batch=False``) or by the broker, as
    Kafka does when the topic's max.message.bytes is below the client's limit."""

    batch = False

    async def publish(self, topic: str, envelopes: Sequence[Envelope]) -> None:
        if any("dlqtraceback" in e.extensions for e in envelopes):
            if self.batch:
                raise BatchPublishError("refused", {0: MessageTooLargeError("too big")}, 1)
            raise MessageTooLargeError("too big once encoded")
        await super().publish(topic, envelopes)


@pytest.mark.parametrize("by_broker", [False, True])
def test_a_size_refusal_after_encoding_also_shrinks_the_dead_letter(by_broker: bool) -> None:
    async def scenario() -> None:
        url = memory_url()
        adapter = RefusesTracebacks(url)
        adapter.batch = by_broker
        sent = await publish_dead_letter(adapter, _dead(), topic="orders", group="billing")
        assert sent.extensions["dlqdropped"] == "traceback"
        assert (await dead_letters(url, "orders", "billing", 1)) == [sent]

    run(scenario)


def test_a_partial_batch_failure_of_another_kind_is_an_infrastructure_error() -> None:
    class Flaky(MemoryAdapter):
        async def publish(self, topic: str, envelopes: Sequence[Envelope]) -> None:
            raise BatchPublishError("lost", {0: PublishError("leader moved")}, 1)

    async def scenario() -> None:
        with pytest.raises(DeadLetterPublishError, match="leader moved"):
            await publish_dead_letter(Flaky(memory_url()), _dead(), topic="orders", group="billing")

    run(scenario)


def test_the_record_reads_every_dead_letter_attribute() -> None:
    dead = _dead(tenant="acme")
    record = DeadLetterRecord.from_envelope(dead)
    assert (record.reason, record.attempts, record.topic, record.group) == (
        "RuntimeError: downstream said no",
        3,
        "orders",
        "billing",
    )
    assert record.exception == "builtins.RuntimeError" and "Traceback" in record.traceback
    assert record.dropped == () and record.replayable
    assert record.original.extensions == {"tenant": "acme"}
    raw = DeadLetterRecord.from_envelope(
        Envelope.create(
            type=UNDECODABLE_TYPE,
            source="x",
            data=b"\xffnot an event",
            extensions={
                "dlqheaders": '[["x-trace","b64","/w=="],["kind","order"]]',
                "dlqmessageid": "17-0",
            },
        )
    )
    # Bytes that were not an event replay as they arrived, headers and all.
    assert raw.undecodable and raw.replayable and raw.raw == b"\xffnot an event"
    assert raw.raw_headers == {"x-trace": b"\xff", "kind": b"order"}
    assert raw.broker_message_id == "17-0"
    cut = DeadLetterRecord.from_envelope(
        Envelope.create(type=UNDECODABLE_TYPE, source="x", extensions={"dlqdropped": "data"})
    )
    assert not cut.replayable


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [
        ("eventbus.deadletter", "DeadLetterRecord", "eventbus.deadletters.DeadLetterRecord"),
        ("eventbus.deadletter", "dlq_topic", "eventbus.deadletters.dlq_topic"),
        ("eventbus.deadletter", "MAX_TRACEBACK", "eventbus.deadletters.letters.MAX_TRACEBACK"),
        ("eventbus.deadletter", "broker_dedupe_id", "eventbus.adapter_names.broker_dedupe_id"),
        ("eventbus.dlq", "DeadLetters", "eventbus.deadletters.DeadLetters"),
        ("eventbus.dlq", "REPLAY_GROUP", "eventbus.deadletters.REPLAY_GROUP"),
        (
            "eventbus.middleware.deadletter",
            "dead_letter_undecodable",
            "eventbus.deadletters.dead_letter_undecodable",
        ),
        ("eventbus.middleware.deadletter", "dlq_topic", "eventbus.deadletters.dlq_topic"),
        (
            "eventbus.middleware",
            "dead_letter_envelope",
            "eventbus.deadletters.dead_letter_envelope",
        ),
    ],
)
def test_the_old_dead_letter_imports_work_for_one_release_and_name_the_new_one(
    old: str, name: str, new: str
) -> None:
    import importlib
    import warnings

    home, _, attribute = new.rpartition(".")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = getattr(importlib.import_module(old), name)
    assert value is getattr(importlib.import_module(home), attribute)
    assert [str(w.message) for w in caught if w.category is DeprecationWarning] == [
        f"{old}.{name} is deprecated and goes away in the next release: use {new} instead"
    ]


def test_an_unknown_name_of_an_old_dead_letter_module_is_an_attribute_error() -> None:
    import eventbus.dlq

    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        eventbus.dlq.nothing  # noqa: B018


# -- end to end on the memory broker -----------------------------------------------------

LIMIT = 4096


class Blob(Event, type="test.deadletter.blob", topic="test-deadletter-blobs"):
    payload: str


def test_a_failing_message_near_the_size_limit_reaches_the_dlq_once() -> None:
    """Its full dead letter (data plus reason and traceback) would exceed the limit."""

    async def scenario() -> None:
        url = memory_url(LIMIT)
        bus = EventBus(url, retry=RetryPolicy(max_attempts=1))
        runs: list[int] = []

        @bus.subscribe(Blob, group="g")
        async def handle(event: Blob) -> None:
            runs.append(1)
            raise ValueError("downstream said no")

        async with bus:
            sent = await bus.publish(Blob(payload="x" * (LIMIT - 400)))
            (dead,) = await dead_letters(url, Blob.default_topic(), "g", 1)
        assert runs == [1]
        assert dead.id == sent.id and dead.type == sent.type
        assert dead.extensions["dlqreason"] == "ValueError: downstream said no"
        assert "data" in dead.extensions["dlqdropped"].split(",")

    run(scenario)


def test_oversize_undecodable_bytes_reach_the_dlq_as_a_reference() -> None:
    async def scenario() -> None:
        url, topic = memory_url(LIMIT), f"raw-{uuid.uuid4()}"
        bus = EventBus(url)

        @bus.subscribe(topic, group="g")
        async def handle(envelope: Envelope) -> None:
            raise AssertionError("never called for undecodable bytes")

        async with bus:
            await MemoryAdapter(url).publish_raw(topic, RawMessage(b"\x00" * (LIMIT - 100)))
            (dead,) = await dead_letters(url, topic, "g", 1)
        assert dead.type == UNDECODABLE_TYPE and dead.data == b""
        assert dead.extensions["dlqreason"].startswith("undecodable")
        assert "data" in dead.extensions["dlqdropped"].split(",")

    run(scenario)


class DedupeIds(MemoryAdapter):
    """The memory adapter, noting the broker dedupe id of everything published."""

    ids: list[tuple[str, str]]

    async def publish(self, topic: str, envelopes: Sequence[Envelope]) -> None:
        self.ids.extend((topic, broker_dedupe_id(e)) for e in envelopes)
        await super().publish(topic, envelopes)


def test_a_replay_is_a_new_message_for_the_broker_dedupe_id() -> None:
    """A replay to the whole topic (a plain publish of the event's id) gets a dedupe
    id naming the letter, stable for that letter: a broker's duplicate window
    (JetStream Nats-Msg-Id, SQS FIFO) must not take it for the first publish."""

    async def scenario() -> None:
        adapter = DedupeIds(memory_url())
        adapter.ids = []
        await adapter.connect()
        event = Envelope.create(type="t", source="s", data=b"{}")
        assert broker_dedupe_id(event) == event.id
        dead = dead_letter_envelope(event, reason="boom", topic="orders", group="g", attempts=1)
        await adapter.publish(dlq_topic("orders", "g"), [dead])
        letters = DeadLetters(adapter)
        assert await letters.replay("orders", "g", to_group=False) == 1
        (replay,) = [i for topic, i in adapter.ids if topic == "orders"]
        (letter,) = await letters.list("orders", "g")
        assert replay == f"{event.id}.replay.{letter.message_id}"
        assert broker_dedupe_id(event) == event.id  # only inside the replay

    run(scenario)


# -- replaying to the group that failed --------------------------------------------------

NO_RETRY = RetryPolicy(max_attempts=1, initial_delay=0.0, jitter=0.0)


class QueueLike(MemoryAdapter):
    """A broker that cannot browse without consuming (SQS, RabbitMQ): DeadLetters reads
    the DLQ as its replay group."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.capabilities = dataclasses.replace(self.capabilities, browse=False)

    async def read(self, topic: str, *, limit: int | None = None) -> list[ReadRecord]:
        raise UnsupportedOperationError("cannot browse")


async def _scenario(
    to_group: bool | None, adapter_cls: type[MemoryAdapter] = MemoryAdapter
) -> Counter[str]:
    """Groups "billing" (fails once) and "audit" (fine) both take one event; the
    billing failure is dead-lettered, then replayed. Returns handler runs per group."""
    url, topic = f"memory://{uuid.uuid4().hex}", f"orders-{uuid.uuid4().hex[:8]}"
    runs: Counter[str] = Counter()
    billed = asyncio.Event()
    broken = True
    bus = EventBus(adapter_cls(url), retry=NO_RETRY)

    @bus.subscribe(topic, group="billing")
    async def bill(envelope: Envelope) -> None:
        runs["billing"] += 1
        if broken:
            raise ValueError("card declined")
        billed.set()

    @bus.subscribe(topic, group="audit")
    async def audit(envelope: Envelope) -> None:
        runs["audit"] += 1

    dead_lettered = asyncio.Event()

    @bus.subscribe(dlq_topic(topic, "billing"), group="watch")
    async def watch(envelope: Envelope) -> None:
        dead_lettered.set()

    async with bus:
        await bus.adapter.publish(topic, [Envelope.create(type="t", source="s")])
        dead = DeadLetters(bus.adapter)
        await asyncio.wait_for(dead_lettered.wait(), 5)
        broken = False
        assert await dead.replay(topic, "billing", to_group=to_group) == 1
        await asyncio.wait_for(billed.wait(), 5)
        await asyncio.sleep(0.1)  # room for a wrong extra run in "audit" to show
    return runs


def test_replay_goes_to_the_failed_group_only_where_the_broker_can_route_to_it() -> None:
    assert asyncio.run(_scenario(None)) == {"billing": 2, "audit": 1}


def test_replay_to_the_whole_topic_reaches_every_group_again() -> None:
    assert asyncio.run(_scenario(False)) == {"billing": 2, "audit": 2}


@pytest.mark.parametrize(
    ("to_group", "runs"), [(None, {"billing": 2, "audit": 1}), (False, {"billing": 2, "audit": 2})]
)
def test_a_queue_brokers_replay_routes_as_a_browsing_one(
    to_group: bool | None, runs: dict[str, int]
) -> None:
    """Read by consuming the DLQ (no browsing), a replay still goes to the failed group
    where the broker can route to it. Besides sparing the other groups, this keeps a
    FIFO broker's dedupe window (SQS FIFO, 5 minutes, keyed by the event id for a plain
    publish) from dropping a replay of an event published a moment ago."""
    assert asyncio.run(_scenario(to_group, QueueLike)) == runs


def test_insisting_on_the_group_where_the_broker_cannot_route_is_an_error() -> None:
    class NoGroupRoute(MemoryAdapter):
        def __init__(self, url: str) -> None:
            super().__init__(url)
            self.capabilities = dataclasses.replace(self.capabilities, group_route=False)

        async def publish_to_group(self, topic: str, group: str, envelopes: object) -> None:
            await Adapter.publish_to_group(self, topic, group, [])  # the base: unsupported

    async def scenario() -> None:
        adapter = NoGroupRoute(f"memory://{uuid.uuid4().hex}")
        await adapter.connect()
        original = Envelope.create(type="t", source="s")
        letter = dead_letter_envelope(
            original, reason="boom", topic="orders", group="billing", attempts=1
        )
        await adapter.publish(dlq_topic("orders", "billing"), [letter])
        with pytest.raises(UnsupportedOperationError, match="one group"):
            await DeadLetters(adapter).replay("orders", "billing", to_group=True)
        # Left to choose, the replay falls back to the whole topic.
        assert await DeadLetters(adapter).replay("orders", "billing") == 1
        records = await adapter.read("orders")
        assert [r.envelope.id for r in records if r.envelope] == [original.id]
        await adapter.close()

    asyncio.run(scenario())
