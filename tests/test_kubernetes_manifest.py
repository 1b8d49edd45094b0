"""The Kubernetes manifest of docs/observability.md matches what `eventbus run` serves: its
arguments, container ports, probe paths and scrape annotations agree, its timeouts leave
room for /readyz's broker check and the graceful stop, and the paths it names answer on
the ports it names when `eventbus run` runs with its arguments."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from eventbus import EventBus
from eventbus.probes import CHECK_TIMEOUT, LIVEZ, METRICS, READYZ
from tests.test_cli_ops import Run, free_port, until_answer

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "observability.md"


def manifest() -> dict[str, Any]:
    blocks = re.findall(r"^```yaml\n(.*?)^```$", PAGE.read_text(), re.S | re.M)
    documents = [d for block in blocks for d in yaml.safe_load_all(block) if d]
    (deployment,) = [d for d in documents if d.get("kind") == "Deployment"]
    return deployment  # type: ignore[no-any-return]


def option(argv: list[str], name: str) -> int:
    return int(argv[argv.index(name) + 1])


def test_ports_paths_and_annotations_agree() -> None:
    pod = manifest()["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    argv = container["command"] + container["args"]
    assert argv[:2] == ["eventbus", "run"]
    health, metrics = option(argv, "--health-port"), option(argv, "--metrics-port")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": health, "metrics": metrics}

    def port_of(probe: dict[str, Any]) -> int:
        port = probe["httpGet"]["port"]
        return ports[port] if isinstance(port, str) else int(port)

    assert container["livenessProbe"]["httpGet"]["path"] == LIVEZ
    assert port_of(container["livenessProbe"]) == health
    assert container["readinessProbe"]["httpGet"]["path"] == READYZ
    assert port_of(container["readinessProbe"]) == health
    assert container["startupProbe"]["httpGet"]["path"] in (LIVEZ, READYZ)
    assert port_of(container["startupProbe"]) == health
    # /readyz answers 503 itself when the broker is slow, before the kubelet gives up.
    assert container["readinessProbe"]["timeoutSeconds"] > CHECK_TIMEOUT

    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == metrics
    assert annotations["prometheus.io/path"] == METRICS

    # The graceful stop (in-flight handlers, then closing) fits in the grace period.
    default_stop = EventBus("memory://").shutdown_timeout
    assert pod["spec"]["terminationGracePeriodSeconds"] > default_stop


def test_what_the_manifest_names_answers(tmp_path: Path) -> None:
    """`eventbus run` with the manifest's arguments (its ports moved to free ones, since
    the machine running the tests may hold 8080): each probe path answers on its port."""
    pod = manifest()["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    args = list(container["args"])
    health, metrics = free_port(), free_port()
    args[args.index("--health-port") + 1] = str(health)
    args[args.index("--metrics-port") + 1] = str(metrics)
    (tmp_path / "k8s_svc.py").write_text(
        "from eventbus import EventBus\n"
        "bus = EventBus.from_env(source='billing')\n"
        "@bus.subscribe('k8s-orders', group='billing')\n"
        "async def handle(envelope) -> None:\n"
        "    pass\n"
    )
    run = Run(tmp_path, "k8s_svc:bus", *args, "--probe-host", "127.0.0.1")
    try:
        served = {"health": health, "metrics": metrics}
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            get = container[probe]["httpGet"]
            until_answer(served[get["port"]], get["path"])
        until_answer(metrics, pod["metadata"]["annotations"]["prometheus.io/path"])
        assert run.stop() == 0
    finally:
        run.kill()
