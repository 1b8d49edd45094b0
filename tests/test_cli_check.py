"""`eventbus check`: one line per finding, exit 1 when any, 0 for a clean module."""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eventbus.cli import app
from eventbus.cli.check import action_word, is_past_tense

runner = CliRunner()

CLEAN = """
from eventbus import Command, Context, Event, EventBus

bus = EventBus()

class OrderEvent(Event, register=False):
    # a shared base, never sent itself: not linted as a message
    order_id: str

class OrderPlaced(OrderEvent, type="{p}.order-placed", version=1):
    pass

class PaymentSentEvent(Event, type="{p}.payment-sent", version=2):
    order_id: str

class PlaceOrder(Command, type="{p}.place-order", version=1):
    order_id: str

@bus.subscribe(PlaceOrder)
async def place(command: PlaceOrder, ctx: Context) -> None:
    await ctx.publish(OrderPlaced(order_id=command.order_id))

async def outside_a_handler() -> None:
    await bus.publish(OrderPlaced(order_id="1"))
"""

VIOLATIONS = """
from eventbus import Command, Context, Event, EventBus

bus = EventBus()

class PlaceOrderEvent(Event, type="{p}.place-order", version=1):
    order_id: str

class OrderShipped(Command, type="{p}.order-shipped", version=1):
    order_id: str

class CustomerUpdated(Event, type="{p}.customer-updated", version=1):
{fields}

class OrderCancelled(Event, type="{p}.order-cancelled"):
    order_id: str

@bus.subscribe(OrderShipped)
async def on_shipped(command: OrderShipped, ctx: Context) -> None:
    await bus.publish(OrderCancelled(order_id=command.order_id))
    await ctx.publish(OrderCancelled(order_id=command.order_id))
"""


@pytest.fixture
def tmp_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))

    def write(template: str, **values: str) -> str:
        name = f"svc_{uuid.uuid4().hex[:10]}"
        source = textwrap.dedent(template).format(p=name, **values)
        (tmp_path / f"{name}.py").write_text(source)
        return name

    return write


def test_a_clean_module_has_no_findings(tmp_module) -> None:  # type: ignore[no-untyped-def]
    name = tmp_module(CLEAN)
    result = runner.invoke(app, ["check", name])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""


def test_each_violation_is_one_line_with_its_code(tmp_module) -> None:  # type: ignore[no-untyped-def]
    fields = "\n".join(f"    field_{i}: str" for i in range(25))
    name = tmp_module(VIOLATIONS, fields=fields)
    result = runner.invoke(app, ["check", f"{name}.py", "--require-versions"])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    codes = [(line.split(": ")[0], line.split(": ", 1)[1].split()[0]) for line in lines]
    assert codes == [
        (f"{name}.py:6", "EB102"),  # PlaceOrderEvent: not past tense
        (f"{name}.py:9", "EB101"),  # OrderShipped: a command named like an event
        (f"{name}.py:12", "EB103"),  # CustomerUpdated: 25 fields
        (f"{name}.py:39", "EB105"),  # OrderCancelled: no version
        (f"{name}.py:44", "EB104"),  # bus.publish in a handler (ctx.publish is fine)
    ], result.stdout
    assert "use ctx.publish" in lines[-1] and "25 fields" in lines[2]
    assert "5 finding(s)" in result.stderr


def test_limits_are_configurable(tmp_module) -> None:  # type: ignore[no-untyped-def]
    name = tmp_module(CLEAN)
    result = runner.invoke(app, ["check", name, "--max-fields", "0"])
    assert result.exit_code == 1
    assert [line.split()[1] for line in result.stdout.splitlines()] == ["EB103"] * 3
    result = runner.invoke(app, ["check", name, "--max-schema-bytes", "10"])
    assert result.exit_code == 1 and "JSON schema" in result.stdout


def test_a_module_that_cannot_be_imported_is_one_error_line(tmp_module) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(app, ["check", "no_such_module_here"])
    assert result.exit_code == 5
    assert result.stderr.startswith("error: cannot import 'no_such_module_here'")


@pytest.mark.parametrize(
    ("name", "word", "past"),
    [
        ("OrderPlaced", "Placed", True),
        ("PaymentSentEvent", "Sent", True),
        ("OrderPlacedIntegrationEvent", "Placed", True),
        ("UserCreatedV2", "Created", True),
        ("PlaceOrder", "Order", False),
        ("ProcessPayment", "Payment", False),
        ("UserSignedUp", "Signed", True),
        ("UserLoggedInEvent", "Logged", True),
        ("CartCheckedOut", "Checked", True),
        ("SignUp", "Sign", False),
        ("OrderSetUp", "Set", True),
    ],
)
def test_naming_heuristics(name: str, word: str, past: bool) -> None:
    assert action_word(name) == word
    assert is_past_tense(word) is past


README_EXAMPLE = """
from eventbus import Context, Event, EventBus

class OrderPlaced(Event, type="{p}.order.placed", topic="orders"):
    order_id: str

class UserSignedUp(Event, type="{p}.user.signed-up"):
    user_id: str

bus = EventBus.from_env(source="payment-service")

@bus.subscribe(OrderPlaced, group="billing")
async def charge(event: OrderPlaced, ctx: Context) -> None:
    await ctx.publish(UserSignedUp(user_id=event.order_id))
"""


def test_the_readmes_kind_of_module_is_clean_by_default(tmp_module) -> None:  # type: ignore[no-untyped-def]
    """No version is version 1: flagging every event without one (the README's own
    example included) is opt-in; a phrasal verb (signed up) is past tense."""
    name = tmp_module(README_EXAMPLE)
    result = runner.invoke(app, ["check", name])
    assert result.exit_code == 0, result.output
    strict = runner.invoke(app, ["check", name, "--require-versions"])
    assert strict.exit_code == 1
    assert [line.split()[1] for line in strict.stdout.splitlines()] == ["EB105", "EB105"]
