"""subscribe(..., batch=N): what the option accepts and refuses, and a batch handler
with contexts; the failure semantics are conformance cases (conformance/batches.py)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from eventbus import BatchItemFailed, ConfigurationError, Context, Event, EventBus
from eventbus.middleware.idempotency import MemoryIdempotencyStore


class Item(Event, type="test.batch.item", topic="test.batch.items"):
    n: int = 0


def url() -> str:
    return f"memory://{uuid.uuid4()}"


@pytest.mark.parametrize(
    ("targets", "options", "message"),
    [
        ((Item,), {"batch": 0}, "positive integer"),
        ((Item,), {"batch": True}, "positive integer"),
        ((Item,), {"batch_timeout": 1.0}, "only applies with batch"),
        ((Item,), {"batch": 5, "batch_timeout": 0}, "batch_timeout must be > 0"),
        (("some.topic",), {"batch": 5}, "exactly one event class"),
        ((Item, Item), {"batch": 5}, "exactly one event class"),
        ((Item,), {"batch": 5, "delivery": "at_most_once"}, "at_least_once"),
        ((Item,), {"batch": 5, "idempotency": MemoryIdempotencyStore()}, "idempotency"),
    ],
)
def test_batch_options_that_cannot_work_are_refused(
    targets: tuple[object, ...], options: dict[str, object], message: str
) -> None:
    bus = EventBus(url())
    with pytest.raises(ConfigurationError, match=message):
        bus.subscribe(*targets, **options)  # type: ignore[arg-type]


def test_a_batch_subscription_has_one_handler_and_refuses_the_bus_idempotency() -> None:
    bus = EventBus(url())

    @bus.subscribe(Item, group="g", batch=3)
    async def first(events: list[Item]) -> None: ...

    with pytest.raises(ConfigurationError, match="batch subscription"):

        @bus.subscribe(Item, group="g", batch=3)
        async def second(events: list[Item]) -> None: ...

    idempotent = EventBus(url(), idempotency=MemoryIdempotencyStore())

    @idempotent.subscribe(Item, group="g", batch=3)
    async def third(events: list[Item]) -> None: ...

    with pytest.raises(ConfigurationError, match="idempotency"):
        asyncio.run(idempotent.start())


def test_batch_handler_with_contexts_and_an_empty_item_failure() -> None:
    async def scenario() -> None:
        bus = EventBus(url())
        seen: list[tuple[list[int], list[int]]] = []
        done = asyncio.Event()

        @bus.subscribe(Item, group="g", batch=3, batch_timeout=0.05)
        async def handle(events: list[Item], contexts: list[Context]) -> None:
            seen.append(([e.n for e in events], [c.attempt for c in contexts]))
            if sum(len(s[0]) for s in seen) >= 3:
                done.set()
            raise BatchItemFailed([])  # names nothing: every event is handled

        async with bus:
            await bus.publish_many([Item(n=i) for i in range(3)])
            await asyncio.wait_for(done.wait(), 5)
            await asyncio.sleep(0.1)
        assert seen == [([0, 1, 2], [1, 1, 1])]

    asyncio.run(scenario())
