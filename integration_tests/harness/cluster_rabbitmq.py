"""Three RabbitMQ nodes on loopback, clustered with ``rabbitmqctl join_cluster``.

Each node has its own name (``rabbit-c1@localhost``...), AMQP and distribution
ports, mnesia and log directories, and a ``HOME`` holding the one Erlang cookie they
share; it runs the real script (``/usr/lib/rabbitmq/bin/rabbitmq-server``), not
Debian's wrapper, for the reason :func:`processes.start_rabbitmq` gives.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .clusters import MEMBERS, Cluster, Member, _start_all
from .processes import LocalProcess, _require_binary, free_port

CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


class RabbitMQCluster(Cluster):
    """Nodes ``rabbit-c1..3@localhost``; the adapter's queues are quorum queues
    (``queue_type=quorum`` in :attr:`url`), one member on each node."""

    name = "rabbitmq"

    def __init__(
        self, members: Sequence[Member], url: str, workdir: Path, nodes: list[str], ports: list[int]
    ) -> None:
        super().__init__(members, url, workdir)
        self.nodes = nodes
        self.ports = ports  # the AMQP port of each node, as clients reach it

    def ctl_command(self, index: int, args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        """The argv and environment of ``rabbitmqctl args`` on node ``index``."""
        member = self.members[index]
        assert isinstance(member, LocalProcess)
        return [CTL, "-n", self.nodes[index], *args], member.env

    def ctl(self, index: int, *args: str, timeout: float = 60.0) -> str:
        """``rabbitmqctl -n <node index> args`` with that node's cookie; its output."""
        argv, env = self.ctl_command(index, args)
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.nodes[index]}: {done}")
        return done.stdout

    def check_formed(self) -> None:
        """Every node runs in one cluster (as node 0 sees it), else AssertionError."""
        status = json.loads(self.ctl(0, "cluster_status", "--formatter", "json"))
        missing = [node for node in self.nodes if node not in status["running_nodes"]]
        assert not missing, f"{missing} not running in the cluster: {status}"

    def leader(self, queue: str) -> int:
        """The node leading quorum queue ``queue``."""
        alive = next(i for i, m in enumerate(self.members) if m.running)
        out = self.ctl(alive, "list_queues", "name", "leader", "--no-table-headers", "-q")
        for line in out.splitlines():
            name, _, node = line.rpartition("\t")
            if name == queue and node in self.nodes:
                return self.nodes.index(node)
        raise AssertionError(f"no leader for queue {queue!r} in:\n{out}")

    def connected_to(self, pids: list[int]) -> int:
        """The node the first of ``pids`` (a consumer process) has its AMQP connection to."""
        out = subprocess.run(["ss", "-tnpH"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if f"pid={pids[0]}," not in line:
                continue
            peer = line.split()[4]
            port = int(peer.rpartition(":")[2])
            if port in self.ports:
                return self.ports.index(port)
        raise AssertionError(f"process {pids[0]} has no connection to a RabbitMQ node")

    async def victim(
        self, topic: str, group: str, fault: int, consumers: list[int]
    ) -> tuple[int, str]:
        if fault % 2 == 0:
            index = await asyncio.to_thread(self.leader, f"{topic}/{group}")
            return index, f"queue leader {self.nodes[index]}"
        index = await asyncio.to_thread(self.connected_to, consumers)
        return index, f"the consumer's node {self.nodes[index]}"


def start_rabbitmq_cluster() -> RabbitMQCluster:
    """Three nodes started at once, then c2 and c3 joined to c1."""
    binary = _require_binary("rabbitmq-server", "/usr/lib/rabbitmq/bin/rabbitmq-server")
    workdir = Path(tempfile.mkdtemp(prefix="eventbus-rabbitmq-cluster-"))
    cookie = secrets.token_hex(16)
    members = []
    for i in range(MEMBERS):
        home = workdir / f"c{i + 1}"
        home.mkdir()
        (home / "enabled_plugins").write_text("[].\n")
        cookie_file = home / ".erlang.cookie"
        cookie_file.write_text(cookie)
        cookie_file.chmod(0o400)
        port = free_port()
        env = {
            "RABBITMQ_NODENAME": f"rabbit-c{i + 1}-{port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(home / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(home / "none"),
            "HOME": str(home),
        }
        url = f"amqp://guest:guest@127.0.0.1:{port}/"
        members.append(LocalProcess("rabbitmq", [binary], url, env=env, workdir=home))
    _start_all(members)
    nodes = [m.env["RABBITMQ_NODENAME"] for m in members]
    ports = [int(m.env["RABBITMQ_NODE_PORT"]) for m in members]
    cluster = RabbitMQCluster(members, rabbitmq_url(ports), workdir, nodes, ports)
    try:
        for i in range(1, MEMBERS):
            cluster.ctl(i, "stop_app")
            cluster.ctl(i, "join_cluster", cluster.nodes[0])
            cluster.ctl(i, "start_app")
        cluster.check_formed()
    except BaseException:
        cluster.close()
        raise
    return cluster


def rabbitmq_url(ports: Sequence[int]) -> str:
    hosts = ",".join(f"127.0.0.1:{p}" for p in ports)
    return f"amqp://guest:guest@{hosts}/?queue_type=quorum"
