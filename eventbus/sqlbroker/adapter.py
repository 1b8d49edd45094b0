"""What the SQL brokers share: publishing, subscribing, browsing, health.

:class:`SqlAdapter` is the whole adapter but for the dialect: the SQLite adapter
(:mod:`eventbus.sqlbroker.sqlite`) and the PostgreSQL one (``eventbus-postgres``)
say how to parse their URL, how to hear other processes' writes (a
:class:`~eventbus.sqlbroker.hub.Waker`) and how soon they notice a database that
stopped answering.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from eventbus.adapter import (
    Adapter,
    Capabilities,
    HealthReport,
    ReadRecord,
    SubscribeOptions,
    Subscription,
)
from eventbus.envelope import Envelope
from eventbus.errors import (
    BrokerConnectionError,
    ConfigurationError,
    MessageTooLargeError,
    ProvisioningError,
    TopicNotFoundError,
)
from eventbus.patterns.sql import DatabaseError, SQLError, Transaction
from eventbus.raw_message import RawMessage
from eventbus.sqlbroker import codec
from eventbus.sqlbroker.consumer import SqlSubscription
from eventbus.sqlbroker.hub import Hub, Waker
from eventbus.sqlbroker.settings import SqlSettings

log = logging.getLogger("eventbus.sqlbroker")

Rows = list[tuple[str | None, str, bytes]]


class SqlAdapter(Adapter):
    """A database used as the broker: a log table, groups with positions, leased
    pending rows (see :mod:`eventbus.sqlbroker.provision` for the tables)."""

    settings: SqlSettings

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.settings = self.parse(url)
        self.start_from = self.settings.start_from
        # provision=false: topics known to exist (asked once each, then remembered).
        self._topics_seen: set[str] = set()
        # A durable broker, every claim of it kept: per-key order (a key's next message
        # goes out once the one before it is settled, whichever consumer of the group
        # holds it: the claim takes only a key's head); a native delay (stored in the
        # row, available_at: it survives the consumer and holds its key; consumers wake
        # when it is due, without polling); a lease (a claim leases rows for `lease`
        # seconds, renewed while the handler runs); browse (read() selects rows without
        # claiming them); a group route (a row for that group only); raw bytes (a
        # payload is stored as given).
        self.capabilities = replace(
            Capabilities.DURABLE,
            max_message_bytes=self.settings.max_message_bytes,
            half_open_bound=self.half_open_bound(),
        )
        self._hub: Hub | None = None
        self._subscriptions: set[SqlSubscription] = set()

    # -- what each dialect says ------------------------------------------------------------

    @abc.abstractmethod
    def parse(self, url: str) -> SqlSettings:
        """The URL's settings (InvalidURLError naming what is wrong)."""

    @abc.abstractmethod
    def make_waker(self, hub: Hub) -> Waker:
        """How this dialect hears other processes' writes."""

    @abc.abstractmethod
    def half_open_bound(self) -> float | None:
        """Seconds within which a database that stopped answering shows in health()."""

    def notifier(self) -> Callable[[Transaction, set[str]], Awaitable[None]] | None:
        """What a transaction that made messages available runs to tell other processes
        (PostgreSQL: ``pg_notify``); ``None``: they notice by themselves (SQLite)."""
        return None

    pool_size = 1

    def prepare(self) -> Callable[[], Awaitable[None]] | None:
        """Creates the tables before the shared connection opens, or ``None`` to create
        them on it (see :meth:`Hub.acquire`)."""
        return None

    # -- connecting ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open (or share) the database and create the tables if missing, within
        ``connect_timeout``; fail with BrokerConnectionError naming the database."""
        if self._hub is not None:
            return
        s = self.settings
        try:
            # The connect timeout is the dialect's own (a driver timeout, a lock wait that
            # ends by itself); this bound only catches what ignores it.
            self._hub = await asyncio.wait_for(
                Hub.acquire(
                    self.url, s, self.make_waker, self.notifier(), self.pool_size, self.prepare()
                ),
                s.connect_timeout * 1.5 + 1.0,
            )
        except TimeoutError as exc:
            raise BrokerConnectionError(
                f"{s.where} did not answer within connect_timeout={s.connect_timeout:g}s "
                f"({s.masked_url}); {self.connect_hint()}"
            ) from exc
        except (DatabaseError, OSError) as exc:
            raise BrokerConnectionError(
                f"cannot use {s.where} as the broker ({s.masked_url}): {exc}; {self.connect_hint()}"
            ) from exc

    def connect_hint(self) -> str:
        """What to check when connecting failed."""
        return "check that the database is reachable and the URL is right"

    @property
    def hub(self) -> Hub:
        """The shared database state; BrokerConnectionError before connect()."""
        if self._hub is None:
            raise BrokerConnectionError(
                f"{type(self).__name__} for {self.settings.masked_url} is not connected; call "
                "connect() (or start the bus) first"
            )
        return self._hub

    async def close(self) -> None:
        """Close the subscriptions (handing back what they hold), wait for publishes and
        settles in flight, and give up the shared connection; bounded throughout."""
        for subscription in list(self._subscriptions):
            try:
                await asyncio.wait_for(subscription.close(), 10.0)
            except Exception as exc:
                log.warning(
                    "closing a subscription of %s failed: %s", self.settings.masked_url, exc
                )
        self._subscriptions.clear()
        hub, self._hub = self._hub, None
        if hub is not None:
            await hub.release()

    def forget(self, subscription: SqlSubscription) -> None:
        """Called by a subscription when it closes."""
        self._subscriptions.discard(subscription)

    # -- publishing -------------------------------------------------------------------------

    def _rows(self, topic: str, envelopes: Sequence[Envelope]) -> Rows:
        limit = self.capabilities.max_message_bytes
        rows: Rows = []
        for envelope in envelopes:
            headers, body, size = codec.encode(envelope)
            if size > limit:
                self.check_size(topic, envelope, size)
            rows.append((envelope.partitionkey, headers, body))
        return rows

    async def publish(self, topic: str, envelopes: Sequence[Envelope]) -> None:
        """Insert ``envelopes`` into the topic's log; returns once committed. Publishes of
        concurrent callers share a transaction."""
        rows = self._rows(topic, envelopes)
        if rows:
            await self._send(topic, None, rows)

    async def publish_to_group(self, topic: str, group: str, envelopes: Sequence[Envelope]) -> None:
        """Insert ``envelopes`` into the topic's log marked for ``group`` alone: the other
        groups pass over them, and ``read()`` does not list them."""
        rows = self._rows(topic, envelopes)
        if rows:
            await self._send(topic, group, rows)

    async def publish_raw(self, topic: str, message: RawMessage) -> None:
        """Store ``message``'s payload as a message's body with its headers, as a
        producer that does not speak CloudEvents would write it."""
        stored, size = codec.encode_raw(message.payload, message.headers)
        limit = self.capabilities.max_message_bytes
        if size > limit:
            raise MessageTooLargeError(
                f"a raw message of {size} bytes is over the {limit}-byte limit of "
                f"{type(self).__name__} on topic {topic!r}; nothing was sent"
            )
        await self._send(topic, None, [(message.key, stored, message.payload)])

    async def _send(self, topic: str, group: str | None, rows: Rows) -> None:
        self.before_write()
        await self._require_topic(topic, f"publishing {len(rows)} message(s) to it")
        try:
            await self.hub.publisher.submit((topic, group, rows))
        except DatabaseError as exc:
            raise BrokerConnectionError(
                f"{self.settings.where} did not take {len(rows)} message(s) for topic "
                f"{topic!r} ({self.settings.masked_url}): {exc}"
            ) from exc
        except SQLError as exc:
            # The statement itself was refused (text the database cannot store in a
            # topic, group or key, say): sending it again gets the same answer, so it
            # is a permanent refusal, not an outage the bus would retry.
            raise ConfigurationError(
                f"{self.settings.where} refused {len(rows)} message(s) for topic {topic!r}: "
                f"{exc}; check the topic, group and key names"
            ) from exc

    async def _require_topic(self, topic: str, doing: str) -> None:
        """With ``provision=false``, refuse a topic nobody created (ProvisioningError)."""
        if self.settings.provision or topic in self._topics_seen:
            return
        hub = self.hub
        try:
            async with hub.db.transaction() as tx:
                exists = await hub.sql.topic_exists(tx, topic)
        except DatabaseError as exc:
            raise BrokerConnectionError(
                f"cannot look up topic {topic!r} on {self.settings.masked_url}: {exc}"
            ) from exc
        if not exists:
            raise ProvisioningError(
                f"topic {topic!r} does not exist in {self.settings.where} and the URL says "
                f"provision=false, so it is not created ({doing}); create it by publishing "
                "to it once with provision=true (a role that may write it), or drop "
                "provision=false"
            )
        self._topics_seen.add(topic)

    def before_write(self) -> None:
        """A check before each publish (SQLite refuses one that would wait for itself)."""

    # -- consuming --------------------------------------------------------------------------

    async def subscribe(self, topic: str, options: SubscribeOptions) -> Subscription:
        """Join group ``options.group`` of ``topic`` (created at the start of the log for
        ``earliest``, at its end for ``latest``; an existing group keeps its position)."""
        hub = self.hub
        await self._require_topic(topic, f"subscribing group {options.group!r} to it")
        try:
            async with hub.db.transaction() as tx:
                gid, position = await hub.sql.join(
                    tx, topic, options.group, 0 if options.start_from == "earliest" else None
                )
        except DatabaseError as exc:
            raise BrokerConnectionError(
                f"cannot join group {options.group!r} of topic {topic!r} on "
                f"{self.settings.masked_url}: {exc}"
            ) from exc
        subscription = SqlSubscription(self, hub, topic, options, gid, position)
        subscription.start()
        self._subscriptions.add(subscription)
        return subscription

    async def read(self, topic: str, *, limit: int | None = None) -> list[ReadRecord]:
        """The topic's retained messages, oldest first, up to the end as of the call;
        reads only (no group, nothing created). Messages sent to one group
        (``publish_to_group``) are that group's, not listed."""
        hub = self.hub
        try:
            async with hub.db.transaction() as tx:
                exists = await hub.sql.topic_exists(tx, topic)
                rows = (
                    await hub.sql.read(tx, topic, None if limit is None else max(0, limit))
                    if exists
                    else []
                )
        except DatabaseError as exc:
            raise BrokerConnectionError(
                f"cannot read topic {topic!r} on {self.settings.masked_url}: {exc}"
            ) from exc
        if not exists:
            raise TopicNotFoundError(
                f"topic {topic!r} does not exist on {self.settings.where}: nothing was ever "
                "published to it or subscribed; check the name (reading creates nothing)"
            )
        records = []
        for message_id, headers, body in rows:
            envelope, error, _ = codec.decode(headers, body)
            records.append(
                ReadRecord(topic, str(message_id), envelope, None if envelope else body, error)
            )
        return records

    # -- health ---------------------------------------------------------------------------------

    async def health(self) -> HealthReport:
        """Whether the database answers now (the dialect's probe, bounded), and if not why."""
        s = self.settings
        info = {"database": s.where, "dialect": s.dialect}
        if self._hub is None:
            return HealthReport(
                False,
                f"{type(self).__name__} for {s.masked_url} is not "
                "connected; call connect() (or start the bus) first",
                info,
            )
        waker = self._hub.waker
        bound = (self.capabilities.half_open_bound or 5.0) + 1.0
        try:
            problem = await asyncio.wait_for(waker.probe(), bound) if waker else None
        except TimeoutError:
            problem = f"{s.where} did not answer within {bound:g}s"
        except Exception as exc:
            problem = f"{s.where} does not answer: {type(exc).__name__}: {exc}"
        if problem is not None:
            return HealthReport(False, problem, info)
        return HealthReport(True, f"{s.where} answers", info)


__all__ = ["SqlAdapter"]
