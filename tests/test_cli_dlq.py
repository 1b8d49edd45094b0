"""Dead-letter listing and replay, through the API and the CLI, on the memory broker."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eventbus import Context, Envelope, Event, EventBus, MemoryAdapter, RetryPolicy
from eventbus.adapter import (
    Adapter,
    HealthReport,
    RawMessage,
    ReadRecord,
    SubscribeOptions,
    Subscription,
)
from eventbus.cli import _common as cli_common
from eventbus.cli import app
from eventbus.deadletters import DeadLetters, ListedDeadLetter, dead_letter_envelope, dlq_topic
from eventbus.errors import TopicNotFoundError, UnsupportedOperationError

runner = CliRunner()


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the CLI use memory:// : the test runs it in the process that holds the broker."""
    monkeypatch.setattr(cli_common, "IN_PROCESS_SCHEMES", frozenset())


class InvoiceIssued(Event, type="test.cli.invoice_issued"):
    invoice_id: str


def letter(topic: str, group: str, **changes: object) -> Envelope:
    """A dead letter as the dead-letter step writes it."""
    original = Envelope.create(
        type="test.cli.invoice_issued", source="billing", data=b'{"invoice_id":"A1"}', **changes
    )
    return dead_letter_envelope(
        original,
        reason="ValueError: boom",
        topic=topic,
        group=group,
        attempts=3,
        exc=ValueError("boom"),
    )


async def wait_for_letters(
    dead: DeadLetters, topic: str, group: str, count: int
) -> list[ListedDeadLetter]:
    """List until ``count`` letters are there (the DLQ topic appears with the first one)."""
    async with asyncio.timeout(5):
        while True:
            with contextlib.suppress(TopicNotFoundError):
                records = await dead.list(topic, group)
                if len(records) >= count:
                    return records
            await asyncio.sleep(0.01)


def test_dead_letters_are_listed_with_reason_and_replayed_once() -> None:
    """A user finds why an event failed, fixes the handler, and replays it exactly once."""

    async def scenario() -> None:
        url = f"memory://{uuid.uuid4().hex}"
        topic = f"invoices-{uuid.uuid4().hex[:8]}"
        broken = True
        handled: list[str] = []
        bus = EventBus.from_url(
            url, source="billing", retry=RetryPolicy(max_attempts=2, initial_delay=0.001)
        )

        @bus.subscribe(topic, group="billing")
        async def handle(event: InvoiceIssued, ctx: Context) -> None:
            if broken:
                raise ValueError(f"cannot bill {event.invoice_id}")
            handled.append(event.invoice_id)

        dead = DeadLetters(bus.adapter, idle=0.3)
        async with bus:
            env = await bus.publish(InvoiceIssued(invoice_id="A1"), topic=topic)
            records = await wait_for_letters(dead, topic, "billing", 1)
            assert [r.envelope.id for r in records] == [env.id]
            record = records[0]
            assert record.reason.startswith("ValueError: cannot bill A1")
            assert record.exception == "builtins.ValueError"
            assert record.attempts == 2
            assert (record.topic, record.group) == (topic, "billing")
            assert "Traceback" in record.traceback
            assert record.original.extensions == {}
            # Listing twice shows the same letter: browsing never consumes.
            assert [r.envelope.id for r in await dead.list(topic, "billing")] == [env.id]

            broken = False
            assert await dead.replay(topic, "billing") == 1
            for _ in range(200):
                if handled:
                    break
                await asyncio.sleep(0.01)
            assert handled == ["A1"]
            assert await dead.replay(topic, "billing") == 0
            # The letter is still there to look at, marked as replayed.
            [listed] = await dead.list(topic, "billing")
            assert (listed.envelope.id, listed.replayed) == (env.id, True)
            assert await dead.list(topic, "billing", include_replayed=False) == []

    asyncio.run(scenario())


@pytest.mark.usefixtures("in_process")
def test_cli_publish_prints_the_event_id() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    result = runner.invoke(
        app, ["publish", "cli-topic", "--type", "x.y", "--data", '{"a": 1}', "--url", url]
    )
    assert result.exit_code == 0, result.output
    [record] = asyncio.run(MemoryAdapter(url).read("cli-topic"))
    assert record.envelope is not None and record.envelope.id == result.stdout.strip()
    assert json.loads(record.envelope.data) == {"a": 1}


@pytest.mark.usefixtures("in_process")
def test_cli_publish_rejects_bad_json_and_bad_urls() -> None:
    bad_json = runner.invoke(app, ["publish", "t", "--type", "x", "--data", "{nope"])
    assert bad_json.exit_code == 2
    assert "--data is not valid JSON" in bad_json.output
    bad_url = runner.invoke(app, ["publish", "t", "--type", "x", "--url", "nats9://h:1"])
    assert bad_url.exit_code == cli_common.EXIT_UNKNOWN_SCHEME
    assert "no eventbus adapter is installed for scheme 'nats9'" in bad_url.output


@pytest.mark.usefixtures("in_process")
def test_cli_dlq_list_and_replay_of_a_group_without_dead_letters_say_so() -> None:
    """A typo in the group must not look like an empty queue, nor create one."""
    url = f"memory://{uuid.uuid4().hex}"
    listed = runner.invoke(app, ["dlq", "list", "orders", "biling", "--json", "--url", url])
    assert listed.exit_code == cli_common.EXIT_NOT_FOUND, listed.output
    assert "no such dead-letter topic 'orders.biling.dlq'" in listed.output
    replayed = runner.invoke(app, ["dlq", "replay", "orders", "biling", "--url", url])
    assert replayed.exit_code == cli_common.EXIT_NOT_FOUND, replayed.output
    assert "no such dead-letter topic" in replayed.output
    assert "orders.biling.dlq" not in MemoryAdapter(url).broker.topics


@pytest.mark.usefixtures("in_process")
def test_cli_dlq_list_shows_which_letters_were_replayed() -> None:
    async def scenario() -> tuple[str, str]:
        url = f"memory://{uuid.uuid4().hex}"
        adapter = MemoryAdapter(url)
        await adapter.connect()
        first, second = letter("orders", "billing"), letter("orders", "billing")
        await adapter.publish(dlq_topic("orders", "billing"), [first, second])
        assert await DeadLetters(adapter).replay("orders", "billing", limit=1) == 1
        return url, first.id

    url, first_id = asyncio.run(scenario())
    listed = runner.invoke(
        app, ["dlq", "list", "orders", "billing", "--all", "--json", "--url", url]
    )
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(row["id"] == first_id, row["replayed"], row["state"]) for row in rows] == [
        (True, True, "replayed"),
        (False, False, "pending"),
    ]
    assert "2 of 2 dead letter(s) on orders/billing shown (1 pending, 1 replayed" in listed.output
    # By default only the letters still waiting for a decision are listed.
    pending = runner.invoke(app, ["dlq", "list", "orders", "billing", "--json", "--url", url])
    assert pending.exit_code == 0, pending.output
    assert [json.loads(line)["id"] == first_id for line in pending.stdout.splitlines()] == [False]
    assert "--all shows them" in pending.output


def test_cli_run_rejects_a_target_that_is_not_a_bus() -> None:
    result = runner.invoke(app, ["run", "json:dumps"])
    assert result.exit_code != 0
    assert "not an EventBus" in result.output


def test_cli_run_serves_until_sigterm_and_shuts_down_gracefully(tmp_path: Path) -> None:
    """`eventbus run module:bus` starts the subscriptions and exits 0 on SIGTERM."""
    (tmp_path / "svc.py").write_text(
        textwrap.dedent("""
        import sys
        from eventbus import EventBus
        bus = EventBus.from_url("memory://svc", source="svc")

        @bus.subscribe("pings", group="svc")
        async def on_ping(envelope) -> None:
            pass

        def make():
            print("ready", file=sys.stderr, flush=True)
            return bus
    """)
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventbus.cli", "run", "svc:make"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "eventbus running" in line:
            break
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, "".join(lines) + proc.stderr.read()


# -- browsing creates nothing on the broker ------------------------------------------------


class SpyAdapter(MemoryAdapter):
    """The memory adapter, counting the subscriptions opened through the contract."""

    subscribed: list[tuple[str, str]]

    async def subscribe(self, topic: str, options: SubscribeOptions) -> Subscription:
        self.subscribed.append((topic, options.group))
        return await super().subscribe(topic, options)


class QueueLikeAdapter(SpyAdapter):
    """A broker that cannot browse without consuming (like a plain queue)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.capabilities = dataclasses.replace(self.capabilities, browse=False)

    async def read(self, topic: str, *, limit: int | None = None) -> list[ReadRecord]:
        raise UnsupportedOperationError("cannot browse")


def new_adapter(cls: type[SpyAdapter]) -> SpyAdapter:
    adapter = cls(f"memory://{uuid.uuid4().hex}")
    adapter.subscribed = []
    return adapter


def test_listing_dead_letters_opens_no_subscription_and_leaves_no_group() -> None:
    async def scenario() -> None:
        adapter = new_adapter(SpyAdapter)
        await adapter.connect()
        name = dlq_topic("orders", "billing")
        await adapter.publish(name, [letter("orders", "billing")])
        dead = DeadLetters(adapter, idle=5.0)
        async with asyncio.timeout(2):  # no idle wait: reading stops at the end
            for _ in range(3):
                assert len(await dead.list("orders", "billing")) == 1
        assert adapter.subscribed == []
        assert adapter.broker.topics[name].groups == {}
        # Letters published later are not queued for any browse group.
        await adapter.publish(name, [letter("orders", "billing") for _ in range(5)])
        assert len(await dead.list("orders", "billing")) == 6
        assert adapter.broker.topics[name].groups == {}
        await adapter.close()

    asyncio.run(scenario())


def test_a_typo_in_the_group_is_no_such_topic_and_creates_none() -> None:
    async def scenario() -> None:
        adapter = new_adapter(SpyAdapter)
        await adapter.connect()
        await adapter.publish(dlq_topic("orders", "billing"), [letter("orders", "billing")])
        dead = DeadLetters(adapter)
        for call in (dead.list("orders", "biling"), dead.replay("orders", "biling")):
            with pytest.raises(
                TopicNotFoundError,
                match=r"no such dead-letter topic "
                r"'orders\.biling\.dlq'.*topic 'orders' group 'biling'",
            ):
                await call
        with pytest.raises(TopicNotFoundError):
            await adapter.read(dlq_topic("orders", "biling"))
        assert adapter.subscribed == []

    asyncio.run(scenario())


def test_replay_marks_letters_replayed_and_a_new_failure_is_a_new_letter() -> None:
    async def scenario() -> None:
        adapter = new_adapter(SpyAdapter)
        await adapter.connect()
        name = dlq_topic("orders", "billing")
        first = letter("orders", "billing")
        await adapter.publish(name, [first, letter("orders", "billing")])
        dead = DeadLetters(adapter)
        assert [r.replayed for r in await dead.list("orders", "billing")] == [False, False]
        assert await dead.replay("orders", "billing", limit=1, to_group=False) == 1
        listed = await dead.list("orders", "billing")
        assert [(r.envelope.id, r.replayed) for r in listed] == [
            (first.id, True),
            (listed[1].envelope.id, False),
        ]
        # The replayed event fails again: a second letter with the same event id.
        await adapter.publish(
            name,
            [first.evolve(extensions={**first.extensions, "dlqfailedat": "2030-01-01T00:00:00Z"})],
        )
        listed = await dead.list("orders", "billing")
        assert [r.replayed for r in listed] == [True, False, False]
        assert [
            r.envelope.id for r in await dead.list("orders", "billing", include_replayed=False)
        ] == [listed[1].envelope.id, first.id]
        assert len(await dead.list("orders", "billing", limit=2)) == 2
        assert await dead.replay("orders", "billing", to_group=False) == 2
        assert await dead.replay("orders", "billing", to_group=False) == 0
        assert all(r.replayed for r in await dead.list("orders", "billing"))
        # Each replay republished the original, without the dead-letter attributes.
        originals = await adapter.read("orders")
        assert [r.envelope.id for r in originals if r.envelope] == [
            first.id,
            listed[1].envelope.id,
            first.id,
        ]
        assert all(
            not k.startswith("dlq") for r in originals if r.envelope for k in r.envelope.extensions
        )
        assert adapter.subscribed == []

    asyncio.run(scenario())


def test_a_broker_that_cannot_browse_is_read_by_the_one_replay_group() -> None:
    async def scenario() -> None:
        adapter = new_adapter(QueueLikeAdapter)
        await adapter.connect()
        name = dlq_topic("orders", "billing")
        await adapter.publish(name, [letter("orders", "billing")])
        dead = DeadLetters(adapter, idle=0.05)
        for _ in range(3):
            assert len(await dead.list("orders", "billing")) == 1
        assert set(adapter.subscribed) == {(name, "eventbus-dlq-replay")}
        assert list(adapter.broker.topics[name].groups) == ["eventbus-dlq-replay"]
        assert await dead.replay("orders", "billing") == 1
        assert await dead.list("orders", "billing") == []

    asyncio.run(scenario())


# -- the adapter contract: read ----------------------------------------------------------


def test_memory_read_browses_a_topic_without_consuming_it() -> None:
    async def scenario() -> None:
        adapter = MemoryAdapter(f"memory://{uuid.uuid4().hex}")
        await adapter.connect()
        sent = [Envelope.create(type="t", source="s", data=b"%d" % i) for i in range(3)]
        await adapter.publish("browse", sent[:2])
        await adapter.publish_raw("browse", RawMessage(b"not a cloudevent"))
        await adapter.publish("browse", sent[2:])
        records = await adapter.read("browse")
        assert [r.envelope.id if r.envelope else None for r in records] == [
            sent[0].id,
            sent[1].id,
            None,
            sent[2].id,
        ]
        assert records[2].raw == b"not a cloudevent" and records[2].decode_error
        assert len({r.message_id for r in records}) == 4
        assert [r.message_id for r in await adapter.read("browse", limit=2)] == [
            r.message_id for r in records[:2]
        ]
        assert await adapter.read("browse") == records  # reading consumed nothing
        subscription = await adapter.subscribe(
            "browse", SubscribeOptions(group="late", start_from="earliest")
        )
        got = []
        async with asyncio.timeout(2):
            async for delivery in subscription:
                got.append(delivery)
                await delivery.ack()
                if len(got) == 4:
                    break
        assert [d.envelope.id if d.envelope else None for d in got] == [
            r.envelope.id if r.envelope else None for r in records
        ]
        await subscription.close()
        with pytest.raises(TopicNotFoundError, match="'missing' does not exist"):
            await adapter.read("missing")
        with pytest.raises(TopicNotFoundError):  # and reading did not create it
            await adapter.read("missing")

    asyncio.run(scenario())


def test_adapters_that_cannot_browse_say_so() -> None:
    class Minimal(Adapter):
        async def connect(self) -> None: ...
        async def close(self) -> None: ...
        async def publish(self, topic: str, envelopes: object) -> None: ...  # type: ignore[override]
        async def subscribe(self, topic: str, options: SubscribeOptions) -> Subscription:
            raise NotImplementedError

        async def health(self) -> HealthReport:
            return HealthReport(ok=True)

    with pytest.raises(UnsupportedOperationError, match="cannot browse topic 'orders'"):
        asyncio.run(Minimal("x://").read("orders"))


def test_a_reference_only_letter_is_listed_but_never_replayed_as_the_event() -> None:
    """A dead letter shrunk to a reference (its data dropped to fit the broker) says so,
    and replay leaves it alone instead of publishing an empty event."""

    async def scenario() -> None:
        adapter = MemoryAdapter(f"memory://{uuid.uuid4().hex}")
        await adapter.connect()
        topic = f"orders-{uuid.uuid4().hex[:8]}"
        full = letter(topic, "billing")
        shrunk = full.evolve(
            data=b"",
            datacontenttype=None,
            extensions={**full.extensions, "dlqdropped": "traceback,message,data"},
        )
        await adapter.publish(dlq_topic(topic, "billing"), [shrunk, letter(topic, "billing")])
        dead = DeadLetters(adapter)
        records = await wait_for_letters(dead, topic, "billing", 2)
        assert [r.replayable for r in records] == [False, True]
        assert records[0].dropped == ("traceback", "message", "data")
        assert await dead.replay(topic, "billing") == 1
        after = await dead.list(topic, "billing")
        assert [r.replayed for r in after] == [False, True]
        await adapter.close()

    asyncio.run(scenario())
