"""Publishing to JetStream: topics, one group's route, raw bytes.

Every message of a batch is in flight at once on the one connection, written as
one buffer, with its PubAck counted into one future per batch
(:class:`~eventbus_nats.wire.PubAcks`). Sizes are checked before anything is
sent, against the adapter's limit (``max_message_bytes`` lowered to the
server's ``max_payload``) and the stream's own ``max_msg_size``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from nats.errors import NoRespondersError
from nats.js.errors import APIError, NotFoundError

from eventbus.adapter_names import broker_dedupe_id
from eventbus.adapters_util import Mapped, translate
from eventbus.envelope import Envelope
from eventbus.errors import (
    BatchPublishError,
    BrokerConnectionError,
    MessageTooLargeError,
    PublishError,
)
from eventbus.raw_message import RawMessage

from .codec import check_raw_size, encode, encode_block, raw_block, wire_size
from .connection import CONNECTION_ERRORS
from .provision import check_subject
from .wire import PubAcks

if TYPE_CHECKING:
    from .adapter import NatsAdapter


def publish_errors(exc: Exception) -> Mapped:
    """What a message the server did not confirm failed with: a stream refusing its size
    (``10054``) is permanent, no answer or a lost connection is the server out of reach
    (publish again), any other refusal a :class:`PublishError` naming it."""
    if isinstance(exc, APIError) and exc.err_code == 10054:  # over max_msg_size
        return (MessageTooLargeError, "keep events small, or raise the stream's max_msg_size")
    if isinstance(exc, CONNECTION_ERRORS):
        return (BrokerConnectionError, "publish again once the server answers")
    return PublishError


class JetStreamPublisher:
    """What :class:`~eventbus_nats.adapter.NatsAdapter` publishes with."""

    def __init__(self, adapter: NatsAdapter) -> None:
        self.adapter = adapter
        self._pubacks: PubAcks | None = None

    async def publish(self, topic: str, envelopes: Sequence[Envelope]) -> None:
        """Publish every envelope pipelined and wait for all PubAcks (gathered).

        ``Nats-Msg-Id`` is :func:`~eventbus.deadletter.broker_dedupe_id`: the event id,
        so the stream drops a copy republished within ``dedupe_window`` (a retried
        publish whose PubAck was lost); a dead letter's names the failure too, so
        the same event failing again after a replay is stored again.
        """
        js = await self.adapter._ready()  # the server's max_payload is learnt at connect
        messages = []
        limit = self.adapter.capabilities.max_message_bytes
        largest = 0
        for envelope in envelopes:
            block, body = encode_block(envelope, broker_dedupe_id(envelope))
            size = len(block) + len(body)
            if size > limit:
                self.adapter.check_size(topic, envelope, size)
            largest = max(largest, size)
            messages.append((block, body))
        if not messages:
            return
        stream = await self.adapter._provisioner.ensure_stream(js, topic)
        self._check_stream_limit(topic, stream, envelopes, messages, largest)
        timeout = self.adapter.settings.publish_timeout
        # Every message is in flight at once on the one connection, written as one
        # buffer, and their PubAcks are counted into one future for the batch (not a
        # request, a future and a timer each).
        results: list[BaseException | None]
        try:
            results = await self.pubacks().publish(topic, messages, timeout)
        except Exception as exc:  # not written at all (closed, draining, buffer full)
            results = [exc] * len(messages)
        failures = {i: r for i, r in enumerate(results) if r is not None}
        if not failures:
            return
        if any(isinstance(e, NotFoundError | NoRespondersError) for e in failures.values()):
            self.adapter._provisioner.forget()  # the stream may be gone: check it next time
        if len(failures) == len(messages) and all(
            isinstance(exc, CONNECTION_ERRORS) for exc in failures.values()
        ):
            first = next(iter(failures.values()))
            assert isinstance(first, Exception)
            raise translate(
                first,
                {Exception: BrokerConnectionError},
                what=f"confirming {len(messages)} message(s) to {topic!r} within "
                f"{timeout:g}s at {self.adapter.settings.masked_url}",
                hint="none was confirmed; publish again",
            ) from first
        errors = {i: self._publish_error(topic, envelopes[i], exc) for i, exc in failures.items()}
        raise BatchPublishError.partial(errors, len(messages), f"NATS subject {topic!r}")

    def pubacks(self) -> PubAcks:
        """The PubAck collector of the current connection."""
        client = self.adapter.client
        if self._pubacks is None or self._pubacks.client is not client:
            self._pubacks = PubAcks(client)
        return self._pubacks

    def _check_stream_limit(
        self,
        topic: str,
        stream: str,
        envelopes: Sequence[Envelope],
        messages: Sequence[tuple[bytes, bytes]],
        largest: int,
    ) -> None:
        """A stream an operator set up with a smaller ``max_msg_size`` refuses more:
        say so before anything is sent, as for the adapter's own limit."""
        stream_limit = self.adapter._provisioner.max_msg_size(stream)
        if stream_limit is None or largest <= stream_limit:
            return
        for envelope, (block, body) in zip(envelopes, messages, strict=True):
            size = len(block) + len(body)
            if size > stream_limit:
                raise MessageTooLargeError(
                    f"event {envelope.id} ({envelope.type}) is {size} bytes, over the "
                    f"{stream_limit}-byte max_msg_size of JetStream stream {stream!r} "
                    f"(topic {topic!r}); nothing was sent. Keep events small, or raise the "
                    "stream's max_msg_size"
                )

    def _publish_error(
        self, topic: str, envelope: Envelope | None, exc: BaseException
    ) -> Exception:
        what = "raw bytes" if envelope is None else f"event {envelope.id} ({envelope.type})"
        what = f"publishing {what} to {topic!r} on NATS at {self.adapter.settings.masked_url}"
        if isinstance(exc, Exception):
            return translate(exc, publish_errors, what=what)
        error = PublishError(f"{what} failed: {type(exc).__name__}")  # cancelled meanwhile
        error.__cause__ = exc
        return error

    async def publish_raw(self, topic: str, message: RawMessage) -> None:
        """Store ``message``'s payload with its headers as NATS headers, byte for byte
        (how a foreign producer's message looks; how an undecodable dead letter replays)."""
        check_subject(topic)
        js = await self.adapter._ready()
        payload = message.payload
        block = raw_block(topic, message.headers)
        check_raw_size(topic, block, payload, self.adapter.capabilities.max_message_bytes)
        stream = await self.adapter._provisioner.ensure_stream(js, topic)
        stream_limit = self.adapter._provisioner.max_msg_size(stream)
        if stream_limit is not None:
            check_raw_size(topic, block, payload, stream_limit)
        (failure,) = await self.pubacks().publish(
            topic, [(block, payload)], self.adapter.settings.publish_timeout
        )
        if failure is None:
            return
        if isinstance(failure, NotFoundError | NoRespondersError):
            self.adapter._provisioner.forget()
        error = self._publish_error(topic, None, failure)
        raise error from failure

    async def close(self) -> None:
        """Drop the PubAck subscription (on a client the user gave, it would stay)."""
        pubacks, self._pubacks = self._pubacks, None
        if pubacks is not None:
            await pubacks.close()

    async def publish_to_group(self, topic: str, group: str, envelopes: Sequence[Envelope]) -> None:
        """Deliver ``envelopes`` to ``group`` of ``topic`` alone, through the route stream
        (see :mod:`eventbus_nats.group_route`); returns once every PubAck arrived.

        No ``Nats-Msg-Id``: a replayed dead letter keeps its event id, which the
        topic's duplicate window would otherwise take for a copy.
        """
        check_subject(topic)
        js = await self.adapter._ready()
        messages = []
        limit = self.adapter.capabilities.max_message_bytes
        for envelope in envelopes:
            headers, body = encode(envelope)
            size = wire_size(headers, body)
            if size > limit:
                self.adapter.check_size(topic, envelope, size)
            messages.append((headers, body))
        if not messages:
            return
        await self.adapter._routes.ensure_stream(js)
        subject = self.adapter._routes.subject(topic, group)
        timeout = self.adapter.settings.publish_timeout
        results = await asyncio.gather(
            *(
                js.publish(subject, body, timeout=timeout, headers=headers)
                for headers, body in messages
            ),
            return_exceptions=True,
        )
        failures = {i: r for i, r in enumerate(results) if isinstance(r, BaseException)}
        if not failures:
            return
        self.adapter._routes.forget()
        errors = {i: self._publish_error(topic, envelopes[i], exc) for i, exc in failures.items()}
        raise BatchPublishError.partial(
            errors, len(messages), f"group {group!r} of NATS subject {topic!r}"
        )
