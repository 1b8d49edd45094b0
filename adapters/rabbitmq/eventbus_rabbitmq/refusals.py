"""What the broker said no to, mapped to the error that tells the caller what to do.

A refusal that will happen again however often the message is sent (too large for
the broker's ``max_message_size``, a queue declared with other arguments) is not an
outage: it must not be reported as "the connection is down, publish again", which
the bus would retry for its whole ``publish_timeout``.
"""

from __future__ import annotations

import dataclasses
import logging
import re

from aiormq.exceptions import ChannelPreconditionFailed, DeliveryError
from aiormq.exceptions import PublishError as ReturnedError

from eventbus.adapter import Capabilities
from eventbus.errors import (
    BrokerConnectionError,
    ConfigurationError,
    MessageTooLargeError,
    PublishError,
)

from .connection import one_line
from .settings import RabbitMQSettings

log = logging.getLogger("eventbus.rabbitmq")

# RabbitMQ's text when a message is over its max_message_size (rabbit_channel).
_TOO_LARGE = re.compile(r"message size (\d+) is larger than configured max size (\d+)")


def server_size_limit(exc: BaseException) -> int | None:
    """The broker's ``max_message_size`` when ``exc`` is its refusal of a message for
    its size, else ``None``."""
    if isinstance(exc, ChannelPreconditionFailed):
        found = _TOO_LARGE.search(str(exc))
        if found:
            return int(found.group(2))
    return None


def learn_limit(capabilities: Capabilities, exc: BaseException, where: str) -> Capabilities:
    """``capabilities`` with ``max_message_bytes`` lowered to the broker's when ``exc``
    is its refusal of a message for its size (AMQP never tells a client the limit)."""
    limit = server_size_limit(exc)
    if limit is None or limit >= capabilities.max_message_bytes:
        return capabilities
    log.warning("RabbitMQ at %s refuses messages over %d bytes (its max_message_size); "
                "max_message_bytes lowered from %d to match", where, limit,
                capabilities.max_message_bytes)
    return dataclasses.replace(capabilities, max_message_bytes=limit)


def precondition_error(settings: RabbitMQSettings, queue: str,
                       exc: ChannelPreconditionFailed) -> ConfigurationError:
    """A declaration of ``queue`` refused because it exists with other arguments."""
    error = ConfigurationError(
        f"RabbitMQ refused to declare queue {queue!r}: it exists with other arguments "
        f"than this URL's (queue_type={settings.queue_type}, single_active_consumer="
        f"{str(settings.single_active_consumer).lower()}); set queue_type and "
        "single_active_consumer in the URL as the queue was declared (e.g. "
        f"queue_type={'classic' if settings.queue_type == 'quorum' else 'quorum'}), or "
        f"delete the queue ({one_line(settings, exc)})"
    )
    return error


def publish_error(settings: RabbitMQSettings, topic: str, what: str,
                  exc: BaseException) -> Exception:
    """The eventbus error for a publish of ``what`` to ``topic`` that failed with ``exc``."""
    if isinstance(exc, PublishError | BrokerConnectionError | ConfigurationError):
        return exc
    text = f"{what} to {topic!r}: {one_line(settings, exc)}"
    limit = server_size_limit(exc)
    error: Exception
    if limit is not None:
        error = MessageTooLargeError(
            f"RabbitMQ refused {text}: over the broker's max_message_size ({limit} bytes); "
            "nothing was stored. Keep events small, or raise max_message_size on the "
            f"broker; this adapter now refuses messages over {limit} bytes before sending"
        )
    elif isinstance(exc, ChannelPreconditionFailed):
        error = PublishError(f"RabbitMQ refused {text}; sending it again will not help")
    elif isinstance(exc, ReturnedError):
        error = PublishError(
            f"RabbitMQ returned {text}: no queue is bound to exchange {topic!r} (no "
            "group has subscribed yet), so it was not stored; subscribe a group "
            "first, or set mandatory=false to drop such messages silently")
    elif isinstance(exc, DeliveryError):
        error = PublishError(f"RabbitMQ refused (nacked) {text}; publish again")
    else:
        error = BrokerConnectionError(
            f"RabbitMQ at {settings.masked_url} did not confirm {text}; the connection "
            "is down or slow (a memory or disk alarm blocks publishing too), publish again")
    error.__cause__ = exc
    return error
