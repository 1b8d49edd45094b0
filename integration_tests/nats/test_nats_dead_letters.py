"""Dead letters on JetStream through an EventBus with handlers (issue #18, defect 2).

A dead letter is a new message: the DLQ stream's duplicate window must never take
it for a copy of an earlier letter of the same event, and a replay must never be
taken for a copy of the event's first publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from eventbus import Context, Event, EventBus
from eventbus.deadletters import DeadLetters
from eventbus.errors import TopicNotFoundError
from eventbus.middleware.retry import RetryPolicy
from integration_tests import harness
from integration_tests.nats.support import run

pytestmark = [pytest.mark.broker("nats"), pytest.mark.timeout(120)]


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await predicate():
        if loop.time() > end:
            raise AssertionError("timed out")
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("to_group", [None, False], ids=["to-group", "whole-topic"])
def test_replayed_event_failing_again_is_a_second_letter(
    nats_endpoint: harness.Endpoint, to_group: bool | None
) -> None:
    """Fail, dead-letter, replay (to the group, or to the whole topic: a plain
    publish of the same event id within the duplicate window), fail again: the
    handler runs twice and the second failure is a second pending letter."""
    topic = f"nats.dlq.again.{uuid.uuid4().hex[:8]}"

    class Charge(Event, type=f"test.{topic}", topic=topic):
        order_id: str

    async def scenario() -> None:
        bus = EventBus.from_url(
            f"nats://{nats_endpoint.host}:{nats_endpoint.port}",
            source="t",
            retry=RetryPolicy(max_attempts=1),
        )
        runs: list[int] = []

        @bus.subscribe(Charge, group="billing")
        async def charge(event: Charge, ctx: Context) -> None:
            runs.append(ctx.attempt)
            raise RuntimeError(f"card declined (run {len(runs)})")

        async with bus:
            dead = DeadLetters(bus.adapter)
            sent = await bus.publish(Charge(order_id="42"))

            async def pending() -> list[Any]:
                with contextlib.suppress(TopicNotFoundError):
                    return [x for x in await dead.list(topic, "billing") if x.state == "pending"]
                return []

            async def one_pending() -> bool:
                return len(await pending()) == 1

            await until(one_pending)
            assert await dead.replay(topic, "billing", to_group=to_group) == 1
            await until(lambda: _ran(runs, 2))
            await until(one_pending)
            shown = await dead.show(topic, "billing", sent.id)
            left = await pending()
        assert len(runs) == 2, runs
        assert [x.state for x in shown] == ["replayed", "pending"], shown
        assert [x.envelope.id for x in left] == [sent.id]

    run(scenario())


async def _ran(runs: list[int], n: int) -> bool:
    return len(runs) >= n
