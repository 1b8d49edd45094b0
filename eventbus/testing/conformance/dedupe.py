"""Brokers that declare a ``dedupe_window`` must drop a copy republished within it."""

from __future__ import annotations

import asyncio

from eventbus.testing.conformance._events import Ping
from eventbus.testing.conformance._support import QUIET, Capability, Case, case, requires


class DedupeCases:
    """A publish retried after a lost confirmation does not deliver the event twice."""

    @case(
        requires(
            Capability.dedupe_window,
            "the broker must drop a copy of an event id republished within its window",
        )
    )
    async def test_dedupe_window_drops_republished_copy(self, run: Case) -> None:
        """Adapter level: an envelope published again within ``dedupe_window`` (alone,
        batched with a new event, and from a second connection, as a retrying
        producer would) reaches the group once; the new event in the same batch
        still arrives, so the broker drops only the repeated id."""
        window = run.caps.dedupe_window
        assert window is not None and window >= 1.0, (
            f"dedupe_window={window}: a window under a second cannot cover a retried publish"
        )
        adapter = await run.connected_adapter()
        topic, group = run.topic(), run.group()
        collector = await run.collect(adapter, topic, group)
        publisher = await run.publisher()
        first = publisher.envelope_for(Ping(seq=1))
        second = publisher.envelope_for(Ping(seq=2))
        await adapter.publish(topic, [first])
        await adapter.publish(topic, [first])
        await adapter.publish(topic, [first, second])
        other = await run.connected_adapter()
        await other.publish(topic, [first])
        await collector.inbox.wait_count(2)
        await asyncio.sleep(QUIET)  # a copy that got through would arrive within this
        ids = [d.envelope.id if d.envelope else d.decode_error for d in collector.inbox.items]
        assert sorted(ids, key=str) == sorted([first.id, second.id]), (
            f"expected each id once within the {window:g}s window, got {ids}"
        )
        for delivery in collector.inbox.items:
            await delivery.ack()
