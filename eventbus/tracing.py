"""OpenTelemetry tracing: a producer span per publish, a consumer span per handling.

(Over 400 lines on purpose: one observer and the messaging conventions it writes, kept
beside each other, with the cheap paths for unsampled traces that must answer as the
SDK would, each beside the general path it shortens.)

Needs ``opentelemetry-api`` (``pip install eventbus[otel]``); the service brings the
SDK and its exporter. ::

    from eventbus.tracing import Tracing

    bus = Tracing().instrument(EventBus.from_env(source="billing"))

What it does, after the OpenTelemetry messaging semantic conventions:

- every publish (``publish``, ``publish_many``, ``send``, ``request``, a reply) is a
  ``send <topic>`` span (kind ``PRODUCER``), a child of the current span (else of
  the trace the envelope already carries, else a new trace); its context is written
  into each envelope's ``traceparent``/``tracestate``, so it crosses any broker;
- every handling is a ``process <topic>`` span (kind ``CONSUMER``), a child of the
  context the message carries, current while the handler runs (what it publishes
  is a child of it); a batch call is one span linked to each message's context,
  with ``messaging.batch.message_count``;
- retries, the redelivery asked for and the dead letter are span events
  (``eventbus.retry``, ``eventbus.redelivery``, ``eventbus.dead_letter``) with the
  reason, the attempt and the delay or dead-letter topic; a handling that did not
  succeed has status ``ERROR`` and ``error.type``.

A message whose trace its producer did not sample gets no span of its own here (what
a ``ParentBased`` sampler, the SDK's default, decides anyway), only its context made
current so what the handler calls stays in that unsampled trace; this saves the
SDK's cost of an unsampled span. ``Tracing(respect_parent_sampling=False)`` asks
the sampler for every message instead. A publish that starts a new trace asks the
SDK's sampler first (before ``EventBus.publish``/``publish_many`` build the envelopes,
through ``EventBus.trace_root``, so a dropped trace is built in, not copied in) and,
when it drops the trace, writes a fresh ``traceparent`` (not sampled) without making
a span; a sampled trace gets its spans as ever. Exactly the SDK's ratio sampler is
answered from the trace id's low bits, as it answers (:mod:`eventbus.tracing_roots`,
where a new trace is decided).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Collection, Sequence
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import (
        INVALID_SPAN_CONTEXT,
        Link,
        NonRecordingSpan,
        NoOpTracerProvider,
        ProxyTracerProvider,
        Span,
        SpanContext,
        SpanKind,
        Status,
        StatusCode,
        TraceFlags,
        TraceState,
    )
    from opentelemetry.trace.propagation import _SPAN_KEY
except ModuleNotFoundError as missing:  # the `otel` extra, not the library
    raise ModuleNotFoundError(
        f"eventbus.tracing needs opentelemetry-api, which the library alone does not install "
        f'({missing.name} is missing): pip install "eventbus[otel]"',
        name=missing.name,
    ) from missing

from eventbus import __version__
from eventbus.adapter import Delivery
from eventbus.context import Context
from eventbus.envelope import Envelope, _assemble
from eventbus.incidents import dead_lettered, incidents, outcome
from eventbus.middleware.base import (
    Observer,
    PassingPublishLayer,
    PublishNext,
    leading_publish_observers,
)
from eventbus.tracing_roots import _ROOT, _RootSampling
from eventbus.tracing_roots import _HandedOver as _HandedOver  # where it was, for its tests

if TYPE_CHECKING:
    from eventbus.bus import EventBus

__all__ = ["Tracing", "messaging_system"]

_SYSTEMS = {"amqp": "rabbitmq", "amqps": "rabbitmq", "sqs": "aws_sqs", "rediss": "redis"}
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_NO_STATE = TraceState()
# A valid version-00 traceparent whose sampled flag (the low bit) is clear.
_UNSAMPLED = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f][02468ace]")
_FLAGS = {f"{flags:02x}": TraceFlags(flags) for flags in range(256)}  # by their two hex digits


# An envelope's (traceparent, tracestate) as read: the context (None: none, or
# malformed; a _Carried: not sampled, parsed when asked), the OpenTelemetry context
# with it as the parent, and whether its trace is not sampled.
_Read = tuple[str | None, str | None, "SpanContext | _Carried | None", otel_context.Context, bool]


def messaging_system(url: str) -> str:
    """``messaging.system`` for a broker URL: the conventions' name where they have one
    (``kafka``, ``rabbitmq``, ``aws_sqs``), else the scheme (``nats``, ``redis``,
    ``memory``)."""
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower()
    return _SYSTEMS.get(scheme, scheme)


def _span_context(traceparent: str | None, tracestate: str | None) -> SpanContext | None:
    """The W3C trace context an envelope carries, or ``None`` (absent or malformed)."""
    if not traceparent:
        return None
    match = _TRACEPARENT.match(traceparent)
    if match is None:
        return None
    version, trace_hex, span_hex, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    state = TraceState.from_header([tracestate]) if tracestate else _NO_STATE
    return SpanContext(trace_id, span_id, True, _FLAGS[flags], state)  # is_remote: True


def _traceparent(span_context: SpanContext) -> tuple[str, str | None]:
    state = span_context.trace_state
    return (
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
        f"{int(span_context.trace_flags):02x}",
        (state.to_header() or None) if state else None,  # an empty one: no header to write
    )


class _Carried(NonRecordingSpan):
    """The remote parent of a message whose trace is not sampled, made current while
    its handler runs: its span context is parsed from the ``traceparent`` when
    something first asks for it (a publish, the handler's own instrumentation), not
    for every message (~1.5 us each)."""

    _context: SpanContext | None = None  # type: ignore[assignment]  # parsed when asked

    def __init__(self, traceparent: str, tracestate: str | None) -> None:
        # NonRecordingSpan's __init__ takes the parsed context; set later here.
        self.carried = (traceparent, tracestate)

    def get_span_context(self) -> SpanContext:
        found = self._context
        if found is None:
            found = _span_context(*self.carried)
            assert found is not None  # _UNSAMPLED matched it: a valid context
            self._context = found
        return found

    def __repr__(self) -> str:
        return f"_Carried({self.get_span_context()!r})"


def _in_context(span: Span) -> otel_context.Context:
    """An OpenTelemetry context holding ``span`` as the parent, and nothing else (what
    ``trace.set_span_in_context(span, _ROOT)`` makes, without its two calls)."""
    return _OtelContext({_SPAN_KEY: span})


def _context_variable() -> ContextVar[otel_context.Context] | None:
    """The context variable holding OpenTelemetry's current context, when its runtime
    context is (as by default) exactly the API's ``ContextVarsRuntimeContext``: its
    ``attach``, ``detach`` and ``get_current`` are this variable's ``set``, ``reset``
    and ``get`` behind two calls each, which the per-message steps here skip.
    ``None`` for another runtime context (``OTEL_PYTHON_CONTEXT``), used through the
    API as ever."""
    from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext

    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    variable = getattr(runtime, "_current_context", None)
    if type(runtime) is ContextVarsRuntimeContext and isinstance(variable, ContextVar):
        return variable
    return None


_CURRENT = _context_variable()


def _attach(context: otel_context.Context) -> object:
    """``otel_context.attach``; inlined where it runs per message."""
    return otel_context.attach(context) if _CURRENT is None else _CURRENT.set(context)


def _detach(token: Any) -> None:
    """``otel_context.detach``: a token that cannot be reset is logged by it, as ever."""
    if _CURRENT is None:
        otel_context.detach(token)
        return
    try:
        _CURRENT.reset(token)
    except Exception:  # used already, or from another context: as the API reports it
        otel_context.detach(token)


def _stamped(
    envelopes: Sequence[Envelope], traceparent: str, tracestate: str | None
) -> list[Envelope]:
    """``envelopes`` carrying the given trace context (copies: envelopes never change;
    one already carrying it is kept). Runs per message published: one loop, no call
    per envelope but the copy's."""
    return [
        e
        if e.traceparent == traceparent and e.tracestate == tracestate
        else _assemble(
            e.id,
            e.type,
            e.source,
            e.time,
            e.data,
            e.datacontenttype,
            e.dataschema,
            e.subject,
            e.specversion,
            e.dataversion,
            e.correlationid,
            e.causationid,
            e.partitionkey,
            traceparent,
            tracestate,
            e.extensions,
        )
        for e in envelopes
    ]


_new_span = object.__new__
# The API's global tracer provider, None until one is set (a service configuring the
# SDK sets it; one named by $OTEL_PYTHON_TRACER_PROVIDER is set by the first
# get_tracer_provider(), which trace.get_tracer() in Tracing() makes): read per
# message while nothing records, instead of asking get_tracer_provider(). Where a
# version of the API has no such variable, getattr() answers the module: asked as ever.
_GLOBAL = "_TRACER_PROVIDER"
_Token = Token
_OtelContext = otel_context.Context


class Tracing:
    """Spans for every publish and handling of the buses it instruments (see the module
    doc). ``tracer_provider`` defaults to OpenTelemetry's global one."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        respect_parent_sampling: bool = True,
    ) -> None:
        self.tracer = trace.get_tracer("eventbus", __version__, tracer_provider=tracer_provider)
        self.respect_parent_sampling = respect_parent_sampling
        self._provider = tracer_provider
        # Known to record: a provider was given, or the global one was seen set.
        self._on = tracer_provider is not None and not isinstance(
            tracer_provider, NoOpTracerProvider
        )
        # The context last read from an envelope (a batch's messages share one).
        self._last: _Read = (None, None, None, _ROOT, False)
        self.roots = _RootSampling.of(self.tracer) if self._on else None

    def instrument(self, bus: EventBus) -> EventBus:
        """Trace ``bus``'s publishes and handlings (call before ``start()``); returns it.

        Adds the consumer step first in ``bus.middleware`` (right after correlation, so
        its span covers retries and the dead letter) and the producer step first in
        ``bus.publish_middleware`` (so an outbox stores envelopes with their context),
        after any :class:`~eventbus.middleware.base.PublishObserver` leading it (metrics).
        """
        if isinstance(self._provider, NoOpTracerProvider):
            return bus  # a provider that never records: nothing to install, nothing to cost
        system = messaging_system(bus.adapter.url)
        bus.middleware.insert(0, ProcessSpans(self, system))
        send = SendSpans(self, system)
        # First but for the observers there (metrics: they only watch, and outermost
        # the bus runs them without a coroutine of theirs).
        bus.publish_middleware.insert(leading_publish_observers(bus.publish_middleware), send)
        bus.trace_root = send.new_trace
        return bus

    def active(self) -> bool:
        """Whether a tracer provider that can record is set up: OpenTelemetry's global
        one stays a placeholder until the service configures the SDK, and until then
        every step here does nothing (a message costs one call)."""
        if self._on:
            return True
        if self._provider is not None:
            return False  # a NoOpTracerProvider was given
        if isinstance(trace.get_tracer_provider(), ProxyTracerProvider | NoOpTracerProvider):
            return False
        self._on = True  # a global provider, once set, stays set
        self.tracer = trace.get_tracer("eventbus", __version__)  # its own, not the proxy
        self.roots = _RootSampling.of(self.tracer)
        return True

    def parent_of(self, envelope: Envelope) -> tuple[SpanContext | None, otel_context.Context]:
        """The trace context ``envelope`` carries (``None``: none, or malformed), and an
        OpenTelemetry context holding it as the parent (an empty one when ``None``)."""
        last = self.read(envelope)
        found = last[2]
        if isinstance(found, _Carried):
            found = found.get_span_context()
        return found, last[3]

    def read(self, envelope: Envelope) -> _Read:
        """What ``envelope`` carries, as :meth:`parent_of` answers, kept for the next
        envelope (a batch's messages share theirs). A version-00 context whose trace is
        not sampled is parsed only once something asks for it: most handlings need only
        to know that no span will be made (see :class:`_Carried`)."""
        last = self._last
        traceparent, tracestate = envelope.traceparent, envelope.tracestate
        if traceparent == last[0] and tracestate == last[1]:
            return last
        if traceparent and _UNSAMPLED.fullmatch(traceparent):
            carried = _new_span(_Carried)  # _Carried(traceparent, tracestate), without a call
            carried.carried = (traceparent, tracestate)
            last = (traceparent, tracestate, carried, _in_context(carried), True)
        else:
            found = _span_context(traceparent, tracestate)
            parent = _ROOT if found is None else _in_context(NonRecordingSpan(found))
            unsampled = found is not None and not found.trace_flags.sampled
            last = (traceparent, tracestate, found, parent, unsampled)
        self._last = last
        return last


class ProcessSpans(Observer):
    """The consumer side of :class:`Tracing` on one bus: a ``process`` span per handling."""

    def __init__(self, tracing: Tracing, system: str) -> None:
        self.tracing = tracing
        self.system = system
        self._bases: dict[tuple[str, str], dict[str, Any]] = {}
        # The context variable, when an unsampled parent's context may be set on it
        # directly (begin()'s short cut; its mark is then the variable's token alone).
        self._quick = _CURRENT if tracing.respect_parent_sampling else None

    def _base(self, topic: str, group: str) -> dict[str, Any]:
        base = self._bases.get((topic, group))
        if base is None:
            base = self._bases[(topic, group)] = {
                "messaging.system": self.system,
                "messaging.destination.name": topic,
                "messaging.consumer.group.name": group,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
            }
        return base

    def begin(self, ctx: Context) -> object:
        tracing = self.tracing
        if not (tracing._on or (getattr(trace, _GLOBAL, trace) is not None and tracing.active())):
            return None  # no SDK set up: the API's global provider unset, not even asked
        envelope = ctx.envelope
        last = tracing._last  # read(), its common cases inlined: this runs per message
        traceparent, tracestate = envelope.traceparent, envelope.tracestate
        if traceparent != last[0] or tracestate != last[1]:
            quick = self._quick
            if quick is not None and traceparent and _UNSAMPLED.fullmatch(traceparent):
                # Unsampled upstream (each message its own trace, as lone publishes give):
                # no span, but what the handler calls stays in that trace, unsampled.
                carried = _new_span(_Carried)  # as read() makes it, without its calls
                carried.carried = (traceparent, tracestate)
                parent_context = _OtelContext({_SPAN_KEY: carried})
                tracing._last = (traceparent, tracestate, carried, parent_context, True)
                return quick.set(parent_context)  # a token alone: see end()
            last = tracing.read(envelope)
        parent_context = last[3]
        if last[4] and tracing.respect_parent_sampling:
            # Unsampled upstream: no span, but what the handler calls stays unsampled.
            quick = self._quick
            if quick is not None:
                return quick.set(parent_context)
            return (None, otel_context.attach(parent_context))
        span = self.tracing.tracer.start_span(
            f"process {ctx.topic}",
            context=parent_context,
            kind=SpanKind.CONSUMER,
            attributes=self._base(ctx.topic, ctx.group),
        )
        if not span.is_recording():
            if not span.get_span_context().is_valid:
                return None  # nothing records or propagates (no SDK configured)
            # Not sampled: nothing to write down, but its context goes on.
            return (None, _attach(trace.set_span_in_context(span)))
        # What only a recorded span needs, set once it is known to be one.
        attributes: dict[str, Any] = {
            "messaging.message.id": envelope.id,
            "messaging.message.conversation_id": ctx.correlation_id,
            "eventbus.event.type": envelope.type,
        }
        if ctx.delivery.attempt > 1:
            attributes["eventbus.delivery.attempt"] = ctx.delivery.attempt
        span.set_attributes(attributes)
        return (span, _attach(trace.set_span_in_context(span)))

    def end(self, ctx: Context, mark: object, failure: BaseException | None) -> None:
        if mark is None:
            return
        if type(mark) is _Token:  # begin()'s short cut: an unsampled parent's context
            try:
                self._quick.reset(mark)  # type: ignore[union-attr]
            except Exception:  # used already, or from another context: as the API reports it
                otel_context.detach(mark)
            return
        span: Span | None
        token: object
        span, token = mark  # type: ignore[misc]
        current = _CURRENT  # _detach(), inlined
        if current is None:
            otel_context.detach(token)  # type: ignore[arg-type]
        else:
            try:
                current.reset(token)  # type: ignore[arg-type]
            except Exception:  # used already, or from another context: as the API reports it
                otel_context.detach(token)  # type: ignore[arg-type]
        if span is None:
            return
        _finish(span, ctx, failure)

    def begin_batch(self, contexts: Sequence[Context]) -> object:
        if not self.tracing.active():
            return None
        first = contexts[0]
        links = [
            Link(parent)
            for ctx in contexts
            if (parent := self.tracing.parent_of(ctx.envelope)[0]) is not None
        ]
        attributes = dict(self._base(first.topic, first.group))
        attributes["messaging.batch.message_count"] = len(contexts)
        span = self.tracing.tracer.start_span(
            f"process {first.topic}",
            context=_ROOT,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
        )
        return (span, _attach(trace.set_span_in_context(span)))

    def end_batch(
        self,
        contexts: Sequence[Context],
        mark: object,
        failed: Collection[int],
        failure: BaseException | None,
    ) -> None:
        if mark is None:
            return
        span: Span
        token: object
        span, token = mark  # type: ignore[misc]
        _detach(token)
        if failed:
            span.set_attribute("eventbus.batch.failed_count", len(failed))
        if failure is not None:
            # The failed events are handled again one by one, each in a span of its own.
            _failed(span, failure, record=True)
        span.end()

    def undecodable(self, delivery: Delivery, dead_lettered: bool) -> None:
        if not self.tracing.active():
            return
        attributes = dict(self._base(delivery.topic, delivery.group))
        if delivery.message_id:
            attributes["messaging.message.id"] = delivery.message_id
        span = self.tracing.tracer.start_span(
            f"process {delivery.topic}",
            context=_ROOT,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        )
        reason = f"undecodable: {delivery.decode_error}"
        span.add_event(
            "eventbus.dead_letter" if dead_lettered else "eventbus.rejected",
            {"eventbus.reason": reason},
        )
        span.set_attribute("error.type", "DecodeError")
        span.set_attribute("eventbus.outcome", "dead_lettered" if dead_lettered else "error")
        span.set_status(Status(StatusCode.ERROR, reason))
        span.end()


def _finish(span: Span, ctx: Context, failure: BaseException | None) -> None:
    """Events for what happened, the outcome and the status; then end ``span``."""
    found = incidents(ctx)
    for incident in found:
        attributes: dict[str, Any] = {
            "eventbus.reason": incident.reason,
            "eventbus.attempt": incident.attempt,
            "error.type": incident.error_type,
        }
        if incident.delay is not None:
            attributes["eventbus.delay_seconds"] = incident.delay
        if incident.target is not None:
            attributes["eventbus.dead_letter.topic"] = incident.target
        span.add_event(f"eventbus.{incident.kind}", attributes, timestamp=incident.at)
    ended = outcome(ctx, failure)
    span.set_attribute("eventbus.outcome", ended)
    if ended == "dead_lettered":
        dead = dead_lettered(ctx)
        assert dead is not None
        span.set_attribute("error.type", dead.error_type)
        span.set_status(Status(StatusCode.ERROR, dead.reason))
    elif ended == "redelivery":
        assert failure is not None
        if not any(incident.kind == "redelivery" for incident in found):
            # Asked for by another step (an idempotency lease held elsewhere).
            span.add_event("eventbus.redelivery", {"eventbus.reason": str(failure)})
        _failed(span, failure.__cause__ or failure, record=False)
    elif ended == "error":
        assert failure is not None
        _failed(span, failure, record=True)
    elif ended == "cancelled":
        span.add_event("eventbus.cancelled", {"eventbus.reason": "the bus is stopping"})
    span.end()


def _failed(span: Span, failure: BaseException, *, record: bool) -> None:
    if record:
        span.record_exception(failure)
    span.set_attribute("error.type", type(failure).__name__)
    span.set_status(Status(StatusCode.ERROR, f"{type(failure).__name__}: {failure}"))


class SendSpans(PassingPublishLayer):
    """The producer side of :class:`Tracing` on one bus: publish middleware making a
    ``send`` span per publish and writing its context into the envelopes."""

    def __init__(self, tracing: Tracing, system: str) -> None:
        self.tracing = tracing
        self.system = system
        self._bases: dict[str, dict[str, Any]] = {}
        self._fresh: str | None = None  # the traceparent new_trace() wrote last

    def new_trace(self, topic: str) -> tuple[str, str | None] | None:
        """What the envelopes of a publish to ``topic`` that take no trace context from
        their parent carry, decided before they are built (``EventBus.trace_root``):
        outside any span, a new trace the sampler drops gets its ``traceparent`` here
        and the envelopes go on as built (no copy to carry it); ``None`` leaves it to
        the publish step (a current span, no SDK, or a trace to record, whose id the
        sampler was asked about is handed to ``start_span``)."""
        tracing = self.tracing
        roots = tracing.roots
        if roots is None:  # set once a tracer that can record is known (_on)
            if getattr(trace, _GLOBAL, trace) is None or not tracing.active():
                return None  # no SDK set up (see ProcessSpans.begin)
            if tracing.roots is None:
                return None
            roots = tracing.roots
        variable = _CURRENT
        span = trace.get_current_span() if variable is None else variable.get().get(_SPAN_KEY)
        if span is not None and isinstance(span, Span) and span.get_span_context().is_valid:
            return None  # a child of the current span: the publish step's
        dropped = roots.dropped(topic, self._base)
        if dropped is not None:
            self._fresh = dropped[0]
        return dropped

    def _base(self, topic: str) -> dict[str, Any]:
        base = self._bases.get(topic)
        if base is None:
            if len(self._bases) > 1000:  # topics made up per message: keep it bounded
                self._bases.clear()
            base = self._bases[topic] = {
                "messaging.system": self.system,
                "messaging.destination.name": topic,
                "messaging.operation.type": "send",
                "messaging.operation.name": "publish",
            }
        return base

    def passes(self, topic: str, envelopes: Sequence[Envelope]) -> bool:
        """Whether :meth:`__call__` would only hand the envelopes on: they carry the
        new trace :meth:`new_trace` wrote (the sampler dropped it) and no span is
        current, or nothing can record (no SDK set up), or there are none. The bus
        then publishes them without calling this layer."""
        if not envelopes:
            return True
        if envelopes[0].traceparent is self._fresh is not None:
            variable = _CURRENT
            return variable is not None and variable.get().get(_SPAN_KEY) is None
        tracing = self.tracing
        return not (
            tracing._on or (getattr(trace, _GLOBAL, trace) is not None and tracing.active())
        )

    def __call__(
        self, topic: str, envelopes: Sequence[Envelope], call_next: PublishNext
    ) -> Awaitable[None]:
        """A plain call: where nothing is to be done (tracing off, or the envelopes built
        carrying a new trace the sampler dropped) it hands back ``call_next``'s own
        awaitable, without a coroutine of its own; else :meth:`_send`'s."""
        if self.passes(topic, envelopes):  # the bus asks first where it can
            return call_next(topic, envelopes)
        variable = _CURRENT  # trace.get_current_span(), inlined: this runs per publish
        current_span = (
            trace.get_current_span() if variable is None else variable.get().get(_SPAN_KEY)
        )
        if current_span is None:  # outside any span (with the context variable read)
            traceparent = envelopes[0].traceparent
            if traceparent is not None and traceparent is self._fresh:
                return call_next(topic, envelopes)  # new_trace() wrote it: dropped, no span
        return self._send(topic, envelopes, call_next, current_span)

    async def _send(
        self,
        topic: str,
        envelopes: Sequence[Envelope],
        call_next: PublishNext,
        current_span: object,
    ) -> None:
        """The publish's ``send`` span, or the trace its envelopes are to carry."""
        tracing = self.tracing
        if type(current_span) is _Carried and tracing.respect_parent_sampling:
            # In the handler of a message whose trace is not sampled: that trace goes on,
            # as it came (what _traceparent() would write again, without parsing it).
            traceparent, tracestate = current_span.carried
            if tracestate is None:  # else written as parsed: TraceState may normalise it
                await call_next(topic, _stamped(envelopes, traceparent, None))
                return
        current = (
            current_span.get_span_context()
            if current_span is not None and isinstance(current_span, Span)
            else INVALID_SPAN_CONTEXT
        )
        first = envelopes[0]
        links: list[Link] = []
        if current.is_valid:
            parent_context = None  # the current span's
            if tracing.respect_parent_sampling and not current.trace_flags.sampled:
                await call_next(topic, self._stamp(envelopes, current))
                return
            carried = tracing.parent_of(first)[0]
            if carried is not None and carried.trace_id != current.trace_id:
                links.append(Link(carried))  # built in another trace (a saga's held message)
        else:
            if first.traceparent is None:  # nothing to read
                carried, parent_context = None, _ROOT
            elif first.traceparent is self._fresh:  # new_trace() wrote it: see __call__
                await call_next(topic, envelopes)
                return
            else:
                carried, parent_context = tracing.parent_of(first)
            if carried is None:
                # A new trace: when the sampler drops it, a traceparent without a span.
                roots = tracing.roots
                dropped = roots.dropped(topic, self._base) if roots else None
                if dropped is not None:
                    traceparent, tracestate = dropped
                    await call_next(topic, _stamped(envelopes, traceparent, tracestate))
                    return
            elif not carried.trace_flags.sampled and tracing.respect_parent_sampling:
                await call_next(topic, envelopes)  # they carry it already
                return
        span = tracing.tracer.start_span(
            f"send {topic}",
            context=parent_context,
            kind=SpanKind.PRODUCER,
            attributes=self._base(topic),
            links=links,
        )
        if span.is_recording():
            attributes: dict[str, Any]
            if len(envelopes) == 1:
                attributes = {"messaging.message.id": first.id, "eventbus.event.type": first.type}
                if first.correlationid:
                    attributes["messaging.message.conversation_id"] = first.correlationid
            else:
                attributes = {"messaging.batch.message_count": len(envelopes)}
            span.set_attributes(attributes)
        context = span.get_span_context()
        try:
            await call_next(
                topic, self._stamp(envelopes, context) if context.is_valid else envelopes
            )
        except BaseException as exc:
            _failed(span, exc, record=True)
            span.end()
            raise
        span.end()

    @staticmethod
    def _stamp(envelopes: Sequence[Envelope], context: SpanContext) -> list[Envelope]:
        traceparent, tracestate = _traceparent(context)
        return _stamped(envelopes, traceparent, tracestate)
