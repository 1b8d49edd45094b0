"""When handling fails: redelivery, retries, dead letters, poison, timeouts, delivery modes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import pytest

from eventbus.context import Context
from eventbus.deadletters import UNDECODABLE_TYPE
from eventbus.envelope import Envelope, parse_time
from eventbus.errors import DeliveryAlreadySettledError
from eventbus.middleware.retry import RetryPolicy
from eventbus.raw_message import RawMessage
from eventbus.testing.collector import Collector
from eventbus.testing.conformance._events import Ping, on_topic, record_seqs
from eventbus.testing.conformance._support import QUIET, Capability, Case, Recorder, case, requires


def _has(seq: int) -> Callable[[list[int]], bool]:
    return lambda items: seq in items


def _ping(seq: int, **attributes: Any) -> Envelope:
    return Envelope.create(
        type=Ping.event_type(), source="conformance", data=Ping(seq=seq).to_bytes(), **attributes
    )


class FailureCases:
    """A failing handler never loses a message and never loops forever."""

    @case(requires(Capability.redelivery, "a nacked message must come back"))
    async def test_resend_on_nack(self, run: Case) -> None:
        """Adapter level: a nacked delivery comes back with the same envelope and the
        attempt number incremented; once acked it does not come back."""
        adapter = await run.connected_adapter()
        topic, group = run.topic(), run.group()
        collector = await run.collect(adapter, topic, group)
        sent = _ping(1)
        await adapter.publish(topic, [sent])
        (first,) = await collector.inbox.wait_count(1)
        assert first.envelope == sent and first.attempt == 1
        await first.nack()
        second = (await collector.inbox.wait_count(2))[1]
        assert second.envelope is not None and second.envelope.id == sent.id
        assert second.attempt == 2, f"attempt should be 2 after one nack, is {second.attempt}"
        await second.ack()
        await asyncio.sleep(QUIET)  # an acked message must not come back
        assert len(collector.inbox) == 2

    @case()
    async def test_settle_is_idempotent_and_exclusive(self, run: Case) -> None:
        """Adapter level: acking twice is harmless; nacking or rejecting an acked
        delivery raises DeliveryAlreadySettledError."""
        adapter = await run.connected_adapter()
        topic, group = run.topic(), run.group()
        collector = await run.collect(adapter, topic, group)
        await adapter.publish(topic, [_ping(1)])
        (delivery,) = await collector.inbox.wait_count(1)
        await delivery.ack()
        await delivery.ack()
        assert delivery.settled == "ack"
        with pytest.raises(DeliveryAlreadySettledError):
            await delivery.nack()
        with pytest.raises(DeliveryAlreadySettledError):
            await delivery.reject()

    @case()
    async def test_continue_after_errors(self, run: Case) -> None:
        """Handler failures on some messages don't stop the others: good messages are
        handled, flaky ones succeed on a retry, hopeless ones end on the DLQ."""
        event_cls = on_topic(Ping, run.topic())
        group = run.group()
        dlq = await run.dead_letters(event_cls.default_topic(), group)
        calls: Collector[tuple[int, int]] = Collector("handler calls")
        done: Collector[tuple[int, int]] = Collector("handled")
        bus = run.bus()

        @bus.subscribe(event_cls, group=group, concurrency=2)
        async def handle(event: Ping, ctx: Context) -> None:
            calls.add((event.seq, ctx.attempt))
            if event.seq % 3 == 0 or (event.seq % 3 == 1 and ctx.attempt == 1):
                raise RuntimeError(f"failing seq {event.seq} attempt {ctx.attempt}")
            done.add((event.seq, ctx.attempt))

        await bus.start()
        count = run.count(12, minimum=6)
        await (await run.publisher()).publish_many([event_cls(seq=i) for i in range(count)])
        hopeless = [i for i in range(count) if i % 3 == 0]
        fine = [i for i in range(count) if i % 3 != 0]
        await done.wait(lambda items: {s for s, _ in items} >= set(fine), "good and flaky ones")
        dead = await dlq.wait_count(len(hopeless))
        assert sorted(Ping.model_validate_json(e.data).seq for e in dead) == hopeless
        for seq, attempt in done.items:
            assert attempt == (2 if seq % 3 == 1 else 1), f"seq {seq} handled at {attempt}"
        for seq in hopeless:
            tries = [a for s, a in calls.items if s == seq]
            assert tries == [1, 2, 3], f"seq {seq} tried {tries}, expected 3 attempts"

    @case()
    async def test_dead_letter_after_max_attempts(self, run: Case) -> None:
        """After ``max_attempts`` failures the message lands on ``<topic>.<group>.dlq``
        unchanged (id, data, key, extensions) plus why: reason, exception, attempts,
        topic, group, failure time and traceback."""
        event_cls, topic, group, dlq = await run.watched_ping()
        policy = RetryPolicy(max_attempts=3, in_process_attempts=2, initial_delay=0.01, jitter=0.0)
        attempts: Collector[int] = Collector("attempts")
        bus = run.bus()

        @bus.subscribe(event_cls, group=group, retry=policy)
        async def handle(event: Ping, ctx: Context) -> None:
            attempts.add(ctx.attempt)
            raise ValueError(f"boom {event.seq}")

        await bus.start()
        sent = await (await run.publisher()).publish(
            event_cls(seq=42), key="k-42", extensions={"tenant": "acme"}
        )
        (dead,) = await dlq.wait_count(1)
        assert attempts.items == [1, 2, 3]
        assert (dead.id, dead.type, dead.data) == (sent.id, sent.type, sent.data)
        assert dead.partitionkey == "k-42" and dead.correlationid == sent.correlationid
        ext = dead.extensions
        assert ext["tenant"] == "acme"
        assert "boom 42" in ext["dlqreason"]
        assert ext["dlqexception"] == "builtins.ValueError"
        assert ext["dlqattempts"] == "3"
        assert (ext["dlqtopic"], ext["dlqgroup"]) == (topic, group)
        assert "ValueError: boom 42" in ext["dlqtraceback"]
        parse_time(ext["dlqfailedat"])

    @case()
    async def test_poison_messages_dead_lettered_at_once(self, run: Case) -> None:
        """An unknown type, data failing validation and an unknown newer version are
        dead-lettered on the first delivery with the reason: never retried, the handler
        never called; a good message after them is handled."""
        event_cls, topic, group, dlq = await run.watched_ping()
        recorder = Recorder()
        handled: Collector[int] = Collector("handler")
        await run.consumer(
            event_cls, record_seqs(handled), group=group, bus=run.bus(middleware=[recorder])
        )
        poison = {
            "unknown type": Envelope.create(
                type=f"conformance.unknown.{run.run_id}", source="conformance", data=b"{}"
            ),
            "invalid data": Envelope.create(
                type=Ping.event_type(), source="conformance", data=b'{"seq": "not a number"}'
            ),
            "newer version": _ping(2, dataversion=99),
        }
        good = _ping(1)
        await (await run.publisher()).publish_envelopes(topic, [*poison.values(), good])
        await handled.wait_count(1)
        dead = {e.id: e for e in await dlq.wait_count(len(poison))}
        # A consumer may fetch the dead letter before the DLQ publish's confirmation
        # reaches the publisher, i.e. before the chain returns to the recorder.
        await recorder.seen.wait(
            lambda seen: {s.id for s in seen} >= {e.id for e in poison.values()},
            "the chain to return for every poison message",
        )
        assert handled.items == [1], "the handler ran for a poison message"
        for what, envelope in poison.items():
            assert envelope.id in dead, f"{what} message was not dead-lettered"
            ext = dead[envelope.id].extensions
            assert ext["dlqattempts"] == "1", f"{what} was retried ({ext['dlqattempts']})"
            assert ext["dlqexception"].endswith("SchemaError"), ext["dlqexception"]
            assert "SchemaError" in ext["dlqreason"]
            assert [s.attempt for s in recorder.seen.items if s.id == envelope.id] == [1]

    @case(requires(Capability.raw_publish, "the undecodable bytes are published raw"))
    async def test_undecodable_bytes_dead_lettered(self, run: Case) -> None:
        """Bytes that are not a CloudEvent go to the DLQ once, wrapped with the reason
        and the original bytes, and don't block the messages after them."""
        event_cls, topic, group, dlq = await run.watched_ping()
        handled: Collector[int] = Collector("handler")
        bus = await run.consumer(event_cls, record_seqs(handled), group=group)
        raw = b"\x00\xffthis is not a CloudEvent{"
        await bus.adapter.publish_raw(topic, RawMessage(raw))
        await bus.publish(event_cls(seq=1))
        await handled.wait_count(1)
        (dead,) = await dlq.wait_count(1)
        assert dead.type == UNDECODABLE_TYPE and dead.data == raw
        assert dead.extensions["dlqreason"].startswith("undecodable")
        assert dead.extensions["dlqattempts"] == "1"
        assert (dead.extensions["dlqtopic"], dead.extensions["dlqgroup"]) == (topic, group)

    @case(requires(Capability.redelivery, "the retry goes back through the broker with a delay"))
    async def test_delayed_redelivery_honoured(self, run: Case) -> None:
        """With one in-process attempt and ``initial_delay=d``, the second attempt comes
        from the broker no sooner than ``d`` after the first failed."""
        delay = 0.6
        event_cls = on_topic(Ping, run.topic())
        policy = RetryPolicy(max_attempts=2, in_process_attempts=1, initial_delay=delay, jitter=0.0)
        loop = asyncio.get_running_loop()
        runs: Collector[tuple[int, int, float]] = Collector("attempts")
        bus = run.bus()

        @bus.subscribe(event_cls, group=run.group(), retry=policy)
        async def handle(event: Ping, ctx: Context) -> None:
            runs.add((ctx.attempt, ctx.delivery.attempt, loop.time()))
            if ctx.attempt == 1:
                raise RuntimeError("fail the first attempt")

        await bus.start()
        await (await run.publisher()).publish(event_cls(seq=1))
        (a1, d1, t1), (a2, d2, t2) = await runs.wait_count(2)
        assert (a1, a2) == (1, 2) and (d1, d2) == (1, 2), "second attempt was not a redelivery"
        assert t2 - t1 >= delay * 0.9, f"redelivered after {t2 - t1:.3f}s, before {delay}s"

    @case()
    async def test_handler_timeout_retries_then_dead_letters(self, run: Case) -> None:
        """A handler exceeding the subscription ``timeout`` is cancelled and counts as a
        failure: retried, then dead-lettered as HandlerTimeoutError."""
        event_cls, _, group, dlq = await run.watched_ping()
        policy = RetryPolicy(max_attempts=2, in_process_attempts=1, initial_delay=0.01, jitter=0.0)
        started: Collector[int] = Collector("started")
        bus = run.bus()

        @bus.subscribe(event_cls, group=group, retry=policy, timeout=0.1)
        async def handle(event: Ping, ctx: Context) -> None:
            started.add(ctx.attempt)
            await asyncio.sleep(30)

        await bus.start()
        sent = await (await run.publisher()).publish(event_cls(seq=1))
        (dead,) = await dlq.wait_count(1)
        assert dead.id == sent.id
        assert dead.extensions["dlqexception"].endswith("HandlerTimeoutError")
        assert dead.extensions["dlqattempts"] == "2"
        assert started.items == [1, 2]

    @case()
    async def test_at_most_once_not_redelivered(self, run: Case) -> None:
        """With ``delivery="at_most_once"`` a failing handler runs once and its message
        is not redelivered (watched for a bounded grace period); others still flow."""
        event_cls = on_topic(Ping, run.topic())
        runs: Collector[tuple[int, int]] = Collector("runs")
        bus = run.bus()

        @bus.subscribe(event_cls, group=run.group(), delivery="at_most_once")
        async def handle(event: Ping, ctx: Context) -> None:
            runs.add((event.seq, ctx.delivery.attempt))
            if event.seq == 0:
                raise RuntimeError("fails once, must not come back")

        await bus.start()
        await (await run.publisher()).publish_many([event_cls(seq=i) for i in range(3)])
        await runs.wait(lambda items: {s for s, _ in items} >= {0, 1, 2}, "all three")
        await asyncio.sleep(QUIET + 0.5)  # a redelivery would come within this window
        assert sorted(runs.items) == [(0, 1), (1, 1), (2, 1)]

    @case(
        requires(Capability.consumer_groups, "a second consumer of the group takes over"),
        requires(Capability.persistent, "the message must wait for the group's next consumer"),
    )
    async def test_at_most_once_consumer_stopped_mid_handler(self, run: Case) -> None:
        """A consumer stopped while an at-most-once handler is still running (cut off by
        the stop timeout) does not hand the message back: the group's next consumer
        never sees it, but sees the next message. At-least-once would redeliver it."""
        event_cls = on_topic(Ping, run.topic())
        group = run.group()
        started: Collector[int] = Collector("started")
        later: Collector[int] = Collector("next consumer")
        first, second = run.bus(), run.bus()

        @first.subscribe(event_cls, group=group, delivery="at_most_once")
        async def stuck(event: Ping) -> None:
            started.add(event.seq)
            await asyncio.Event().wait()  # never finishes: the stop cuts it off

        @second.subscribe(event_cls, group=group, delivery="at_most_once")
        async def handle(event: Ping) -> None:
            later.add(event.seq)

        await first.start()
        publisher = await run.publisher()
        await publisher.publish(event_cls(seq=0))
        await started.wait_count(1)
        await first.stop(timeout=0.1)
        await second.start()
        await publisher.publish(event_cls(seq=1))
        await later.wait(_has(1), "the message published after the stop")
        await asyncio.sleep(QUIET)  # a redelivery of message 0 would show up here
        assert later.items == [1], f"at-most-once message was redelivered: {later.items}"

    @case()
    async def test_oversize_rejected_nothing_sent(self, run: Case) -> None:
        """A message over ``max_message_bytes`` raises MessageTooLargeError naming its
        size and the limit; nothing reaches subscribers, and the topic keeps working."""
        from eventbus.errors import MessageTooLargeError

        event_cls = on_topic(Ping, run.topic())
        got: Collector[int] = Collector("handler")
        await run.consumer(event_cls, record_seqs(got), group=run.group())
        publisher = await run.publisher()
        limit = run.caps.max_message_bytes
        with pytest.raises(MessageTooLargeError) as error:
            await publisher.publish(event_cls(seq=0, note="x" * (limit + 1)))
        numbers = [int(n) for n in re.findall(r"\d+", str(error.value))]
        assert limit in numbers, f"error does not state the limit {limit}: {error.value}"
        assert any(n > limit for n in numbers), f"error does not state the size: {error.value}"
        await publisher.publish(event_cls(seq=1))
        await got.wait_count(1)
        await asyncio.sleep(QUIET)
        assert got.items == [1], "the oversize message was delivered"
