"""Fixtures of the chaos scenarios: the profile, one target per broker, the report."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from integration_tests.chaos.report import Report
from integration_tests.chaos.targets import NAMES, ChaosTarget, chaos_target, long_profile
from integration_tests.harness.clusters import STARTERS, Cluster, start_cluster

_targets: dict[str, ChaosTarget] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.chaos)
    # The clusters run in the long profile only (CI's short profile has no time for
    # them): deselected, not skipped, as pytest -m would.
    if not long_profile(config):
        clusters = [item for item in items if item.get_closest_marker("cluster")]
        if clusters:
            config.hook.pytest_deselected(items=clusters)
            items[:] = [item for item in items if item not in clusters]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A scenario runs on the brokers it applies to: a module's ``applies(name, long)``
    says which (the others are declared in docs/reliability.md), never by a skip."""
    if "target" not in metafunc.fixturenames:
        return
    applies = getattr(metafunc.module, "applies", None)
    long = long_profile(metafunc.config)
    names = [n for n in NAMES if applies is None or applies(n, long)]
    metafunc.parametrize("target", names, indirect=True)


@pytest.fixture(scope="session")
def long(pytestconfig: pytest.Config) -> bool:
    """Whether this is the long profile."""
    return long_profile(pytestconfig)


@pytest.fixture(scope="session")
def report(long: bool) -> Iterator[Report]:
    """Where each scenario writes its figures (``.reports/chaos/<profile>.jsonl``)."""
    with Report.open("long" if long else "short") as opened:
        yield opened


@pytest.fixture
def target(request: pytest.FixtureRequest, long: bool) -> ChaosTarget:
    """One broker at a time (built once per session, as the conformance targets are)."""
    name = str(request.param)
    if name not in _targets:
        _targets[name] = chaos_target(name)
    built = _targets[name]
    if long:
        return ChaosTarget(built.name, built.url, built.lease, built.base, built.scale * 10)
    return built


@pytest.fixture(scope="session", params=list(STARTERS))
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A three-member cluster (long profile only: see pytest_collection_modifyitems),
    one at a time: pytest tears one broker's down before it starts the next."""
    started = start_cluster(str(request.param))
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
