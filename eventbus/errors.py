"""Every error eventbus raises derives from :class:`EventBusError`.

Messages say what happened, to what (topic, group, event id, URL with the
password masked) and what to do about it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from eventbus.envelope import Envelope


class EventBusError(Exception):
    """Base class of every eventbus error."""


class ConfigurationError(EventBusError):
    """The bus, a subscription or an adapter was configured wrongly."""


class UsageError(ConfigurationError, TypeError):
    """eventbus was called the wrong way: something not an event given to ``publish``,
    ``@bus.subscribe`` without its parentheses, a handler whose parameters disagree
    with its subscription. Raised where the call is made, saying the right spelling."""


class InvalidURLError(ConfigurationError):
    """A broker URL could not be parsed or names options the adapter does not know."""


class UnknownSchemeError(ConfigurationError):
    """No adapter is installed for a URL scheme."""


class ProvisioningError(ConfigurationError):
    """An adapter could not create or find a resource it needs (topic, queue, stream,
    consumer group), or was told not to create one (``provision=false``) that is missing.

    A configuration error: the runner gives the subscription up at once (visibly, in
    ``bus.health()``) rather than re-subscribing for ever, and a publish raises it
    without retrying. The message names the resource and what to do (create it, grant
    the permission, or set ``provision=true``).
    """


class BrokerConnectionError(EventBusError):
    """The broker refused the connection, could not be reached, or rejected credentials."""


class ConnectionLostError(BrokerConnectionError):
    """An established connection dropped; the bus re-subscribes with backoff."""


class PublishError(EventBusError):
    """The broker did not confirm a publish."""


class MessageTooLargeError(PublishError):
    """A message exceeds the broker's maximum size; nothing was sent."""


class BatchPublishError(PublishError):
    """Some messages of a batch were not confirmed.

    ``failures`` maps the index of each failed message in the batch to its error;
    every index not named there was confirmed by the broker. ``envelopes`` (when
    the bus raises it) are the batch's envelopes by index: republish the failed
    ones as they are (same ids) so idempotency can absorb a double delivery.
    """

    def __init__(
        self,
        message: str,
        failures: dict[int, Exception],
        total: int,
        envelopes: Sequence[Envelope] = (),
    ) -> None:
        super().__init__(message)
        self.failures = failures
        self.total = total
        self.envelopes = list(envelopes)

    @property
    def succeeded(self) -> Sequence[int]:
        """Indexes of the messages the broker confirmed."""
        return [i for i in range(self.total) if i not in self.failures]

    @classmethod
    def partial(cls, failures: dict[int, Exception], total: int, where: str) -> BatchPublishError:
        """The error of a batch of ``total`` messages to ``where`` ("Kafka topic
        'orders'") of which those in ``failures`` were not confirmed: one message for
        every adapter, naming how many and which."""
        return cls(
            f"{len(failures)} of {total} messages to {where} were not confirmed (indexes "
            f"{sorted(failures)}); see .failures, and republish those as they are",
            failures,
            total,
        )


class UnsupportedOperationError(EventBusError):
    """The adapter or broker cannot do what was asked; its Capabilities say so."""


class DecodeError(EventBusError):
    """Bytes from the broker are not a CloudEvent eventbus can read."""


class InfrastructureError(EventBusError):
    """Something the bus relies on failed, not the handler: the message is redelivered.

    The dead-letter step never dead-letters these: a message whose handler did
    not fail goes back to the broker (``nack`` with backoff) and is tried again
    once the store or broker answers. Handlers should raise their own errors,
    which count against the retry budget, rather than these.
    """


class IdempotencyStoreError(InfrastructureError):
    """The idempotency store could not claim an event id; the handler did not run."""


class DeadLetterPublishError(InfrastructureError):
    """A failed message could not be published to its dead-letter topic; it is redelivered."""


class PoisonMessageError(EventBusError):
    """A message can never be handled (undecodable, unknown type or version, invalid data).

    Poison messages are dead-lettered at once, never retried.
    """


class SchemaError(PoisonMessageError):
    """An event's type or version is unknown, or its data fails validation."""


class HandlerTimeoutError(EventBusError):
    """A handler ran longer than its subscription's timeout."""


class RunsExhaustedError(EventBusError):
    """A message came back after its handler had already run ``max_attempts`` times
    without finishing: each run ended with its process (killed, out of memory, a
    segfault) or its outcome was lost. It is dead-lettered before it runs again, so a
    message that kills every consumer it reaches cannot crash-loop a service forever."""


class HandlerCancelledError(EventBusError):
    """A handler raised CancelledError without being cancelled itself (it awaited a task
    someone else cancelled); it counts as a failure of the handler and is retried."""


class SubscriptionFailedError(EventBusError):
    """A subscription gave up for good (see ``EventBus.health()``); the service
    consumes nothing more from it and should be restarted once the cause is fixed."""


class DeliveryAlreadySettledError(EventBusError):
    """A delivery was acked and then nacked/rejected (or the reverse)."""


class DuplicateSubscriptionError(ConfigurationError):
    """A command got a second handler group, or a type two handlers in one group."""


class GuaranteeUnavailableError(ConfigurationError):
    """A subscription explicitly asked for a guarantee its broker cannot give.

    Raised by ``subscribe()`` (or when the subscription starts), before anything is
    consumed: ``delivery="at_least_once"`` on a broker that never redelivers (core
    NATS, Redis Pub/Sub), or a second competing member of a group on a broker
    without consumer groups. ``topic``, ``broker`` (masked URL) and ``instead``
    (what to use instead) are kept as attributes.
    """

    def __init__(
        self, message: str, *, topic: str = "", broker: str = "", instead: str = ""
    ) -> None:
        super().__init__(message)
        self.topic = topic
        self.broker = broker
        self.instead = instead


class InvalidExtensionNameError(EventBusError, ValueError):
    """An extension attribute name is not a valid CloudEvents name or is reserved.

    Reserved names are the CloudEvents attributes and the ones the envelope models
    as fields (``correlationid``, ``partitionkey``...): an extension with such a
    name would replace or duplicate the real attribute on the wire.
    """


class TopicNotFoundError(EventBusError):
    """A topic that was only to be read does not exist on the broker (nothing was created)."""


# What a broker (or the adapter before it) says when a message can never go out as it
# is: resending it unchanged gets the same answer. Adapters map their clients' errors
# onto these classes; everything else (connection, timeout, unconfirmed) is worth retrying.
_PERMANENT = (
    MessageTooLargeError,
    TopicNotFoundError,
    ConfigurationError,
    DecodeError,
    UnsupportedOperationError,
)


def is_permanent_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` refuses a message for good, so retrying it unchanged is useless.

    True for :class:`MessageTooLargeError`, :class:`TopicNotFoundError`,
    :class:`ConfigurationError` (and its subclasses: an invalid topic or subject
    name, a bad option), :class:`DecodeError` and :class:`UnsupportedOperationError`;
    for a :class:`BatchPublishError` when every one of its failures is. False for
    everything else, above all :class:`BrokerConnectionError`, :class:`PublishError`
    (not confirmed in time), :class:`InfrastructureError` and errors eventbus does not
    know: those may pass once the broker or network recovers.

    ::

        try:
            await adapter.publish(topic, envelopes)
        except Exception as exc:
            if not is_permanent_refusal(exc):
                raise  # back off and try again
            park(envelopes, reason=exc)  # set it aside for a person
    """
    if isinstance(exc, BatchPublishError):
        return bool(exc.failures) and all(is_permanent_refusal(e) for e in exc.failures.values())
    return isinstance(exc, _PERMANENT) and not isinstance(exc, BrokerConnectionError)


def mask_url(url: str) -> str:
    """Return ``url`` with any password or secret replaced by ``***`` so it can be logged.

    Masking works on the raw text, before any URL parsing, because a password may
    hold the very characters a parser splits on (``#``, ``/``, ``?``, ``@``):
    everything between ``scheme://`` and the last ``@`` is the user info, and only
    the user name before its first ``:`` is kept. Query parameters whose name says
    secret (``password``, ``secret``, ``token``, ``key``...) are masked too.

    Text without ``://`` (a URL typed wrong: ``localhost:5672``, ``nats:/x``,
    ``user:pass@host``) gets the same treatment, so the message about it shows what
    was typed: before its last ``@`` only the part before the first ``:`` is kept.
    Text without ``@`` that has no address shape at all (a password pasted where
    the URL goes) is hidden but for its first characters.
    """
    if "://" not in url and not url.startswith("//"):
        return _mask_not_a_url(url)
    masked = _USERINFO.sub(_mask_userinfo, url, count=1)
    masked = _QUERY_SECRET.sub(r"\1***", masked)
    try:
        urlsplit(masked)
    except ValueError:
        return "<unparseable url>"
    return masked


def _mask_not_a_url(text: str) -> str:
    if not text:
        return ""
    if "@" in text:
        before, _, after = text.rpartition("@")
        user, colon, _password = before.partition(":")
        host = _QUERY_SECRET.sub(r"\1***", after)
        return f"{user}{colon and ':***'}@{host}"
    if _ADDRESS_LIKE.fullmatch(text):
        return _QUERY_SECRET.sub(r"\1***", text)
    return text[: min(4, len(text) // 4)] + "***"


# What a mistyped broker address looks like: [scheme:[/]]host[:port][/path][?query], with
# something that makes it an address (a port, a dot, a slash, or "localhost") - a bare
# word may as well be a password.
_ADDRESS_LIKE = re.compile(
    r"(?:[A-Za-z][A-Za-z0-9+.-]*:/?)?(?:localhost|[A-Za-z0-9_.\[\]-]*[.:/][A-Za-z0-9_.\[\]:/-]*"
    r"|[A-Za-z0-9_-]+:\d+)(?:/[^\s?#]*)?(?:\?[^\s#]*)?"
)


# Greedy up to the LAST "@": an unencoded "@" in a password must not end the user info.
_USERINFO = re.compile(r"^(?P<scheme>(?:[^:/?#@]*:)?//)(?P<userinfo>.*)@", re.DOTALL)
_QUERY_SECRET = re.compile(
    r"([?&;][^=&#]*(?:pass|pwd|secret|token|credential|key|auth|signature)[^=&#]*=)[^&]*",
    re.IGNORECASE,
)


def _mask_userinfo(match: re.Match[str]) -> str:
    user, colon, _password = match["userinfo"].partition(":")
    return f"{match['scheme']}{user}{colon and ':***'}@"
