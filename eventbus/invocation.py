"""How a runner calls its handlers: the invocation part of :class:`~eventbus.runner.Runner`.

The innermost step of the chain picks the handler by event type, decodes the event
and counts the run. Around it, the middleware chain runs in one of two ways:

- *composed*: one coroutine per layer (:func:`~eventbus.middleware.base.compose`);
- *fused*, when every layer (after a leading ``correlation``) declares
  ``acts_only_on_failure`` (the default chain: dead-letter, retry): the runner calls
  the handler directly, and only a failure goes to the layers' ``recover`` steps,
  innermost first, exactly as their ``__call__`` would have passed it on. The
  layers' classes are never imported here: only what they declare is read
  (:mod:`eventbus.middleware.base`);
- *fused around a guard*, when one layer besides those ``guards`` with plain calls
  (idempotency over the memory store): its ``enter``, the handler, the failure-only
  layers' ``recover`` steps inside it, then its ``leave`` or ``abandon`` and the
  ``recover`` steps outside it, in one coroutine (``_guarded``); for a first delivery
  the runner calls ``enter``, the handler and ``leave`` itself (no coroutine of
  ours between them) and hands only a failure here (``guarded_failed``).

Layers that declare ``observes`` (tracing, metrics) at the front of the chain are
taken out of it either way: the runner calls their ``begin``/``end`` around the
rest (:class:`Watchers`), so watching a chain does not cost it its fused path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from eventbus.batching import begin_each, observer_failed, run_alone
from eventbus.context import Context
from eventbus.errors import HandlerCancelledError, SchemaError
from eventbus.events import Registry
from eventbus.middleware.base import (
    SKIP,
    Middleware,
    Next,
    acts_only_on_failure,
    compose,
    guard_steps,
    observes,
    refusal_step,
    sets_current_envelope,
)
from eventbus.runs import RunCounter
from eventbus.spec import SubscriptionSpec

log = logging.getLogger("eventbus.runner")


class Invocation:
    """Calls ``spec``'s handlers through ``middleware`` (outermost first).

    ``runs`` counts each real run; ``stopping`` says whether the runner is stopping
    (a handler cut short by shutdown did not fail and did not run).
    """

    def __init__(
        self,
        spec: SubscriptionSpec,
        registry: Registry,
        runs: RunCounter,
        middleware: Sequence[Middleware],
        stopping: Callable[[], bool],
    ) -> None:
        self.spec = spec
        self.registry = registry
        self.runs = runs
        self._stopping = stopping
        # A leading layer that only makes the envelope current: the runner does that
        # itself (correlate), one coroutine less per message.
        self.correlate = bool(middleware) and sets_current_envelope(middleware[0])
        layers = tuple(middleware[1:] if self.correlate else middleware)
        # Leading layers that only watch: called around the rest by the runner.
        watching = 0
        while watching < len(layers) and observes(layers[watching]):
            watching += 1
        self.observers: tuple[Any, ...] = layers[:watching]
        # What the runner calls around the rest: begin(ctx) -> mark, end(ctx, mark,
        # failure); a lone observer itself (the runner guards its calls, see
        # watch_failed), several as one (Watchers, which guards each).
        self.watcher: Any = (
            None
            if not watching
            else self.observers[0]
            if watching == 1
            else Watchers(self.observers)
        )
        layers = layers[watching:]
        self.chain: Next = compose(layers, self.invoke)
        # One layer may guard the rest with plain calls (idempotency over the memory store).
        guarding = [
            (index, steps) for index, layer in enumerate(layers) if (steps := guard_steps(layer))
        ]
        self.guarded = len(guarding) == 1
        self.fused = all(
            acts_only_on_failure(layer) or (self.guarded and index == guarding[0][0])
            for index, layer in enumerate(layers)
        )
        self._layers = layers
        # What each layer passes a retry on to: the layers inside it, then the handler.
        self._inner = [compose(layers[index + 1 :], self.invoke) for index in range(len(layers))]
        self.refusals = (
            tuple(
                (index, refuse)
                for index, layer in enumerate(layers)
                if (refuse := refusal_step(layer)) is not None
            )
            if self.fused
            else ()
        )
        self.guarded = self.guarded and self.fused
        # The guard's (enter, leave) plain calls, for the runner to call around a first
        # delivery's handler itself (a failure then goes to guarded_failed()).
        self.guard: tuple[Callable[..., Any], Callable[..., Any]] | None = None
        if self.guarded:
            # Fused around the guard: the runner calls this as it calls a composed chain.
            self._guard_at, (self._enter, self._leave, self._abandon) = guarding[0]
            self.guard = (self._enter, self._leave)
            self._outer_refusals = tuple(r for r in self.refusals if r[0] < self._guard_at)
            self._inner_refusals = tuple(r for r in self.refusals if r[0] > self._guard_at)
            self.chain = self._guarded

    def refusal(
        self, ctx: Context, refusals: Sequence[tuple[int, Any]] | None = None
    ) -> tuple[Exception, int] | None:
        """Fused: the failure a layer raises before the handler runs, and how many
        layers (outermost first) are outside it to recover; ``None`` to run."""
        for index, refuse in self.refusals if refusals is None else refusals:
            failure = refuse(ctx)
            if failure is not None:
                return failure, index
        return None

    async def _guarded(self, ctx: Context) -> None:
        """The fused path around a guarding layer, as the composed chain would run:
        the layers outside it may refuse, its ``enter`` decides, the handler runs, and
        a failure goes to the recover steps inside the guard, then to its ``abandon``
        and to the recover steps outside it. (The runner takes a first delivery's
        success path itself, with :attr:`guard`: no layer refuses one.)"""
        if ctx.previous_attempts and self._outer_refusals:
            refused = self.refusal(ctx, self._outer_refusals)
            if refused is not None:
                await self.recover(ctx, *refused)
                return
        try:
            token = self._enter(ctx)
        except Exception as exc:
            await self.guard_refused(ctx, exc)
            return
        if token is SKIP:
            return
        refused = None
        try:
            if ctx.previous_attempts and self._inner_refusals:
                refused = self.refusal(ctx, self._inner_refusals)
            if refused is None:
                call = self.prepare(ctx)
                if call is not None:
                    ctx.result = await call
        except BaseException as exc:
            await self.guarded_failed(ctx, token, exc)
            return
        if refused is not None:  # outside the try: what escapes its recovery goes up
            await self.guarded_failed(ctx, token, refused[0], refused[1] - 1)
            return
        self._leave(ctx, token)

    async def guard_refused(self, ctx: Context, failure: Exception) -> None:
        """The guard's ``enter`` raised ``failure``: to the recover steps outside it."""
        at = self._guard_at
        if at == 0:
            raise failure
        await self._recover(ctx, failure, at - 1)

    async def guarded_failed(
        self, ctx: Context, token: Any, raised: BaseException, top: int | None = None
    ) -> None:
        """What ran inside the guard (entered with ``token``) raised ``raised``: the
        recover steps inside the guard from ``top`` (the innermost by default; for a
        refusal, the layer outside the refusing one), then the guard's ``abandon`` and,
        for what escapes, the recover steps outside it; ``leave`` if one recovered."""
        at = self._guard_at
        try:
            failure: Exception
            if isinstance(raised, asyncio.CancelledError):
                failure = self.cancelled(ctx, raised)  # re-raises it if this task is cancelled
                failure.__cause__ = raised
            elif isinstance(raised, Exception):
                failure = raised
            else:
                raise raised
            if top is None:
                top = len(self._layers) - 1
            # To the recover steps inside the guard, as the layer that failed raises it
            # (with a traceback); what escapes them is abandoned below.
            try:
                raise failure
            except Exception as exc:
                if top == at:
                    raise
                await self._recover(ctx, exc, top, at + 1)
        except BaseException as exc:
            self._abandon(ctx, token)
            if at == 0 or not isinstance(exc, Exception):
                raise
            await self._recover(ctx, exc, at - 1)
            return
        self._leave(ctx, token)

    async def recover(self, ctx: Context, failure: Exception, outside: int | None = None) -> None:
        """Fused: hand ``failure`` to the ``recover`` steps of the ``outside`` outermost
        layers (all of them by default: the handler failed), innermost first; each
        gets what the one inside it raised, as their ``__call__`` would."""
        index = len(self._layers) if outside is None else outside
        if index == 0:
            raise failure
        if outside is None:
            await self._recover(ctx, failure, index - 1)
            return
        try:
            raise failure  # as the refusing layer's __call__ raises it (with a traceback)
        except Exception as exc:
            await self._recover(ctx, exc, index - 1)

    async def _recover(self, ctx: Context, failure: Exception, index: int, last: int = 0) -> None:
        """``recover`` of layer ``index``, then of each layer outside it down to ``last``
        while they raise; raises what escapes layer ``last``."""
        layer: Any = self._layers[index]
        try:
            await layer.recover(ctx, self._inner[index], failure)
        except Exception as exc:
            if index == last:
                raise
            # Inside the except block, as the outer layer's __call__ runs its recover.
            await self._recover(ctx, exc, index - 1, last)

    async def invoke(self, ctx: Context) -> None:
        """The innermost step: pick the handler by type, decode, call."""
        call = self.prepare(ctx)
        if call is None:
            return
        try:
            ctx.result = await call
        except asyncio.CancelledError as exc:
            raise self.cancelled(ctx, exc) from exc

    def prepare(self, ctx: Context) -> Awaitable[Any] | None:
        """:meth:`invoke` up to the call: pick the handler by type, decode, count the
        run; the handler's coroutine, or ``None`` when there is nothing to run."""
        envelope = ctx.envelope
        handler = self.spec.handlers.get(envelope.type) or self.spec.catch_all
        if handler is None:
            if self.registry.get(envelope.type) is None:
                raise SchemaError(
                    f"unknown event type {envelope.type!r} (event {envelope.id}) on topic "
                    f"{ctx.topic!r}: no class is registered and group {ctx.group!r} has no "
                    "handler for it"
                )
            log.debug("no handler in %s for %s; acked", ctx.group, envelope.type)
            return None
        arg: Any
        if handler.wants_envelope:
            arg = envelope
        else:
            event = self.registry.decode(envelope, handler.message_class)
            ctx.event = event
            arg = event
        self.runs.ran(envelope.id)
        if handler.batch:  # an event of a batch subscription, handled on its own
            return run_alone(handler, arg, ctx)
        if handler.wants_context:
            return handler.fn(arg, ctx)
        return handler.fn(arg)

    def cancelled(self, ctx: Context, exc: asyncio.CancelledError) -> HandlerCancelledError:
        """The handler raised ``exc``: re-raise it when this task is being cancelled,
        else the failure to treat it as (it was not cancelled itself)."""
        envelope = ctx.envelope
        if cancelling():
            if self._stopping():
                self.runs.not_ran(envelope.id)  # cut short by shutdown: not a failure
            raise exc
        handler = self.spec.handlers.get(envelope.type) or self.spec.catch_all
        name = handler.fn.__qualname__ if handler is not None else "?"
        return HandlerCancelledError(
            f"handler {name} for event {envelope.id} "
            f"({envelope.type}) on topic {ctx.topic!r} group {ctx.group!r} raised "
            "CancelledError although it was not cancelled (did it await a task that "
            "someone else cancelled?); treated as a failure of the handler"
        )


class Watchers:
    """A chain's leading observers (two or more) called as one: ``begin`` outermost
    first, ``end`` innermost first, each guarded (an observer that raises is logged and
    skipped). A lone observer is called by the runner itself (see :func:`watch_failed`)."""

    __slots__ = ("begin", "end", "observers")

    def __init__(self, observers: Sequence[Any]) -> None:
        self.observers = tuple(observers)
        if len(self.observers) == 2:  # metrics and tracing: no loop
            self.begin = self._begin_two
            self.end = self._end_two
        else:
            self.begin = self._begin_all
            self.end = self._end_all

    def _begin_two(self, ctx: Context) -> object:
        outer, inner = self.observers
        try:
            first = outer.begin(ctx)
        except Exception as exc:
            first = _FAILED
            _observer_failed(outer, "begin", exc)
        try:
            return (first, inner.begin(ctx))
        except Exception as exc:
            _observer_failed(inner, "begin", exc)
            return (first, _FAILED)

    def _end_two(self, ctx: Context, mark: object, failure: BaseException | None) -> None:
        outer, inner = self.observers
        marks: Any = mark
        first, second = marks
        if second is not _FAILED:
            try:
                inner.end(ctx, second, failure)
            except Exception as exc:
                _observer_failed(inner, "end", exc)
        if first is not _FAILED:
            try:
                outer.end(ctx, first, failure)
            except Exception as exc:
                _observer_failed(outer, "end", exc)

    def _begin_all(self, ctx: Context) -> object:
        return begin_each(self.observers, "begin", ctx, _FAILED)

    def _end_all(self, ctx: Context, mark: object, failure: BaseException | None) -> None:
        marks: Any = mark
        observers = self.observers
        for index in range(len(observers) - 1, -1, -1):
            if marks[index] is _FAILED:
                continue
            try:
                observers[index].end(ctx, marks[index], failure)
            except Exception as exc:
                _observer_failed(observers[index], "end", exc)


_FAILED = object()  # the mark of an observer whose begin() raised: its end() is not called
WATCH_FAILED = _FAILED


def _observer_failed(observer: object, step: str, exc: Exception) -> None:
    observer_failed(observer, step, exc, "message")


def watch_failed(observer: object, step: str, exc: Exception) -> object:
    """A lone observer's ``begin`` or ``end``, called by the runner, raised ``exc``:
    logged, and the handling goes on; returns :data:`WATCH_FAILED`, the mark that
    tells the runner not to call its ``end``."""
    _observer_failed(observer, step, exc)
    return _FAILED


def cancelling() -> bool:
    """Whether the current task itself is being cancelled (not just seeing a
    CancelledError from something it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
