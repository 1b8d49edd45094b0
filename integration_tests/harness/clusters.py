"""Three-member broker clusters on loopback, from the packages the machine has.

Each :class:`Cluster` runs its members as :class:`LocalProcess` es (own ports, own
data directories under a temp dir), so a member can be SIGKILLed
(:meth:`Cluster.kill`) and started again on its data (:meth:`Cluster.revive`).
``url`` is the eventbus URL naming every member; :meth:`Cluster.victim` says which
member a node-failure fault should kill (the one leading the topic's data).

:func:`start_cluster` prefers containers when a container engine answers (the
``cluster`` profile of ``docker-compose.yml``, :mod:`.cluster_compose`: a member is
then a container, killed with ``docker kill`` and started again with ``docker
start``) and falls back to local processes; ``EVENTBUS_TEST_METHODS`` limits the
ways as for single brokers (``container``, ``process``).

Only the chaos suite's long profile starts them (``integration_tests/chaos``,
``test_cluster_failure.py``): one cluster at a time, torn down at its end.
"""

from __future__ import annotations

import abc
import asyncio
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from .processes import LocalProcess, ProcessStartError, _require_binary, free_port

MEMBERS = 3

# The settings both ways of running a cluster share (docker-compose.yml's cluster
# profile has the same; tests/test_compose_clusters.py compares them).
NATS_CLUSTER_NAME = "eventbus"
REDIS_PRIMARY_NAME = "mymaster"
SENTINEL_QUORUM = 2
SENTINEL_SETTINGS = {"down-after-milliseconds": 1000, "failover-timeout": 5000}
# Every write on disk before it is acknowledged; a full sync starts at once (the
# default waits 5 s for more replicas).
REDIS_DATA_FLAGS = (
    *("--save", "", "--appendonly", "yes", "--appendfsync", "always"),
    *("--repl-diskless-sync-delay", "0"),
)


class Member(Protocol):
    """One cluster member: a :class:`LocalProcess` or a container
    (:class:`.cluster_compose.ContainerMember`)."""

    url: str

    @property
    def running(self) -> bool: ...

    def start(self, wait: bool = True) -> None: ...

    def ready(self) -> None: ...

    def kill(self) -> None: ...

    def close(self) -> None: ...


def nats_url(ports: Sequence[int]) -> str:
    hosts = ",".join(f"127.0.0.1:{p}" for p in ports)
    return f"nats://{hosts}?replicas={MEMBERS}&ack_wait=5"


def redis_url(sentinel_ports: Sequence[int]) -> str:
    hosts = ",".join(f"127.0.0.1:{p}" for p in sentinel_ports)
    return f"redis+streams://{hosts}/0?sentinel={REDIS_PRIMARY_NAME}&claim_idle=5"


def sentinel_conf(port: int, primary_port: int) -> list[str]:
    """The lines of a Sentinel's config (``bind`` and ``dir`` aside)."""
    name = REDIS_PRIMARY_NAME
    return [
        f"port {port}",
        f"sentinel monitor {name} 127.0.0.1 {primary_port} {SENTINEL_QUORUM}",
        *(f"sentinel {key} {name} {value}" for key, value in SENTINEL_SETTINGS.items()),
    ]


class Cluster(abc.ABC):
    """Three members of one broker; ``url`` reaches all of them. ``how``: ``process``
    or ``container``; ``cleanups`` run at :meth:`close`, after the members'."""

    name: str

    def __init__(self, members: Sequence[Member], url: str, workdir: Path) -> None:
        self.members = members
        self.url = url
        self.workdir = workdir
        self.how = "process"
        self.cleanups: list[Callable[[], None]] = []

    def kill(self, index: int) -> None:
        """SIGKILL member ``index`` (nothing flushed, nothing closed)."""
        self.members[index].kill()

    def revive(self, index: int) -> None:
        """Start member ``index`` again on its data; wait until it answers."""
        member = self.members[index]
        member.start(wait=False)
        member.ready()

    @abc.abstractmethod
    async def victim(
        self, topic: str, group: str, fault: int, consumers: list[int]
    ) -> tuple[int, str]:
        """The member fault number ``fault`` kills, and what it was (for the report);
        ``consumers``: the pids of the scenario's consumer processes."""

    def close(self) -> None:
        """Stop every member and remove its data (and the cluster's temp dir)."""
        for member in self.members:
            member.close()
        for cleanup in self.cleanups:
            cleanup()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def describe(self) -> str:
        return f"{self.name} cluster of {len(self.members)}, {self.how} ({self.url})"


def _start_all(members: Sequence[Member]) -> None:
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

    async def victim(
        self, topic: str, group: str, fault: int, consumers: list[int]
    ) -> tuple[int, str]:
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
            *("--cluster_name", NATS_CLUSTER_NAME),
            *("--cluster", f"nats://127.0.0.1:{routes[i]}"),
            *("--routes", others),
        ]
        url = f"nats://127.0.0.1:{ports[i]}"
        members.append(LocalProcess("nats", argv, url, workdir=home, ready_timeout=60.0))
    _start_all(members)
    return NatsCluster(members, nats_url(ports), workdir)


class RedisSentinelCluster(Cluster):
    """A Redis primary and its replica, watched by three Sentinels (quorum 2).

    ``members`` are the two data nodes (what a fault kills); the Sentinels keep
    running. Replication is asynchronous: see :func:`failover_window`.
    """

    name = "redis"
    primary_name = REDIS_PRIMARY_NAME

    def __init__(
        self, members: Sequence[Member], sentinels: Sequence[Member], url: str, workdir: Path
    ) -> None:
        super().__init__(members, url, workdir)
        self.sentinels = sentinels

    def primary(self) -> int:
        """The member the Sentinels name as primary now."""
        import redis

        for sentinel in self.sentinels:
            if not sentinel.running:
                continue
            client = redis.Redis.from_url(sentinel.url, socket_timeout=2)
            try:
                address = client.execute_command(  # type: ignore[no-untyped-call]
                    "SENTINEL", "get-master-addr-by-name", self.primary_name
                )
                port = int(address[1])
            except redis.RedisError:
                continue
            finally:
                client.close()
            for index, member in enumerate(self.members):
                if member.url.endswith(f":{port}/0"):
                    return index
        raise AssertionError("no Sentinel names a primary")

    async def victim(
        self, topic: str, group: str, fault: int, consumers: list[int]
    ) -> tuple[int, str]:
        index = await asyncio.to_thread(self.primary)
        return index, f"primary r{index + 1}"

    def revive(self, index: int) -> None:
        """Start the member again; wait until the Sentinels made it the new primary's
        replica and it caught up (so the next fault starts from two copies)."""
        super().revive(index)
        self.wait_replicated(f"member r{index + 1}")

    def wait_replicated(self, what: str = "the replica") -> None:
        """Wait until the primary has an online replica (its full sync done)."""
        import redis

        deadline = time.monotonic() + 120.0
        while time.monotonic() < deadline:
            try:
                primary = self.members[self.primary()]
                client = redis.Redis.from_url(primary.url, socket_timeout=2)
                try:
                    info = client.info("replication")
                finally:
                    client.close()
                replica = info.get("slave0")
                # "online": the full sync is done and the stream of writes flows.
                online = replica and replica.get("state") == "online"
                if info.get("role") == "master" and online and self._sentinels_know_replica():
                    return
            except (redis.RedisError, AssertionError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"{what} did not become the primary's replica within 120s")

    def _sentinels_know_replica(self) -> bool:
        """Every Sentinel sees one live replica (they learn it from the primary's INFO
        every 10 s; a failover before that finds no replica to promote)."""
        import redis

        for sentinel in self.sentinels:
            client = redis.Redis.from_url(sentinel.url, socket_timeout=2)
            try:
                replicas = client.execute_command(  # type: ignore[no-untyped-call]
                    "SENTINEL", "replicas", self.primary_name
                )
            finally:
                client.close()
            # One dict per replica, bytes keys: flags "slave" when it is up.
            if not any(r.get(b"flags") == b"slave" for r in replicas):
                return False
        return True

    def close(self) -> None:
        for sentinel in self.sentinels:
            sentinel.close()
        super().close()


def start_redis_sentinel_cluster() -> RedisSentinelCluster:
    """Primary ``r1``, replica ``r2`` (AOF, fsync always) and three Sentinels."""
    binary = _require_binary("redis-server", "redis-server")
    sentinel_binary = _require_binary("redis-sentinel", "redis-sentinel")
    workdir = Path(tempfile.mkdtemp(prefix="eventbus-redis-cluster-"))
    ports = [free_port() for _ in range(2)]
    members = []
    for i, port in enumerate(ports):
        home = workdir / f"r{i + 1}"
        home.mkdir()
        argv = [
            binary,
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(home)),
            *REDIS_DATA_FLAGS,
        ]
        if i:
            argv += ["--replicaof", "127.0.0.1", str(ports[0])]
        members.append(LocalProcess("redis", argv, f"redis://127.0.0.1:{port}/0", workdir=home))
    sentinels, sentinel_ports = [], []
    for i in range(MEMBERS):
        home = workdir / f"s{i + 1}"
        home.mkdir()
        port = free_port()
        lines = [*sentinel_conf(port, ports[0]), "bind 127.0.0.1", f"dir {home}"]
        (home / "sentinel.conf").write_text("\n".join(lines) + "\n")
        argv = [sentinel_binary, str(home / "sentinel.conf")]
        url = f"redis://127.0.0.1:{port}/0"
        sentinels.append(LocalProcess("redis", argv, url, workdir=home))
        sentinel_ports.append(port)
    _start_all(members + sentinels)
    cluster = RedisSentinelCluster(members, sentinels, redis_url(sentinel_ports), workdir)
    cluster.wait_replicated()  # a failover before the first full sync would lose it all
    return cluster


def _rabbitmq() -> Cluster:
    from .cluster_rabbitmq import start_rabbitmq_cluster

    return start_rabbitmq_cluster()


def _kafka() -> Cluster:
    from .cluster_kafka import start_kafka_cluster

    return start_kafka_cluster()


STARTERS = {
    "nats": start_nats_cluster,
    "redis": start_redis_sentinel_cluster,
    "rabbitmq": _rabbitmq,
    "kafka": _kafka,
}


def start_cluster(name: str) -> Cluster:
    """Start the three-member cluster of broker ``name``: in containers when an engine
    answers (:mod:`.cluster_compose`), else as local processes (:data:`STARTERS`)."""
    from . import cluster_compose
    from .endpoints import _methods
    from .probes import describe

    methods = _methods()
    problem = "EVENTBUS_TEST_METHODS leaves out container"
    if "container" in methods:
        problem = cluster_compose.engine_problem() or ""
        if not problem:
            try:
                return cluster_compose.start_cluster(name)
            except Exception as exc:
                problem = f"the container cluster did not start: {describe(exc)}"
                warnings.warn(f"{name} cluster: {problem}; running local processes", stacklevel=2)
    if "process" not in methods:
        raise RuntimeError(
            f"no {name} cluster: {problem}, and EVENTBUS_TEST_METHODS="
            f"{os.environ.get('EVENTBUS_TEST_METHODS')} leaves out process"
        )
    return STARTERS[name]()
