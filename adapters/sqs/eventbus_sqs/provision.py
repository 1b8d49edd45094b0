"""SNS topics, SQS queues and the subscriptions between them: names and provisioning.

Eventbus names may hold characters AWS refuses (``.`` in ``orders.billing.dlq``) or
be longer than a queue name may be (80 characters). Such a name is mapped to an
allowed one plus a short hash of the original, so two different eventbus names
never share a queue, and the mapping is the same in every process.

Provisioning is idempotent (CreateTopic, CreateQueue and Subscribe return the
existing resource) and cached per adapter. With ``provision=false`` nothing is
created: a missing resource is a one-line :class:`ProvisioningError` naming it.
A reply botocore could not read (an HTML error page where SQS answers in XML or JSON)
is never retried by botocore's own retries, which read the status from the parsed
reply; :func:`again_if_unreadable` runs the idempotent steps again instead.

A group is declared with the storage of its dead letters: SNS discards what is
published to a topic no queue is subscribed to, so the DLQ topic
``<topic>.<group>.dlq`` gets its queue (that of the DLQ tooling's group,
``eventbus-dlq-replay``) before the group can fail a message, as RabbitMQ's
replay queue is declared with every group.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from botocore.parsers import ResponseParserError

from eventbus.adapter import REPLAY_GROUP, dlq_topic

# The core's ProvisioningError(ConfigurationError), the one every adapter raises; still
# importable from here (and from eventbus_sqs), where 0.1 defined its own.
from eventbus.errors import ProvisioningError as ProvisioningError
from eventbus.errors import TopicNotFoundError

from .settings import SqsSettings

log = logging.getLogger("eventbus.sqs")

_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9_-]")
MAX_QUEUE_NAME = 80
MAX_TOPIC_NAME = 256
GROUP_SEPARATOR = "--"
UNREADABLE_ATTEMPTS = 3
"""Runs of a provisioning step whose reply could not be read, before giving up."""

T = TypeVar("T")


async def again_if_unreadable(step: Callable[[], Awaitable[T]], what: str) -> T:
    """``await step()``, run again (up to :data:`UNREADABLE_ATTEMPTS` in all, 0.2 s, then
    0.4 s apart) while its reply could not be read: a server error answered with an HTML
    page (moto_server's "500 Internal Server Error" when two threads race in its SNS
    backend, a proxy's error page) gets no retry from botocore. ``step`` must be
    idempotent, as provisioning is. Anything else, and the last failure, is raised."""
    for attempt in range(1, UNREADABLE_ATTEMPTS + 1):
        try:
            return await step()
        except ResponseParserError as exc:
            if attempt == UNREADABLE_ATTEMPTS:
                raise
            delay = 0.2 * attempt
            log.warning(
                "%s: the reply could not be read (%s); trying again in %.1fs (%d of %d)",
                what,
                str(exc).splitlines()[0][:200],
                delay,
                attempt + 1,
                UNREADABLE_ATTEMPTS,
            )
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def physical_name(name: str, limit: int, fifo: bool) -> str:
    """``name`` as AWS accepts it: allowed characters, within ``limit``, ``.fifo`` when FIFO."""
    suffix = ".fifo" if fifo else ""
    room = limit - len(suffix)
    cleaned = _NOT_ALLOWED.sub("_", name)
    if cleaned == name and len(name) <= room:
        return name + suffix
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:10]
    return f"{cleaned[: room - 11]}-{digest}{suffix}"


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


class Provisioner:
    """Finds or creates the resources a topic and a group need, once per adapter."""

    def __init__(self, settings: SqsSettings) -> None:
        self.settings = settings
        self._topics: dict[str, str] = {}
        self._queues: dict[str, str] = {}
        self._subscribed: set[tuple[str, str]] = set()
        self._account: str | None = None
        self._lock = asyncio.Lock()

    # -- names -------------------------------------------------------------------------

    def topic_name(self, topic: str) -> str:
        return physical_name(self.settings.prefix + topic, MAX_TOPIC_NAME, self.settings.fifo)

    def queue_name(self, topic: str, group: str | None) -> str:
        logical = self.settings.prefix + topic
        if group is not None and self.settings.topology == "sns":
            logical += GROUP_SEPARATOR + group
        return physical_name(logical, MAX_QUEUE_NAME, self.settings.fifo)

    def storage_name(self, topic: str, group: str) -> str:
        """The queue keeping the dead letters of ``group`` on ``topic``."""
        dead = dlq_topic(topic, group)
        return self.queue_name(dead, REPLAY_GROUP if self.settings.topology == "sns" else None)

    # -- groups ------------------------------------------------------------------------

    async def declare_group(self, clients: dict[str, Any], topic: str, group: str) -> str:
        """The queue ``group`` consumes on ``topic``, ready to receive (topic, queue,
        policy, subscription), and the storage of its dead letters; returns its URL."""
        sqs = clients["sqs"]
        if group != REPLAY_GROUP:  # the DLQ tooling's own group dead-letters nothing
            await self.dead_letter_storage(clients, topic, group)
        if self.settings.topology != "sns":
            return await self.queue_url(sqs, topic, None)
        arn = await self.topic_arn(clients["sns"], clients["sts"], topic)
        url = await self.queue_url(sqs, topic, group)
        await self.subscribe_queue(clients["sns"], sqs, arn, url)
        return url

    async def dead_letter_storage(self, clients: dict[str, Any], topic: str, group: str) -> str:
        """Where dead letters of ``group`` on ``topic`` are kept: created with the group
        (found, with provision=false); its URL."""
        dead, sqs = dlq_topic(topic, group), clients["sqs"]
        name = self.storage_name(topic, group)
        if name in self._queues:
            return self._queues[name]
        if not self.settings.provision:
            try:
                return await self.queue_url(sqs, dead, REPLAY_GROUP)
            except ProvisioningError as exc:
                raise ProvisioningError(
                    f"SQS queue {name!r}, where dead letters of group {group!r} of topic "
                    f"{topic!r} are kept, does not exist and provision=false forbids creating "
                    "it; create it (subscribed to the SNS topic "
                    f"{self.topic_name(dead)!r} with raw delivery) or enable provisioning"
                ) from exc
        if self.settings.topology != "sns":
            return await self.queue_url(sqs, dead, None, redrive=False)
        arn = await self.topic_arn(clients["sns"], clients["sts"], dead)
        # No redrive policy: listing dead letters receives them, each time.
        url = await self.queue_url(sqs, dead, REPLAY_GROUP, redrive=False)
        await self.subscribe_queue(clients["sns"], sqs, arn, url)
        return url

    async def find_storage(self, sqs: Any, topic: str) -> str:
        """The dead-letter storage queue of DLQ topic ``topic``, which must exist (asking
        creates nothing); :class:`TopicNotFoundError` when it does not."""
        name = self.queue_name(topic, REPLAY_GROUP)
        if name in self._queues:
            return self._queues[name]
        try:
            reply = await sqs.get_queue_url(QueueName=name)
        except Exception as exc:
            if "NonExistentQueue" in _code(exc) or "QueueDoesNotExist" in _code(exc):
                raise TopicNotFoundError(
                    f"no such dead-letter topic {topic!r} on SQS (queue {name!r} does not "
                    "exist): nothing was ever dead-lettered there, or the topic or group is "
                    "misspelt; nothing was created"
                ) from exc
            raise
        url = str(reply["QueueUrl"])
        self._queues[name] = url
        return url

    def forget(self, topic: str, group: str) -> None:
        """Drop what is cached of ``group``'s resources, so the next use provisions them
        again (its queue was deleted underneath)."""
        names = {self.queue_name(topic, group), self.storage_name(topic, group)}
        urls = {self._queues.pop(name) for name in names if name in self._queues}
        self._subscribed = {pair for pair in self._subscribed if pair[1] not in urls}

    def forget_queue(self, url: str) -> None:
        """Drop the cached queue at ``url`` (a send found it deleted underneath), so the
        next use provisions it again (or, with provision=false, says it is missing)."""
        self._queues = {name: known for name, known in self._queues.items() if known != url}
        self._subscribed = {pair for pair in self._subscribed if pair[1] != url}

    # -- topics ------------------------------------------------------------------------

    async def topic_arn(self, sns: Any, sts: Any, topic: str) -> str:
        """The SNS topic ARN of ``topic``, created on first use when provisioning is on."""
        arn = self._topics.get(topic)
        if arn is not None:
            return arn
        name = self.topic_name(topic)
        if self.settings.provision:
            attributes = (
                {"FifoTopic": "true", "ContentBasedDeduplication": "false"}
                if self.settings.fifo
                else {}
            )
            reply = await sns.create_topic(Name=name, Attributes=attributes)
            arn = str(reply["TopicArn"])
        else:
            arn = f"arn:aws:sns:{self.settings.region}:{await self._account_id(sts)}:{name}"
            try:
                await sns.get_topic_attributes(TopicArn=arn)
            except Exception as exc:
                if _code(exc) in ("NotFound", "NotFoundException"):
                    raise ProvisioningError(
                        f"SNS topic {name!r} (eventbus topic {topic!r}) does not exist and "
                        "provision=false forbids creating it; create it or enable provisioning"
                    ) from exc
                raise
        self._topics[topic] = arn
        return arn

    async def _account_id(self, sts: Any) -> str:
        if self._account is None:
            reply = await sts.get_caller_identity()
            self._account = str(reply["Account"])
        return self._account

    # -- queues ------------------------------------------------------------------------

    async def queue_url(
        self, sqs: Any, topic: str, group: str | None, *, redrive: bool = True
    ) -> str:
        """The queue of ``group`` on ``topic`` (or of ``topic`` in queue topology)."""
        name = self.queue_name(topic, group)
        url = self._queues.get(name)
        if url is not None:
            return url
        if not self.settings.provision:
            url = await self._existing_queue(sqs, name, topic, group)
        else:
            attributes = self._queue_attributes()
            if self.settings.max_receive_count and redrive:
                dead = await self._create_queue(
                    sqs,
                    physical_name(
                        name.removesuffix(".fifo") + "-redrive", MAX_QUEUE_NAME, self.settings.fifo
                    ),
                    {k: v for k, v in attributes.items() if k != "VisibilityTimeout"},
                )
                attributes["RedrivePolicy"] = json.dumps(
                    {
                        "deadLetterTargetArn": await self.queue_arn(sqs, dead),
                        "maxReceiveCount": str(self.settings.max_receive_count),
                    }
                )
            url = await self._create_queue(sqs, name, attributes)
        self._queues[name] = url
        return url

    def _queue_attributes(self) -> dict[str, str]:
        attributes = {
            "VisibilityTimeout": str(self.settings.visibility_timeout),
            "MessageRetentionPeriod": str(14 * 24 * 3600),
        }
        if self.settings.fifo:
            attributes |= {"FifoQueue": "true", "ContentBasedDeduplication": "false"}
        return attributes

    async def _create_queue(self, sqs: Any, name: str, attributes: dict[str, str]) -> str:
        try:
            reply = await sqs.create_queue(QueueName=name, Attributes=attributes)
        except Exception as exc:
            if _code(exc) not in ("QueueAlreadyExists", "QueueNameExists"):
                raise
            # Created earlier with other attributes (an older visibility timeout, say):
            # use it as it is rather than fail, and say so.
            log.warning(
                "SQS queue %s exists with other attributes than %s; using it as it is",
                name,
                attributes,
            )
            reply = await sqs.get_queue_url(QueueName=name)
        return str(reply["QueueUrl"])

    async def _existing_queue(self, sqs: Any, name: str, topic: str, group: str | None) -> str:
        try:
            reply = await sqs.get_queue_url(QueueName=name)
        except Exception as exc:
            if "NonExistentQueue" in _code(exc) or "QueueDoesNotExist" in _code(exc):
                owner = f"group {group!r} of topic {topic!r}" if group else f"topic {topic!r}"
                raise ProvisioningError(
                    f"SQS queue {name!r} ({owner}) does not exist and provision=false forbids "
                    "creating it; create it (and its SNS subscription) or enable provisioning"
                ) from exc
            raise
        return str(reply["QueueUrl"])

    async def queue_arn(self, sqs: Any, url: str) -> str:
        reply = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        return str(reply["Attributes"]["QueueArn"])

    # -- subscriptions -----------------------------------------------------------------

    async def subscribe_queue(self, sns: Any, sqs: Any, topic_arn: str, queue_url: str) -> None:
        """Subscribe the queue to the topic with raw delivery, allowing the topic to send."""
        if (topic_arn, queue_url) in self._subscribed or not self.settings.provision:
            return
        async with self._lock:
            if (topic_arn, queue_url) in self._subscribed:
                return
            queue_arn = await self.queue_arn(sqs, queue_url)
            policy = {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": "eventbus-sns-to-sqs",
                        "Effect": "Allow",
                        "Principal": {"Service": "sns.amazonaws.com"},
                        "Action": "sqs:SendMessage",
                        "Resource": queue_arn,
                        "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
                    }
                ],
            }
            await sqs.set_queue_attributes(
                QueueUrl=queue_url, Attributes={"Policy": json.dumps(policy)}
            )
            await sns.subscribe(
                TopicArn=topic_arn,
                Protocol="sqs",
                Endpoint=queue_arn,
                Attributes={"RawMessageDelivery": "true"},
                ReturnSubscriptionArn=True,
            )
            self._subscribed.add((topic_arn, queue_url))
