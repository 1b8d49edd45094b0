"""Consumer groups: fan-out across groups, competition within one, dispatch by type."""

from __future__ import annotations

import asyncio

from eventbus.testing.collector import Collector
from eventbus.testing.conformance._events import Ping, Pong, on_topic, record_seqs
from eventbus.testing.conformance._support import QUIET, Capability, Case, case, requires

GROUPS = "competing consumers within a group and fan-out across groups"


class GroupCases:
    """Each group gets every event; within a group each event is handled once."""

    @case(requires(Capability.fanout, "every group must receive every message"))
    async def test_consumer_groups_fan_out(self, run: Case) -> None:
        """Two groups subscribed to one topic each receive every message."""
        event_cls = on_topic(Ping, run.topic())
        inboxes: list[Collector[int]] = [Collector("group A"), Collector("group B")]
        for inbox in inboxes:
            await run.consumer(event_cls, record_seqs(inbox), group=run.group())
        count = run.count(20)
        await (await run.publisher()).publish_many([event_cls(seq=i) for i in range(count)])
        for inbox in inboxes:
            await inbox.wait_count(count)
            assert sorted(inbox.items) == list(range(count))

    @case(requires(Capability.consumer_groups, GROUPS))
    async def test_competing_consumers_split_exactly_once(self, run: Case) -> None:
        """Two consumers in the same group together handle each message exactly once
        (in the happy path: no failures, no restarts)."""
        event_cls = on_topic(Ping, run.topic())
        group = run.group()
        got: Collector[int] = Collector("both consumers")
        for _ in (1, 2):
            await run.consumer(event_cls, record_seqs(got), group=group)
        count = run.count(40)
        await (await run.publisher()).publish_many([event_cls(seq=i) for i in range(count)])
        await got.wait_count(count)
        await asyncio.sleep(QUIET)  # a duplicate would show up here
        seqs = sorted(got.items)
        assert seqs == list(range(count)), "messages lost or duplicated within one group"

    @case(requires(Capability.fanout, "two groups on one topic must both receive it"))
    async def test_multiple_handlers_by_type_and_group(self, run: Case) -> None:
        """Several types on one topic are dispatched to their own handler by type, and
        another group with a handler for only one type gets only that type."""
        topic = run.topic()
        ping_cls, pong_cls = on_topic(Ping, topic), on_topic(Pong, topic)
        pings: Collector[int] = Collector("group G pings")
        pongs: Collector[int] = Collector("group G pongs")
        other: Collector[int] = Collector("group H pings")
        bus_g, bus_h = run.bus(), run.bus()
        group_g = run.group()

        bus_g.subscribe(ping_cls, group=group_g)(record_seqs(pings))

        @bus_g.subscribe(pong_cls, group=group_g)
        async def on_pong(event: Pong) -> None:
            pongs.add(event.seq)

        bus_h.subscribe(ping_cls, group=run.group())(record_seqs(other))
        await bus_g.start()
        await bus_h.start()
        publisher = await run.publisher()
        await publisher.publish(ping_cls(seq=1))
        await publisher.publish(pong_cls(seq=2))
        await publisher.publish(ping_cls(seq=3))
        await pings.wait_count(2)
        await pongs.wait_count(1)
        await other.wait_count(2)
        await asyncio.sleep(QUIET)
        assert sorted(pings.items) == [1, 3]
        assert pongs.items == [2]
        assert sorted(other.items) == [1, 3]

    @case(requires(Capability.fanout, "two groups must each receive the messages"))
    async def test_stopping_one_subscriber_leaves_others(self, run: Case) -> None:
        """Stopping one service's bus does not disturb another group on the same topic."""
        event_cls = on_topic(Ping, run.topic())
        first: Collector[int] = Collector("stopped group")
        second: Collector[int] = Collector("running group")
        bus_a, bus_b = run.bus(), run.bus()

        bus_a.subscribe(event_cls, group=run.group())(record_seqs(first))
        bus_b.subscribe(event_cls, group=run.group())(record_seqs(second))
        await bus_a.start()
        await bus_b.start()
        publisher = await run.publisher()
        await publisher.publish(event_cls(seq=1))
        await first.wait_count(1)
        await second.wait_count(1)
        await bus_a.stop()
        count = run.count(10)
        await publisher.publish_many([event_cls(seq=i) for i in range(2, count + 2)])
        await second.wait_count(count + 1)
        assert sorted(second.items) == list(range(1, count + 2))
        assert first.items == [1]

    @case(
        requires(Capability.consumer_groups, GROUPS),
        requires(Capability.persistent, "messages must wait while the group has no consumer"),
    )
    async def test_continue_after_subscriber_close(self, run: Case) -> None:
        """When a group's consumer stops, messages published meanwhile go to the next
        consumer of the group: none lost, and none it had already handled repeated."""
        event_cls = on_topic(Ping, run.topic())
        group = run.group()
        count = run.count(10)
        inboxes: list[Collector[int]] = [Collector("first consumer"), Collector("second consumer")]
        buses = []
        for inbox in inboxes:
            bus = run.bus()
            bus.subscribe(event_cls, group=group)(record_seqs(inbox))
            buses.append(bus)
        publisher = await run.publisher()
        await buses[0].start()
        await publisher.publish_many([event_cls(seq=i) for i in range(count)])
        await inboxes[0].wait_count(count)
        await buses[0].stop()
        await publisher.publish_many([event_cls(seq=i) for i in range(count, 2 * count)])
        await buses[1].start()
        await inboxes[1].wait_count(count)
        assert sorted(inboxes[1].items) == list(range(count, 2 * count))
