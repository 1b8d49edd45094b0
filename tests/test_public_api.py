"""What a service author imports from ``eventbus``: complete, cheap to import, typed."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap

import pytest

import eventbus
from eventbus import errors


def test_importing_eventbus_does_not_import_aiosqlite() -> None:
    code = textwrap.dedent("""
        import sys
        import eventbus
        assert "aiosqlite" not in sys.modules, "eventbus imported aiosqlite"
        from eventbus import SQLiteIdempotencyStore
        assert "aiosqlite" in sys.modules and SQLiteIdempotencyStore.__name__
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_every_error_a_user_may_catch_is_exported() -> None:
    defined = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, errors.EventBusError)
    }
    assert defined - set(eventbus.__all__) == set()


@pytest.mark.parametrize("name", eventbus.__all__)
def test_every_exported_name_resolves(name: str) -> None:
    assert getattr(eventbus, name) is not None


def test_what_a_service_author_needs_is_at_the_top() -> None:
    for name in (
        "EventBus",
        "Event",
        "Command",
        "Context",
        "RetryPolicy",
        "DeadLetters",
        "MemoryIdempotencyStore",
        "SQLiteIdempotencyStore",
        "PublishOptions",
    ):
        assert name in eventbus.__all__
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        eventbus.Nope  # type: ignore[attr-defined]  # noqa: B018


SNIPPET = """
from eventbus import Context, Event, EventBus

class Placed(Event, type="typing.placed", topic="typing"):
    order_id: str

async def main(bus: EventBus, ctx: Context) -> None:
    await bus.publish(Placed(order_id="1"), key="1", subject="s", parent=None)
    await ctx.publish(Placed(order_id="1"), correlation_id="c", extensions={{"a": "b"}})
    await bus.publish_many([Placed(order_id="1")], key="1")
    await bus.publish(Placed(order_id="1"), {option}="1")
"""


def test_mypy_catches_a_misspelled_publish_option() -> None:
    api = pytest.importorskip("mypy.api")
    ok, _, status = api.run(
        ["--strict", "--no-incremental", "-c", SNIPPET.format(option="subject")]
    )
    assert status == 0, ok
    wrong, _, status = api.run(
        ["--strict", "--no-incremental", "-c", SNIPPET.format(option="partition_key")]
    )
    assert status == 1 and 'Unexpected keyword argument "partition_key"' in wrong, wrong
