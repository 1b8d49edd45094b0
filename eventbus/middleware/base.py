"""Middleware: a small async callable taking the context and the next step.

::

    async def timing(ctx: Context, call_next: Next) -> None:
        started = time.perf_counter()
        try:
            await call_next(ctx)
        finally:
            ctx.logger.info("took %.3fs", time.perf_counter() - started)

Order, outermost first, for every subscription: correlation, then the bus-wide
middleware, then the subscription's own, then dead-letter, the request/reply step,
idempotency, retry, timeout, and finally the handler (decided in one place,
:func:`eventbus.middleware.chain.build_chain`).

A layer may declare what it does, so the runner can skip its coroutine where that
changes nothing (it never imports the layer's class to find out):

- ``sets_current_envelope = True``: the layer only makes the handled envelope
  current around the rest of the chain (``correlation``); as the outermost layer
  the runner does that itself.
- ``acts_only_on_failure = True``: the layer does nothing while the steps inside it
  succeed, and does its work in ``recover(ctx, call_next, exc)`` once they raised
  (``DeadLetter``, ``Retry``); it may also refuse a message that ran before (a
  redelivery) before the steps inside run, with ``refuse(ctx)`` returning the
  failure to raise (else ``None``, always ``None`` for a message's first run). When every
  layer (after ``correlation``) declares it, the runner calls the handler directly
  and calls the ``recover`` steps, innermost first, only for a failure. See
  :class:`RecoveringLayer`.

- ``guards = True``: the layer decides before the steps inside it whether they run,
  and settles after them (``Idempotency``). Its ``guard_steps()`` returns three plain
  calls, or ``None`` when this instance cannot answer without I/O (its ``__call__`` is
  then composed as any layer's): ``enter(ctx)`` returns a token, or :data:`SKIP` for a
  message that must not run (it is acknowledged), or raises the failure the layers
  outside it get; ``leave(ctx, token)`` once the steps inside succeeded; ``abandon(
  ctx, token)`` once a failure escaped them, before the layers outside recover
  (neither of the two may raise: they report their own failures). A chain whose
  other layers act only on failure stays fused around one such layer.

- ``observes = True``: the layer only watches the handling (a span, a timer) and
  never changes its outcome: it starts something in ``begin(ctx)`` and ends it in
  ``end(ctx, mark, failure)`` with what escaped the steps inside it (see
  :class:`Observer`). Observing layers at the front of the chain (right after
  ``correlation``) are called by the runner around the rest, fused or composed, and
  also see what never reaches a chain: batch calls and undecodable messages.

A declaration counts only when it is made by the class that defines ``__call__``:
a subclass that overrides ``__call__`` (to act on success too) must declare again.

Publish middleware wraps every publish instead (``bus.publish``, ``publish_many``,
``send`` and their ``ctx`` forms); it may change the envelopes (tracing headers)
or keep them somewhere else instead of calling on (an outbox)::

    async def stamp(topic: str, envelopes: Sequence[Envelope], call_next: PublishNext) -> None:
        await call_next(topic, [e.evolve(extensions={**e.extensions, "tenant": "a"})
                                for e in envelopes])
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from eventbus.adapter import Delivery
from eventbus.context import Context
from eventbus.envelope import Envelope

Next = Callable[[Context], Awaitable[None]]
Middleware = Callable[[Context, Next], Awaitable[None]]
PublishNext = Callable[[str, Sequence[Envelope]], Awaitable[None]]
PublishMiddleware = Callable[[str, Sequence[Envelope], PublishNext], Awaitable[None]]


SKIP = object()
"""What a guarding layer's ``enter`` returns for a message the steps inside it must
not run (an id already handled): the message is acknowledged as handled."""


class RedeliveryRequested(Exception):
    """Raised inside the chain to have the broker redeliver the message after ``delay``."""

    def __init__(self, delay: float, reason: str = "") -> None:
        super().__init__(reason or f"redeliver in {delay:.3f}s")
        self.delay = delay


@runtime_checkable
class RecoveringLayer(Protocol):
    """A middleware layer that acts only once the steps inside it failed.

    Its ``__call__`` must be equivalent to::

        async def __call__(self, ctx, call_next):
            refused = self.refuse(ctx)          # when the layer has refuse()
            if refused is not None:
                raise refused
            try:
                await call_next(ctx)
            except Exception as exc:
                await self.recover(ctx, call_next, exc)

    so that the runner may call the handler itself and hand a failure to
    ``recover`` (see the module doc). ``refuse`` is optional, and must return
    ``None`` when ``ctx.previous_attempts`` is 0: only a message that ran before may
    be refused, so the runner does not ask for a first delivery (two calls per
    message saved, ~4% of the memory broker's default-chain throughput).
    """

    acts_only_on_failure: ClassVar[bool]

    async def recover(self, ctx: Context, call_next: Next, exc: Exception) -> None:
        """What the layer does once ``call_next(ctx)`` raised ``exc`` (re-raise, or handle)."""


class Observer:
    """Base of a middleware layer that watches handling without changing it (tracing,
    metrics): subclasses implement :meth:`begin` and :meth:`end`, and may watch batch
    calls and undecodable messages too.

    Declares ``observes``: as one of the first layers of a chain (``EventBus(
    middleware=[...])``), the runner calls ``begin``/``end`` around the rest of the
    chain itself, so the chain keeps its fused fast path. Elsewhere in a chain its
    ``__call__`` does the same. ``begin`` and ``end`` are plain calls, made in the
    task that runs the handler (a context variable set in ``begin`` is seen by the
    handler); neither may raise (the runner logs and ignores it if one does).
    """

    observes: ClassVar[bool] = True

    def begin(self, ctx: Context) -> object:
        """The handling of ``ctx``'s message starts; returns a mark handed to :meth:`end`."""
        return None

    def end(self, ctx: Context, mark: object, failure: BaseException | None) -> None:
        """The handling ended: ``failure`` is what escaped the steps inside this layer
        (``None``: handled, skipped or dead-lettered; see
        :func:`eventbus.incidents.incidents` for what happened on the way)."""

    def begin_batch(self, contexts: Sequence[Context]) -> object:
        """A batch handler is called with the events of ``contexts``; returns a mark."""
        return None

    def end_batch(
        self,
        contexts: Sequence[Context],
        mark: object,
        failed: Collection[int],
        failure: BaseException | None,
    ) -> None:
        """The batch call returned: ``failed`` are the indexes handled again one by one
        (each then passes :meth:`begin`/:meth:`end`), ``failure`` what it raised."""

    def undecodable(self, delivery: Delivery, dead_lettered: bool) -> None:
        """A message that did not decode was dead-lettered (or, dead letters off, rejected)."""

    async def __call__(self, ctx: Context, call_next: Next) -> None:
        mark = self.begin(ctx)
        try:
            await call_next(ctx)
        except BaseException as exc:
            self.end(ctx, mark, exc)
            raise
        self.end(ctx, mark, None)


class PublishObserver:
    """Base of a publish middleware layer that watches publishing without changing it
    (metrics): subclasses implement :meth:`before` and :meth:`after`.

    As the outermost layer of ``bus.publish_middleware`` the bus calls them around the
    rest of the publish itself, in its own coroutine (none of the layer's per publish);
    elsewhere its ``__call__`` does the same. Neither is expected to raise: what they
    raise fails the publish, as any middleware's error does.
    """

    def before(self, topic: str, envelopes: Sequence[Envelope]) -> object:
        """A publish of ``envelopes`` to ``topic`` starts; returns a mark for :meth:`after`."""
        return None

    def after(
        self, topic: str, envelopes: Sequence[Envelope], mark: object, failure: BaseException | None
    ) -> None:
        """The publish ended: ``failure`` is what the layers inside raised (``None``:
        the broker confirmed it, or a layer inside kept it, as an outbox does)."""

    async def __call__(
        self, topic: str, envelopes: Sequence[Envelope], call_next: PublishNext
    ) -> None:
        mark = self.before(topic, envelopes)
        try:
            await call_next(topic, envelopes)
        except BaseException as exc:
            self.after(topic, envelopes, mark, exc)
            raise
        self.after(topic, envelopes, mark, None)


class PassingPublishLayer:
    """Base of a publish middleware layer that, for some publishes, only hands the
    envelopes on unchanged (tracing's, for a new trace its sampler dropped): it says so
    in :meth:`passes`, asked as the publish starts. When it is the only layer, or
    the second behind a :class:`PublishObserver`, the bus then publishes without
    calling it (no call of its own, no step of the bus's for the broker); elsewhere it
    is called as any layer (those before it may change the publish), and not asked.
    Subclasses implement ``__call__`` as any publish middleware does."""

    def passes(self, topic: str, envelopes: Sequence[Envelope]) -> bool:
        """Whether a call now for these envelopes would only hand them on unchanged."""
        return False


def leading_publish_observers(middleware: Sequence[PublishMiddleware]) -> int:
    """How many of the first layers of ``middleware`` are :class:`PublishObserver`: a
    layer that changes what is published (tracing's) goes in after them."""
    count = 0
    for layer in middleware:
        if not isinstance(layer, PublishObserver):
            break
        count += 1
    return count


def _declared(layer: object, name: str) -> bool:
    """Whether the class of ``layer`` that defines ``__call__`` declares ``name = True``
    (a plain function declares nothing)."""
    for klass in type(layer).__mro__:
        if "__call__" in vars(klass):
            return vars(klass).get(name, False) is True
    return False


def acts_only_on_failure(layer: object) -> bool:
    """Whether ``layer`` declares it does nothing until the steps inside it fail
    (and has the ``recover`` step that then does its work)."""
    return _declared(layer, "acts_only_on_failure") and callable(getattr(layer, "recover", None))


def sets_current_envelope(layer: object) -> bool:
    """Whether ``layer`` declares it only makes the handled envelope current."""
    return _declared(layer, "sets_current_envelope")


def observes(layer: object) -> bool:
    """Whether ``layer`` declares it only watches the handling (see :class:`Observer`)."""
    return _declared(layer, "observes")


def guard_steps(layer: object) -> tuple[Callable[..., Any], ...] | None:
    """``(enter, leave, abandon)`` of a layer that declares ``guards`` and can give
    them as plain calls now, else ``None``."""
    if not _declared(layer, "guards"):
        return None
    steps: Any = getattr(layer, "guard_steps", None)
    return steps() if callable(steps) else None


def refusal_step(layer: object) -> Callable[[Context], Exception | None] | None:
    """``layer.refuse`` when a failure-only layer has one, else ``None``."""
    refuse: Any = getattr(layer, "refuse", None)
    return refuse if callable(refuse) else None


def compose(middleware: Sequence[Middleware], handler: Next) -> Next:
    """Wrap ``handler`` in ``middleware``, the first element outermost.

    Composed once per subscription: each step hands the context to its layer
    and returns the layer's coroutine, so a message costs one coroutine per
    layer and no closure.
    """
    step = handler
    for layer in reversed(middleware):
        step = _Step(layer, step)
    return step


class _Step:
    """One layer bound to the rest of the chain (a plain call, not a coroutine)."""

    __slots__ = ("inner", "layer")

    def __init__(self, layer: Middleware, inner: Next) -> None:
        self.layer = layer
        self.inner = inner

    def __call__(self, ctx: Context) -> Awaitable[None]:
        return self.layer(ctx, self.inner)


_new_step = object.__new__


def compose_publish(middleware: Sequence[PublishMiddleware], publish: PublishNext) -> PublishNext:
    """Wrap ``publish`` in publish ``middleware``, the first element outermost."""
    # Bound per publish call (the innermost step is that call's own): each step made
    # here, without an __init__ call or a call per layer.
    step = publish
    for layer in reversed(middleware):
        bound = _new_step(_PublishStep)
        bound.layer = layer
        bound.inner = step
        step = bound
    return step


class _PublishStep:
    """One publish layer bound to the rest (a plain call returning the layer's
    coroutine, as :class:`_Step`: no coroutine of its own per publish)."""

    __slots__ = ("inner", "layer")

    layer: PublishMiddleware
    inner: PublishNext

    def __call__(self, topic: str, envelopes: Sequence[Envelope]) -> Awaitable[None]:
        return self.layer(topic, envelopes, self.inner)
