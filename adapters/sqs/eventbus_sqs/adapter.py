"""The SQS adapter: SNS topics fanning out to one SQS queue per group, through aioboto3.

(Over 400 lines: connection, capabilities, publishing and subscribing of one adapter;
the parts that stand alone live in publish, provision, consumer and delivery.)

Example::

    adapter = SqsAdapter("sqs://?region=eu-west-1")
    await adapter.connect()
    await adapter.publish("orders", [envelope])

    # Or with settings made in code and an aioboto3 session of your own (its
    # credentials, profile or assumed role): the adapter opens its SQS, SNS and STS
    # clients from it and closes those, never the session.
    adapter = SqsAdapter(settings=SqsSettings(region="eu-west-1"), client=session)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import aioboto3
from botocore.config import Config
from botocore.exceptions import NoCredentialsError

from eventbus.adapter import (
    REPLAY_GROUP,
    Capabilities,
    HealthReport,
    SubscribeOptions,
    Subscription,
    dlq_topic,
)
from eventbus.adapters_util import ConfiguredAdapter, Mapped, map_exceptions
from eventbus.envelope import Envelope
from eventbus.errors import (
    BrokerConnectionError,
    EventBusError,
    MessageTooLargeError,
    ProvisioningError,
    PublishError,
    UnsupportedOperationError,
)
from eventbus.raw_message import RawMessage

from .codec import body_for_bytes, body_size, encode, header_attributes
from .consumer import SqsSubscription
from .delivery import classify, error_code
from .provision import Provisioner, again_if_unreadable
from .publish import Publisher, Send, fifo_id, is_dead_letter
from .settings import SqsSettings

log = logging.getLogger("eventbus.sqs")

FIFO_DEDUPE_SECONDS = 300.0


class SqsAdapter(ConfiguredAdapter[SqsSettings, aioboto3.Session]):
    """AWS SQS with SNS fan-out: ``sqs://[host:port]?region=REGION[&options]``.

    ``SqsAdapter(url)``, or ``SqsAdapter(settings=..., client=...)``: settings made in
    code, and optionally an ``aioboto3.Session`` of your own (credentials from somewhere
    other than the default chain), from which the adapter opens its clients. See
    ``docs/adapters/sqs.md`` for every option, the topology and the guarantees.
    """

    schemes = ("sqs",)
    settings_type = SqsSettings

    def _setup(self, client: aioboto3.Session | None) -> None:
        s = self.settings
        self._session = client
        # A durable broker (native delay: DelaySeconds and the visibility timeout;
        # lease: a received message stays hidden for visibility_timeout unless
        # extended), except:
        self.capabilities = replace(
            Capabilities.DURABLE,
            max_message_bytes=s.max_message_bytes,
            # HTTP keeps no session to ping: health() asks SQS each time within
            # connect_timeout, so a path that stopped answering shows at once; every
            # request gives up on a silent connection after read_timeout and the next
            # one opens a new connection.
            half_open_bound=s.connect_timeout,
            fanout=s.topology == "sns",  # topology=queue: one queue, every subscriber competes
            ordering="per_key" if s.fifo else "none",  # a FIFO queue's message groups
            dedupe_window=FIFO_DEDUPE_SECONDS if s.fifo else None,
            replay=False,  # a queue holds only what arrived after it was created
            headers=False,  # structured mode in the body (SQS allows only 10 attributes)
            browse=False,  # receiving a message is consuming it
            # Queue topology has one queue per topic that every group shares: no route
            # to one group (a replay goes to that queue, i.e. the whole topic).
            group_route=s.topology == "sns",
        )
        self._clients: dict[str, Any] = {}
        self._stack: contextlib.AsyncExitStack | None = None
        self._connect_lock = asyncio.Lock()
        self._provisioner = Provisioner(s)
        self._publisher = Publisher(self)
        self._subscriptions: set[SqsSubscription] = set()

    # -- connection --------------------------------------------------------------------

    def _config(self, attempts: int | None = None) -> Config:
        s = self.settings
        return Config(
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
            retries={"max_attempts": attempts or s.max_attempts, "mode": "standard"},
            max_pool_connections=max(20, 4 * s.receivers),
            user_agent_extra=s.client_name,
            client_cert=(s.tls_cert, s.tls_key) if s.tls_cert else None,
        )

    def _verify(self) -> str | bool | None:
        """botocore's ``verify``: the CA bundle, ``False`` not to verify, or the default."""
        s = self.settings
        return False if not s.tls_verify else s.tls_ca

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
                with map_exceptions(
                    _connect_failure,
                    what=(
                        f"connecting to SQS at {s.endpoint_url or f'AWS region {s.region}'} "
                        f"({s.masked_url})"
                    ),
                ):
                    session = self._session or aioboto3.Session()
                    clients: dict[str, Any] = {}
                    # "probe" answers health(): one attempt, so a broker that refuses
                    # connections shows at once rather than after the retries' backoff.
                    for name, service, attempts in (
                        ("sqs", "sqs", None),
                        ("sns", "sns", None),
                        ("sts", "sts", None),
                        ("probe", "sqs", 1),
                    ):
                        clients[name] = await stack.enter_async_context(
                            session.client(
                                service,
                                region_name=s.region,
                                endpoint_url=s.endpoint_url,
                                config=self._config(attempts),
                                verify=self._verify(),
                            )
                        )
                    await asyncio.wait_for(
                        clients["sqs"].list_queues(MaxResults=1), s.connect_timeout * 2
                    )
            except BaseException:
                with contextlib.suppress(Exception):
                    await stack.aclose()
                raise
            self._stack, self._clients = stack, clients

    def sqs_client(self) -> Any:
        """The connected SQS client (for subscriptions and tests)."""
        return self._client("sqs")

    def sns_client(self) -> Any:
        """The connected SNS client."""
        return self._client("sns")

    @property
    def provisioner(self) -> Provisioner:
        """What this adapter found or created (its publisher drops a deleted queue)."""
        return self._provisioner

    def probe_client(self) -> Any:
        """The SQS client that tries once (health, backlog): an answer or not, at once."""
        return self._client("probe")

    def _client(self, name: str) -> Any:
        if name not in self._clients:
            raise BrokerConnectionError(
                f"the SQS adapter for {self.settings.masked_url} is not connected; call "
                "connect() (or start the bus) first"
            )
        return self._clients[name]

    async def close(self) -> None:
        """Close every subscription (unsettled messages go back), then the clients."""
        for subscription in list(self._subscriptions):
            try:
                await asyncio.wait_for(subscription.close(), self.settings.wait_seconds + 5.0)
            except (TimeoutError, Exception) as exc:
                log.warning(
                    "closing an SQS subscription of topic %r did not finish (%s: %s); "
                    "its unsettled messages come back when their visibility lapses",
                    subscription.topic,
                    type(exc).__name__,
                    exc,
                )
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
        info = {
            "region": str(s.region),
            "endpoint": s.endpoint_url or "aws",
            "topology": s.topology,
            "fifo": str(s.fifo).lower(),
        }
        try:
            await self._ready()
            await asyncio.wait_for(
                self._clients["probe"].list_queues(MaxResults=1), s.connect_timeout
            )
        except Exception as exc:
            return HealthReport(
                False,
                f"SQS at {s.endpoint_url or s.region} did not answer: "
                f"{type(exc).__name__}: {exc or 'timed out'}",
                info,
            )
        return HealthReport(True, f"SQS at {s.endpoint_url or s.region} answered", info)

    # -- publishing --------------------------------------------------------------------

    async def publish(self, topic: str, envelopes: Sequence[Envelope]) -> None:
        """Send in batches of up to 10 (and 256 KiB), concurrently (in FIFO, batches of
        one partition key in order); wait for every reply."""
        bodies = [encode(envelope) for envelope in envelopes]
        for envelope, body in zip(envelopes, bodies, strict=True):
            self.check_size(topic, envelope, body_size(body, {}))
        if not bodies:
            return
        entries = self._publisher.entries(envelopes, bodies)
        await self._ready()
        send = await self._sender(topic, envelopes)
        failures = await self._publisher.send(
            topic, entries, [body_size(b, {}) for b in bodies], send
        )
        self._publisher.raise_failures(topic, envelopes, failures)

    async def publish_to_group(self, topic: str, group: str, envelopes: Sequence[Envelope]) -> None:
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
        entries = [
            self._publisher.entry(
                body, {}, envelope, f"{envelope.id}-replay-{uuid.uuid4().hex[:12]}"
            )
            for envelope, body in zip(envelopes, bodies, strict=True)
        ]
        await self._ready()
        try:
            url = await self._provisioner.queue_url(self._clients["sqs"], topic, group)
        except EventBusError:
            raise
        except Exception as exc:
            raise self._publisher.error(topic, exc) from exc
        failures = await self._publisher.send(
            topic, entries, [body_size(b, {}) for b in bodies], self._publisher.via_queue(url)
        )
        self._publisher.raise_failures(topic, envelopes, failures)

    async def _sender(self, topic: str, envelopes: Sequence[Envelope] = ()) -> Send:
        """How to send to ``topic``, provisioning it on first use. Dead letters make sure
        their storage exists first (declared with the group; this covers a group
        subscribed by an older version, or whose storage was deleted since)."""
        s, p = self.settings, self._provisioner
        try:
            dead = envelopes[0] if envelopes and is_dead_letter(envelopes[0]) else None
            if dead is not None:
                origin, group = dead.extensions.get("dlqtopic"), dead.extensions.get("dlqgroup")
                if origin and group and dlq_topic(origin, group) == topic:
                    await p.dead_letter_storage(self._clients, origin, group)
            if s.topology == "sns":
                arn = await p.topic_arn(self._clients["sns"], self._clients["sts"], topic)
                return self._publisher.via_topic(arn)
            return self._publisher.via_queue(await p.queue_url(self._clients["sqs"], topic, None))
        except EventBusError:
            raise
        except Exception as exc:
            raise self._publisher.error(topic, exc) from exc

    async def publish_raw(self, topic: str, message: RawMessage) -> None:
        """Send ``message``'s payload as a message body as it is, its headers as SQS
        message attributes (text as ``String``, other bytes as ``Binary``): a foreign
        producer's message, or an undecodable dead letter replayed as it arrived. On a
        FIFO queue its key is the MessageGroupId (messages of one key in order)."""
        payload, headers, key = message.payload, message.headers, message.key
        body, attributes = body_for_bytes(payload)
        if headers:
            try:
                attributes = {**header_attributes(headers), **attributes}
            except ValueError as exc:
                raise PublishError(f"raw message to {topic!r}: {exc}; nothing was sent") from exc
        size = body_size(body, attributes)
        if size > self.settings.max_message_bytes:
            raise MessageTooLargeError(
                f"raw payload of {len(payload)} bytes to {topic!r} is "
                f"{size} bytes with its attributes, over the SQS limit "
                f"of {self.settings.max_message_bytes}; nothing was sent"
            )
        await self._ready()
        entry = self._publisher.entry(body, attributes, None, uuid.uuid4().hex)
        if key is not None and "MessageGroupId" in entry:
            entry["MessageGroupId"] = fifo_id(key)
        send = await self._sender(topic)
        failures = await self._publisher.send(topic, [entry], [size], send)
        self._publisher.raise_failures(topic, [None], failures)

    # -- subscribing ---------------------------------------------------------------------

    async def subscribe(self, topic: str, options: SubscribeOptions) -> Subscription:
        """Consume ``topic`` as ``options.group``: its queue, created and subscribed if new,
        with the queue keeping its dead letters.

        A new group starts with the messages published after it was created: SQS
        keeps no history to replay, so ``start_from="earliest"`` is refused, except for
        the DLQ tooling's group (``eventbus-dlq-replay``) on a DLQ topic: its queue is
        declared with the group that dead-letters into it, so it holds every dead
        letter there is; reading it never creates it (``TopicNotFoundError``).
        """
        replaying = options.group == REPLAY_GROUP and topic.endswith(".dlq")
        if options.start_from == "earliest" and not replaying:
            raise UnsupportedOperationError(
                f"group {options.group!r} of topic {topic!r} asked to start from the earliest "
                "message (in subscribe() or the URL's start_from), but SQS/SNS keeps no "
                "history: a new group's queue receives what is published after it exists; "
                "subscribe with start_from='latest' and drop start_from=earliest from the URL"
            )
        await self._ready()
        what = (
            f"provisioning the queue of group {options.group!r} on topic {topic!r} at "
            f"{self.settings.masked_url}"
        )
        with map_exceptions(_provisioning_failure, what=what):
            if options.start_from == "earliest":
                url = await self._provisioner.find_storage(self._clients["sqs"], topic)
            else:
                url = await again_if_unreadable(
                    lambda: self._provisioner.declare_group(self._clients, topic, options.group),
                    what,
                )
        subscription = SqsSubscription(self, topic, url, options)
        subscription.start()
        self._subscriptions.add(subscription)
        return subscription

    def forget_group(self, topic: str, group: str) -> None:
        """The group's queue is gone: provision it (and its dead-letter storage) anew on
        the next subscribe."""
        self._provisioner.forget(topic, group)

    def forget(self, subscription: SqsSubscription) -> None:
        """Called by a subscription when it closes."""
        self._subscriptions.discard(subscription)


def _connect_failure(exc: Exception) -> Mapped:
    """Whatever fails while connecting is the connection's; what to do depends on it."""
    if isinstance(exc, NoCredentialsError):
        return BrokerConnectionError, (
            "no AWS credentials found in the standard chain; set AWS_PROFILE or "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run with an instance or container "
            "role"
        )
    return BrokerConnectionError, "check the endpoint, the region and the credentials"


def _provisioning_failure(exc: Exception) -> Mapped:
    """A refusal that stays (access denied, a bad attribute) is a ProvisioningError: the
    subscription gives up at once. An outage (AWS's 60 s wait before a deleted queue's
    name may be used again among them) is the connection's: subscribe again."""
    if classify(exc) == "transient":
        return BrokerConnectionError, "subscribing again with backoff"
    return ProvisioningError, (
        f"refused ({error_code(exc) or type(exc).__name__}); check the IAM permissions in "
        "docs/adapters/sqs.md"
    )
