"""pytest plugin (entry point ``pytest11: eventbus``).

For your service's tests: the ``eventbus_memory_url`` fixture, a private
``memory://`` broker per test, also set as ``$EVENTBUS_URL`` so a
``create_bus()`` built on ``EventBus.from_env()`` uses it (forgotten after the
test). For adapters: the ``conformance`` marker, an ``--eventbus-url`` option and
an ``eventbus_target`` fixture built from it.

Nothing here runs unless asked: with no URL configured the target fixture skips
the tests that use it, and other test suites are unaffected.

::

    # conftest.py of an adapter package
    @pytest.fixture
    def target(eventbus_target: BrokerTarget) -> BrokerTarget:
        return eventbus_target
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from eventbus.memory import MemoryBroker
from eventbus.testing.target import BrokerTarget

URL_OPTION = "--eventbus-url"
URL_VARIABLE = "EVENTBUS_TEST_URL"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("eventbus", "eventbus conformance suite")
    group.addoption(
        URL_OPTION,
        default=None,
        help=f"broker URL for the eventbus_target fixture (default: ${URL_VARIABLE})",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "conformance: an eventbus adapter conformance case (eventbus.testing)"
    )


@pytest.fixture
def eventbus_target(request: pytest.FixtureRequest) -> BrokerTarget:
    """A :class:`BrokerTarget` for ``--eventbus-url`` or ``$EVENTBUS_TEST_URL``; skips
    when neither is set. No fault hooks: reconnect cases are skipped."""
    url = request.config.getoption(URL_OPTION) or os.environ.get(URL_VARIABLE)
    if not url:
        pytest.skip(f"no broker configured: pass {URL_OPTION} or set ${URL_VARIABLE}")
    return BrokerTarget(name=str(url).split(":", 1)[0], url=str(url))


@pytest.fixture
def eventbus_memory_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A ``memory://`` broker of this test's own, also set as ``$EVENTBUS_URL``; its
    messages are forgotten when the test ends, so nothing leaks into the next one."""
    name = f"eventbus-test-{uuid.uuid4()}"
    url = f"memory://{name}"
    monkeypatch.setenv("EVENTBUS_URL", url)
    yield url
    MemoryBroker.discard(name)
