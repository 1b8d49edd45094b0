"""docker-compose.yml's clusters (profile ``cluster``) are the harness's clusters.

The chaos suite's clusters run as local processes or, with a container engine, as
the compose services (integration_tests/harness/cluster_compose.py). This machine
has no engine, so what is checked here is the file against the harness: images of
the versions the process path runs, the ports the harness's URLs name, three members
with the process path's replication settings, and the single brokers left alone by
a plain ``docker compose up``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration_tests.harness import cluster_compose as compose
from integration_tests.harness import cluster_kafka, clusters, kafka_dist, versions

ROOT = Path(__file__).resolve().parents[1]
FILE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = FILE["services"]
CLUSTER = {service: broker for broker, names in compose.SERVICES.items() for service in names}
# Per broker: what each member's config says only about itself.
OWN_KAFKA_KEYS = {
    "node.id",
    "controller.quorum.voters",
    "listeners",
    "advertised.listeners",
    "inter.broker.listener.name",
    "listener.security.protocol.map",
    "controller.listener.names",
    "log.dirs",
}
NOT_PROPERTIES = {"KAFKA_HEAP_OPTS"}  # the image passes it to the JVM


def published(service: str) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of each published port."""
    out = []
    for entry in SERVICES[service].get("ports", []):
        host, host_port, inner = str(entry).split(":")
        out.append((host, int(host_port), int(inner)))
    return out


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_the_clusters_are_a_profile_and_the_single_brokers_are_not() -> None:
    profiled = {name for name, s in SERVICES.items() if s.get("profiles")}
    assert profiled == set(CLUSTER), "the cluster services are those the harness starts"
    for name in profiled:
        assert SERVICES[name]["profiles"] == [compose.PROFILE], name
    assert {"kafka", "rabbitmq", "redis", "nats"} <= set(SERVICES) - profiled


@pytest.mark.parametrize("service", sorted(CLUSTER))
def test_each_image_is_the_version_the_process_path_runs(service: str) -> None:
    assert SERVICES[service]["image"] == compose.IMAGES[CLUSTER[service]]


def test_kafka_brokers_publish_and_advertise_the_harness_ports() -> None:
    assert len(compose.SERVICES["kafka"]) == len(compose.KAFKA_PORTS) == clusters.MEMBERS
    for i, (service, port) in enumerate(
        zip(compose.SERVICES["kafka"], compose.KAFKA_PORTS, strict=True)
    ):
        env = SERVICES[service]["environment"]
        assert published(service) == [("127.0.0.1", port, port)]
        assert env["KAFKA_NODE_ID"] == str(i + 1)
        assert f"EXTERNAL://:{port}" in env["KAFKA_LISTENERS"].split(",")
        assert f"EXTERNAL://127.0.0.1:{port}" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
        voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
        assert [v.split("@")[0] for v in voters] == [str(n + 1) for n in range(clusters.MEMBERS)]
        assert env["KAFKA_HEAP_OPTS"] == " ".join(cluster_kafka.HEAP)


def _properties(env: dict[str, str]) -> dict[str, str]:
    """The server properties the apache/kafka image makes of ``KAFKA_*`` variables."""
    out = {}
    for key, value in env.items():
        if key.startswith("KAFKA_") and key not in NOT_PROPERTIES:
            name = key.removeprefix("KAFKA_").lower().replace("_", ".")
            out[name.replace("...", "-").replace("..", "_")] = str(value)
    return out


def test_kafka_brokers_have_the_process_path_settings() -> None:
    """Replication factor 3, min.insync.replicas 2 and every other setting of the
    process path's brokers (cluster_kafka.REPLICATED on kafka_dist's config)."""
    single = kafka_dist.server_properties(
        data=Path("/data"), port=1, controller_port=2, advertised_port=1
    )
    text = cluster_kafka.cluster_properties(single, 1, "1@127.0.0.1:2")
    lines = [line.split("=", 1) for line in text.splitlines() if "=" in line]
    expected = {k: v for k, v in lines if k not in OWN_KAFKA_KEYS}
    assert expected["default.replication.factor"] == str(clusters.MEMBERS)
    assert expected["min.insync.replicas"] == "2"
    for service in compose.SERVICES["kafka"]:
        props = _properties(SERVICES[service]["environment"])
        assert {k: v for k, v in props.items() if k not in OWN_KAFKA_KEYS} == expected, service


def test_rabbitmq_nodes_publish_the_harness_ports_and_list_each_other() -> None:
    conf = (ROOT / "compose" / "rabbitmq-cluster.conf").read_text()
    listed = re.findall(r"^cluster_formation\.classic_config\.nodes\.\d+ = (\S+)$", conf, re.M)
    assert listed == compose.RABBITMQ_NODES
    assert len(compose.SERVICES["rabbitmq"]) == len(compose.RABBITMQ_PORTS) == clusters.MEMBERS
    cookies = set()
    for service, port, node in zip(
        compose.SERVICES["rabbitmq"], compose.RABBITMQ_PORTS, compose.RABBITMQ_NODES, strict=True
    ):
        spec = SERVICES[service]
        assert published(service) == [("127.0.0.1", port, 5672)]
        assert f"rabbit@{spec['hostname']}" == node  # the node name the image derives
        assert spec["volumes"][0].startswith("./compose/rabbitmq-cluster.conf:")
        cookies.add(spec["environment"]["RABBITMQ_ERLANG_COOKIE"])
    assert len(cookies) == 1, "one Erlang cookie for the three nodes"


def test_nats_servers_publish_advertise_and_route_to_each_other() -> None:
    names = compose.SERVICES["nats"]
    assert len(names) == len(compose.NATS_PORTS) == clusters.MEMBERS
    for i, (service, port) in enumerate(zip(names, compose.NATS_PORTS, strict=True)):
        argv = [str(a) for a in SERVICES[service]["command"]]
        assert published(service) == [("127.0.0.1", port, port)]
        assert option(argv, "-p") == str(port)
        assert option(argv, "--client_advertise") == f"127.0.0.1:{port}"
        # NatsCluster.victim maps a stream leader "n<k>" to member k-1.
        assert option(argv, "-n") == f"n{i + 1}"
        assert option(argv, "--cluster_name") == clusters.NATS_CLUSTER_NAME
        assert "-js" in argv
        routes = option(argv, "--routes").split(",")
        assert sorted(routes) == [f"nats://{n}:6222" for n in names if n != service]


def _sentinel_lines(service: str) -> list[str]:
    script = SERVICES[service]["command"][2]
    return shlex.split(script.split("printf")[1].split(">")[0])[1:]


def test_redis_primary_replica_and_sentinels_match_the_process_path() -> None:
    net = compose.SERVICES["redis"][0]
    ports = [*compose.REDIS_PORTS, *compose.SENTINEL_PORTS]
    assert published(net) == [("127.0.0.1", p, p) for p in ports]
    for service in compose.SERVICES["redis"][1:]:
        assert SERVICES[service]["network_mode"] == f"service:{net}", service
    flags = list(clusters.REDIS_DATA_FLAGS)
    for i, port in enumerate(compose.REDIS_PORTS):
        argv = [str(a) for a in SERVICES[f"redis-r{i + 1}"]["command"]]
        assert option(argv, "--port") == str(port)
        at = argv.index(flags[0])
        assert argv[at : at + len(flags)] == flags, "the process path's durability flags"
        if i:
            assert option(argv, "--replicaof") == "127.0.0.1"
            assert argv[argv.index("--replicaof") + 2] == str(compose.REDIS_PORTS[0])
    sentinels = compose.SERVICES["redis"][3:]
    assert len(sentinels) == len(compose.SENTINEL_PORTS) == clusters.MEMBERS
    for service, port in zip(sentinels, compose.SENTINEL_PORTS, strict=True):
        lines = _sentinel_lines(service)
        assert lines == [
            *clusters.sentinel_conf(port, compose.REDIS_PORTS[0])[:1],
            "protected-mode no",
            *clusters.sentinel_conf(port, compose.REDIS_PORTS[0])[1:],
        ], service


@pytest.mark.parametrize("broker", sorted(versions.PACKAGE_VERSIONS))
def test_the_pinned_versions_are_those_installed(broker: str) -> None:
    """The process path runs the machine's packages: the images name their versions."""
    installed = compose.installed_version(broker)
    if installed is None:
        pytest.skip(f"no {broker} package on this machine")
    assert installed == versions.PACKAGE_VERSIONS[broker]


def test_without_an_engine_the_container_only_way_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """``EVENTBUS_TEST_METHODS=container`` and no engine: an error naming both, no
    silent local processes."""
    monkeypatch.setenv("EVENTBUS_TEST_METHODS", "container")
    monkeypatch.setattr(compose, "engine_problem", lambda: "no container engine (test)")
    with pytest.raises(RuntimeError, match=r"no container engine \(test\).*leaves out process"):
        clusters.start_cluster("nats")


def test_a_container_cluster_that_fails_falls_back_to_processes_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An engine answers but the compose services do not start (say, a port taken):
    the cluster runs as local processes, and the warning says why."""
    if compose.installed_version("nats") is None:
        pytest.skip("no nats-server on this machine")

    def refuse(name: str) -> clusters.Cluster:
        raise compose.ComposeError("port 4223 is already allocated")

    monkeypatch.delenv("EVENTBUS_TEST_METHODS", raising=False)
    monkeypatch.setattr(compose, "engine_problem", lambda: None)
    monkeypatch.setattr(compose, "start_cluster", refuse)
    with pytest.warns(UserWarning, match="port 4223 is already allocated.*local processes"):
        started = clusters.start_cluster("nats")
    try:
        assert started.how == "process"
        assert all(member.running for member in started.members)
    finally:
        started.close()
