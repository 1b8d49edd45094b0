"""Topics created on first use, with the configured partitions and replication.

What is known to exist is cached, so only the first publish or subscribe of a
topic pays for an admin round trip. ``create_topics=false`` in the URL turns
this off for clusters where the service account may not create topics.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from eventbus.errors import BrokerConnectionError, ConfigurationError

from .settings import KafkaSettings

log = logging.getLogger("eventbus.kafka")

# Kafka error codes create_topics answers with that mean "fine, it is there".
TOPIC_ALREADY_EXISTS = 36
TOPIC_AUTHORIZATION_FAILED = 29
INVALID_TOPIC = 17


class TopicProvisioner:
    """Creates topics through the admin client, once each."""

    def __init__(self, settings: KafkaSettings, client_options: dict[str, Any]) -> None:
        self.settings = settings
        self._client_options = client_options
        self._admin: AIOKafkaAdminClient | None = None
        self._known: set[str] = set()
        self._lock = asyncio.Lock()

    async def ensure(self, topics: Iterable[str]) -> None:
        """Make sure every topic in ``topics`` exists; create the missing ones."""
        if not self.settings.create_topics:
            return
        wanted = [t for t in dict.fromkeys(topics) if t not in self._known]
        if not wanted:
            return
        async with self._lock:
            wanted = [t for t in wanted if t not in self._known]
            if wanted:
                await self._create(wanted)

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
        try:
            response = await admin.create_topics(new)
        except Exception as exc:
            raise BrokerConnectionError(
                f"could not create topics {topics} on Kafka at {self.settings.masked_url}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        for topic, code, message in _topic_errors(response):
            if code in (0, TOPIC_ALREADY_EXISTS):
                self._known.add(topic)
                continue
            hint = (
                "grant the client CREATE on the cluster or create it yourself and set "
                "create_topics=false"
                if code == TOPIC_AUTHORIZATION_FAILED
                else "Kafka topic names use letters, digits, '.', '_' and '-' (max 249)"
                if code == INVALID_TOPIC
                else "check the broker's logs and limits (partitions, replication)"
            )
            raise ConfigurationError(
                f"Kafka at {self.settings.masked_url} refused to create topic {topic!r} "
                f"(error {code}: {message}); {hint}"
            )
        log.debug("topics ready: %s", topics)

    async def _admin_client(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            admin = AIOKafkaAdminClient(**self._client_options)
            try:
                await admin.start()
            except Exception as exc:
                await _close_quietly(admin)
                raise BrokerConnectionError(
                    f"cannot reach Kafka at {self.settings.masked_url} for the admin client: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
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
        admin = await self._admin_client()
        try:
            topics = await asyncio.wait_for(admin.describe_topics(None),
                                            self.settings.request_timeout_ms / 1000)
        except Exception as exc:
            raise BrokerConnectionError(
                f"could not read the topic metadata of Kafka at {self.settings.masked_url}: "
                f"{type(exc).__name__}: {exc or 'timed out'}"
            ) from exc
        for item in topics:
            if item["topic"] == topic and item["error_code"] == 0:
                return sorted(int(p["partition"]) for p in item["partitions"])
        return None

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
