"""What a subscription may ask of a broker, and delivery to one group.

- ``delivery=None`` (the default) takes the broker's strongest guarantee and says
  which in ``health()``; an explicit ``delivery="at_least_once"`` is honoured
  where the broker redelivers and refused at ``subscribe()`` elsewhere, with an
  error naming the topic, the broker and what to use instead.
- On a broker without consumer groups a second live member of a group is refused
  when it starts (its members could not compete).
- :meth:`~eventbus.adapter.Adapter.publish_to_group` reaches that group alone.
"""

from __future__ import annotations

import asyncio

import pytest

from eventbus.bus import EventBus
from eventbus.errors import GuaranteeUnavailableError
from eventbus.testing.collector import Collector
from eventbus.testing.conformance._events import Ping, on_topic, record_seqs
from eventbus.testing.conformance._support import QUIET, Capability, Case, case, requires


class ContractCases:
    """Guarantees asked for explicitly are given or refused up front; group routes."""

    @case()
    async def test_default_delivery_is_the_strongest(self, run: Case) -> None:
        """Without ``delivery=``, a subscription runs and reports the broker's strongest
        guarantee: at-least-once where it redelivers, at-most-once elsewhere."""
        event_cls = on_topic(Ping, run.topic())
        got: Collector[int] = Collector("handler")
        bus = await run.consumer(event_cls, record_seqs(got), group=run.group())
        await (await run.publisher()).publish(event_cls(seq=1))
        await got.wait_count(1)
        expected = "at_least_once" if run.caps.redelivery else "at_most_once"
        (spec,) = bus.subscriptions
        assert spec.delivery is None and spec.guarantee == expected
        (health,) = (await bus.health()).subscriptions
        assert health.delivery == expected, f"health says {health.delivery!r}"

    @case(requires(Capability.redelivery, "it must honour an explicit at-least-once"))
    async def test_explicit_at_least_once_accepted(self, run: Case) -> None:
        """``delivery="at_least_once"`` starts on a broker that redelivers, and a handler
        failing once gets its message again."""
        event_cls = on_topic(Ping, run.topic())
        attempts: Collector[int] = Collector("handler")
        bus = run.bus()

        @bus.subscribe(event_cls, group=run.group(), delivery="at_least_once")
        async def handle(event: Ping) -> None:
            attempts.add(event.seq)
            if len(attempts) == 1:
                raise RuntimeError("the first run fails; the message must come back")

        assert await _started_delivery(run, bus, event_cls(seq=5), attempts, 2) == "at_least_once"

    @case(requires(Capability.no_redelivery, "it must refuse an explicit at-least-once"))
    async def test_explicit_at_least_once_refused_at_start(self, run: Case) -> None:
        """``delivery="at_least_once"`` on a broker that never redelivers raises
        GuaranteeUnavailableError at ``subscribe()``, before anything is consumed,
        naming the topic and what to use instead; nothing is registered, and the
        same subscription without ``delivery=`` runs (at-most-once)."""
        event_cls = on_topic(Ping, run.topic())
        topic, group = event_cls.default_topic(), run.group()
        got: Collector[int] = Collector("handler")
        bus = run.bus()
        with pytest.raises(GuaranteeUnavailableError) as raised:
            bus.subscribe(event_cls, group=group, delivery="at_least_once")(record_seqs(got))
        error = raised.value
        assert error.topic == topic and error.instead, vars(error)
        assert topic in str(error) and error.instead in str(error), str(error)
        assert error.broker and "at_least_once" in str(error), str(error)
        assert not bus.subscriptions, "the refused subscription was registered"
        bus.subscribe(event_cls, group=group)(record_seqs(got))
        assert await _started_delivery(run, bus, event_cls(seq=3), got, 1) == "at_most_once"

    @case(requires(Capability.no_consumer_groups, "it must refuse competing consumers"))
    async def test_second_member_of_a_group_refused_at_start(self, run: Case) -> None:
        """A second live member of a group fails to start with GuaranteeUnavailableError
        (the broker would give it every message rather than share them); the first
        keeps running, and another group on the topic starts (fan-out)."""
        event_cls = on_topic(Ping, run.topic())
        group = run.group()
        first: Collector[int] = Collector("first member")
        other: Collector[int] = Collector("another group")
        await run.consumer(event_cls, record_seqs(first), group=group)
        two = run.bus()
        two.subscribe(event_cls, group=group)(record_seqs(Collector("second member")))
        with pytest.raises(GuaranteeUnavailableError) as raised:
            await two.start()
        assert group in str(raised.value) and raised.value.instead in str(raised.value)
        await run.consumer(event_cls, record_seqs(other), group=run.group())
        await (await run.publisher()).publish(event_cls(seq=9))
        await first.wait_count(1)
        await other.wait_count(1)

    @case(requires(Capability.group_route, "the case delivers to one group of a topic"))
    async def test_publish_to_group_reaches_that_group_only(self, run: Case) -> None:
        """``publish_to_group(topic, G, ...)`` (dead-letter replay to the failed group)
        is handled by group G and by none of the topic's other groups."""
        event_cls = on_topic(Ping, run.topic())
        topic, chosen, bystander = event_cls.default_topic(), run.group(), run.group()
        got = {chosen: Collector[int](chosen), bystander: Collector[int](bystander)}
        for group, inbox in got.items():
            await run.consumer(event_cls, record_seqs(inbox), group=group)
        publisher = await run.publisher()
        await publisher.publish(event_cls(seq=1))
        for inbox in got.values():
            await inbox.wait_count(1)
        adapter = await run.connected_adapter()
        await adapter.publish_to_group(topic, chosen, [publisher.envelope_for(event_cls(seq=2))])
        await got[chosen].wait(lambda seqs: 2 in seqs, "the message sent to this group")
        await asyncio.sleep(3 * QUIET)  # a leak to the other group would arrive by now
        assert got[bystander].items == [1], f"the other group got {got[bystander].items}"
        assert sorted(got[chosen].items) == [1, 2], f"the chosen group got {got[chosen].items}"


async def _started_delivery(
    run: Case, bus: EventBus, event: Ping, runs: Collector[int], count: int
) -> str:
    """Start ``bus``, publish ``event`` and wait for ``count`` handler runs: the delivery
    guarantee its one subscription's health reports then."""
    await bus.start()
    await (await run.publisher()).publish(event)
    await runs.wait_count(count)
    (health,) = (await bus.health()).subscriptions
    return health.delivery
