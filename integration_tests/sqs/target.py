"""Hooks of the SQS conformance targets (moto_server behind the harness's fault proxy):
deleting a group's queue underneath it, and a URL whose visibility timeout is short."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aioboto3
from eventbus_sqs import SqsSettings
from eventbus_sqs.provision import Provisioner

from eventbus.testing.target import ShortLease

SHORT_VISIBILITY = 3  # seconds: the adapter's smallest visibility_timeout


def delete_underneath(url: str) -> Callable[[str, str], Awaitable[None]]:
    """Deletes the queue a group of ``topic`` consumes (as an operator or a cleanup job
    would, with the raw client): what the resource-deleted conformance case needs."""
    settings = SqsSettings.from_url(url)
    names = Provisioner(settings)

    async def delete(topic: str, group: str) -> None:
        async with aioboto3.Session().client(
            "sqs", region_name=settings.region, endpoint_url=settings.endpoint_url
        ) as sqs:
            queue = await sqs.get_queue_url(QueueName=names.queue_name(topic, group))
            await sqs.delete_queue(QueueUrl=queue["QueueUrl"])

    return delete


def short_lease(base: str, options: str) -> ShortLease:
    """``base`` with ``options`` and a visibility timeout of a few seconds."""
    return ShortLease(
        f"{base}&{options}&visibility_timeout={SHORT_VISIBILITY}", float(SHORT_VISIBILITY)
    )
