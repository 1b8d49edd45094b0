"""Delivering to one group of a topic on JetStream (dead-letter replay to the failed group).

Every group of a topic reads the topic's stream, so a message for one group
alone cannot go there. It goes to the route stream instead:

- one stream per ``stream_prefix``, ``<prefix>__replay``, with the subjects
  ``<prefix>_REPLAY.>`` and *work-queue* retention (a message is removed once
  the one consumer it matches acks it, and kept until then, even if that
  consumer does not exist yet);
- a message for group ``G`` of topic ``T`` has the subject
  ``<prefix>_REPLAY.<T>.<G>`` (each name encoded to one token, as stream names
  are), and a durable consumer ``<T>__<G>`` filtered on exactly that subject
  takes it; each subscription of the group reads that consumer beside the
  topic's own (:class:`~eventbus.group_route.WithGroupRoute`), so only that
  group's members ever see it.

Server 2.9 allows one filter subject per consumer, hence a consumer per
(topic, group) rather than one filter list on the group's topic consumer.

The route also carries a message at its last delivery (``max_deliver``) over to a
fresh copy. The server stops delivering a message once it was delivered
``max_deliver`` times, whether or not its handler ever ran: an idempotency-store
outage, or a consumer crashing, would use the deliveries up and the message would
vanish, never handled and never dead-lettered. So a member that receives a
message's last delivery does not hand it out: it publishes a copy (same headers
and body) to the group's route, with ``Eventbus-Delivered`` saying how many
deliveries came before, then acknowledges the original (:func:`carry_over`).
``Delivery.attempt`` is that count plus the server's (both less the deliveries
given back unread, see :mod:`eventbus.given_back`), so the bus's retry budget
(and its crash-loop guard) keeps counting across copies, and the bus, not the
server, decides when to give up. A copy that cannot be published yet (the server
unreachable) is kept alive and tried again. A member that closes holding such a
message (or receiving one from a pull request still open as it closes) makes one
last attempt, bounded in time (:func:`carry_left_over`); only what that could not
carry over is lost, which is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy
from nats.js.errors import BadRequestError, NotFoundError

from eventbus.adapters_util import map_exceptions

from .codec import MSG_ID, raw_block
from .connection import jetstream_errors
from .provision import encode_name, stream_config
from .settings import NatsSettings
from .wire import ack_command, ack_facts, write

if TYPE_CHECKING:
    from .consumer import JetStreamSubscription

log = logging.getLogger("eventbus.nats")

DELIVERED = "Eventbus-Delivered"
"""Header of a carried-over copy: deliveries of the message before this copy."""

CARRY_AT_CLOSE = 5.0
"""Seconds a closing member spends at most carrying over what it still holds."""


class GroupRoutes:
    """Names and creation (cached) of the route stream and its per-group consumers."""

    def __init__(self, settings: NatsSettings) -> None:
        self.settings = settings
        self.stream = f"{settings.stream_prefix}__replay"  # "__" never comes out of encode_name
        self._ready = False
        self._lock = asyncio.Lock()

    def subject(self, topic: str, group: str) -> str:
        return f"{self.settings.stream_prefix}_REPLAY.{encode_name(topic)}.{encode_name(group)}"

    def consumer(self, topic: str, group: str) -> str:
        return f"{encode_name(topic)}__{encode_name(group)}"

    def forget(self) -> None:
        self._ready = False

    async def ensure_stream(self, js: JetStreamContext) -> str:
        """The route stream, created if missing (same storage and replicas as topics)."""
        if self._ready:
            return self.stream
        s = self.settings
        with map_exceptions(
            jetstream_errors,
            what=f"setting up the route stream {self.stream!r} on NATS at {s.masked_url}",
        ):
            async with self._lock:
                if self._ready:
                    return self.stream
                try:
                    await js.stream_info(self.stream)
                except NotFoundError:
                    config = stream_config(
                        s, self.stream, f"{s.stream_prefix}_REPLAY.>", RetentionPolicy.WORK_QUEUE
                    )
                    try:
                        await js.add_stream(config)
                    except BadRequestError:
                        await js.stream_info(self.stream)  # created meanwhile by another process
                self._ready = True
        return self.stream

    async def ensure_consumer(self, js: JetStreamContext, topic: str, group: str) -> str:
        """The durable consumer of ``group``'s route on ``topic``; from the first message
        kept, so what was routed before the group subscribed is delivered too."""
        stream = await self.ensure_stream(js)
        name = self.consumer(topic, group)
        s = self.settings
        with map_exceptions(
            jetstream_errors,
            what=f"setting up the route consumer {name!r} "
            f"of group {group!r} on NATS at "
            f"{s.masked_url}",
        ):
            try:
                await js.consumer_info(stream, name)
            except NotFoundError:
                await js.add_consumer(
                    stream,
                    ConsumerConfig(
                        durable_name=name,
                        description=f"eventbus group {group} of topic {topic}: messages for it "
                        "alone",
                        deliver_policy=DeliverPolicy.ALL,
                        ack_policy=AckPolicy.EXPLICIT,
                        ack_wait=s.ack_wait,
                        max_deliver=s.max_deliver,
                        filter_subject=self.subject(topic, group),
                        max_ack_pending=-1,
                        max_waiting=512,
                    ),
                )
        return name


def delivered_before(headers: Mapping[str, str] | None) -> int:
    """Deliveries before this copy (0 for a message never carried over)."""
    if not headers:
        return 0
    text = headers.get(DELIVERED)
    if text is None:
        return 0
    try:
        return max(0, int(text))
    except ValueError:
        return 0


def copy_block(msg: Msg, before: int, stream: str, sequence: str) -> tuple[bytes, bytes]:
    """The header block and body of ``msg``'s copy, saying ``before`` deliveries came
    first; its ``Nats-Msg-Id`` names the original, so a publish retried after a lost
    PubAck stores one copy."""
    # The server's own headers (Nats-Expected-Stream would refuse the copy) and the
    # old count are left out.
    headers = {
        name: value.encode("utf-8", "surrogateescape")
        for name, value in (msg.headers or {}).items()
        if not name.lower().startswith("nats-") and name != DELIVERED
    }
    headers[DELIVERED] = str(before).encode()
    headers[MSG_ID] = f"eventbus-carry.{stream}.{sequence}.{before}".encode()
    return raw_block(stream, headers), msg.data or b""


async def carry_over(sub: JetStreamSubscription, until: float | None = None) -> None:
    """Carry each message at its last delivery over to a fresh copy on the group's
    route, then acknowledge it; retried while the server does not confirm, as long
    as ``sub`` is open, or, closing, until ``until`` (a time of the running loop)."""
    adapter = sub.adapter
    routes = adapter._routes
    loop = asyncio.get_running_loop()
    while sub._carrying and (until is not None or not sub._closed):
        timeout = adapter.settings.publish_timeout
        if until is not None:
            timeout = min(timeout, until - loop.time())
            if timeout <= 0:
                return
        msg = sub._carrying[0][0]
        sequence = ack_facts(msg)[1]
        # This delivery is not handed out; those given back unread did not run either.
        before = delivered_before(msg.headers) + sub.counted(msg)[0] - 1
        block, body = copy_block(msg, before, sub.stream, sequence)
        try:
            await routes.ensure_stream(await adapter._ready())
            (failure,) = await adapter.publisher.pubacks().publish(
                routes.subject(sub.topic, sub.options.group), [(block, body)], timeout
            )
            if failure is not None:
                raise failure
        except Exception as exc:
            log.log(
                logging.WARNING if until is None else logging.DEBUG,
                "message %s/%s of %r group %r reached max_deliver=%d and could not "
                "be carried over yet (%s: %s); kept, trying again",
                sub.stream,
                sequence,
                sub.topic,
                sub.options.group,
                sub._max_deliver,
                type(exc).__name__,
                exc,
            )
            await asyncio.sleep(1.0 if until is None else 0.2)
            continue
        # The copy is confirmed: carried over, whatever becomes of the original's ack
        # (the server does not deliver a last delivery again, acked or not). Taken off
        # the list first, so a close cut short during the ack does not report it lost.
        sub._carrying.popleft()
        try:
            await write(adapter.client, [ack_command(msg.reply)], 1, 4)
        except Exception as exc:
            log.debug("acknowledging %s/%s after its copy failed: %s", sub.stream, sequence, exc)
        log.info(
            "message %s/%s of %r group %r reached max_deliver=%d: carried over to a "
            "fresh copy on the group's route (%d deliveries so far)",
            sub.stream,
            sequence,
            sub.topic,
            sub.options.group,
            sub._max_deliver,
            before,
        )


async def carry_left_over(sub: JetStreamSubscription) -> None:
    """``sub`` is closing (its carrier stopped): one last attempt to carry over what it
    still holds at its last delivery, for at most ``CARRY_AT_CLOSE`` seconds (and
    ``publish_timeout``); what is left is logged, the server will not deliver it again."""
    adapter = sub.adapter
    settings = adapter.settings
    if adapter._connection.is_open and not adapter.client.is_closed:
        loop = asyncio.get_running_loop()
        until = loop.time() + min(CARRY_AT_CLOSE, settings.publish_timeout)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(until):  # connecting, or a write, may block too
                await carry_over(sub, until)
    if sub._carrying:
        log.error(
            "%d message(s) of %r group %r at their last delivery (max_deliver=%d) "
            "could not be carried over before the subscription closed: the server "
            "will not deliver them again (raise max_deliver, or leave it unlimited)",
            len(sub._carrying),
            sub.topic,
            sub.options.group,
            sub._max_deliver,
        )
