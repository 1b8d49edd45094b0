"""What ``bus.subscribe`` records: the handlers of one (topic, group) and its options."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from eventbus._sync_handlers import check_sync, in_worker_thread
from eventbus.adapter import Adapter, Guarantee
from eventbus.context import Context
from eventbus.envelope import Envelope
from eventbus.errors import (
    ConfigurationError,
    DuplicateSubscriptionError,
    GuaranteeUnavailableError,
    UsageError,
    mask_url,
)
from eventbus.events import Command, Event, Message
from eventbus.middleware.base import Middleware
from eventbus.middleware.idempotency import Idempotency, IdempotencyStore
from eventbus.middleware.retry import RetryPolicy
from eventbus.wire import WireFormat

DeliveryMode = Guarantee
HandlerFn = Callable[..., Awaitable[Any]]  # a command handler may return a reply


def resolve_delivery(
    requested: DeliveryMode | None, adapter: Adapter, topic: str, group: str
) -> DeliveryMode:
    """The guarantee a subscription of ``topic``/``group`` gets on ``adapter``.

    ``None`` takes the broker's strongest: at-least-once where it redelivers, else
    at-most-once (the bus still retries a failed handler in process and
    dead-letters it; a crash loses what was in flight). An explicit request the
    broker cannot honour raises :class:`~eventbus.errors.GuaranteeUnavailableError`
    naming the topic, the broker and what to use instead (``adapter.stronger``).
    """
    if requested is None:
        return "at_least_once" if adapter.refusal("at_least_once") is None else "at_most_once"
    reason = adapter.refusal(requested)
    if reason is None:
        return requested
    broker = mask_url(adapter.url)
    instead = adapter.stronger or "a broker that offers it"
    raise GuaranteeUnavailableError(
        f"the subscription to topic {topic!r} (group {group!r}) asks for "
        f"delivery={requested!r}, which {type(adapter).__name__} at {broker} cannot "
        f"give: {reason}. Use {instead} instead, or leave delivery unset to take this "
        "broker's strongest guarantee",
        topic=topic,
        broker=broker,
        instead=instead,
    )


def check_targets(targets: Sequence[object]) -> None:
    """Refuse what ``subscribe(*targets)`` cannot mean: nothing, a function (the decorator
    used without parentheses), an event instance, a class that is not an event."""
    if not targets:
        raise ConfigurationError("subscribe() needs at least one event class or topic")
    for target in targets:
        if isinstance(target, str) or (isinstance(target, type) and issubclass(target, Message)):
            continue
        if callable(target) and not isinstance(target, type):
            name = getattr(target, "__name__", "handler")
            annotation = _first_annotation(target)
            example = annotation.__name__ if isinstance(annotation, type) else "OrderPlaced"
            raise UsageError(
                f"subscribe() was given the function {name} as what to subscribe to: the "
                f"decorator needs parentheses and the event class or topic, "
                f"@bus.subscribe({example}) (or @bus.subscribe('topic-name')); nothing "
                "was subscribed"
            )
        if isinstance(target, Message):
            name = type(target).__name__
            raise UsageError(
                f"subscribe() takes event classes or topic names; got {_a(name)} instance "
                f"({target!r}): subscribe({name}) subscribes to every {name}"
            )
        if isinstance(target, type) and hasattr(target, "model_fields"):
            raise UsageError(
                f"subscribe() takes eventbus event classes or topic names; {target.__name__} "
                f"is a pydantic model but not an eventbus Event or Command: declare it as "
                f"class {target.__name__}(Event, type='...')"
            )
        raise UsageError(
            f"subscribe() takes event classes or topic names, not "
            f"{_a(type(target).__name__)} ({target!r})"
        )


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _first_annotation(fn: Callable[..., Any]) -> Any:
    """The resolved annotation of ``fn``'s first parameter; ``inspect.Parameter.empty``
    when it has none or it cannot be resolved (a name local to a function)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return inspect.Parameter.empty
    if not params:
        return inspect.Parameter.empty
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an unresolvable forward reference: nothing to check against
        return inspect.Parameter.empty
    return hints.get(params[0].name, inspect.Parameter.empty)


def _is_context(annotation: Any) -> bool:
    return annotation is Context or annotation == "Context"


# Annotating with a base class of the framework says "any message": not a mistake, even
# when it names Event for a command.
_BASES: tuple[type, ...] = (Message, Event, Command)


def _accepts(annotation: Any, cls: type[Message]) -> bool:
    """Whether a parameter annotated ``annotation`` can take an instance of ``cls``
    (unknown shapes are given the benefit of the doubt)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return any(_accepts(member, cls) for member in typing.get_args(annotation))
    if not isinstance(annotation, type) or annotation in _BASES:
        return True
    try:
        return issubclass(cls, annotation)
    except TypeError:  # a protocol or generic alias issubclass cannot answer
        return True


def _check_parameters(
    fn: HandlerFn, params: list[inspect.Parameter], message_class: type[Message] | None, batch: bool
) -> None:
    """Refuse ``(ctx, event)`` and an event annotation that disagrees with the class
    subscribed: either would be accepted here and fail on every message."""
    name = fn.__qualname__
    annotation = _first_annotation(fn)
    if _is_context(annotation) or _is_context(params[0].annotation):
        event = message_class.__name__ if message_class is not None else "Event"
        raise UsageError(
            f"handler {name} takes the context first; a handler takes (event, ctx), the "
            f"event first: {fn.__name__}(event: {event}, ctx: Context)"
        )
    if batch or message_class is None or annotation is Envelope:
        return
    if not _accepts(annotation, message_class):
        shown = getattr(annotation, "__name__", repr(annotation))
        raise UsageError(
            f"handler {name} annotates its event as {shown}, but it is subscribed to "
            f"{message_class.__name__}, which is not {_a(shown)}: every delivery would fail. "
            f"Annotate it {message_class.__name__} (or a union of the classes it is "
            f"subscribed to), or subscribe it to {shown}"
        )


@dataclass
class Handler:
    """A user function and how to call it."""

    fn: HandlerFn
    message_class: type[Message] | None
    wants_context: bool
    wants_envelope: bool
    batch: bool = False  # takes a list of events (and a list of contexts)

    @classmethod
    def wrap(
        cls, fn: Callable[..., Any], message_class: type[Message] | None, batch: bool = False
    ) -> Handler:
        """Check ``fn`` can handle ``message_class`` (``None``: any type of a topic) and
        say how to call it; a :class:`~eventbus.errors.UsageError` saying what to
        write instead when it cannot. A plain ``def`` is wrapped to run in a worker
        thread (:mod:`eventbus._sync_handlers`); ``fn`` is then that wrapper."""
        call = fn
        if not (
            inspect.iscoroutinefunction(fn)
            or (callable(fn) and inspect.iscoroutinefunction(type(fn).__call__))
        ):
            check_sync(fn)
            call = in_worker_thread(fn)  # a plain def: off the loop, see sync_handlers
        params = list(inspect.signature(fn).parameters.values())
        if not 1 <= len(params) <= 2:
            raise UsageError(
                f"handler {fn.__qualname__} must take (event) or (event, ctx), "
                f"not {len(params)} parameters"
            )
        _check_parameters(fn, params, message_class, batch)
        annotation = params[0].annotation
        wants_envelope = annotation is Envelope or annotation == "Envelope"
        if batch:
            return cls(call, message_class, len(params) == 2, False, True)
        return cls(call, message_class, len(params) == 2, wants_envelope)


@dataclass
class SubscriptionSpec:
    """Everything ``bus.subscribe`` was told about one (topic, group)."""

    topic: str
    group: str
    concurrency: int = 1
    ordered: bool = True
    mode: DeliveryMode = "at_least_once"  # how it settles: after the handler, or on receipt
    # None: the URL's start_from, else "latest" (eventbus.adapter.start_from_for).
    start_from: Literal["earliest", "latest"] | None = None
    retry: RetryPolicy | None = None
    timeout: float | None = None
    middleware: list[Middleware] = field(default_factory=list)
    idempotency: IdempotencyStore | Idempotency | None = None
    handlers: dict[str, Handler] = field(default_factory=dict)
    catch_all: Handler | None = None
    batch: int | None = None
    batch_timeout: float | None = None
    delivery: DeliveryMode | None = None  # as asked; None = the broker's strongest
    guarantee: DeliveryMode = "at_least_once"  # what the broker and ``mode`` give
    wire: WireFormat | None = None  # how to read what is not a CloudEvent; None: dead-letter it

    @property
    def batch_handler(self) -> Handler | None:
        """The one handler of a batch subscription (``batch=N``), else ``None``."""
        if self.batch is None or len(self.handlers) != 1:
            return None
        return next(iter(self.handlers.values()))

    def add(self, handler: Handler) -> None:
        if handler.message_class is None:
            if self.catch_all is not None:
                raise DuplicateSubscriptionError(
                    f"topic {self.topic!r} group {self.group!r} already has a handler for "
                    f"all types ({self.catch_all.fn.__qualname__})"
                )
            self.catch_all = handler
            return
        name = handler.message_class.event_type()
        if self.batch is not None and self.handlers:
            raise DuplicateSubscriptionError(
                f"topic {self.topic!r} group {self.group!r} is a batch subscription "
                f"(batch={self.batch}) and already has its handler "
                f"({next(iter(self.handlers.values())).fn.__qualname__}); a batch "
                "subscription has exactly one handler: use another group"
            )
        if name in self.handlers:
            raise DuplicateSubscriptionError(
                f"{name!r} on topic {self.topic!r} already has a handler in group "
                f"{self.group!r} ({self.handlers[name].fn.__qualname__}); one handler per "
                "type and group — use another group to fan out"
            )
        self.handlers[name] = handler

    def options(self) -> dict[str, Any]:
        """The options that shape how this subscription runs (compared on re-subscribe)."""
        return {
            "concurrency": self.concurrency,
            "ordered": self.ordered,
            "delivery": self.delivery,
            "start_from": self.start_from,
            "retry": self.retry,
            "timeout": self.timeout,
            "middleware": self.middleware,
            "idempotency": self.idempotency,
            "batch": self.batch,
            "batch_timeout": self.batch_timeout,
            "wire_format": self.wire,
        }

    def check_same_options(self, wanted: SubscriptionSpec, fn: HandlerFn) -> None:
        """A (topic, group) runs with one set of options: refuse a second, different set."""
        if wanted is self:
            return
        have, want = self.options(), wanted.options()
        differing = [
            f"{name}={want[name]!r} (was {have[name]!r})"
            for name in have
            if have[name] != want[name]
        ]
        if differing:
            raise ConfigurationError(
                f"subscribe() of {fn.__qualname__} to topic {self.topic!r} group "
                f"{self.group!r} gives different options from the handlers already there: "
                f"{', '.join(differing)}; one (topic, group) runs with one set of options: "
                "give the same ones, or use another group"
            )
