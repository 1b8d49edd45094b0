"""Keeping a group's JetStream consumer there while its members pull from it.

nats-server 2.9 answers a pull request to a consumer that no longer exists with
nothing at all (the JetStream API's own subscription takes it): a consumer
deleted by an operator, or lost with a ``storage=memory`` server that crashed
and restarted, would leave its members pulling into the void for good while
everything looked fine. Each member therefore notices when its pull requests go
unanswered (a live consumer answers every expired request with a 408 status)
and asks the :class:`ConsumerKeeper` to look: the consumer's info either
refreshes the group's position (see :class:`~eventbus_nats.provision.Floor`) or
says it is gone, and it is created again where the group was. ``backlog()``
reads the same info for the bus's stall watch.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError

from eventbus.errors import BrokerConnectionError, TopicNotFoundError

if TYPE_CHECKING:
    from .adapter import NatsAdapter
    from .consumer import JetStreamSubscription

log = logging.getLogger("eventbus.nats")


class ConsumerKeeper:
    """Looks at, and re-creates, the consumers the adapter's subscriptions pull from."""

    def __init__(self, adapter: NatsAdapter) -> None:
        self.adapter = adapter

    async def info(self, subscription: JetStreamSubscription) -> ConsumerInfo:
        """The consumer's info, its position noted; :class:`TopicNotFoundError` when
        the consumer (or its stream) is gone, :class:`BrokerConnectionError` when
        JetStream does not answer."""
        adapter = self.adapter
        timeout = min(adapter.settings.request_timeout, 5.0)
        try:
            js = await adapter._ready()
            info: ConsumerInfo = await js.consumer_info(
                subscription.stream, subscription.consumer, timeout=timeout)
        except NotFoundError as exc:
            raise TopicNotFoundError(
                f"the JetStream consumer {subscription.consumer!r} of group "
                f"{subscription.options.group!r} on stream {subscription.stream!r} (topic "
                f"{subscription.topic!r}) is gone at {adapter.settings.masked_url}; it is "
                "created again where the group was") from exc
        except Exception as exc:
            raise BrokerConnectionError(
                f"JetStream at {adapter.settings.masked_url} did not answer for the consumer "
                f"of group {subscription.options.group!r} on stream {subscription.stream!r}: "
                f"{type(exc).__name__}: {exc}") from exc
        if not subscription.is_route:
            adapter._provisioner.note(subscription.stream, info)
        return info

    async def check(self, subscription: JetStreamSubscription, why: str) -> bool:
        """Look at the consumer; re-create it if gone. True when it was re-created."""
        try:
            await self.info(subscription)
            return False
        except BrokerConnectionError as exc:
            log.debug("could not look at the consumer of %s (%s): %s", subscription.topic,
                      why, exc)
            return False
        except TopicNotFoundError:
            pass
        return await self.recreate(subscription, why)

    async def recreate(self, subscription: JetStreamSubscription, why: str) -> bool:
        """Create the consumer (and its stream) again where the group was; True when
        done, False (logged) when JetStream did not let it (tried again later)."""
        adapter = self.adapter
        group = subscription.options.group
        try:
            js = await adapter._ready()
            if subscription.is_route:
                adapter._routes.forget()
                await adapter._routes.ensure_consumer(js, subscription.topic, group)
                how: str | None = "(its routed messages wait in the route stream)"
            else:
                adapter._provisioner.forget()  # the stream too may be new
                stream = await adapter._provisioner.ensure_stream(js, subscription.topic)
                start_from = adapter.settings.start_from or subscription.options.start_from
                how = await adapter._provisioner.ensure_consumer(js, stream, group, start_from)
        except Exception as exc:
            log.warning("the JetStream consumer of group %r on topic %r is gone (%s) and could "
                        "not be created again yet (%s: %s); trying again", group,
                        subscription.topic, why, type(exc).__name__, exc)
            return False
        if how is not None:
            log.warning("the JetStream consumer %r of group %r on stream %r was gone (%s); "
                        "created again %s", subscription.consumer, group, subscription.stream,
                        why, how)
        return True

    def check_soon(self, subscription: JetStreamSubscription, why: str) -> None:
        """:meth:`check` in the background (a status message said something is wrong)."""
        async def check() -> None:
            await self.check(subscription, why)

        task = asyncio.get_running_loop().create_task(check())
        self.adapter._background.add(task)
        task.add_done_callback(self.adapter._background.discard)
