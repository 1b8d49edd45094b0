"""The harness's clusters in containers: the ``cluster`` profile of ``docker-compose.yml``.

When a container engine answers and ``docker compose`` is installed,
:func:`clusters.start_cluster` comes here first: :func:`start_cluster` creates the
broker's cluster services blank (compose project :data:`PROJECT`), waits for each
member's protocol probe and for what the process path waits for (the RabbitMQ nodes
in one cluster, the Redis replica in sync), and returns the same :class:`Cluster`
subclass as the process path, whose members are :class:`ContainerMember` s: a kill
is ``docker compose kill -s SIGKILL`` (the broker is the container's PID 1), a
revive ``docker compose start`` (the same container, its data kept). Closing the
cluster removes the containers and their volumes.

The images carry the versions the process path runs (:data:`IMAGES`); the ports
are fixed (:data:`PORTS`, published and advertised on 127.0.0.1), so one cluster of
a broker at a time per host, on an engine on this host (``DOCKER_HOST`` elsewhere
would publish them there). ``tests/test_compose_clusters.py`` checks that
``docker-compose.yml`` matches these constants and the process path's settings.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import containers, versions
from .cluster_kafka import KafkaCluster, kafka_url
from .cluster_rabbitmq import RabbitMQCluster, rabbitmq_url
from .clusters import MEMBERS, Cluster, NatsCluster, RedisSentinelCluster, nats_url, redis_url
from .probes import wait_ready
from .processes import ProcessStartError

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
PROJECT = "eventbus-clusters"
PROFILE = "cluster"
UP_TIMEOUT = 900.0  # the first run pulls the images
READY_TIMEOUT = {"kafka": 120.0, "rabbitmq": 120.0, "nats": 60.0, "redis": 60.0}
LOG_LINES = 40

# The process path's versions (:func:`installed_version` reads what a machine has).
IMAGES = {
    "kafka": versions.KAFKA_IMAGE,
    "rabbitmq": versions.RABBITMQ_IMAGE,
    "nats": versions.NATS_IMAGE,
    "redis": versions.REDIS_IMAGE,
}

# The host ports of the members (each one also the port inside, except RabbitMQ's).
KAFKA_PORTS = (19092, 19093, 19094)
RABBITMQ_PORTS = (5673, 5674, 5675)
NATS_PORTS = (4223, 4224, 4225)
REDIS_PORTS = (6380, 6381)  # primary r1, replica r2
SENTINEL_PORTS = (26380, 26381, 26382)

# The compose services of each cluster; the members are the first ones listed by
# ``members`` below. ``redis-net`` only holds the Redis services' network namespace.
SERVICES = {
    "kafka": [f"kafka-{i}" for i in range(1, MEMBERS + 1)],
    "rabbitmq": [f"rabbitmq-{i}" for i in range(1, MEMBERS + 1)],
    "nats": [f"nats-{i}" for i in range(1, MEMBERS + 1)],
    "redis": [
        "redis-net",
        "redis-r1",
        "redis-r2",
        *(f"redis-sentinel-{i}" for i in range(1, MEMBERS + 1)),
    ],
}
RABBITMQ_NODES = [f"rabbit@rabbitmq-{i}" for i in range(1, MEMBERS + 1)]


class ComposeError(RuntimeError):
    """A ``docker compose`` command failed."""


class Compose:
    """``docker compose`` on :data:`COMPOSE_FILE`, project :data:`PROJECT`."""

    def command(self, *args: str) -> list[str]:
        base = ["docker", "compose", "-f", str(COMPOSE_FILE), "-p", PROJECT]
        return [*base, "--profile", PROFILE, *args]

    def run(self, *args: str, timeout: float = 120.0) -> str:
        argv = self.command(*args)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise ComposeError(f"`{' '.join(argv)}` took over {timeout:.0f}s") from exc
        if done.returncode:
            raise ComposeError(f"`{' '.join(argv)}` failed: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def logs(self, services: Sequence[str]) -> str:
        try:
            return self.run("logs", "--no-color", "--tail", str(LOG_LINES), *services)
        except ComposeError as exc:
            return str(exc)

    def down(self) -> None:
        """Remove the project's containers, network and volumes."""
        self.run("down", "--volumes", "--remove-orphans", "--timeout", "5")


class ContainerMember:
    """One cluster member in a container (what :class:`clusters.Member` asks)."""

    def __init__(self, compose: Compose, service: str, probe: str, url: str) -> None:
        self.compose = compose
        self.service = service
        self.probe = probe  # which protocol probe says it is ready
        self.url = url
        self._running = True  # created by `up`

    @property
    def running(self) -> bool:
        return self._running

    def kill(self) -> None:
        """SIGKILL the broker (nothing flushed, nothing closed); the container stays."""
        self.compose.run("kill", "-s", "SIGKILL", self.service)
        self._running = False

    def start(self, wait: bool = True) -> None:
        """Start the same container again (its data kept)."""
        self.compose.run("start", self.service)
        self._running = True
        if wait:
            self.ready()

    def ready(self) -> None:
        try:
            wait_ready(self.probe, self.url, READY_TIMEOUT[self.probe])
        except Exception as exc:
            raise ProcessStartError(
                f"{self.probe}: container {self.service} never answered at {self.url}: {exc}\n"
                f"--- its log tail ---\n{self.compose.logs([self.service])}"
            ) from exc

    def close(self) -> None:
        """Nothing: the cluster's cleanup removes every container at once."""


def engine_problem() -> str | None:
    """``None`` when a container engine answers and ``docker compose`` runs, else why not."""
    problem = containers.engine_problem()
    if problem:
        return problem
    if not shutil.which("docker"):
        return "the `docker` command is not installed (the clusters need `docker compose`)"
    try:
        done = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        return "`docker compose version` did not answer within 20s"
    if done.returncode:
        return f"`docker compose` is not available: {done.stderr.strip()[-300:]}"
    return None


def installed_version(name: str) -> str | None:
    """The version of broker ``name``'s package on this machine (``None``: not installed)."""
    if name == "rabbitmq":
        found = sorted(Path("/usr/lib/rabbitmq/lib").glob("rabbitmq_server-*"))
        return found[-1].name.removeprefix("rabbitmq_server-") if found else None
    binary = shutil.which({"nats": "nats-server", "redis": "redis-server"}[name])
    if binary is None and name == "nats" and os.path.exists("/usr/sbin/nats-server"):
        binary = "/usr/sbin/nats-server"
    if binary is None:
        return None
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"v=?(\d+\.\d+\.\d+)", out)
    return match.group(1) if match else None


def _members(
    compose: Compose, services: Sequence[str], probe: str, urls: Sequence[str]
) -> list[ContainerMember]:
    members = [ContainerMember(compose, s, probe, u) for s, u in zip(services, urls, strict=True)]
    for member in members:
        member.ready()
    return members


class ComposeRabbitMQCluster(RabbitMQCluster):
    """``rabbitmqctl`` runs in the node's container (``docker compose exec``)."""

    def ctl_command(self, index: int, args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        member = self.members[index]
        assert isinstance(member, ContainerMember)
        ctl = ["rabbitmqctl", "-n", self.nodes[index], *args]
        return member.compose.command("exec", "-T", member.service, *ctl), dict(os.environ)


def _kafka(compose: Compose, workdir: Path) -> Cluster:
    urls = [f"kafka://127.0.0.1:{p}" for p in KAFKA_PORTS]
    members = _members(compose, SERVICES["kafka"], "kafka", urls)
    return KafkaCluster(members, kafka_url(KAFKA_PORTS), workdir)


def _rabbitmq(compose: Compose, workdir: Path) -> Cluster:
    urls = [f"amqp://guest:guest@127.0.0.1:{p}/" for p in RABBITMQ_PORTS]
    members = _members(compose, SERVICES["rabbitmq"], "rabbitmq", urls)
    url = rabbitmq_url(RABBITMQ_PORTS)
    cluster = ComposeRabbitMQCluster(
        members, url, workdir, list(RABBITMQ_NODES), list(RABBITMQ_PORTS)
    )
    deadline = time.monotonic() + READY_TIMEOUT["rabbitmq"]
    while True:  # the nodes join by peer discovery while they boot
        try:
            cluster.check_formed()
            return cluster
        except (AssertionError, RuntimeError, ValueError, KeyError):
            if time.monotonic() > deadline:
                raise
            time.sleep(2.0)


def _nats(compose: Compose, workdir: Path) -> Cluster:
    urls = [f"nats://127.0.0.1:{p}" for p in NATS_PORTS]
    members = _members(compose, SERVICES["nats"], "nats", urls)
    return NatsCluster(members, nats_url(NATS_PORTS), workdir)


def _redis(compose: Compose, workdir: Path) -> Cluster:
    data = _members(
        compose,
        ["redis-r1", "redis-r2"],
        "redis",
        [f"redis://127.0.0.1:{p}/0" for p in REDIS_PORTS],
    )
    sentinel_urls = [f"redis://127.0.0.1:{p}/0" for p in SENTINEL_PORTS]
    sentinels = _members(compose, SERVICES["redis"][3:], "redis", sentinel_urls)
    cluster = RedisSentinelCluster(data, sentinels, redis_url(SENTINEL_PORTS), workdir)
    cluster.wait_replicated()  # a failover before the first full sync would lose it all
    return cluster


BUILDERS: dict[str, Callable[[Compose, Path], Cluster]] = {
    "kafka": _kafka,
    "rabbitmq": _rabbitmq,
    "nats": _nats,
    "redis": _redis,
}


def start_cluster(name: str) -> Cluster:
    """Create broker ``name``'s cluster services blank and wait until they serve."""
    compose = Compose()
    services = SERVICES[name]
    workdir = Path(tempfile.mkdtemp(prefix=f"eventbus-{name}-containers-"))
    try:
        compose.down()  # a previous session's leftovers hold the same ports
        compose.run(
            "up", "-d", "--force-recreate", "--renew-anon-volumes", *services, timeout=UP_TIMEOUT
        )
        cluster = BUILDERS[name](compose, workdir)
    except BaseException as exc:
        logs = compose.logs(services) if isinstance(exc, Exception) else ""
        with contextlib.suppress(ComposeError):  # the first error is the one to see
            compose.down()
        shutil.rmtree(workdir, ignore_errors=True)
        if logs and not isinstance(exc, ProcessStartError):
            raise ComposeError(
                f"{name} cluster in containers: {exc}\n--- logs ---\n{logs}"
            ) from exc
        raise
    cluster.how = "container"
    cluster.cleanups.append(compose.down)
    return cluster
