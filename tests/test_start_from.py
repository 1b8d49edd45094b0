"""Where a new group starts: one rule, applied by the core for every adapter.

The subscription's explicit ``start_from`` wins; the URL's ``start_from`` sets the
default for subscriptions that give none; neither: ``latest``. Shown here on the
memory adapter through a bus, and on the rule itself
(:func:`eventbus.adapter.start_from_for`); ``integration_tests/test_settings_brokers.py``
shows it on the real brokers.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Literal

import pytest

from eventbus import EventBus, MemoryAdapter
from eventbus.adapter import start_from_for
from tests.bus_support import Collector, OrderPlaced, run

StartFrom = Literal["earliest", "latest"]


@pytest.mark.parametrize(
    ("asked", "url", "starts"),
    [
        (None, None, "latest"),
        (None, "earliest", "earliest"),
        (None, "latest", "latest"),
        ("latest", "earliest", "latest"),
        ("earliest", "latest", "earliest"),
        ("earliest", None, "earliest"),
    ],
)
def test_the_subscription_wins_then_the_url_then_latest(
    asked: StartFrom | None, url: StartFrom | None, starts: StartFrom
) -> None:
    query = f"?start_from={url}" if url else ""
    adapter = MemoryAdapter(f"memory://{uuid.uuid4().hex}{query}")
    assert adapter.start_from == url
    assert start_from_for(asked, adapter) == starts


@pytest.mark.parametrize(
    ("asked", "url", "sees_the_old_event"),
    [
        (None, "earliest", True),
        ("latest", "earliest", False),
        ("earliest", "latest", True),
        (None, None, False),
    ],
)
def test_a_new_group_on_a_bus_starts_where_the_rule_says(
    asked: StartFrom | None, url: StartFrom | None, sees_the_old_event: bool
) -> None:
    async def scenario() -> None:
        name = uuid.uuid4().hex
        query = f"?start_from={url}" if url else ""
        early = EventBus(f"memory://{name}")
        async with early:
            await early.publish(OrderPlaced(order_id="before"))
        bus = EventBus(f"memory://{name}{query}")
        inbox: Collector[OrderPlaced] = Collector()

        @bus.subscribe(OrderPlaced, group="late", start_from=asked)  # None: the default
        async def collect(event: OrderPlaced) -> None:
            inbox.add(event)

        async with bus:
            await bus.publish(OrderPlaced(order_id="after"))
            seen = await inbox.wait_count(2 if sees_the_old_event else 1)
            await asyncio.sleep(0.05)  # room for a wrong extra delivery to show
        assert [e.order_id for e in inbox.items] == (
            ["before", "after"] if sees_the_old_event else ["after"]
        ), seen

    run(scenario)
