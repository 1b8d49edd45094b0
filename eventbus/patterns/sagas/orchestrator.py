"""Orchestrated sagas: one coordinator runs the steps, and undoes them when one fails.

(Over 400 lines on purpose: one coordinator whose step, timeout and compensation paths
share its state and are read together.)

::

    saga = SagaDefinition("order", [
        Step("charge", action=send_charge, compensation=send_refund, timeout=30),
        Step("reserve", action=send_reserve, compensation=send_release, timeout=30),
    ])
    orchestrator = SagaOrchestrator(saga, store, bus)
    await orchestrator.start("order-1", {"amount": 42})
    ...  # a reply arrives
    await orchestrator.step_succeeded("order-1", "charge")

A step with a ``timeout`` waits for :meth:`~SagaOrchestrator.step_succeeded` or
:meth:`~SagaOrchestrator.step_failed`; its deadline is stored with the saga, so
:meth:`~SagaOrchestrator.tick` (run it periodically, or :meth:`~SagaOrchestrator.run`)
times it out even after a restart. A step without one is done when its action returns.

On failure the steps that ran are compensated in reverse order, one unit of
work each: a step's compensation and the record that it was done commit
together, so a replay never applies it twice. A compensation that raises is
retried after a backoff, up to ``compensation_attempts``; then the saga is
*parked* (status ``"parked"``, logged at error, listed by :meth:`parked`) for a
person to look at, instead of looping.

What a change publishes commits with it (in the outbox, or in the saga's own
``outgoing`` messages, see :mod:`~eventbus.patterns.sagas.publishing`); the next
change waits until those messages reached the broker, so a compensation counts
as done only once what it sent went out. A broker outage delays it (retried by
:meth:`~SagaOrchestrator.tick`), never parks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any

from eventbus.backoff import Backoff
from eventbus.bus import EventBus
from eventbus.errors import is_permanent_refusal
from eventbus.patterns.sagas.definition import SagaContext, SagaDefinition, StepAction
from eventbus.patterns.sagas.publishing import SagaPublisher, check_outbox, deliver
from eventbus.patterns.sagas.state import (
    SagaAlreadyExistsError,
    SagaConcurrencyError,
    SagaNotFoundError,
    SagaPublishError,
    SagaSession,
    SagaState,
    SagaStore,
)

logger = logging.getLogger("eventbus.saga")


class _ActionFailedError(Exception):
    def __init__(self, step: str, error: BaseException) -> None:
        super().__init__(f"step {step!r} failed: {type(error).__name__}: {error}")
        self.step = step


Change = Callable[[SagaSession, SagaState, SagaPublisher], Awaitable[bool]]


_COMPENSATION_BACKOFF = Backoff(initial=1.0, max_delay=60.0)


@dataclass(eq=False, repr=False)
class SagaOrchestrator:
    """Runs sagas of one :class:`SagaDefinition` on a :class:`SagaStore`.

    Several instances may share a store: creation is guarded by the store's unique
    id, every change by the saga's version (a loser reloads and decides again).
    """

    definition: SagaDefinition
    store: SagaStore
    bus: EventBus
    _: KW_ONLY
    transactional_publish: bool = False
    compensation_attempts: int = 5
    compensation_backoff: Backoff | None = None  # None: _COMPENSATION_BACKOFF
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if self.transactional_publish:
            check_outbox(self.definition.saga_type, self.store, self.bus)
        if self.compensation_backoff is None:
            self.compensation_backoff = _COMPENSATION_BACKOFF

    # -- the saga's life ---------------------------------------------------------------

    async def start(self, saga_id: str, data: Mapping[str, Any] | None = None) -> SagaState:
        """Create the saga and run its first step(s); returns its state.

        When another instance created ``saga_id`` first, nothing runs here and the
        winner's saga is returned: starting twice is safe.
        """
        state = SagaState(saga_id, self.definition.saga_type, dict(data or {}))
        publisher = self._publisher(state)
        try:
            async with self.store.unit_of_work() as session:
                if await session.load(saga_id) is not None:
                    raise SagaAlreadyExistsError(saga_id)
                await self._advance(session, state, publisher)
                await session.insert(state)
        except SagaAlreadyExistsError:
            publisher.discard()
            logger.info("saga %s already exists; using it", saga_id)
            return await self._get(saga_id)
        except _ActionFailedError as exc:
            publisher.discard()
            # Nothing of that unit of work happened: the saga is recorded as failed.
            state = SagaState(
                saga_id,
                self.definition.saga_type,
                dict(data or {}),
                status="compensating",
                reason=str(exc),
            )
            try:
                async with self.store.unit_of_work() as session:
                    await session.insert(state)
            except SagaAlreadyExistsError:
                return await self._get(saga_id)
            logger.warning("saga %s failed to start: %s", saga_id, exc)
            await self._compensate(saga_id)
            return await self._get(saga_id)
        return await self._deliver(saga_id, publisher.held) or state

    async def step_succeeded(
        self, saga_id: str, step: str, data: Mapping[str, Any] | None = None
    ) -> SagaState:
        """The reply for ``step`` came back good: merge ``data``, run the next step(s).

        A reply for a step the saga is not waiting on (a duplicate, or one after a
        timeout) is ignored.
        """

        async def change(session: SagaSession, state: SagaState, pub: SagaPublisher) -> bool:
            if not self._waiting_on(state, step):
                return False
            state.data.update(data or {})
            state.step += 1
            state.deadline = None
            await self._advance(session, state, pub)
            await session.update(state)
            return True

        try:
            return await self._change(saga_id, change)
        except _ActionFailedError as exc:
            # ``step`` succeeded, the next one's action failed: undo ``step`` and before.
            return await self._begin_compensation(
                saga_id, str(exc), include_current=True, expected_step=step
            )

    async def step_failed(self, saga_id: str, step: str, reason: str) -> SagaState:
        """The reply for ``step`` says it failed (and did nothing): undo the steps before it."""
        return await self._begin_compensation(
            saga_id, f"step {step!r} failed: {reason}", include_current=False, expected_step=step
        )

    async def tick(self) -> None:
        """Time out overdue steps, retry due compensations and send the messages of
        committed changes that could not be sent then (run it periodically).

        A saga that fails here is logged and tried again on a later tick; it does not
        keep the others from their turn.
        """
        now = self.clock()
        mine = self.definition.saga_type
        for saga_id in await self.store.overdue(now, saga_type=mine):
            state = await self.get(saga_id)
            if state is None or state.status != "running":
                continue
            step = self.definition.steps[state.step].name
            with self._logged(saga_id, "timing out"):
                await self._begin_compensation(
                    saga_id,
                    f"step {step!r} timed out",
                    include_current=True,
                    expected_step=step,
                    overdue_at=now,
                )
        for saga_id in await self.store.retry_due(now, saga_type=mine):
            with self._logged(saga_id, "retrying"):
                await self._compensate(saga_id)

    async def run(self, interval: float = 1.0) -> None:
        """Call :meth:`tick` every ``interval`` seconds until cancelled; errors are logged."""
        while True:
            try:
                await self.tick()
            except Exception:
                logger.exception(
                    "saga %s: timeout/retry pass failed; trying again in %.1fs",
                    self.definition.saga_type,
                    interval,
                )
            await asyncio.sleep(interval)

    async def parked(self) -> list[SagaState]:
        """Sagas whose compensation kept failing: they wait for :meth:`resume`."""
        return await self.store.by_status("parked", saga_type=self.definition.saga_type)

    async def resume(self, saga_id: str) -> SagaState:
        """Retry a parked saga's compensation (after a person fixed the cause)."""

        async def change(session: SagaSession, state: SagaState, pub: SagaPublisher) -> bool:
            if state.status != "parked":
                return False
            state.status, state.attempts, state.retry_at = "compensating", 0, None
            await session.update(state)
            return True

        await self._change(saga_id, change)
        return await self._compensate(saga_id)

    async def get(self, saga_id: str) -> SagaState | None:
        """The saga's stored state, or ``None`` (also when ``saga_id`` is a saga of
        another type in the same store)."""
        state = await self.store.get(saga_id)
        return state if state is not None and state.saga_type == self.definition.saga_type else None

    # -- internals ---------------------------------------------------------------------

    def _publisher(self, state: SagaState | None = None) -> SagaPublisher:
        return SagaPublisher(self.bus, self.transactional_publish, state)

    @contextlib.contextmanager
    def _logged(self, saga_id: str, doing: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            logger.warning(
                "saga %s: %s it failed (%s: %s); the next tick tries again",
                saga_id,
                doing,
                type(exc).__name__,
                exc,
            )

    async def _deliver(self, saga_id: str, outgoing: list[dict[str, str]]) -> SagaState | None:
        return await deliver(self.bus, self.store, self.definition.saga_type, saga_id, outgoing)

    def _waiting_on(self, state: SagaState, step: str) -> bool:
        steps = self.definition.steps
        return (
            state.status == "running" and state.step < len(steps) and steps[state.step].name == step
        )

    async def _get(self, saga_id: str) -> SagaState:
        return self._own(saga_id, await self.store.get(saga_id))

    def _own(self, saga_id: str, state: SagaState | None) -> SagaState:
        """``state`` if it is a saga of this orchestrator's type; else SagaNotFoundError.

        Saga ids are unique across the types sharing a store: applying this
        definition's steps to another type's saga would run the wrong compensations.
        """
        mine = self.definition.saga_type
        if state is None:
            raise SagaNotFoundError(f"no saga {saga_id!r} of type {mine!r}")
        if state.saga_type != mine:
            raise SagaNotFoundError(
                f"no saga {saga_id!r} of type {mine!r}: that id is a saga of type "
                f"{state.saga_type!r} in the same store; use its own orchestrator, or "
                "another id (ids are unique across the saga types of one store)"
            )
        return state

    async def _change(
        self, saga_id: str, change: Change, *, send_pending: bool = True
    ) -> SagaState:
        """Load, change and save the saga in one unit of work; on a version conflict
        (another instance saved first) reload and decide again.

        Messages an earlier change left unsent go out first: a change is made only
        once what came before it reached the broker (``send_pending=False`` skips
        that, for the record of a failure itself).
        """
        for _ in range(10):
            publisher = self._publisher()
            pending: list[dict[str, str]] = []
            try:
                async with self.store.unit_of_work() as session:
                    state = self._own(saga_id, await session.load(saga_id))
                    if send_pending and state.outgoing:
                        pending, changed = list(state.outgoing), False
                    else:
                        publisher.state = state
                        changed = await change(session, state, publisher)
            except SagaConcurrencyError:
                publisher.discard()
                logger.debug("saga %s changed concurrently; reloading", saga_id)
                continue
            except BaseException:
                publisher.discard()
                raise
            if pending:
                await self._deliver(saga_id, pending)
                continue  # and decide on the saga as it is now
            if not changed:
                logger.debug("saga %s: nothing to do (status %s)", saga_id, state.status)
            return await self._deliver(saga_id, publisher.held) or state
        raise SagaConcurrencyError(f"saga {saga_id!r} kept changing under this orchestrator")

    async def _advance(
        self, session: SagaSession, state: SagaState, publisher: SagaPublisher
    ) -> None:
        """Run steps from ``state.step`` until one waits for a reply or all are done."""
        steps = self.definition.steps
        while state.step < len(steps):
            step = steps[state.step]
            await self._call(step.action, state, step.name, session, publisher, action=True)
            if step.timeout is not None:
                state.deadline = self.clock() + step.timeout
                return
            state.step += 1
        state.status, state.deadline = "completed", None
        if self.definition.on_completed is not None:
            await self._call(
                self.definition.on_completed, state, "on_completed", session, publisher, action=True
            )
        logger.info("saga %s completed", state.saga_id)

    async def _call(
        self,
        fn: StepAction,
        state: SagaState,
        step: str,
        session: SagaSession,
        publisher: SagaPublisher,
        *,
        action: bool,
    ) -> None:
        try:
            await fn(SagaContext(state, step, session, publisher))
        except (SagaConcurrencyError, SagaAlreadyExistsError):
            raise
        except Exception as exc:
            if action:
                raise _ActionFailedError(step, exc) from exc
            raise

    async def _begin_compensation(
        self,
        saga_id: str,
        reason: str,
        *,
        include_current: bool,
        expected_step: str | None,
        overdue_at: float | None = None,
    ) -> SagaState:
        async def change(session: SagaSession, state: SagaState, pub: SagaPublisher) -> bool:
            if state.status != "running":
                return False  # already ending (a duplicate failure, or a late reply)
            steps = self.definition.steps
            if expected_step is not None and not self._waiting_on(state, expected_step):
                return False
            if overdue_at is not None and (state.deadline is None or state.deadline > overdue_at):
                return False  # its reply arrived meanwhile
            ran = [s.name for s in steps[: state.step + (1 if include_current else 0)]]
            state.to_compensate = [
                name
                for name in reversed(ran)
                if self.definition.by_name[name].compensation is not None
            ]
            state.status, state.deadline, state.reason = "compensating", None, reason
            state.attempts, state.retry_at = 0, None
            await session.update(state)
            logger.warning("saga %s compensating %s: %s", saga_id, state.to_compensate, reason)
            return True

        await self._change(saga_id, change)
        return await self._compensate(saga_id)

    async def _compensate(self, saga_id: str) -> SagaState:
        """Undo the queued steps one unit of work each, until done, failing or parked."""
        while True:
            done = False

            async def one(session: SagaSession, state: SagaState, pub: SagaPublisher) -> bool:
                nonlocal done
                if state.status != "compensating":
                    done = True
                    return False
                if not state.to_compensate:
                    state.status, state.retry_at = "compensated", None
                    if self.definition.on_compensated is not None:
                        await self._call(
                            self.definition.on_compensated,
                            state,
                            "on_compensated",
                            session,
                            pub,
                            action=False,
                        )
                    await session.update(state)
                    logger.info("saga %s compensated (%s)", saga_id, state.reason)
                    done = True
                    return True
                name = state.to_compensate[0]
                compensation = self.definition.by_name[name].compensation
                if name not in state.compensated and compensation is not None:
                    await self._call(compensation, state, name, session, pub, action=False)
                    state.compensated.append(name)
                state.to_compensate.pop(0)
                state.attempts, state.retry_at = 0, None
                await session.update(state)
                logger.info("saga %s: step %r compensated", saga_id, name)
                return True

            try:
                state = await self._change(saga_id, one)
            except (SagaConcurrencyError, SagaNotFoundError):
                raise
            except Exception as exc:
                return await self._compensation_failed(saga_id, exc)
            if done:
                return state

    async def _compensation_failed(self, saga_id: str, error: Exception) -> SagaState:
        async def change(session: SagaSession, state: SagaState, pub: SagaPublisher) -> bool:
            if state.status != "compensating":
                return False
            step = state.to_compensate[0] if state.to_compensate else "on_compensated"
            state.attempts += 1
            # A broker that cannot be reached is not the compensation's fault: retried
            # with backoff for as long as it lasts, never a reason to park the saga. A
            # message the broker refuses for good is, like a failing compensation.
            cause = error.__cause__ if isinstance(error, SagaPublishError) else None
            unsent = cause is not None and not is_permanent_refusal(cause)
            what = (
                f"sending a compensation's messages failed: {type(cause).__name__}: {cause}"
                if cause is not None
                else f"compensation of step {step!r} failed: {type(error).__name__}: {error}"
            )
            if state.attempts >= self.compensation_attempts and not unsent:
                state.status, state.retry_at, state.reason = "parked", None, what
                logger.error(
                    "saga %s parked after %d attempts: %s; fix the cause, then "
                    "resume it (SagaOrchestrator.resume)",
                    saga_id,
                    state.attempts,
                    what,
                )
            else:
                state.retry_at = self.clock() + (
                    self.compensation_backoff or _COMPENSATION_BACKOFF
                ).delay(state.attempts)
                logger.warning(
                    "saga %s: %s (attempt %d of %d); retrying at %.3f",
                    saga_id,
                    what,
                    state.attempts,
                    self.compensation_attempts,
                    state.retry_at,
                )
            await session.update(state)
            return True

        return await self._change(saga_id, change, send_pending=False)

    # -- wiring replies from the bus ------------------------------------------------------

    def reply_handler(
        self,
        step: str,
        *,
        saga_id: Callable[[Any], str],
        succeeded: bool = True,
        data: Callable[[Any], Mapping[str, Any]] | None = None,
        reason: Callable[[Any], str] | None = None,
    ) -> Callable[[Any], Awaitable[None]]:
        """A handler to subscribe for a reply event of ``step``::

        bus.subscribe(PaymentCharged, group="order-saga")(
            orchestrator.reply_handler("charge", saga_id=lambda e: e.order_id))
        """

        async def handle(event: Any) -> None:
            if succeeded:
                await self.step_succeeded(
                    saga_id(event), step, data(event) if data is not None else None
                )
            else:
                why = reason(event) if reason is not None else type(event).__name__
                await self.step_failed(saga_id(event), step, why)

        return handle
