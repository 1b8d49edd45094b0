"""Three Apache Kafka brokers (KRaft, combined broker+controller) on loopback.

The jars come from :mod:`kafka_dist` (Maven Central, cached outside the repository).
Every node votes in the controller quorum; topics get replication factor 3 with
``min.insync.replicas=2``, the adapter produces with ``acks=all`` and idempotence.
Each JVM gets a 512 MiB heap (three of them share a small machine).
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from . import kafka_dist
from .clusters import MEMBERS, Cluster, Member, _start_all
from .processes import LocalProcess, free_port

REPLICATED = {
    "default.replication.factor=1": "default.replication.factor=3",
    "min.insync.replicas=1": "min.insync.replicas=2",
    "offsets.topic.replication.factor=1": "offsets.topic.replication.factor=3",
    "transaction.state.log.replication.factor=1": "transaction.state.log.replication.factor=3",
    "transaction.state.log.min.isr=1": "transaction.state.log.min.isr=2",
}


HEAP = ("-Xms128m", "-Xmx512m")  # three JVMs share a small machine


class KafkaCluster(Cluster):
    """Brokers ``1..3``; :meth:`victim` is the leader of the topic's partition 0."""

    name = "kafka"

    def __init__(self, members: Sequence[Member], url: str, workdir: Path) -> None:
        super().__init__(members, url, workdir)
        self.ports = [int(m.url.rpartition(":")[2]) for m in members]

    async def victim(
        self, topic: str, group: str, fault: int, consumers: list[int]
    ) -> tuple[int, str]:
        from aiokafka.admin import AIOKafkaAdminClient

        servers = [f"127.0.0.1:{p}" for p, m in zip(self.ports, self.members, strict=True)]
        admin = AIOKafkaAdminClient(bootstrap_servers=servers, request_timeout_ms=10000)
        await admin.start()
        try:
            for _ in range(50):
                described = await admin.describe_topics([topic])
                partitions = described[0].get("partitions") or []
                leader = next((p["leader"] for p in partitions if p["partition"] == 0), -1)
                if leader >= 1:
                    return leader - 1, f"partition leader {leader}"
                await asyncio.sleep(0.2)
        finally:
            await admin.close()
        raise AssertionError(f"topic {topic!r} has no partition leader")


def kafka_url(ports: Sequence[int]) -> str:
    hosts = ",".join(f"127.0.0.1:{p}" for p in ports)
    return f"kafka://{hosts}?replication={MEMBERS}&partitions=1&enable_idempotence=true"


def cluster_properties(text: str, node: int, voters: str) -> str:
    """Broker ``node``'s config: the single-node ``text`` with :data:`REPLICATED`."""
    for old, new in REPLICATED.items():
        text = text.replace(old, new)
    text = text.replace("node.id=1", f"node.id={node}")
    lines = [line for line in text.splitlines() if not line.startswith("controller.quorum")]
    return "\n".join([*lines, f"controller.quorum.voters={voters}", ""])


def start_kafka_cluster() -> KafkaCluster:
    """Format three storage directories with one cluster id, start the three JVMs."""
    workdir = Path(tempfile.mkdtemp(prefix="eventbus-kafka-cluster-"))
    lib = kafka_dist.ensure_jars()
    java = kafka_dist.java_binary()
    ports = [free_port() for _ in range(MEMBERS)]
    controllers = [free_port() for _ in range(MEMBERS)]
    voters = ",".join(f"{i + 1}@127.0.0.1:{c}" for i, c in enumerate(controllers))
    cluster_id = kafka_dist._cluster_id()
    members = []
    for i in range(MEMBERS):
        home = workdir / f"k{i + 1}"
        home.mkdir()
        config = home / "server.properties"
        single = kafka_dist.server_properties(
            data=home / "data",
            port=ports[i],
            controller_port=controllers[i],
            advertised_port=ports[i],
        )
        config.write_text(cluster_properties(single, i + 1, voters))
        (home / "log4j2.properties").write_text(kafka_dist._LOG4J2)
        jvm = [
            java,
            *HEAP,
            "-XX:+UseSerialGC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={home / 'log4j2.properties'}",
            "-cp",
            f"{lib}/*",
        ]
        subprocess.run(
            [*jvm, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        url = f"kafka://127.0.0.1:{ports[i]}"
        argv = [*jvm, "kafka.Kafka", str(config)]
        members.append(LocalProcess("kafka", argv, url, workdir=home, ready_timeout=120.0))
    _start_all(members)
    return KafkaCluster(members, kafka_url(ports), workdir)
