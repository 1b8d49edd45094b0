"""What ``bus.subscribe`` records: the handlers of one (topic, group) and its options."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from eventbus.adapter import Adapter, Guarantee
from eventbus.envelope import Envelope
from eventbus.errors import (
    ConfigurationError,
    DuplicateSubscriptionError,
    GuaranteeUnavailableError,
    mask_url,
)
from eventbus.events import Message
from eventbus.middleware.base import Middleware
from eventbus.middleware.idempotency import Idempotency, IdempotencyStore
from eventbus.middleware.retry import RetryPolicy

DeliveryMode = Guarantee
HandlerFn = Callable[..., Awaitable[Any]]  # a command handler may return a reply


def resolve_delivery(requested: DeliveryMode | None, adapter: Adapter, topic: str,
                     group: str) -> DeliveryMode:
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
        topic=topic, broker=broker, instead=instead,
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
    def wrap(cls, fn: HandlerFn, message_class: type[Message] | None,
             batch: bool = False) -> Handler:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"handler {fn.__qualname__} must be an async function")
        params = list(inspect.signature(fn).parameters.values())
        if not 1 <= len(params) <= 2:
            raise TypeError(
                f"handler {fn.__qualname__} must take (event) or (event, ctx), "
                f"not {len(params)} parameters"
            )
        annotation = params[0].annotation
        wants_envelope = annotation is Envelope or annotation == "Envelope"
        if batch:
            return cls(fn, message_class, len(params) == 2, False, True)
        return cls(fn, message_class, len(params) == 2, wants_envelope)


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
        }

    def check_same_options(self, wanted: SubscriptionSpec, fn: HandlerFn) -> None:
        """A (topic, group) runs with one set of options: refuse a second, different set."""
        if wanted is self:
            return
        have, want = self.options(), wanted.options()
        differing = [f"{name}={want[name]!r} (was {have[name]!r})"
                     for name in have if have[name] != want[name]]
        if differing:
            raise ConfigurationError(
                f"subscribe() of {fn.__qualname__} to topic {self.topic!r} group "
                f"{self.group!r} gives different options from the handlers already there: "
                f"{', '.join(differing)}; one (topic, group) runs with one set of options: "
                "give the same ones, or use another group"
            )
