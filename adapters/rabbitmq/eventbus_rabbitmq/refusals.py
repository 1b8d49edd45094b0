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

from aiormq.exceptions import ChannelAccessRefused, ChannelPreconditionFailed, DeliveryError
from aiormq.exceptions import PublishError as ReturnedError

from eventbus.adapter import Capabilities
from eventbus.adapters_util import Mapped, translate
from eventbus.errors import (
    BrokerConnectionError,
    EventBusError,
    MessageTooLargeError,
    ProvisioningError,
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
    log.warning(
        "RabbitMQ at %s refuses messages over %d bytes (its max_message_size); "
        "max_message_bytes lowered from %d to match",
        where,
        limit,
        capabilities.max_message_bytes,
    )
    return dataclasses.replace(capabilities, max_message_bytes=limit)


def precondition_error(
    settings: RabbitMQSettings, queue: str, exc: ChannelPreconditionFailed
) -> ProvisioningError:
    """A declaration of ``queue`` refused because it exists with other arguments."""
    error = ProvisioningError(
        f"RabbitMQ refused to declare queue {queue!r}: it exists with other arguments "
        f"than this URL's (queue_type={settings.queue_type}, single_active_consumer="
        f"{str(settings.single_active_consumer).lower()}); set queue_type and "
        "single_active_consumer in the URL as the queue was declared (e.g. "
        f"queue_type={'classic' if settings.queue_type == 'quorum' else 'quorum'}), or "
        f"delete the queue ({one_line(settings, exc)})"
    )
    return error


def publish_error(
    settings: RabbitMQSettings, topic: str, what: str, exc: BaseException
) -> Exception:
    """The eventbus error for a publish of ``what`` to ``topic`` that failed with ``exc``
    (what the broker refused for good is told apart from an outage: see the module)."""
    if isinstance(exc, EventBusError):
        return exc
    what = f"publishing {what} to {topic!r} on RabbitMQ at {settings.masked_url}"
    if not isinstance(exc, Exception):  # the confirm never came: cut short
        error = BrokerConnectionError(
            f"{what} was not confirmed ({type(exc).__name__}); publish again"
        )
        error.__cause__ = exc
        return error
    return translate(exc, lambda e: _publish_refusal(e, topic), scrub=settings.scrub, what=what)


def _publish_refusal(exc: Exception, topic: str) -> Mapped:
    limit = server_size_limit(exc)
    if limit is not None:
        return MessageTooLargeError, (
            f"over the broker's max_message_size ({limit} bytes); nothing was stored. Keep "
            "events small, or raise max_message_size on the broker; this adapter now "
            f"refuses messages over {limit} bytes before sending"
        )
    if isinstance(exc, ChannelAccessRefused):
        return ProvisioningError, (
            f"the broker does not let this user declare or write to exchange {topic!r}; "
            "grant the permission, or declare it yourself and set provision=false"
        )
    if isinstance(exc, ChannelPreconditionFailed):
        return PublishError, "the broker refused it; sending it again will not help"
    if isinstance(exc, ReturnedError):
        return PublishError, (
            f"returned: no queue is bound to exchange {topic!r} (no group has subscribed "
            "yet), so it was not stored; subscribe a group first, or set mandatory=false "
            "to drop such messages silently"
        )
    if isinstance(exc, DeliveryError):
        return PublishError, "the broker refused (nacked) it; publish again"
    return BrokerConnectionError, (
        "not confirmed: the connection is down or slow (a memory or disk alarm blocks "
        "publishing too); publish again"
    )


def subscribe_error(
    settings: RabbitMQSettings, topic: str, group: str, queue: str, exc: Exception
) -> Exception:
    """The eventbus error for a subscribe of ``group`` to ``topic`` that failed with
    ``exc``: what it may not declare or finds declared otherwise is a provisioning
    error (for good), anything else the connection's (subscribing again may help)."""
    if isinstance(exc, ChannelPreconditionFailed):
        return precondition_error(settings, queue, exc)

    def refusal(e: Exception) -> Mapped:
        if isinstance(e, ChannelAccessRefused):
            return ProvisioningError, (
                f"the broker does not let this user declare queue {queue!r} or its "
                "exchanges; grant the permission, or declare them yourself and set "
                "provision=false"
            )
        return BrokerConnectionError, "subscribing again"

    return translate(
        exc,
        refusal,
        scrub=settings.scrub,
        chain=False,
        what=(f"subscribing to {topic!r} as group {group!r} on RabbitMQ at {settings.masked_url}"),
    )
