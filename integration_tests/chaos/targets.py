"""The brokers the chaos scenarios run on: the conformance suite's targets, reused.

Each conformance target is already a private, restartable broker behind a fault
proxy (``integration_tests/test_conformance.py``); a chaos target adds what the
scenarios need on top: the URL whose lease is short (a killed consumer's work
comes back within seconds, so a scenario measures the hand-over instead of
waiting out a production default), that bound in seconds, and how many events a
scenario may push through a slow broker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import pytest

from eventbus.testing import BrokerTarget

# The chaos names, and the conformance target each one runs on.
CONFORMANCE = {
    "kafka": "kafka",
    "rabbitmq": "rabbitmq",
    "nats": "nats",
    "redis-streams": "redis-streams",
    "sqs": "sqs",
    "sqlite": "sqlite",
    "postgres": "postgres",
}
NAMES = tuple(CONFORMANCE)

# A broker without a lease gives a dead consumer's work back when its connection
# closes (RabbitMQ: the kernel closes a SIGKILLed process's sockets at once).
NO_LEASE_BOUND = 5.0

# Event counts per broker: the slow ones (each Kafka member join takes a rebalance,
# moto answers ~8 receives/s per group, SQL brokers poll) get fewer events rather
# than a skipped scenario.
SCALE = {"kafka": 0.5, "sqs": 0.25, "sqlite": 0.5, "postgres": 0.5}

# Whether a key's events stay in order when a killed member's work moves to another:
# Kafka hands whole partitions over from the last commit; the SQL brokers hand out a
# key's next message only once the one before is settled (its lease held by the dead
# member blocks the key until it ends). The others redeliver a dead member's unsettled
# messages after those the survivors already took.
ORDER_ACROSS_HANDOVER = {"kafka", "sqlite", "postgres"}


@dataclass(frozen=True)
class ChaosTarget:
    """One broker for the chaos scenarios.

    ``url``: every process of a scenario uses it (through the fault proxy where the
    target has one), with the short lease; ``lease``: seconds after which a dead
    consumer's unsettled work is another's; ``base``: the conformance target
    (restart hook, fault proxy).
    """

    name: str
    url: str
    lease: float
    base: BrokerTarget
    scale: float

    @property
    def start_from(self) -> str:
        """SQS/SNS keeps no history (a group's queue gets what is published after it
        exists); the scenarios subscribe before publishing everywhere."""
        return "latest" if self.name.startswith("sqs") else "earliest"

    def with_options(self, options: str) -> ChaosTarget:
        """The same broker with URL ``options`` added (``name=value&...``)."""
        return replace(self, url=self.url + ("&" if "?" in self.url else "?") + options)

    def count(self, n: int, minimum: int = 20) -> int:
        """``n`` events scaled for this broker (and the profile), never below ``minimum``."""
        return max(minimum, int(n * self.scale))


def long_profile(config: pytest.Config) -> bool:
    """Whether the long profile runs: ``--chaos-long`` or ``EVENTBUS_CHAOS=long``."""
    flag = bool(config.getoption("--chaos-long", default=False))
    return flag or os.environ.get("EVENTBUS_CHAOS", "").strip().lower() == "long"


def chaos_target(name: str) -> ChaosTarget:
    """Build the target ``name`` (the harness finds or starts its broker)."""
    from integration_tests.test_conformance import _target

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    base = _target(CONFORMANCE[name])
    lease = base.short_lease
    url = lease.url if lease is not None else base.url
    bound = lease.seconds if lease is not None else NO_LEASE_BOUND
    return ChaosTarget(name=name, url=url, lease=bound, base=base, scale=SCALE.get(name, 1.0))
