"""Messages of producers that don't speak CloudEvents, and plain publishing (#21): a
subscription with ``wire_format="plain"`` hands a raw JSON body to a typed handler, and
``publish(wire_format="plain")`` goes out through ``publish_raw`` with its key; the old
call form of ``publish_raw`` still works, with a DeprecationWarning, for one release."""

from __future__ import annotations

import warnings
from typing import Any

from eventbus.context import Context
from eventbus.envelope import Envelope
from eventbus.raw_message import RawMessage
from eventbus.testing.collector import Collector
from eventbus.testing.conformance._events import Ping
from eventbus.testing.conformance._support import Capability, Case, case, requires

_RAW = requires(Capability.raw_publish, "the foreign producer's bytes are published raw")


class ForeignCases:
    """Typed handlers for plain JSON producers; their undecodable bytes dead-lettered."""

    @case(_RAW)
    async def test_plain_producer_without_headers_reaches_a_typed_handler(self, run: Case) -> None:
        """A body that is just the event's JSON, published raw with no header at all (as
        a raw client or a FastStream service would), is handled as the subscribed
        class; a body that is not JSON goes to the DLQ once, with its raw bytes and a
        reason naming the wire format. Neither blocks the CloudEvent after them."""
        event_cls, topic, group, dlq = await run.watched_ping()
        handled: Collector[tuple[int, str]] = Collector("plain handler")

        async def handle(event: Ping, ctx: Context) -> None:
            handled.add((event.seq, event.note))

        bus = await run.consumer(event_cls, handle, group=group, wire_format="plain")
        await bus.adapter.publish_raw(topic, RawMessage(b'{"seq": 1, "note": "plain \\u20ac"}'))
        junk = b"\x00\xff not json"
        await bus.adapter.publish_raw(topic, RawMessage(junk))
        await bus.publish(event_cls(seq=2, note="cloudevent"))
        got = await handled.wait_count(2)
        assert sorted(got) == [(1, "plain \u20ac"), (2, "cloudevent")], got
        (dead,) = await dlq.wait_count(1)
        assert dead.type == "eventbus.undecodable" and dead.data == junk
        reason = dead.extensions["dlqreason"]
        assert "wire format 'plain'" in reason and "not JSON" in reason, reason

    @case(_RAW, requires(Capability.fanout, "a plain and a CloudEvents-only group both read it"))
    async def test_plain_publish_goes_out_raw_with_its_key(self, run: Case) -> None:
        """``publish(wire_format="plain", key=...)`` sends each event's JSON through
        ``publish_raw(topic, RawMessage(..., key=...))``; a plain subscription reads them
        back in order, under their ids where the broker carries headers (the
        ``message_id`` header).
        They are no CloudEvents: a CloudEvents-only group dead-letters them, saying how
        to read them."""
        event_cls, _, strict, dlq = await run.watched_ping()
        seen: Collector[Envelope] = Collector("plain subscription")

        async def handle(event: Ping, ctx: Context) -> None:
            seen.add(ctx.envelope)

        async def never(event: Ping) -> None:
            raise AssertionError(f"a plain message was read as a CloudEvent: {event}")

        await run.consumer(event_cls, handle, group=run.group(), wire_format="plain")
        await run.consumer(event_cls, never, group=strict)
        publisher = await run.publisher()
        sent = [
            await publisher.publish(event_cls(seq=n, key="k"), key="k", wire_format="plain")
            for n in range(3)
        ]
        got = await seen.wait_count(3)
        assert [Ping.model_validate_json(e.data).seq for e in got] == [0, 1, 2]
        if run.caps.headers:
            assert [e.id for e in got] == [e.id for e in sent]
            assert [e.correlationid for e in got] == [e.correlationid for e in sent]
        dead = await dlq.wait_count(3)
        assert all("wire_format='plain'" in d.extensions["dlqreason"] for d in dead), dead

    @case(_RAW)
    async def test_old_publish_raw_call_form_warns_and_still_publishes(self, run: Case) -> None:
        """``publish_raw(topic, payload, key=...)``, the call form before
        :class:`~eventbus.adapter.RawMessage`, still reaches the handler for one release,
        with a DeprecationWarning naming the new form (the contract's one shim wraps
        every adapter's ``publish_raw``)."""
        event_cls, topic, group, _ = await run.watched_ping()
        handled: Collector[int] = Collector("plain handler")

        async def handle(event: Ping) -> None:
            handled.add(event.seq)

        bus = await run.consumer(event_cls, handle, group=group, wire_format="plain")
        old_form: Any = bus.adapter.publish_raw  # typed for the new form only
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            await old_form(topic, b'{"seq": 7}', key="k")
        assert await handled.wait_count(1) == [7]
        (warning,) = [w for w in caught if issubclass(w.category, DeprecationWarning)]
        assert "RawMessage" in str(warning.message), warning
        assert warning.filename == __file__, warning.filename  # points at the caller
