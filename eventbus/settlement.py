"""How a runner settles deliveries: the settlement part of :class:`~eventbus.runner.Runner`.

Acks and nacks that survive a failing broker (a failed ack hands the message back;
a failed nack is logged, the broker redelivers once the connection is back),
undecodable messages (dead-lettered, or rejected when dead letters are off), and
the redelivery of a message whose failure was outside its handler.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from eventbus.adapter import Adapter, Delivery
from eventbus.backoff import Backoff
from eventbus.deadletters import dead_letter_undecodable
from eventbus.envelope import Envelope
from eventbus.spec import SubscriptionSpec
from eventbus.wire import Incoming

log = logging.getLogger("eventbus.runner")

REDELIVERY_BACKOFF = Backoff(initial=1.0, max_delay=30.0)
"""Delays of redeliveries after failures outside the handler, by delivery count."""


_TRIED = "not a CloudEvent "


class ForeignMessages:
    """Reads what the adapter could not read as a CloudEvent with the subscription's
    wire format (:mod:`eventbus.wire`), or says how to accept it when it has none."""

    def __init__(self, spec: SubscriptionSpec, url: str) -> None:
        self.wire = spec.wire
        self.topic = spec.topic
        self.broker = url.partition("://")[0]
        # The class subscribed, when there is one: the type of a message saying none.
        only = spec.handlers if spec.catch_all is None and len(spec.handlers) == 1 else {}
        self.default_type = next(iter(only), None)

    def read(self, delivery: Delivery) -> Envelope | None:
        """The envelope of ``delivery``'s raw bytes, set on it; ``None`` (its
        ``decode_error`` saying why) when it is to be dead-lettered. Read once: the
        lanes read a delivery before routing it, the runner before running it."""
        wire = self.wire
        if delivery.envelope is not None:
            return delivery.envelope
        if (delivery.decode_error or "").startswith(_TRIED):
            return None  # read already, and unreadable
        if wire is None:
            if delivery.raw is not None:
                delivery.decode_error = (
                    f"{delivery.decode_error}; this subscription reads CloudEvents only: "
                    "subscribe with wire_format='plain' (or 'faststream') to accept "
                    "messages whose body is the event's data"
                )
            return None
        incoming = Incoming(
            delivery.topic, delivery.message_id, delivery.stable_id, self.default_type, self.broker
        )
        try:
            envelope = wire.decode(delivery.raw or b"", delivery.raw_headers or {}, incoming)
        except Exception as exc:
            delivery.decode_error = (
                f"{_TRIED}({delivery.decode_error}), nor readable as wire format "
                f"{getattr(wire, 'name', type(wire).__name__)!r}: {type(exc).__name__}: {exc}"
            )
            return None
        delivery.envelope = envelope
        return envelope


class Settlement:
    """Settles deliveries of one subscription on ``adapter``.

    ``dead_letter``: whether undecodable messages are kept on the DLQ (else rejected
    and logged); ``redelivery_backoff``: the delays of redeliveries after failures
    outside the handler, by the broker's delivery count; ``observers``: the chain's
    observing layers, told of each undecodable message.
    """

    def __init__(
        self,
        adapter: Adapter,
        *,
        dead_letter: bool = True,
        redelivery_backoff: Backoff | None = None,
        observers: Sequence[Any] = (),
    ) -> None:
        self.adapter = adapter
        self.observers = observers
        self.dead_letter = dead_letter
        self.redelivery_backoff = redelivery_backoff or REDELIVERY_BACKOFF

    async def ack(self, delivery: Delivery) -> None:
        """Ack ``delivery`` unless settled; a failed ack hands it back for redelivery."""
        if delivery.settled is not None:
            return
        try:
            await delivery.ack()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self.ack_failed(delivery, exc)

    async def ack_failed(self, delivery: Delivery, exc: Exception) -> None:
        """The broker did not record the ack of ``delivery``: hand it back."""
        # As if the connection were lost for this delivery. Hand it back so it comes
        # again (a duplicate, which idempotency absorbs) instead of holding its key
        # and prefetch slot.
        log.warning(
            "ack of message %s on %s/%s failed (%s: %s); it will be redelivered",
            delivery.message_id or "?",
            delivery.topic,
            delivery.group,
            type(exc).__name__,
            exc,
        )
        await self.nack(delivery, 0.0)

    async def nack(self, delivery: Delivery, delay: float) -> None:
        """Ask the broker to redeliver ``delivery`` after ``delay`` seconds (once)."""
        if delivery.settled is not None:
            return  # at-most-once: already acked, the failure is final by design
        try:
            await delivery.nack(delay)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "nack of message %s on %s/%s failed (%s: %s); the broker redelivers "
                "it once the connection is back",
                delivery.message_id or "?",
                delivery.topic,
                delivery.group,
                type(exc).__name__,
                exc,
            )

    async def redeliver(
        self, delivery: Delivery, envelope: Envelope | None, exc: Exception
    ) -> None:
        """A failure outside the handler (the idempotency store, the dead-letter
        publish, the broker) or a final failure with dead letters off: redeliver,
        backing off with the broker's delivery count so an outage is not hammered."""
        delay = self.redelivery_backoff.delay(delivery.attempt)
        log.error(
            "message %s on %s/%s could not be handled or dead-lettered (%s: %s); "
            "asking the broker to redeliver it in %.1fs",
            envelope.id if envelope else delivery.message_id,
            delivery.topic,
            delivery.group,
            type(exc).__name__,
            exc,
            delay,
            exc_info=exc,
        )
        await self.nack(delivery, delay)

    async def undecodable(self, delivery: Delivery) -> None:
        """Dead-letter (or, with dead letters off, reject) a message that did not decode."""
        if not self.dead_letter:
            # Dead letters are off for this bus: give the message up visibly rather
            # than loop on it (the broker's own DLQ takes it where it has one).
            log.error(
                "undecodable message %s on %s/%s rejected (dead letters are off): %s",
                delivery.message_id or "?",
                delivery.topic,
                delivery.group,
                delivery.decode_error,
            )
            await delivery.reject()
            self._tell(delivery, dead_lettered=False)
            return
        await dead_letter_undecodable(self.adapter, delivery)
        log.error(
            "undecodable message on %s/%s dead-lettered: %s",
            delivery.topic,
            delivery.group,
            delivery.decode_error,
        )
        self._tell(delivery, dead_lettered=True)
        await self.ack(delivery)

    def _tell(self, delivery: Delivery, *, dead_lettered: bool) -> None:
        for observer in self.observers:
            try:
                observer.undecodable(delivery, dead_lettered)
            except Exception as exc:
                log.error(
                    "observer %r failed on an undecodable message (%s: %s)",
                    observer,
                    type(exc).__name__,
                    exc,
                    exc_info=exc,
                )
