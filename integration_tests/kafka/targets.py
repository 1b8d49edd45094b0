"""The conformance targets of Kafka: Apache Kafka (``kafka``) and Tansu (``tansu``), each a
broker the harness runs behind a fault proxy, with the hooks of the #18 failure classes.

- ``delete_underneath`` deletes the topic the group consumes (an admin ``DeleteTopics``):
  Kafka refuses to delete a consumer group that has members (``NON_EMPTY_GROUP``) and its
  committed offsets while it is subscribed (``GROUP_SUBSCRIBED_TO_TOPIC``), so the topic is
  what can be deleted underneath a running group.
- ``short_lease`` is the URL with a 3 s ``max_poll_interval`` (Kafka's lease: a member
  that does not poll for that long leaves its group) and a 3 s session timeout, so a
  consumer killed mid-record hands its partitions on quickly (the crash-loop case).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from aiokafka.admin import AIOKafkaAdminClient

from eventbus.testing import BrokerTarget
from eventbus.testing.target import ShortLease
from integration_tests import harness

LEASE_SECONDS = 3.0
_APACHE_LEASE = "max_poll_interval=3&session_timeout=3&heartbeat_interval=1"
# The Tansu URL already has short group timeouts (harness.TANSU_FAST_GROUPS).
_TANSU_LEASE = "max_poll_interval=3"


def topic_deleter(endpoint: harness.Endpoint) -> Callable[[str, str], Awaitable[None]]:
    """``delete_underneath`` for the broker at ``endpoint``: deletes ``topic`` outright."""

    async def delete(topic: str, group: str) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=f"{endpoint.host}:{endpoint.port}")
        await admin.start()
        try:
            await admin.delete_topics([topic])
        finally:
            await admin.close()

    return delete


def kafka_target(
    name: str,
    endpoint: harness.Endpoint,
    proxy: harness.FaultProxy,
    scale: float,
    limits: Mapping[str, str],
) -> BrokerTarget:
    """The :class:`BrokerTarget` of ``kafka`` (Apache) or ``tansu``."""
    url = harness.client_url(endpoint)
    lease = _TANSU_LEASE if endpoint.flavour == "tansu" else _APACHE_LEASE
    joiner = "&" if "?" in url else "?"
    return BrokerTarget(
        name=name,
        url=url,
        faults=proxy,
        faulty_url=url,
        scale=scale,
        limits=limits,
        restart=endpoint.restart,
        delete_underneath=topic_deleter(endpoint),
        short_lease=ShortLease(f"{url}{joiner}{lease}", LEASE_SECONDS),
    )
