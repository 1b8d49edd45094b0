"""Tracing's new traces decided before any span is made (see :mod:`eventbus.tracing`).

The SDK tracer's sampler is asked for a new trace before the envelopes of a publish are
built: a dropped trace costs a fresh ``traceparent``, a recorded one gets its
span from ``start_span`` with the trace id the sampler was asked about. Exactly the
SDK's ratio sampler and random id generator are answered as they answer, without their
calls (see :func:`_ratio_bound`, :func:`_random_bits`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from threading import get_ident
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind

__all__: list[str] = []

_ROOT = otel_context.Context()  # no parent: a new trace, whatever the task's context holds


class _RootSampling:
    """The SDK tracer's sampler asked for a new trace before any span is made: a
    dropped trace costs a fresh ``traceparent`` only, and a recorded one gets its span
    from ``start_span`` with the trace id the sampler was asked about (handed over by
    the tracer's id generator, wrapped here; the SDK's samplers decide by trace id,
    so they decide the same again)."""

    def __init__(self, tracer: Any) -> None:
        self.tracer = tracer
        self.sampler = tracer.sampler
        # The SDK's switch for a tracer turned off by its configurator (private: honoured
        # while the SDK has it, as start_span does).
        self.enabled = getattr(tracer, "_is_enabled", None)
        # Exactly the SDK's _is_enabled reads its tracer's config: read here, without it.
        self.configured = tracer if _reads_config(tracer) else None
        ids = tracer.id_generator
        if not isinstance(ids, _HandedOver):  # the provider's tracer "eventbus" is shared
            ids = tracer.id_generator = _HandedOver(ids)  # by every Tracing on it
        self.ids: _HandedOver = ids
        random_ids = getattr(self.ids.inner, "is_trace_id_random", None)
        self.flags = f"{0x02 if random_ids is not None and random_ids() else 0:02x}"
        self.bound = _ratio_bound(self.sampler)
        # The SDK's RandomIdGenerator is random.getrandbits behind a call: asked directly.
        self.random_bits = _random_bits(self.ids.inner)
        # (the SDK tracer's config, the ratio bound, "-" + the flags) when a new trace
        # is decided by exactly the SDK's config, ratio sampler and random ids: what
        # quick() needs, else None (then dropped() decides every time).
        self.quick: tuple[Any, int, str] | None = (
            (self.configured, self.bound, f"-{self.flags}")
            if self.configured is not None and self.bound is not None and self.random_bits
            else None
        )

    @classmethod
    def of(cls, tracer: object) -> _RootSampling | None:
        """For an SDK tracer (a sampler and an id generator to ask), else ``None``."""
        sdk: Any = tracer
        if callable(getattr(getattr(sdk, "sampler", None), "should_sample", None)) and callable(
            getattr(getattr(sdk, "id_generator", None), "generate_trace_id", None)
        ):
            return cls(sdk)
        return None

    def dropped(
        self, topic: str, attributes: Callable[[str], dict[str, Any]]
    ) -> tuple[str, str | None] | None:
        """A new trace's ``(traceparent, tracestate)`` when the sampler drops the span
        ``send <topic>`` (with the ``attributes`` of the topic); ``None`` when it records
        it (or the tracer is disabled): then ``start_span`` runs next."""
        quick = self.quick
        if quick is not None and self.ids.handed is None:
            config, bound, flags = quick
            if config._tracer_config.is_enabled:
                # Both ids in one draw: the SDK's generator asks getrandbits(128), then
                # (64) for the span, and Mersenne Twister gives (192) as those two
                # draws' words in the same order: the trace id is the low 128 bits (a
                # recorded trace's span id is handed to start_span with it).
                bits = _getrandbits(192)
                trace_id = bits & _LOW_128
                span_id = bits >> 128
                if trace_id and span_id:  # else (2**-64) decided again, drawn again
                    if trace_id & _LOW_64 < bound:  # recorded: start_span's two ids
                        self.ids.hand(trace_id, span_id)
                        return None
                    ids = bits.to_bytes(24, "big").hex()  # the span id's hex first
                    return (f"00-{ids[16:]}-{ids[:16]}{flags}", None)
        return self._decided(topic, attributes)

    def _decided(
        self, topic: str, attributes: Callable[[str], dict[str, Any]]
    ) -> tuple[str, str | None] | None:
        """A new trace's ``(traceparent, tracestate)`` when the sampler drops the span
        ``send <topic>`` (with the ``attributes`` of the topic); ``None`` when it records
        it (or the tracer is disabled), without :attr:`quick`'s short cut."""
        configured = self.configured
        if configured is not None:
            if not configured._tracer_config.is_enabled:
                return None
        elif self.enabled is not None and not self.enabled():
            return None
        ids = self.ids
        handed = ids.handed
        if handed is not None and handed[0] == get_ident():
            return None  # decided (to record) before the envelopes were built: start_span's
        bound = self.bound
        if bound is not None:  # the SDK's TraceIdRatioBased decides (see _ratio_bound)
            random_bits = self.random_bits
            trace_id = random_bits(128) if random_bits else ids.inner.generate_trace_id()
            if trace_id & _LOW_64 < bound and trace_id:
                ids.hand(trace_id)
                return None
            span_id = random_bits(64) if random_bits else ids.inner.generate_span_id()
            if trace_id and span_id:  # else (2**-64) asked again, as the SDK's generator does
                # Its answer carries the parent's trace state: a new trace has none. (The
                # ids' hex by bytes.hex: a third of a zero-padded format's cost.)
                traceparent = (
                    f"00-{trace_id.to_bytes(16, 'big').hex()}-"
                    f"{span_id.to_bytes(8, 'big').hex()}-{self.flags}"
                )
                return (traceparent, None)
            return self._decided(topic, attributes)
        trace_id = ids.inner.generate_trace_id()
        result = self.sampler.should_sample(
            _ROOT, trace_id, f"send {topic}", SpanKind.PRODUCER, attributes(topic)
        )
        if result.decision.is_recording():
            ids.hand(trace_id)  # start_span's trace, as decided
            return None
        state = result.trace_state
        return (
            f"00-{trace_id:032x}-{ids.inner.generate_span_id():016x}-{self.flags}",
            (state.to_header() or None) if state else None,
        )


_LOW_64 = (1 << 64) - 1
_LOW_128 = (1 << 128) - 1
_getrandbits = random.getrandbits


def _reads_config(tracer: object) -> bool:
    """Whether ``tracer._is_enabled()`` is exactly the SDK's, which answers
    ``tracer._tracer_config.is_enabled`` (a frame per new trace saved by reading it)."""
    try:
        from opentelemetry.sdk.trace import Tracer
    except ImportError:
        return False
    method = getattr(type(tracer), "_is_enabled", None)
    config = getattr(tracer, "_tracer_config", None)
    return method is Tracer._is_enabled and isinstance(getattr(config, "is_enabled", None), bool)


def _ratio_bound(sampler: object) -> int | None:
    """When a new trace is decided by exactly the SDK's ``TraceIdRatioBased`` (itself,
    or the root of exactly its ``ParentBased`` or ``ParentBasedTraceIdRatio``, the
    classes ``OTEL_TRACES_SAMPLER`` names), the bound its ``should_sample`` compares
    the trace id's low 64 bits with: the same decision without its dozen calls and
    ``SamplingResult`` (~2 us per new trace). ``None`` for any other sampler (a
    subclass included), which is asked as ever."""
    try:
        from opentelemetry.sdk.trace import sampling
    except ImportError:  # an SDK tracer without the SDK's samplers
        return None
    if type(sampler) in (sampling.ParentBased, sampling.ParentBasedTraceIdRatio):
        sampler = getattr(sampler, "_root", None)  # its sampler for a trace without parent
    if type(sampler) is not sampling.TraceIdRatioBased:
        return None
    bound = getattr(sampler, "bound", None)
    if getattr(sampler, "TRACE_ID_LIMIT", None) != _LOW_64 or not isinstance(bound, int):
        return None  # not the SDK's rule as read here
    return bound


def _random_bits(ids: object) -> Callable[[int], int] | None:
    """``random.getrandbits`` when ``ids`` is exactly the SDK's ``RandomIdGenerator``
    (whose ids it draws, asking again for an all-zero one), else ``None``."""
    try:
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
    except ImportError:
        return None
    return random.getrandbits if type(ids) is RandomIdGenerator else None


class _HandedOver:
    """An id generator giving the trace id handed to it once, to the thread that
    handed it (another thread starting a span on the same tracer meanwhile gets a
    fresh one), else its inner one's; and the span id handed with it, to the next
    span id asked for by that thread once the trace id was taken."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.handed: tuple[int, int, int | None] | None = None  # (thread, trace id, span id)
        self.span: tuple[int, int] | None = None  # (thread, span id), the trace id taken

    def hand(self, trace_id: int, span_id: int | None = None) -> None:
        self.handed = (get_ident(), trace_id, span_id)

    def generate_trace_id(self) -> int:
        handed = self.handed
        if handed is not None and handed[0] == get_ident():
            self.handed = None
            if handed[2] is not None:
                self.span = (handed[0], handed[2])
            return handed[1]
        return int(self.inner.generate_trace_id())

    def generate_span_id(self) -> int:
        span = self.span
        if span is not None and span[0] == get_ident():
            self.span = None
            return span[1]
        return int(self.inner.generate_span_id())

    def is_trace_id_random(self) -> bool:
        random_ids = getattr(self.inner, "is_trace_id_random", None)
        return bool(random_ids is not None and random_ids())
