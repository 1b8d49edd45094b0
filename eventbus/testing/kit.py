"""``TestBus``: run your own bus in a test on a private in-memory broker, and assert.

::

    async with TestBus(create_bus()) as tb:          # or TestBus(module_level_bus)
        await tb.bus.publish(OrderPlaced(order_id="1"))
        await tb.drain()                              # every message settled, or fail
        assert tb.received(charge) == [OrderPlaced(order_id="1")]
        assert tb.published(PaymentCharged) == [PaymentCharged(order_id="1")]
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast, overload
from urllib.parse import urlsplit

from eventbus._sync_handlers import user_function
from eventbus.adapter import Adapter
from eventbus.bus import EventBus
from eventbus.context import Context
from eventbus.deadletters import DeadLetterRecord
from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError, EventBusError
from eventbus.events import Message
from eventbus.memory import MemoryAdapter, MemoryBroker
from eventbus.middleware.retry import RetryPolicy
from eventbus.spec import Handler, HandlerFn, SubscriptionSpec
from eventbus.testing.recorder import Recorder, RecordingAdapter

E = TypeVar("E", bound=Message)
AnyHandler = Callable[..., Awaitable[None]]
DEFAULT_DRAIN_TIMEOUT = 5.0
FAILED_STOP_TIMEOUT = 0.5
"""Seconds in-flight handlers get to finish when a TestBus block is left after a failure."""
_ORIGINAL = "_eventbus_test_original"


class DrainTimeoutError(EventBusError, TimeoutError):
    """``drain()`` ran out of time: the message says which messages are not settled."""


def without_delays(policy: RetryPolicy | None = None) -> RetryPolicy:
    """``policy`` (default: ``RetryPolicy()``) with the same attempts and exception
    filters but no waits between them: the one retry policy helper for tests.

    ::

        bus = create_bus(retry=without_delays(RetryPolicy(max_attempts=3,
                                                          in_process_attempts=3)))
    """
    return dataclasses.replace(
        policy or RetryPolicy(), initial_delay=0.0, max_delay=0.0, jitter=0.0
    )


@dataclass(frozen=True, slots=True)
class HandlerCall:
    """One run of a handler under a :class:`TestBus`.

    ``event`` is what the handler got (the typed event, or the envelope for an
    envelope handler); ``error`` what it raised, ``None`` when it returned.
    """

    handler: HandlerFn
    event: Any
    envelope: Envelope
    topic: str
    group: str
    attempt: int
    error: BaseException | None = None


class TestBus:
    """Runs ``buses`` on one private in-memory broker for the length of an ``async with``.

    On entry each bus's adapter is swapped for a fresh ``memory://`` broker of its
    own (nothing leaks between tests, nothing of the real URL is contacted), its
    retry policies lose their delays (same attempts; ``keep_retry_delays=True``
    keeps them) and the bus is started; on exit it is stopped and everything is
    put back, so a module-level bus can be used by test after test. Several buses
    share the one broker, like services in one system.

    Read what happened with :meth:`received`, :meth:`calls`, :meth:`retried`,
    :meth:`published` and :meth:`dead_lettered`, after :meth:`drain`.

    Leaving the block after it raised, or after a :meth:`drain` timed out, gives
    in-flight handlers half a second instead of the bus's ``shutdown_timeout``.
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(
        self,
        *buses: EventBus,
        timeout: float = DEFAULT_DRAIN_TIMEOUT,
        keep_retry_delays: bool = False,
    ) -> None:
        if not buses:
            raise ConfigurationError("TestBus() needs at least one EventBus")
        self.buses = buses
        self.timeout = timeout
        self.keep_retry_delays = keep_retry_delays
        self.url = f"memory://eventbus-test-{uuid.uuid4()}"
        self.recorder = Recorder()
        self._calls: list[HandlerCall] = []
        self._restore: list[Callable[[], None]] = []
        self._started: list[EventBus] = []
        self._drain_timed_out = False

    @property
    def bus(self) -> EventBus:
        """The first (often only) bus under test."""
        return self.buses[0]

    async def __aenter__(self) -> TestBus:
        try:
            for bus in self.buses:
                self._patch(bus)
            for bus in self.buses:
                await bus.start()
                self._started.append(bus)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # After a failure (the block raised, or a drain timed out) handlers may be stuck:
        # waiting each bus's shutdown_timeout for them only delays the failure report.
        hurry = exc_info[0] is not None or self._drain_timed_out
        try:
            for bus in reversed(self._started):
                await bus.stop(timeout=FAILED_STOP_TIMEOUT if hurry else None)
        finally:
            self._started.clear()
            for undo in reversed(self._restore):
                undo()
            self._restore.clear()
            MemoryBroker.discard(urlsplit(self.url).netloc)

    def _patch(self, bus: EventBus) -> None:
        if _is_started(bus):
            raise ConfigurationError(
                "TestBus got a bus that is already started; give it the bus before start() "
                "(TestBus starts and stops it)"
            )
        original_adapter, original_retry = bus.adapter, bus.retry
        bus.adapter = self._adapter_like(original_adapter)
        if not self.keep_retry_delays:
            bus.retry = without_delays(bus.retry)

        def undo_bus() -> None:
            bus.adapter, bus.retry = original_adapter, original_retry

        self._restore.append(undo_bus)
        for spec in bus.subscriptions:
            self._patch_spec(spec)

    def _adapter_like(self, original: Adapter) -> RecordingAdapter:
        # Keep the memory options (structured mode, size limit) a test may rely on.
        query = urlsplit(original.url).query if isinstance(original, MemoryAdapter) else ""
        return RecordingAdapter(self.url + (f"?{query}" if query else ""), self.recorder)

    def _patch_spec(self, spec: SubscriptionSpec) -> None:
        original_retry, original_handlers = spec.retry, dict(spec.handlers)
        original_catch_all = spec.catch_all
        if spec.retry is not None and not self.keep_retry_delays:
            spec.retry = without_delays(spec.retry)
        for name, handler in original_handlers.items():
            spec.handlers[name] = self._recording(handler)
        if original_catch_all is not None:
            spec.catch_all = self._recording(original_catch_all)

        def undo_spec() -> None:
            spec.retry, spec.catch_all = original_retry, original_catch_all
            spec.handlers.clear()
            spec.handlers.update(original_handlers)

        self._restore.append(undo_spec)

    def _recording(self, handler: Handler) -> Handler:
        fn, wants_context, calls = handler.fn, handler.wants_context, self._calls
        user_fn = user_function(fn)  # a sync handler's fn is the wrapper running it

        def note(arg: Any, ctx: Any, error: BaseException | None) -> None:
            # A batch handler gets a list of events and a list of contexts: one call each.
            pairs = zip(arg, ctx, strict=True) if isinstance(ctx, list) else [(arg, ctx)]
            calls.extend(
                HandlerCall(user_fn, event, c.envelope, c.topic, c.group, c.attempt, error)
                for event, c in pairs
            )

        async def record(arg: Any, ctx: Any) -> None:
            try:
                if wants_context:
                    await fn(arg, ctx)
                else:
                    await fn(arg)
            except BaseException as exc:
                note(arg, ctx, exc)
                raise
            note(arg, ctx, None)

        setattr(record, _ORIGINAL, fn)
        return dataclasses.replace(handler, fn=record, wants_context=True)

    # -- waiting ------------------------------------------------------------------------

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every message published so far, and every message their handlers
        published in turn, is settled by every group subscribed to its topic: handled
        and acknowledged, or dead-lettered, retries and redeliveries included.

        Raises :class:`DrainTimeoutError` after ``timeout`` seconds (default: the
        TestBus's) naming each message still pending: topic, group, event id.
        """
        limit = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        recorder = self.recorder
        while recorder.pending:
            recorder.changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                self._drain_timed_out = True
                raise DrainTimeoutError(await self._pending_report(limit))
            # Woken by the next settlement or publish, or by the deadline (no
            # cancellation involved, so nothing of the caller's task is touched).
            timer = loop.call_later(remaining, recorder.changed.set)
            try:
                await recorder.changed.wait()
            finally:
                timer.cancel()

    async def _pending_report(self, limit: float) -> str:
        items = list(self.recorder.pending.values())
        lines = [item.describe() for item in items[:20]]
        if len(items) > 20:
            lines.append(f"... and {len(items) - 20} more")
        for bus in self.buses:
            health = await bus.health()
            if not health.ok:
                lines.append(f"bus {bus.source!r}: {health.detail}")
        return (
            f"drain() gave up after {limit:.1f}s with {len(items)} message(s) not settled "
            "(a handler still running or hung, a redelivery not yet due, a dead "
            "subscription):\n  " + "\n  ".join(lines)
        )

    # -- what happened ------------------------------------------------------------------

    def calls(self, handler: AnyHandler | None = None) -> list[HandlerCall]:
        """Every run of ``handler`` (of every handler when ``None``), in order, retries
        included, each with its attempt number and error."""
        return [c for c in self._calls if handler is None or c.handler is handler]

    @overload
    def received(self, handler: Callable[[E], Awaitable[None]]) -> list[E]: ...

    @overload
    def received(self, handler: Callable[[E, Context], Awaitable[None]]) -> list[E]: ...

    def received(self, handler: AnyHandler) -> list[Any]:
        """What ``handler`` was called with, one entry per run (a retried event appears
        once per attempt)::

            assert tb.received(charge) == [OrderPlaced(order_id="1")]
        """
        return [call.event for call in self.calls(handler)]

    def retried(self, handler: AnyHandler | None = None) -> list[HandlerCall]:
        """The runs that were retries (attempt 2 and later), of ``handler`` or of all."""
        return [call for call in self.calls(handler) if call.attempt > 1]

    @overload
    def published(self, of: type[E]) -> list[E]: ...

    @overload
    def published(self, of: None = None) -> list[Message]: ...

    def published(self, of: type[Message] | None = None) -> list[Any]:
        """The events and commands published (by the test and by handlers), in order,
        decoded; only those of class ``of`` when given. Dead letters are not included."""
        out: list[Any] = []
        for envelope in self.published_envelopes():
            if of is not None and envelope.type != of.event_type():
                continue
            cls = of or self.bus.registry.get(envelope.type)
            if cls is not None:
                out.append(self.bus.registry.decode(envelope, cls))
        return out

    def published_envelopes(self, topic: str | None = None) -> list[Envelope]:
        """The envelopes published (to ``topic`` when given), in order."""
        return [e for t, e in self.recorder.published if topic is None or t == topic]

    def dead_lettered(
        self, of: type[Message] | AnyHandler | str | None = None
    ) -> list[DeadLetterRecord]:
        """The dead letters written so far, each with its reason, exception, attempts.

        ``of`` narrows them: an event class (its type), a handler (the groups it is
        subscribed in) or a topic name (the original topic).
        """
        records = [DeadLetterRecord.from_envelope(e) for _, e in self.recorder.dead_letters]
        if of is None:
            return records
        if isinstance(of, str):
            return [r for r in records if r.topic == of]
        if isinstance(of, type) and issubclass(of, Message):
            kind = of.event_type()
            return [r for r in records if r.envelope.type == kind]
        return [r for r in records if self._handles(cast(AnyHandler, of), r)]

    def _handles(self, fn: AnyHandler, record: DeadLetterRecord) -> bool:
        for bus in self.buses:
            for spec in bus.subscriptions:
                if (spec.topic, spec.group) != (record.topic, record.group):
                    continue
                handler = spec.handlers.get(record.envelope.type) or spec.catch_all
                if handler is not None and _original(handler) is fn:
                    return True
        return False


def _is_started(bus: EventBus) -> bool:
    return bool(getattr(bus, "_started", False))


def _original(handler: Handler) -> HandlerFn:
    # While a TestBus runs, handlers are wrapped; the wrapper names the user's function.
    original: HandlerFn = getattr(handler.fn, _ORIGINAL, handler.fn)
    return user_function(original)
