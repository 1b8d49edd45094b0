"""Three-member broker clusters on loopback, from the packages the machine has.

Each :class:`Cluster` runs its members as :class:`LocalProcess` es (own ports, own
data directories under a temp dir), so a member can be SIGKILLed
(:meth:`Cluster.kill`) and started again on its data (:meth:`Cluster.revive`).
``url`` is the eventbus URL naming every member; :meth:`Cluster.victim` says which
member a node-failure fault should kill (the one leading the topic's data).

Only the chaos suite's long profile starts them (``integration_tests/chaos``,
``test_cluster_failure.py``): one cluster at a time, torn down at its end.
"""

from __future__ import annotations

import abc
import asyncio
import tempfile
from pathlib import Path

from .processes import LocalProcess, ProcessStartError, _require_binary, free_port

MEMBERS = 3


class Cluster(abc.ABC):
    """Three members of one broker; ``url`` reaches all of them."""

    name: str

    def __init__(self, members: list[LocalProcess], url: str, workdir: Path) -> None:
        self.members = members
        self.url = url
        self.workdir = workdir

    def kill(self, index: int) -> None:
        """SIGKILL member ``index`` (nothing flushed, nothing closed)."""
        self.members[index].kill()

    def revive(self, index: int) -> None:
        """Start member ``index`` again on its data; wait until it answers."""
        member = self.members[index]
        member.start(wait=False)
        member.ready()

    @abc.abstractmethod
    async def victim(self, topic: str, group: str, fault: int) -> tuple[int, str]:
        """The member fault number ``fault`` kills, and what it was (for the report)."""

    def close(self) -> None:
        """Stop every member and remove its data."""
        for member in self.members:
            member.close()

    def describe(self) -> str:
        return f"{self.name} cluster of {len(self.members)} ({self.url})"


def _start_all(members: list[LocalProcess]) -> None:
    """Start every member at once (none answers before a quorum is up), then wait."""
    try:
        for member in members:
            member.start(wait=False)
        for member in members:
            member.ready()
    except ProcessStartError:
        for member in members:
            member.close()
        raise


class NatsCluster(Cluster):
    """Three nats-server processes in one JetStream cluster (routes on loopback).

    Streams the adapter creates with ``replicas=3`` (in :attr:`url`) have a copy on
    every server; killing the stream's leader makes the other two elect a new one.
    """

    name = "nats"

    async def victim(self, topic: str, group: str, fault: int) -> tuple[int, str]:
        import nats
        from eventbus_nats.provision import encode_name

        servers = [m.url for m in self.members if m.running]
        client = await nats.connect(servers=servers, connect_timeout=2, max_reconnect_attempts=3)
        try:
            for _ in range(50):  # a leader is elected within seconds of a member's return
                info = await client.jetstream().stream_info(f"EB_{encode_name(topic)}")
                leader = info.cluster.leader if info.cluster else None
                if leader:
                    return int(leader.removeprefix("n")) - 1, f"stream leader {leader}"
                await asyncio.sleep(0.2)
        finally:
            await client.close()
        raise AssertionError(f"the stream of {topic!r} has no leader in the NATS cluster")


def start_nats_cluster() -> NatsCluster:
    """Three JetStream servers ``n1``..``n3``, routed to each other."""
    binary = _require_binary("nats-server", "nats-server", "/usr/sbin/nats-server")
    workdir = Path(tempfile.mkdtemp(prefix="eventbus-nats-cluster-"))
    ports = [free_port() for _ in range(MEMBERS)]
    routes = [free_port() for _ in range(MEMBERS)]
    members = []
    for i in range(MEMBERS):
        home = workdir / f"n{i + 1}"
        home.mkdir()
        others = ",".join(f"nats://127.0.0.1:{r}" for j, r in enumerate(routes) if j != i)
        argv = [
            binary,
            *("-a", "127.0.0.1", "-p", str(ports[i]), "-n", f"n{i + 1}"),
            *("-js", "-sd", str(home / "js")),
            *("--cluster_name", "eventbus", "--cluster", f"nats://127.0.0.1:{routes[i]}"),
            *("--routes", others),
        ]
        url = f"nats://127.0.0.1:{ports[i]}"
        members.append(LocalProcess("nats", argv, url, workdir=home, ready_timeout=60.0))
    _start_all(members)
    hosts = ",".join(f"127.0.0.1:{p}" for p in ports)
    return NatsCluster(members, f"nats://{hosts}?replicas=3&ack_wait=5", workdir)


STARTERS = {"nats": start_nats_cluster}


def start_cluster(name: str) -> Cluster:
    """Start the three-member cluster of broker ``name`` (see :data:`STARTERS`)."""
    return STARTERS[name]()
