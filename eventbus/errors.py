"""Every error eventbus raises derives from :class:`EventBusError`.

Messages say what happened, to what (topic, group, event id, URL with the
password masked) and what to do about it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from eventbus.envelope import Envelope


class EventBusError(Exception):
    """Base class of every eventbus error."""


class ConfigurationError(EventBusError):
    """The bus, a subscription or an adapter was configured wrongly."""


class InvalidURLError(ConfigurationError):
    """A broker URL could not be parsed or names options the adapter does not know."""


class UnknownSchemeError(ConfigurationError):
    """No adapter is installed for a URL scheme."""


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

    def __init__(self, message: str, failures: dict[int, Exception], total: int,
                 envelopes: Sequence[Envelope] = ()) -> None:
        super().__init__(message)
        self.failures = failures
        self.total = total
        self.envelopes = list(envelopes)

    @property
    def succeeded(self) -> Sequence[int]:
        """Indexes of the messages the broker confirmed."""
        return [i for i in range(self.total) if i not in self.failures]


class UnsupportedOperationError(EventBusError):
    """The adapter or broker cannot do what was asked; its Capabilities say so."""


class DecodeError(EventBusError):
    """Bytes from the broker are not a CloudEvent eventbus can read."""


class PoisonMessageError(EventBusError):
    """A message can never be handled (undecodable, unknown type or version, invalid data).

    Poison messages are dead-lettered at once, never retried.
    """


class SchemaError(PoisonMessageError):
    """An event's type or version is unknown, or its data fails validation."""


class HandlerTimeoutError(EventBusError):
    """A handler ran longer than its subscription's timeout."""


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


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` so it can be logged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
