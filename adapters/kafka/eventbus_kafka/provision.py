"""Topics created on first use, with the configured partitions and replication, and the
retry topics of the delay tiers.

What is known to exist is cached, so only the first publish or subscribe of a
topic pays for an admin round trip. ``provision=false`` in the URL turns creating
off for clusters where the service account may not create topics: a topic that does
not exist is then a :class:`~eventbus.errors.ProvisioningError` naming it.

Delay tiers: one retry topic per delay bucket, so a long delay never blocks a short
one. ``nack(delay)`` re-publishes the record to the retry topic of the smallest tier
at least as long as the delay (``<topic>.<group>.retry.<tier>s``,
:func:`eventbus.adapters_util.pick_tier`), with its not-before time in a header. A
consumer reads each tier in order and holds a record until it is due, pausing that
partition meanwhile; but it never holds a record longer than the tier's delay after
it was written. Every record of a tier is therefore released at most ``tier`` seconds
after it arrived, so one ``nack(3600)`` cannot hold up a ``nack(1)`` (different tier),
and within a tier a record waits at most its tier's delay behind earlier ones. A delay
longer than the longest tier is written to that tier and, when released early,
forwarded again (same attempt) until it is due.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from eventbus.adapters_util import ExceptionMap, map_exceptions
from eventbus.errors import BrokerConnectionError, ProvisioningError

from .settings import KafkaSettings

log = logging.getLogger("eventbus.kafka")

# Kafka error codes create_topics answers with: "fine, it is there", and two refusals.
TOPIC_ALREADY_EXISTS = 36
TOPIC_AUTHORIZATION_FAILED = 29
INVALID_TOPIC = 17
# What may go wrong on the way to the cluster: whatever the admin client raised.
_UNREACHABLE: ExceptionMap = {Exception: BrokerConnectionError}


class TopicProvisioner:
    """Creates topics through the admin client, once each."""

    def __init__(self, settings: KafkaSettings, client_options: dict[str, Any]) -> None:
        self.settings = settings
        self._client_options = client_options
        self._admin: AIOKafkaAdminClient | None = None
        self._known: set[str] = set()
        self._lock = asyncio.Lock()

    async def ensure(self, topics: Iterable[str]) -> None:
        """Make sure every topic in ``topics`` exists: create the missing ones, or with
        ``provision=false`` raise :class:`ProvisioningError` naming them."""
        wanted = [t for t in dict.fromkeys(topics) if t not in self._known]
        if not wanted:
            return
        async with self._lock:
            wanted = [t for t in wanted if t not in self._known]
            if not wanted:
                return
            if self.settings.provision:
                await self._create(wanted)
            else:
                await self._find(wanted)

    async def _find(self, topics: list[str]) -> None:
        existing = await self._existing()
        missing = [t for t in topics if t not in existing]
        if missing:
            raise ProvisioningError(
                f"topic(s) {missing} do not exist on Kafka at {self.settings.masked_url} and "
                "provision=false forbids creating them; create them (the retry topics "
                "<topic>.<group>.retry.<tier>s of a subscription too) or set provision=true"
            )
        self._known.update(topics)

    def forget(self, topic: str) -> None:
        """``topic`` is gone (deleted underneath): the next ``ensure`` creates it again."""
        self._known.discard(topic)

    async def _create(self, topics: list[str]) -> None:
        admin = await self._admin_client()
        configs: dict[str, str] = {}
        if self.settings.max_message_bytes_set:
            configs["max.message.bytes"] = str(self.settings.max_message_bytes)
        new = [
            NewTopic(t, self.settings.partitions, self.settings.replication, topic_configs=configs)
            for t in topics
        ]
        with map_exceptions(
            _UNREACHABLE, what=(f"creating topics {topics} on Kafka at {self.settings.masked_url}")
        ):
            response = await admin.create_topics(new)
        for topic, code, message in _topic_errors(response):
            if code in (0, TOPIC_ALREADY_EXISTS):
                self._known.add(topic)
                continue
            hint = (
                "grant the client CREATE on the cluster or create it yourself and set "
                "provision=false"
                if code == TOPIC_AUTHORIZATION_FAILED
                else "Kafka topic names use letters, digits, '.', '_' and '-' (max 249)"
                if code == INVALID_TOPIC
                else "check the broker's logs and limits (partitions, replication)"
            )
            raise ProvisioningError(
                f"Kafka at {self.settings.masked_url} refused to create topic {topic!r} "
                f"(error {code}: {message}); {hint}"
            )
        log.debug("topics ready: %s", topics)

    async def _admin_client(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            admin = AIOKafkaAdminClient(**self._client_options)
            try:
                with map_exceptions(
                    _UNREACHABLE,
                    what=(f"starting the admin client on Kafka at {self.settings.masked_url}"),
                ):
                    await admin.start()
            except BaseException:
                await _close_quietly(admin)
                raise
            self._admin = admin
        return self._admin

    async def describe(self) -> list[str]:
        """Topic names the cluster reports (a metadata round trip, used by health)."""
        admin = await self._admin_client()
        return list(await admin.list_topics())

    async def partitions(self, topic: str) -> list[int] | None:
        """Partition ids of ``topic`` as the cluster reports them; ``None`` if it is absent.

        Asks for the metadata of every topic, never of ``topic`` alone: a metadata
        request naming a missing topic makes brokers with auto-creation create it.
        """
        return (await self._existing()).get(topic)

    async def _existing(self) -> dict[str, list[int]]:
        """Every topic the cluster reports, with its partition ids (one metadata request
        for all topics: naming a missing one makes brokers with auto-creation create it)."""
        admin = await self._admin_client()
        with map_exceptions(
            _UNREACHABLE,
            what=(f"reading the topic metadata of Kafka at {self.settings.masked_url}"),
        ):
            topics = await asyncio.wait_for(
                admin.describe_topics(None), self.settings.request_timeout
            )
        return {
            item["topic"]: sorted(int(p["partition"]) for p in item["partitions"])
            for item in topics
            if item["error_code"] == 0
        }

    async def group_offsets(
        self, group: str, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """The offsets ``group`` committed for ``partitions`` (absent when none)."""
        admin = await self._admin_client()
        found: dict[TopicPartition, OffsetAndMetadata] = await admin.list_consumer_group_offsets(
            group, partitions=partitions
        )
        return found

    async def close(self) -> None:
        """Close the admin client."""
        admin, self._admin = self._admin, None
        if admin is not None:
            await _close_quietly(admin)


def _topic_errors(response: Any) -> list[tuple[str, int, str | None]]:
    out: list[tuple[str, int, str | None]] = []
    for item in getattr(response, "topic_errors", []):
        topic, code = item[0], item[1]
        message = item[2] if len(item) > 2 else None
        out.append((str(topic), int(code), message))
    return out


async def _close_quietly(admin: AIOKafkaAdminClient) -> None:
    try:
        await admin.close()
    except Exception as exc:  # closing is best effort
        log.debug("closing the Kafka admin client failed: %s", exc)


# -- delay tiers: the retry topics ------------------------------------------------------

# A record released by its tier less than this before its not-before time is handed
# out rather than forwarded again (clock granularity between producer and consumer).
FORWARD_SLACK_MS = 1000


def retry_topic(topic: str, group: str, tier: float) -> str:
    """The retry topic of ``topic`` for ``group`` and the delay tier ``tier`` (seconds):
    ``orders.billing.retry.10s``, ``orders.billing.retry.0.5s``."""
    seconds = str(int(tier)) if float(tier).is_integer() else repr(float(tier))
    return f"{topic}.{group}.retry.{seconds}s"


def retry_topics(topic: str, group: str, tiers: Sequence[float]) -> dict[str, float]:
    """Every retry topic of (topic, group), mapped to its tier in seconds."""
    return {retry_topic(topic, group, tier): tier for tier in tiers}


def release_at(record: Any, not_before_ms: int, tier: float, now_ms: int) -> int:
    """When a record read from a ``tier`` retry topic is released (epoch ms).

    Its not-before time, but no later than ``tier`` seconds after it was written
    (the record's timestamp; the time it was read if the broker gave none).
    """
    written = getattr(record, "timestamp", None)
    start = written if isinstance(written, int) and 0 < written <= now_ms else now_ms
    return min(not_before_ms, start + round(tier * 1000))


def not_before(record: Any, header: str) -> int:
    """The not-before time (epoch ms) a retry record carries in ``header`` (0 if none)."""
    for name, value in record.headers or ():
        if name == header:
            try:
                return int(value)
            except (TypeError, ValueError):
                return 0
    return 0
