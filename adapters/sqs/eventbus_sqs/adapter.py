"""The SQS adapter: SNS topics fanning out to one SQS queue per group, through aioboto3.

Example::

    adapter = SqsAdapter("sqs://?region=eu-west-1")
    await adapter.connect()
    await adapter.publish("orders", [envelope])
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import aioboto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
)

from eventbus.adapter import Adapter, Capabilities, HealthReport, SubscribeOptions, Subscription
from eventbus.envelope import Envelope
from eventbus.errors import (
    BatchPublishError,
    BrokerConnectionError,
    EventBusError,
    MessageTooLargeError,
    PublishError,
    UnsupportedOperationError,
)

from .codec import body_for_bytes, body_size, encode
from .consumer import SqsSubscription
from .provision import Provisioner
from .settings import MAX_SQS_MESSAGE_BYTES, SqsSettings

log = logging.getLogger("eventbus.sqs")

BATCH_COUNT = 10
FIFO_DEDUPE_SECONDS = 300.0
# Errors a client error code names when the request never got a proper answer.
_TRANSIENT_CODES = ("Throttling", "ThrottlingException", "RequestThrottled",
                    "ServiceUnavailable", "InternalError", "InternalFailure")


class SqsAdapter(Adapter):
    """AWS SQS with SNS fan-out: ``sqs://[host:port]?region=REGION[&options]``.

    See ``docs/adapters/sqs.md`` for every option, the topology and the guarantees.
    """

    schemes = ("sqs",)

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.settings = s = SqsSettings.from_url(url)
        self.capabilities = Capabilities(
            persistent=True,
            consumer_groups=True,
            fanout=s.topology == "sns",
            ordering="per_key" if s.fifo else "none",
            redelivery=True,
            native_delay=True,
            native_dead_letter=False,
            replay=False,
            headers=False,
            max_message_bytes=s.max_message_bytes,
            dedupe_window=FIFO_DEDUPE_SECONDS if s.fifo else None,
            reconnect=True,
        )
        self._clients: dict[str, Any] = {}
        self._stack: contextlib.AsyncExitStack | None = None
        self._connect_lock = asyncio.Lock()
        self._provisioner = Provisioner(s)
        self._subscriptions: set[SqsSubscription] = set()

    # -- connection --------------------------------------------------------------------

    def _config(self, attempts: int | None = None) -> Config:
        s = self.settings
        return Config(
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
            retries={"max_attempts": attempts or s.max_attempts, "mode": "standard"},
            max_pool_connections=max(20, 4 * s.receivers),
        )

    async def connect(self) -> None:
        """Open the SQS, SNS and STS clients and make one request to prove they work."""
        await self._ready()

    async def _ready(self) -> None:
        if self._clients:
            return
        async with self._connect_lock:
            if self._clients:
                return
            s = self.settings
            stack = contextlib.AsyncExitStack()
            try:
                session = aioboto3.Session()
                clients: dict[str, Any] = {}
                # "probe" answers health(): one attempt, so a broker that refuses
                # connections shows at once rather than after the retries' backoff.
                for name, service, attempts in (("sqs", "sqs", None), ("sns", "sns", None),
                                                ("sts", "sts", None), ("probe", "sqs", 1)):
                    clients[name] = await stack.enter_async_context(session.client(
                        service, region_name=s.region, endpoint_url=s.endpoint_url,
                        config=self._config(attempts)))
                await asyncio.wait_for(clients["sqs"].list_queues(MaxResults=1),
                                       s.connect_timeout * 2)
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await stack.aclose()
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise self._connect_error(exc) from exc
            self._stack, self._clients = stack, clients

    def _connect_error(self, exc: BaseException) -> BrokerConnectionError:
        s = self.settings
        where = s.endpoint_url or f"AWS region {s.region}"
        if isinstance(exc, NoCredentialsError):
            return BrokerConnectionError(
                f"cannot connect to SQS at {where} ({s.masked_url}): no AWS credentials found "
                "in the standard chain; set AWS_PROFILE or AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY, or run with an instance or container role")
        return BrokerConnectionError(
            f"cannot connect to SQS at {where} ({s.masked_url}): {type(exc).__name__}: "
            f"{exc or 'timed out'}; check the endpoint, the region and the credentials")

    def sqs_client(self) -> Any:
        """The connected SQS client (for subscriptions and tests)."""
        if "sqs" not in self._clients:
            raise BrokerConnectionError(
                f"the SQS adapter for {self.settings.masked_url} is not connected; call "
                "connect() (or start the bus) first")
        return self._clients["sqs"]

    async def close(self) -> None:
        """Close every subscription (unsettled messages go back), then the clients."""
        for subscription in list(self._subscriptions):
            try:
                await asyncio.wait_for(subscription.close(),
                                       self.settings.wait_seconds + 5.0)
            except (TimeoutError, Exception) as exc:
                log.warning("closing an SQS subscription of topic %r did not finish (%s: %s); "
                            "its unsettled messages come back when their visibility lapses",
                            subscription.topic, type(exc).__name__, exc)
        self._subscriptions.clear()
        stack, self._stack, self._clients = self._stack, None, {}
        if stack is not None:
            try:
                await stack.aclose()
            except BaseException as exc:  # the client's own tasks may raise CancelledError
                log.warning("closing the AWS clients raised %s: %s", type(exc).__name__, exc)

    async def health(self) -> HealthReport:
        """One cheap request (ListQueues, one result) within ``connect_timeout``."""
        s = self.settings
        info = {"region": str(s.region), "endpoint": s.endpoint_url or "aws",
                "topology": s.topology, "fifo": str(s.fifo).lower()}
        try:
            await self._ready()
            await asyncio.wait_for(self._clients["probe"].list_queues(MaxResults=1),
                                   s.connect_timeout)
        except Exception as exc:
            return HealthReport(False, f"SQS at {s.endpoint_url or s.region} did not answer: "
                                f"{type(exc).__name__}: {exc or 'timed out'}", info)
        return HealthReport(True, f"SQS at {s.endpoint_url or s.region} answered", info)

    # -- publishing --------------------------------------------------------------------

    async def publish(self, topic: str, envelopes: Sequence[Envelope]) -> None:
        """Send in batches of up to 10 (and 256 KiB), concurrently; wait for every reply."""
        bodies = [encode(envelope) for envelope in envelopes]
        for envelope, body in zip(envelopes, bodies, strict=True):
            self.check_size(topic, envelope, body_size(body, {}))
        if not bodies:
            return
        entries = [self._entry(body, {}, envelope.partitionkey, envelope.id)
                   for envelope, body in zip(envelopes, bodies, strict=True)]
        await self._ready()
        failures = await self._send(topic, entries, [body_size(b, {}) for b in bodies])
        self._raise_failures(topic, envelopes, failures)

    def _raise_failures(self, topic: str, envelopes: Sequence[Envelope],
                        failures: dict[int, Exception]) -> None:
        if not failures:
            return
        if len(failures) == len(envelopes) and all(
                isinstance(e, BrokerConnectionError) for e in failures.values()):
            raise next(iter(failures.values()))
        errors: dict[int, Exception] = {}
        for i, error in failures.items():
            envelope = envelopes[i]
            wrapped = type(error)(f"event {envelope.id} ({envelope.type}) to {topic!r}: {error}")
            wrapped.__cause__ = error.__cause__ or error
            errors[i] = wrapped
        raise BatchPublishError(
            f"{len(errors)} of {len(envelopes)} messages to SQS/SNS topic {topic!r} were not "
            f"confirmed (indexes {sorted(errors)}); see .failures", errors, len(envelopes))

    async def publish_to_group(self, topic: str, group: str,
                               envelopes: Sequence[Envelope]) -> None:
        """Send straight to ``group``'s queue (SendMessageBatch), bypassing the SNS topic,
        so no other group sees them: how a dead letter is replayed to the group that
        failed it. Same size rules and per-index failures as :meth:`publish`.

        In FIFO the deduplication id gets a unique suffix: a replay reuses the event id
        and would otherwise be dropped within the dedupe window of the original."""
        bodies = [encode(envelope) for envelope in envelopes]
        for envelope, body in zip(envelopes, bodies, strict=True):
            self.check_size(topic, envelope, body_size(body, {}))
        if not bodies:
            return
        entries = [self._entry(body, {}, envelope.partitionkey,
                               f"{envelope.id}-replay-{uuid.uuid4().hex[:12]}")
                   for envelope, body in zip(envelopes, bodies, strict=True)]
        for entry, envelope in zip(entries, envelopes, strict=True):
            if "MessageGroupId" in entry and envelope.partitionkey is None:
                entry["MessageGroupId"] = envelope.id[:128]
        await self._ready()
        sqs = self._clients["sqs"]
        try:
            url = await self._provisioner.queue_url(sqs, topic, group)
        except EventBusError:
            raise
        except Exception as exc:
            raise self._publish_error(topic, exc) from exc

        async def via_queue(batch: list[tuple[int, dict[str, Any]]]) -> dict[int, Exception]:
            reply = await sqs.send_message_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "MessageBody": e["body"],
                 **{k: v for k, v in e.items() if k != "body"}} for i, e in batch])
            return self._failed(topic, reply)

        failures = await self._send(topic, entries, [body_size(b, {}) for b in bodies],
                                    via_queue)
        self._raise_failures(topic, envelopes, failures)

    def _entry(self, body: str, attributes: dict[str, Any], key: str | None,
               event_id: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"body": body}
        if attributes:
            entry["MessageAttributes"] = attributes
        if self.settings.fifo:
            # No key means no order asked for: the event id spreads such messages.
            entry["MessageGroupId"] = (key or event_id)[:128]
            entry["MessageDeduplicationId"] = event_id[:128]
        return entry

    async def _send(self, topic: str, entries: list[dict[str, Any]],
                    sizes: list[int], send: Any = None) -> dict[int, Exception]:
        """Send ``entries`` in batches; the indexes that failed and why."""
        batches: list[list[int]] = [[]]
        total = 0
        for i, size in enumerate(sizes):
            batch = batches[-1]
            if len(batch) == BATCH_COUNT or (batch and total + size > MAX_SQS_MESSAGE_BYTES):
                batches.append([])
                batch, total = batches[-1], 0
            batch.append(i)
            total += size
        try:
            send = send or await self._sender(topic)
        except EventBusError:
            raise
        except Exception as exc:
            raise self._publish_error(topic, exc) from exc
        results = await asyncio.gather(
            *(send([(i, entries[i]) for i in batch]) for batch in batches),
            return_exceptions=True)
        failures: dict[int, Exception] = {}
        for batch, result in zip(batches, results, strict=True):
            if isinstance(result, BaseException):
                error = self._publish_error(topic, result)
                failures.update({i: error for i in batch})
            else:
                failures.update(result)
        return failures

    async def _sender(self, topic: str) -> Any:
        s, p = self.settings, self._provisioner
        if s.topology == "sns":
            sns = self._clients["sns"]
            arn = await p.topic_arn(sns, self._clients["sts"], topic)

            async def via_sns(batch: list[tuple[int, dict[str, Any]]]) -> dict[int, Exception]:
                reply = await sns.publish_batch(TopicArn=arn, PublishBatchRequestEntries=[
                    {"Id": str(i), "Message": e["body"],
                     **{k: v for k, v in e.items() if k != "body"}} for i, e in batch])
                return self._failed(topic, reply)

            return via_sns
        sqs = self._clients["sqs"]
        url = await p.queue_url(sqs, topic, None)

        async def via_sqs(batch: list[tuple[int, dict[str, Any]]]) -> dict[int, Exception]:
            reply = await sqs.send_message_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "MessageBody": e["body"],
                 **{k: v for k, v in e.items() if k != "body"}} for i, e in batch])
            return self._failed(topic, reply)

        return via_sqs

    def _failed(self, topic: str, reply: dict[str, Any]) -> dict[int, Exception]:
        failures: dict[int, Exception] = {}
        for failure in reply.get("Failed", []) or []:
            code, text = failure.get("Code", "?"), failure.get("Message", "")
            error: Exception
            if code in _TRANSIENT_CODES:
                error = BrokerConnectionError(f"SQS/SNS did not take it now ({code}: {text})")
            elif "TooLong" in code or "too long" in str(text).lower():
                error = MessageTooLargeError(f"SQS/SNS refused it as too large ({code}: {text})")
            else:
                error = PublishError(f"SQS/SNS refused it ({code}: {text})")
            failures[int(failure["Id"])] = error
        return failures

    def _publish_error(self, topic: str, exc: BaseException) -> Exception:
        where = self.settings.endpoint_url or self.settings.region
        text = f"publishing to {topic!r} on SQS/SNS at {where}: {type(exc).__name__}: {exc}"
        code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None
        transient = code in _TRANSIENT_CODES or isinstance(
            exc, EndpointConnectionError | BotoCoreError | OSError | TimeoutError)
        error = BrokerConnectionError(text) if transient else PublishError(text)
        error.__cause__ = exc
        return error

    async def publish_raw(
        self, topic: str, payload: bytes, headers: Mapping[str, bytes] | None = None
    ) -> None:
        """Send ``payload`` as a message body as it is (poison-message tests)."""
        body, attributes = body_for_bytes(payload)
        if body_size(body, attributes) > self.settings.max_message_bytes:
            raise MessageTooLargeError(f"raw payload of {len(payload)} bytes to {topic!r} is "
                                       "over the SQS limit; nothing was sent")
        await self._ready()
        entry = self._entry(body, attributes, None, uuid.uuid4().hex)
        failures = await self._send(topic, [entry], [body_size(body, attributes)])
        if failures:
            raise failures[0]

    # -- subscribing ---------------------------------------------------------------------

    async def subscribe(self, topic: str, options: SubscribeOptions) -> Subscription:
        """Consume ``topic`` as ``options.group``: its queue, created and subscribed if new.

        A new group starts with the messages published after it was created: SQS
        keeps no history to replay, so ``start_from="earliest"`` is refused.
        """
        if options.start_from == "earliest":
            raise UnsupportedOperationError(
                f"group {options.group!r} of topic {topic!r} asked to start from the earliest "
                "message, but SQS/SNS keeps no history: a new group's queue receives what is "
                "published after it exists; subscribe with start_from='latest'")
        await self._ready()
        s, p = self.settings, self._provisioner
        sqs = self._clients["sqs"]
        if s.topology == "sns":
            sns = self._clients["sns"]
            arn = await p.topic_arn(sns, self._clients["sts"], topic)
            url = await p.queue_url(sqs, topic, options.group)
            await p.subscribe_queue(sns, sqs, arn, url)
        else:
            url = await p.queue_url(sqs, topic, None)
        subscription = SqsSubscription(self, topic, url, options)
        subscription.start()
        self._subscriptions.add(subscription)
        return subscription

    def forget(self, subscription: SqsSubscription) -> None:
        """Called by a subscription when it closes."""
        self._subscriptions.discard(subscription)
