"""The JetStream adapter: ``nats://`` URLs, durable and at-least-once.

Example::

    adapter = NatsAdapter("nats://localhost:4222?ack_wait=60")
    await adapter.connect()
    await adapter.publish("orders", [envelope])

    # Or with settings made in code and a nats-py client of your own (connected by
    # you, used as it is, never closed by the adapter):
    adapter = NatsAdapter(settings=NatsSettings(servers=("n1:4222",)), client=nc)
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Sequence
from dataclasses import replace

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from eventbus.adapter import Capabilities, HealthReport, ReadRecord, SubscribeOptions, Subscription
from eventbus.adapters_util import map_exceptions
from eventbus.envelope import Envelope
from eventbus.errors import BrokerConnectionError, TopicNotFoundError
from eventbus.group_route import ROUTE_PREFETCH, WithGroupRoute
from eventbus.raw_message import RawMessage

from .codec import decode
from .connection import CONNECTION_ERRORS, NatsAdapterBase
from .consumer import JetStreamSubscription
from .group_route import GroupRoutes
from .provision import ConsumerKeeper, Provisioner, check_subject
from .publish import JetStreamPublisher
from .wire import parse_header_lines

log = logging.getLogger("eventbus.nats")


class NatsAdapter(NatsAdapterBase):
    """NATS JetStream through nats-py: ``nats://host:4222[,host:port][?options]``.

    ``NatsAdapter(url)``, or ``NatsAdapter(settings=NatsSettings(...), client=nc)``:
    settings made in code and, optionally, a nats-py client you configured and
    connected yourself, used as it is and never closed by the adapter. See
    ``docs/adapters/nats.md`` for every option and the delivery guarantees.
    """

    schemes = ("nats",)

    jetstream = True
    role = "JetStream adapter"
    other_kind = "NatsAdapter is JetStream only; use NatsCoreAdapter for {}"

    def _setup(self, client: Client | None) -> None:
        super()._setup(client)
        s = self.settings
        # A durable broker (native delay: -NAK {"delay": ...}, the server holds it back;
        # no DLQ stream, the bus publishes dead letters; lease: a message not acked
        # within ack_wait goes to another member, and members send in_progress every
        # ack_wait / 3 while they hold it), except:
        self.capabilities = replace(
            self._with_limits(Capabilities.DURABLE),
            # Members of a group pull from one consumer and redeliveries go back into
            # it: no per-key order.
            ordering="none",
            dedupe_window=s.dedupe_window,  # the stream's duplicate window
        )
        self._js: JetStreamContext | None = None
        self._provisioner = Provisioner(s)
        self._routes = GroupRoutes(s)
        self._subscriptions: set[JetStreamSubscription] = set()
        self._background: set[asyncio.Task[None]] = set()
        self.publisher = JetStreamPublisher(self)
        self.keeper = ConsumerKeeper(self)

    # -- connection --------------------------------------------------------------------

    async def _ready(self) -> JetStreamContext:
        if self._js is not None and self._connection.is_open:
            return self._js
        await self._connection.open(self._check_jetstream)
        assert self._js is not None
        return self._js

    async def _check_jetstream(self, client: Client) -> None:
        """JetStream answers on ``client``; the server's limits are learnt."""
        s = self.settings
        js = client.jetstream(timeout=s.request_timeout)
        with map_exceptions(
            {Exception: BrokerConnectionError},
            what=f"asking JetStream for the account at {s.masked_url}",
            hint="NATS answered but JetStream did not: start nats-server with -js, or use "
            "nats+core:// for core NATS (at-most-once)",
        ):
            await js.account_info()
        self._learn_limits(client)
        self._js = js

    async def close(self) -> None:
        """Close every subscription (giving back what it holds), then the connection
        (unless it is a client the user gave)."""
        # Together: each waits up to fetch_timeout for its open pull requests.
        subscriptions = list(self._subscriptions)
        results = await asyncio.gather(
            *(sub.close() for sub in subscriptions), return_exceptions=True
        )
        for subscription, result in zip(subscriptions, results, strict=True):
            if isinstance(result, Exception):
                log.warning(
                    "closing a NATS subscription of %s failed: %s", subscription.topic, result
                )
        self._subscriptions.clear()
        for task in self._background:
            task.cancel()
        self._js = None
        await self.publisher.close()
        await self._connection.close()

    async def health(self) -> HealthReport:
        """Ask JetStream for the account info (one round trip, at most a second)."""
        s = self.settings
        try:
            js = await self._ready()
            if not self.client.is_connected:
                return HealthReport(
                    False, f"NATS at {s.masked_url} is not connected (reconnecting)"
                )
            # Bounded well below request_timeout: a health probe must answer while
            # the client has not yet noticed a dropped connection (the request would
            # otherwise wait in the reconnect buffer).
            info = await asyncio.wait_for(js.account_info(), min(1.0, s.request_timeout))
        except Exception as exc:
            return HealthReport(
                False, f"NATS JetStream at {s.masked_url}: {type(exc).__name__}: {exc}"
            )
        return HealthReport(
            True,
            f"NATS JetStream at {s.masked_url} answered",
            {
                "server": str(
                    self.client.connected_url.netloc if self.client.connected_url else ""
                ),
                "streams": str(info.streams),
                "consumers": str(info.consumers),
            },
        )

    # -- publishing --------------------------------------------------------------------

    async def publish(self, topic: str, envelopes: Sequence[Envelope]) -> None:
        """Publish every envelope pipelined and wait for all PubAcks; ``Nats-Msg-Id``
        is :func:`~eventbus.deadletter.broker_dedupe_id` (see
        :meth:`JetStreamPublisher.publish <eventbus_nats.publish.JetStreamPublisher.publish>`)."""
        await self.publisher.publish(topic, envelopes)

    async def publish_raw(self, topic: str, message: RawMessage) -> None:
        """Store ``message``'s payload with its headers as NATS headers, byte for byte."""
        await self.publisher.publish_raw(topic, message)

    async def publish_to_group(self, topic: str, group: str, envelopes: Sequence[Envelope]) -> None:
        """Deliver ``envelopes`` to ``group`` of ``topic`` alone, through the route
        stream (see :mod:`eventbus_nats.group_route`)."""
        await self.publisher.publish_to_group(topic, group, envelopes)

    # -- subscribing ---------------------------------------------------------------------

    async def subscribe(self, topic: str, options: SubscribeOptions) -> Subscription:
        """Join ``options.group`` (a durable pull consumer, created from ``start_from``
        if new) on ``topic``'s stream; returns once the consumer exists."""
        js = await self._ready()
        stream = await self._provisioner.ensure_stream(js, topic)
        how = await self._provisioner.ensure_consumer(js, stream, options.group, options.start_from)
        consumer = self._provisioner.consumer_name(options.group)
        if how is not None:
            log.debug(
                "JetStream consumer %r of group %r on stream %r created %s",
                consumer,
                options.group,
                stream,
                how,
            )
        subscription = JetStreamSubscription(self, topic, stream, consumer, options)
        await subscription.start()
        self._subscriptions.add(subscription)
        try:
            route = await self._subscribe_route(
                js, topic, replace(options, prefetch=ROUTE_PREFETCH)
            )
        except BaseException:
            await subscription.close()
            raise
        return _GroupSubscription(subscription, route, topic)

    async def _subscribe_route(
        self, js: JetStreamContext, topic: str, options: SubscribeOptions
    ) -> JetStreamSubscription:
        """The group's member on its route (what :meth:`publish_to_group` sent it)."""
        consumer = await self._routes.ensure_consumer(js, topic, options.group)
        route = JetStreamSubscription(self, topic, self._routes.stream, consumer, options)
        await route.start()
        self._subscriptions.add(route)
        return route

    def forget(self, subscription: JetStreamSubscription) -> None:
        """Called by a subscription when it closes."""
        self._subscriptions.discard(subscription)

    # -- browsing -----------------------------------------------------------------------

    async def read(self, topic: str, *, limit: int | None = None) -> list[ReadRecord]:
        """The stored messages of ``topic``'s stream, oldest first, by direct get.

        No consumer is created and nothing is acked; a topic without a stream
        raises :class:`~eventbus.errors.TopicNotFoundError`.
        """
        js = await self._ready()
        check_subject(topic)
        name = self._provisioner.stream_name(topic)
        records: list[ReadRecord] = []
        with map_exceptions(
            {
                NotFoundError: (TopicNotFoundError, "check the name (reading creates nothing)"),
                CONNECTION_ERRORS: BrokerConnectionError,
            },
            what=f"reading topic {topic!r} (JetStream stream {name!r}) on NATS at "
            f"{self.settings.masked_url}",
        ):
            info = await js.stream_info(name)
            seq, last = info.state.first_seq, info.state.last_seq
            while seq <= last and (limit is None or len(records) < limit) and info.state.messages:
                try:
                    raw = await js.get_msg(name, seq)
                except NotFoundError:  # deleted or expired meanwhile
                    seq += 1
                    continue
                decoded = decode(_headers_of(raw), raw.data or b"")
                records.append(
                    ReadRecord(topic, f"{name}/{seq}", decoded.envelope, decoded.raw, decoded.error)
                )
                seq += 1
        return records


def _headers_of(raw: RawStreamMsg) -> dict[str, str] | None:
    """A stored message's headers read as a delivery's are (nats-py's get_msg parses
    them as e-mail headers, which mangles values that are not UTF-8)."""
    if not raw.hdrs:
        return raw.headers
    block = base64.b64decode(raw.hdrs)
    return parse_header_lines(block[block.find(b"\r\n") + 2 :])


class _GroupSubscription(WithGroupRoute):
    """The topic's member and the group's route member, read as one; the backlog is
    both consumers' (see :meth:`JetStreamSubscription.backlog`)."""

    main: JetStreamSubscription
    route: JetStreamSubscription

    async def backlog(self) -> int:
        return await self.main.backlog() + await self.route.backlog()
