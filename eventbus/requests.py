"""Request/reply over any broker: ``await bus.request(command, timeout=...)``.

(Over 400 lines on purpose: the requesting and the replying side of one protocol, kept
together so they cannot drift.)

The requesting side (:class:`Requester`, one per bus, created on the first request)
subscribes once to a private reply topic, named after the bus's source plus a random
suffix, and keeps one future per request id. Every request carries that topic in the
``replyto`` CloudEvents extension attribute; a reply names the request it answers in
its ``causationid``. So a thousand requests cost one topic and one subscription, not a
thousand; the subscription is closed when the bus stops. A reply arriving after its
request timed out is dropped and logged.

The handling side (:class:`ReplyStep`, made by :func:`reply_step` for every
subscription with a handler of a :class:`~eventbus.events.Command` class and placed
by :func:`eventbus.middleware.chain.build_chain` inside dead-letter and outside
idempotency and retry) looks at ``replyto`` on an incoming command of such a class, and
when it is there publishes to it:

- what the handler returned: an :class:`~eventbus.events.Message` as itself (its type
  name and version, decoded on the requesting side through the registry), anything
  else JSON-encoded in an envelope of type ``eventbus.reply``;
- the handler's error, once retries are spent (type ``eventbus.reply.error``, with the
  error's class name and message), *and* the message is dead-lettered as usual: the
  requester learns at once, operators still find the failed command in the DLQ. A
  retry that is still to come sends nothing, so the requester sees the final outcome.

Only the command's handler group answers: a topic-wide subscription (an audit tap,
a catch-all handler in another group) sees the request but sends nothing, so the
requester never gets an observer's return value instead of the handler's. A handler
skipped as a duplicate (idempotency) sends no second reply, and a handler of dead
letters (they keep ``replyto``) sends none at all.

A handler that succeeded is never turned into a failure by its reply: a return value
with no JSON form is logged and answered with an error reply
(:class:`UnencodableReplyError` on the requesting side, saying the effect is done),
and the command is acknowledged; dead-lettering it would invite a replay that applies
the effect twice. A reply that cannot be published is logged and does not fail the
command either (its effect stands; the requester times out).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import uuid
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, overload

from pydantic import TypeAdapter, ValidationError
from pydantic_core import to_json

from eventbus.adapter import StartFrom, SubscribeOptions, Subscription
from eventbus.context import NO_RESULT, Context
from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError, EventBusError, InfrastructureError
from eventbus.events import Command, Message
from eventbus.middleware.base import Middleware, Next, RedeliveryRequested
from eventbus.middleware.idempotency import Idempotency
from eventbus.middleware.retry import Retry
from eventbus.tasks import stop_task

if TYPE_CHECKING:
    from eventbus.bus import EventBus
    from eventbus.spec import SubscriptionSpec

__all__ = [
    "ERROR_TYPE",
    "REPLY_TO",
    "REPLY_TYPE",
    "ReplyStep",
    "ReplyTypeError",
    "RequestError",
    "RequestFailedError",
    "RequestTimeoutError",
    "Requester",
    "UnencodableReplyError",
    "reply_step",
    "with_replies",
]

log = logging.getLogger("eventbus.requests")
R = TypeVar("R")

REPLY_TO = "replyto"
"""The CloudEvents extension attribute naming the topic a reply goes to."""
REPLY_TYPE = "eventbus.reply"
"""Envelope type of a reply whose value is not a Message (JSON data)."""
ERROR_TYPE = "eventbus.reply.error"
"""Envelope type of a reply saying the handler failed for good."""
_DEAD_LETTER = "dlqtopic"  # set on every dead letter (eventbus.deadletters)
_UNENCODABLE = "UnencodableReplyError"  # the error type of an error reply for a success
_LATE_MEMORY = 1024  # timed-out request ids remembered, to tell late replies from strays


class RequestError(EventBusError):
    """Base of the errors :meth:`EventBus.request` raises."""


class RequestTimeoutError(RequestError, TimeoutError):
    """No reply came within the request's timeout."""


class ReplyTypeError(RequestError):
    """The reply is not of the type the caller asked for (``reply_type=``)."""


class RequestFailedError(RequestError):
    """The handler of a request failed for good; carries its error's type and message."""

    def __init__(
        self,
        message: str,
        *,
        error_type: str,
        error_message: str,
        request_id: str,
        command_type: str,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.error_message = error_message
        self.request_id = request_id
        self.command_type = command_type


class UnencodableReplyError(RequestFailedError):
    """The handler *succeeded* (its effect is done) but its return value could not be
    encoded as a reply. Do not resend the command blindly: it would run again."""


def _reply_topic(source: str) -> str:
    # Letters, digits and hyphens only (every broker takes those as a topic, queue,
    # stream or group name), short enough for SQS's 80 characters.
    stem = re.sub(r"[^a-z0-9-]+", "-", source.lower()).strip("-")[:32] or "bus"
    return f"replies-{stem}-{uuid.uuid4().hex[:12]}"


class Requester:
    """The requesting side of one bus: one reply topic and subscription, a future per
    request id. Made by :meth:`EventBus.request` on first use; closed by ``bus.stop()``."""

    def __init__(self, bus: EventBus, reply_topic: str | None = None) -> None:
        self._bus = bus
        self.reply_topic = reply_topic or _reply_topic(bus.source)
        self.subscriptions_opened = 0
        self._pending: dict[str, asyncio.Future[Envelope]] = {}
        self._timed_out: OrderedDict[str, None] = OrderedDict()
        self._subscription: Subscription | None = None
        self._pump: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def pending(self) -> int:
        """Requests waiting for their reply now."""
        return len(self._pending)

    async def request(
        self, command: Command, *, timeout: float, reply_type: type[R] | None = None, **options: Any
    ) -> Any:
        """Send ``command`` with a reply address and wait for its reply (see
        :meth:`EventBus.request`)."""
        if not isinstance(command, Command):
            raise ConfigurationError(
                f"request() takes a Command; {type(command).__name__} is an event, "
                "and an event may have many handlers: publish it instead"
            )
        if not timeout > 0:
            raise ConfigurationError(f"request() timeout must be positive, not {timeout!r}")
        extensions = {**(options.pop("extensions", None) or {}), REPLY_TO: self.reply_topic}
        envelope = self._bus.envelope_for(command, extensions=extensions, **options)
        # Set up once per bus, outside the timeout: a broker creating the reply topic
        # and group (seconds on some) must not eat the first request's budget.
        await self._subscribe()
        future: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        self._pending[envelope.id] = future
        try:
            async with asyncio.timeout(timeout):
                # Always a CloudEvent, whatever the bus's wire format: the reply
                # address travels as an attribute (replyto).
                await self._bus.publish_envelopes(
                    command.default_topic(), [envelope], wire_format="cloudevents"
                )
                reply = await future
        except TimeoutError as exc:
            self._remember_timed_out(envelope.id)
            raise RequestTimeoutError(
                f"request {envelope.id} ({envelope.type}) to topic "
                f"{command.default_topic()!r} got no reply within {timeout:g}s; is a "
                "handler subscribed and running? (a reply arriving later is dropped)"
            ) from exc
        finally:
            self._pending.pop(envelope.id, None)
        return _read_reply(self._bus, envelope, reply, reply_type)

    async def _subscribe(self) -> None:
        async with self._lock:
            if self._subscription is not None:
                return
            # A private topic and group: "earliest" loses no reply published while a
            # broker (Kafka) is still assigning the new group its partitions. Brokers
            # without history (SQS) take "latest": their queue exists once subscribed.
            adapter = self._bus.adapter
            start: StartFrom = "earliest" if adapter.capabilities.replay else "latest"
            self._subscription = await adapter.subscribe(
                self.reply_topic,
                SubscribeOptions(group=self.reply_topic, prefetch=64, start_from=start),
            )
            self.subscriptions_opened += 1
            self._pump = asyncio.create_task(
                self._receive(self._subscription), name=f"eventbus-replies-{self.reply_topic}"
            )

    async def _receive(self, subscription: Subscription) -> None:
        try:
            async for delivery in subscription:
                envelope = delivery.envelope
                if envelope is not None:
                    self._resolve(envelope)
                else:
                    log.warning(
                        "undecodable reply on %s dropped: %s",
                        self.reply_topic,
                        delivery.decode_error,
                    )
                with contextlib.suppress(Exception):
                    await delivery.ack()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Visible, and not a silently dead task: every waiting request fails now
            # and the next request subscribes again.
            log.error(
                "reply subscription on %s failed (%s: %s); %d waiting request(s) "
                "failed, the next request subscribes again",
                self.reply_topic,
                type(exc).__name__,
                exc,
                len(self._pending),
            )
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(
                        RequestError(
                            f"the reply subscription on {self.reply_topic!r} failed: "
                            f"{type(exc).__name__}: {exc}; retry the request"
                        )
                    )
            self._subscription = None

    def _resolve(self, reply: Envelope) -> None:
        request_id = reply.causationid or ""
        future = self._pending.get(request_id)
        if future is not None and not future.done():
            future.set_result(reply)
        elif request_id in self._timed_out:
            log.warning(
                "late reply %s (%s) to request %s dropped: the request had already timed out",
                reply.id,
                reply.type,
                request_id,
            )
        else:
            log.debug("reply %s to unknown request %s dropped", reply.id, request_id)

    def _remember_timed_out(self, request_id: str) -> None:
        self._timed_out[request_id] = None
        while len(self._timed_out) > _LATE_MEMORY:
            self._timed_out.popitem(last=False)

    async def close(self) -> None:
        """Fail waiting requests, close the reply subscription and stop its task."""
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RequestError("the bus stopped before the reply came"))
        subscription, pump = self._subscription, self._pump
        self._subscription = self._pump = None
        if subscription is not None:
            with contextlib.suppress(Exception):
                await subscription.close()
        await stop_task(pump)


@overload
def _read_reply(bus: EventBus, request: Envelope, reply: Envelope, reply_type: type[R]) -> R: ...
@overload
def _read_reply(bus: EventBus, request: Envelope, reply: Envelope, reply_type: None) -> Any: ...
def _read_reply(
    bus: EventBus, request: Envelope, reply: Envelope, reply_type: type[R] | None
) -> Any:
    if reply.type == ERROR_TYPE:
        error = json.loads(reply.data)
        if error["type"] == _UNENCODABLE:
            raise UnencodableReplyError(
                f"request {request.id} ({request.type}) succeeded in its handler, but the "
                f"reply could not be encoded: {error['message']}",
                error_type=_UNENCODABLE,
                error_message=str(error["message"]),
                request_id=request.id,
                command_type=request.type,
            )
        raise RequestFailedError(
            f"request {request.id} ({request.type}) failed in its handler: "
            f"{error['type']}: {error['message']}",
            error_type=str(error["type"]),
            error_message=str(error["message"]),
            request_id=request.id,
            command_type=request.type,
        )
    value: Any
    value = json.loads(reply.data) if reply.type == REPLY_TYPE else bus.registry.decode(reply)
    if reply_type is None or isinstance(value, reply_type):
        return value
    try:
        return TypeAdapter(reply_type).validate_python(value)
    except ValidationError as exc:
        raise ReplyTypeError(
            f"the reply to request {request.id} ({request.type}) is a {reply.type!r}, "
            f"not a {getattr(reply_type, '__name__', reply_type)}: {exc.errors()[0]['msg']}"
        ) from exc


@dataclass(frozen=True, slots=True)
class ReplyStep:
    """Middleware of the handling side: publish the handler's result (or its final
    error) to the request's ``replyto`` topic. See the module doc for the rules.

    ``commands``: the command types this subscription handles with a handler of
    their own class; a request of any other type (seen by a catch-all) is not
    answered here.
    """

    bus: EventBus
    commands: frozenset[str]

    async def __call__(self, ctx: Context, call_next: Next) -> None:
        extensions = ctx.envelope.extensions
        reply_to = extensions.get(REPLY_TO)
        if reply_to is None or _DEAD_LETTER in extensions or ctx.envelope.type not in self.commands:
            # A dead letter keeps the request's attributes, but its requester was
            # answered (the error reply) when it was dead-lettered; an observer of the
            # command's topic is not the command's handler.
            return await call_next(ctx)
        try:
            await call_next(ctx)
        except (RedeliveryRequested, InfrastructureError):
            raise  # tried again later: the requester waits for the final outcome
        except Exception as exc:
            error = {"type": type(exc).__name__, "message": str(exc)}
            await self._send(ctx, reply_to, ERROR_TYPE, to_json(error))
            raise  # and dead-lettered as usual
        if ctx.result is NO_RESULT:
            return  # the handler did not run (a duplicate): its first run replied
        try:
            if isinstance(ctx.result, Message):
                reply = self.bus.envelope_for(ctx.result, parent=ctx.envelope)
            else:
                reply = self._envelope(ctx, REPLY_TYPE, to_json(ctx.result))
        except Exception as exc:
            # The effect is done: answer with an error, and let the command be acked.
            what = (
                f"the handler of {ctx.envelope.type} succeeded (its effect is done), "
                f"but its return value, a {type(ctx.result).__name__}, cannot be "
                f"encoded as a reply ({type(exc).__name__}: {exc})"
            )
            ctx.logger.error(
                "%s; the requester gets an error reply. Return a Message, a "
                "pydantic model or JSON data",
                what,
            )
            error = {"type": _UNENCODABLE, "message": what}
            reply = self._envelope(ctx, ERROR_TYPE, to_json(error))
        await self._publish(ctx, reply_to, reply)

    def _envelope(self, ctx: Context, kind: str, data: bytes) -> Envelope:
        return Envelope.create(
            type=kind,
            source=self.bus.source,
            data=data,
            correlationid=ctx.correlation_id,
            causationid=ctx.envelope.id,
        )

    async def _send(self, ctx: Context, reply_to: str, kind: str, data: bytes) -> None:
        await self._publish(ctx, reply_to, self._envelope(ctx, kind, data))

    async def _publish(self, ctx: Context, reply_to: str, envelope: Envelope) -> None:
        try:
            await self.bus.publish_envelopes(reply_to, [envelope], wire_format="cloudevents")
        except Exception as exc:
            ctx.logger.warning(
                "reply to request %s on %s not sent (%s: %s); the requester will time out",
                ctx.envelope.id,
                reply_to,
                type(exc).__name__,
                exc,
            )


def reply_step(spec: SubscriptionSpec, bus: EventBus) -> ReplyStep | None:
    """The :class:`ReplyStep` of ``spec`` when it handles commands by their class,
    else ``None`` (a catch-all alone answers nothing: it may be anyone's observer of
    the topic; a batch subscription answers nothing either). Where it goes in the
    chain is decided by :func:`eventbus.middleware.chain.build_chain`."""
    commands = frozenset(
        name
        for name, h in spec.handlers.items()
        if h.message_class is not None and issubclass(h.message_class, Command)
    )
    if not commands or spec.batch is not None:
        return None
    return ReplyStep(bus, commands)


def with_replies(
    chain: list[Middleware], spec: SubscriptionSpec, bus: EventBus
) -> list[Middleware]:
    """Deprecated: ``build_chain`` places the reply step itself when given
    ``ChainDefaults(replies=...)``; this inserts it into a built ``chain`` just
    outside idempotency and retry, as before."""
    warnings.warn(
        "eventbus.requests.with_replies is deprecated: pass "
        "ChainDefaults(replies=lambda spec: reply_step(spec, bus)) to "
        "eventbus.middleware.chain.build_chain, which places the reply step",
        DeprecationWarning,
        stacklevel=2,
    )
    step = reply_step(spec, bus)
    if step is None:
        return chain
    at = next(
        (i for i, layer in enumerate(chain) if isinstance(layer, Idempotency | Retry)), len(chain)
    )
    return [*chain[:at], step, *chain[at:]]
