"""The watchdog (watchdog.py): a hung handler is visible, a warning names the event while
it is still running."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import pytest

from eventbus import ConfigurationError, Envelope, EventBus


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "still running after" in r.getMessage()]


class _Reports(logging.Handler):
    """Sets ``enough`` once ``count`` slow-handler warnings were logged."""

    def __init__(self, count: int) -> None:
        super().__init__(logging.WARNING)
        self.count, self.seen = count, 0
        self.enough = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "still running after" in record.getMessage():
            self.seen += 1
            if self.seen >= self.count:
                self.enough.set()


@pytest.mark.parametrize("concurrency", [1, 2])
def test_a_handler_running_past_warn_after_is_reported_with_its_event(
    caplog: pytest.LogCaptureFixture, concurrency: int
) -> None:
    async def scenario() -> str:
        topic = f"t-{uuid.uuid4().hex[:8]}"
        bus = EventBus(f"memory://{uuid.uuid4()}", warn_after=0.2)
        started, release = asyncio.Event(), asyncio.Event()

        @bus.subscribe(topic, group="slow", concurrency=concurrency)
        async def handle(envelope: Envelope) -> None:
            if envelope.data == b'"hang"':
                started.set()
                await release.wait()

        reports = _Reports(2)  # reported, then again while it goes on
        logging.getLogger("eventbus.runner").addHandler(reports)
        try:
            async with bus:
                hung = Envelope.create(type="t", source="s", data=b'"hang"')
                await bus.adapter.publish(topic, [hung])
                await asyncio.wait_for(started.wait(), 5)
                await asyncio.wait_for(reports.enough.wait(), 5)
                release.set()
        finally:
            logging.getLogger("eventbus.runner").removeHandler(reports)
        return hung.id

    with caplog.at_level(logging.WARNING, logger="eventbus.runner"):
        event_id = asyncio.run(scenario())
    warning = _warnings(caplog)[0]
    text = warning.getMessage()
    assert event_id in text and "/slow" in text and "attempt 1" in text
    assert warning.__dict__["event_id"] == event_id


def test_a_quick_handler_is_never_reported_and_none_turns_the_watch_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario(warn_after: float | None) -> None:
        topic = f"t-{uuid.uuid4().hex[:8]}"
        bus = EventBus(f"memory://{uuid.uuid4()}", warn_after=warn_after)
        done = asyncio.Event()

        @bus.subscribe(topic, group="g")
        async def handle(envelope: Envelope) -> None:
            await asyncio.sleep(0.3 if warn_after is None else 0)
            done.set()

        async with bus:
            await bus.adapter.publish(topic, [Envelope.create(type="t", source="s")])
            await asyncio.wait_for(done.wait(), 5)
            await asyncio.sleep(0.3)

    with caplog.at_level(logging.WARNING, logger="eventbus.runner"):
        asyncio.run(scenario(0.1))
        asyncio.run(scenario(None))
    assert _warnings(caplog) == []


def test_warn_after_must_be_positive() -> None:
    with pytest.raises(ConfigurationError, match="warn_after"):
        EventBus("memory://", warn_after=0)


def test_a_run_that_began_while_the_loop_was_held_is_not_reported_early(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The first handler holds the loop (a blocking call) past warn_after; the second
    # begins right after it and finishes well within warn_after: only the first may
    # be reported, the second began when the first ended, not before.
    async def scenario() -> tuple[str, str]:
        topic = f"t-{uuid.uuid4().hex[:8]}"
        bus = EventBus(f"memory://{uuid.uuid4()}", warn_after=0.4)
        done = asyncio.Event()

        @bus.subscribe(topic, group="g")
        async def handle(envelope: Envelope) -> None:
            if envelope.data == b'"block"':
                time.sleep(0.6)  # noqa: ASYNC251 - holding the loop is the point
            else:
                await asyncio.sleep(0.25)
                done.set()

        async with bus:
            await asyncio.sleep(0.2)  # the watch has looked at least once
            first = Envelope.create(type="t", source="s", data=b'"block"')
            second = Envelope.create(type="t", source="s", data=b'"quick"')
            await bus.adapter.publish(topic, [first, second])
            await asyncio.wait_for(done.wait(), 5)
        return first.id, second.id

    with caplog.at_level(logging.WARNING, logger="eventbus.runner"):
        _, second = asyncio.run(scenario())
    assert [r for r in _warnings(caplog) if second in r.getMessage()] == []
