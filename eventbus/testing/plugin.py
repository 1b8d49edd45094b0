"""pytest plugin (entry point ``pytest11: eventbus``).

For your service's tests: the ``eventbus_memory_url`` fixture, a private
``memory://`` broker per test, also set as ``$EVENTBUS_URL`` so a
``create_bus()`` built on ``EventBus.from_env()`` uses it (forgotten after the
test). For adapters: the ``conformance`` marker, the ``--eventbus-url`` and
``--eventbus-adapter`` options, the ``eventbus_target`` fixture built from them, and
the conformance suite's default ``target`` (that fixture), so that
``pytest --eventbus-url mybroker://...`` runs a bare ``class TestMine(ConformanceSuite)``.

Nothing here runs unless asked: with no URL configured the target fixture skips
the tests that use it; a ``target`` fixture of your own (module, class or conftest)
wins over the default; a test outside the conformance suite asking for ``target``
without defining one fails saying so, as it would without this plugin.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from eventbus.memory import MemoryBroker
from eventbus.testing.target import BrokerTarget, import_adapter

URL_OPTION = "--eventbus-url"
URL_VARIABLE = "EVENTBUS_TEST_URL"
ADAPTER_OPTION = "--eventbus-adapter"
ADAPTER_VARIABLE = "EVENTBUS_TEST_ADAPTER"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("eventbus", "eventbus conformance suite")
    group.addoption(
        URL_OPTION,
        default=None,
        help=f"broker URL for the eventbus_target fixture (default: ${URL_VARIABLE})",
    )
    group.addoption(
        ADAPTER_OPTION,
        default=None,
        help="module:name of the adapter class (or factory) to build it with, instead of "
        f"the URL scheme's installed adapter (default: ${ADAPTER_VARIABLE})",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "conformance: an eventbus adapter conformance case (eventbus.testing)"
    )


@pytest.fixture
def eventbus_target(request: pytest.FixtureRequest) -> BrokerTarget:
    """A :class:`BrokerTarget` for ``--eventbus-url`` or ``$EVENTBUS_TEST_URL``, built
    by ``--eventbus-adapter module:name`` when given (your package need not be
    installed); skips when no URL is set. No fault hooks: reconnect cases are skipped."""
    url = request.config.getoption(URL_OPTION) or os.environ.get(URL_VARIABLE)
    if not url:
        pytest.skip(f"no broker configured: pass {URL_OPTION} or set ${URL_VARIABLE}")
    path = request.config.getoption(ADAPTER_OPTION) or os.environ.get(ADAPTER_VARIABLE)
    try:
        adapter = import_adapter(str(path)) if path else None
    except (ImportError, AttributeError, TypeError) as error:
        raise pytest.UsageError(
            f"{ADAPTER_OPTION} {path!r}: cannot import an adapter factory from it ({error}); "
            "give module:name of your adapter class, with its folder on sys.path"
        ) from error
    return BrokerTarget(name=str(url).split(":", 1)[0], url=str(url), adapter=adapter)


@pytest.fixture(name="target")
def default_target(request: pytest.FixtureRequest) -> BrokerTarget:
    """The conformance suite's ``target`` when your tests define none: :func:`eventbus_target`.

    Defined by this plugin, so any ``target`` fixture of yours takes precedence."""
    if request.node.get_closest_marker("conformance") is None:
        pytest.fail(
            f"{request.node.nodeid} asks for a 'target' fixture and none is defined; the "
            "plugin's default 'target' serves only the eventbus conformance suite "
            "(ConformanceSuite subclasses): define your own",
            pytrace=False,
        )
    target: BrokerTarget = request.getfixturevalue("eventbus_target")
    return target


@pytest.fixture
def eventbus_memory_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A ``memory://`` broker of this test's own, also set as ``$EVENTBUS_URL``; its
    messages are forgotten when the test ends, so nothing leaks into the next one."""
    name = f"eventbus-test-{uuid.uuid4()}"
    url = f"memory://{name}"
    monkeypatch.setenv("EVENTBUS_URL", url)
    yield url
    MemoryBroker.discard(name)
