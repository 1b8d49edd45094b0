"""Dead-letter operations: show one letter, replay by id, purge (markers on log brokers,
consumed on queues), with confirmation, counts and progress, through the API and the CLI."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import Sequence

import pytest
from typer.testing import CliRunner

from eventbus import Envelope, MemoryAdapter
from eventbus.adapter import ReadRecord, SubscribeOptions
from eventbus.cli import _common as cli
from eventbus.cli import app
from eventbus.deadletters import (
    DeadLetters,
    ListedDeadLetter,
    dead_letter_envelope,
    dlq_topic,
    replayed_topic,
)
from eventbus.errors import UnsupportedOperationError

runner = CliRunner()
TOPIC, GROUP = "orders", "billing"


def letter(data: bytes = b'{"order_id":"A1"}') -> Envelope:
    original = Envelope.create(type="test.order", source="shop", data=data)
    try:
        raise ValueError("card declined")
    except ValueError as exc:
        return dead_letter_envelope(
            original,
            reason="ValueError: card declined",
            topic=TOPIC,
            group=GROUP,
            attempts=3,
            exc=exc,
        )


class QueueLike(MemoryAdapter):
    """A broker that cannot browse without consuming (like a plain queue)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.capabilities = dataclasses.replace(self.capabilities, browse=False)

    async def read(self, topic: str, *, limit: int | None = None) -> list[ReadRecord]:
        raise UnsupportedOperationError("cannot browse")


async def broker(*letters: Envelope, cls: type[MemoryAdapter] = MemoryAdapter) -> MemoryAdapter:
    adapter = cls(f"memory://{uuid.uuid4().hex}")
    await adapter.connect()
    await adapter.publish(dlq_topic(TOPIC, GROUP), list(letters))
    return adapter


def ids(letters: Sequence[ReadRecord | ListedDeadLetter]) -> list[str]:
    return [x.envelope.id for x in letters if x.envelope is not None]


# -- the API --------------------------------------------------------------------------------


def test_show_finds_a_letter_by_event_id_or_position() -> None:
    async def scenario() -> None:
        first, second = letter(), letter()
        dead = DeadLetters(await broker(first, second))
        [shown] = await dead.show(TOPIC, GROUP, second.id)
        assert shown.envelope.id == second.id and "card declined" in shown.traceback
        assert ids(await dead.show(TOPIC, GROUP, shown.message_id)) == [second.id]
        assert await dead.show(TOPIC, GROUP, "no-such-id") == []

    asyncio.run(scenario())


def test_replay_by_id_replays_only_that_letter_and_reports_progress() -> None:
    async def scenario() -> None:
        letters = [letter() for _ in range(3)]
        adapter = await broker(*letters)
        dead = DeadLetters(adapter)
        calls: list[tuple[int, int]] = []
        assert (
            await dead.replay(
                TOPIC,
                GROUP,
                ids=[letters[1].id],
                to_group=False,
                progress=lambda done, total: calls.append((done, total)),
            )
            == 1
        )
        assert calls == [(1, 1)]
        assert ids(await adapter.read(TOPIC)) == [letters[1].id]
        assert [x.state for x in await dead.list(TOPIC, GROUP)] == [
            "pending",
            "replayed",
            "pending",
        ]
        calls.clear()
        assert (
            await dead.replay(
                TOPIC, GROUP, to_group=False, progress=lambda d, t: calls.append((d, t))
            )
            == 2
        )
        assert calls == [(1, 2), (2, 2)]

    asyncio.run(scenario())


def test_purge_on_a_log_broker_marks_letters_so_list_hides_them_and_replay_skips_them() -> None:
    async def scenario() -> None:
        letters = [letter() for _ in range(3)]
        adapter = await broker(*letters)
        dead = DeadLetters(adapter)
        assert await dead.purge(TOPIC, GROUP, ids=[letters[0].id]) == 1
        assert ids(await dead.list(TOPIC, GROUP)) == [letters[1].id, letters[2].id]
        everything = await dead.list(TOPIC, GROUP, include_purged=True)
        assert [x.state for x in everything] == ["purged", "pending", "pending"]
        # The letters stay on the DLQ topic; the markers say which were purged.
        assert len(await adapter.read(dlq_topic(TOPIC, GROUP))) == 3
        assert len(await adapter.read(replayed_topic(TOPIC, GROUP))) == 1
        assert await dead.replay(TOPIC, GROUP, to_group=False) == 2
        assert ids(await adapter.read(TOPIC)) == [letters[1].id, letters[2].id]
        # Replayed letters can be purged too; purging twice purges nothing more.
        assert await dead.purge(TOPIC, GROUP) == 2
        assert await dead.purge(TOPIC, GROUP) == 0
        assert await dead.list(TOPIC, GROUP) == []

    asyncio.run(scenario())


def test_purge_on_a_queue_broker_consumes_the_letters() -> None:
    async def scenario() -> None:
        letters = [letter() for _ in range(3)]
        adapter = await broker(*letters, cls=QueueLike)
        dead = DeadLetters(adapter, idle=0.05)
        # A queue hands nacked messages back in its own order: compare sets.
        assert await dead.purge(TOPIC, GROUP, ids=[letters[2].id]) == 1
        assert set(ids(await dead.list(TOPIC, GROUP))) == {letters[0].id, letters[1].id}
        assert await dead.replay(TOPIC, GROUP, ids=[letters[0].id], to_group=False) == 1
        assert ids(await dead.list(TOPIC, GROUP)) == [letters[1].id]
        assert ids(await MemoryAdapter.read(adapter, TOPIC)) == [letters[0].id]
        assert await dead.purge(TOPIC, GROUP) == 1
        assert await dead.list(TOPIC, GROUP) == []

    asyncio.run(scenario())


# -- the CLI --------------------------------------------------------------------------------


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the CLI use memory:// : the test runs it in the process that holds the broker."""
    monkeypatch.setattr(cli, "IN_PROCESS_SCHEMES", frozenset())


def invoke(adapter: MemoryAdapter, *argv: str, stdin: str | None = None) -> tuple[int, str]:
    result = runner.invoke(
        app, ["dlq", *argv[:1], TOPIC, GROUP, *argv[1:], "--url", adapter.url], input=stdin
    )
    return result.exit_code, result.output


@pytest.mark.usefixtures("in_process")
def test_list_json_carries_payload_reason_and_traceback() -> None:
    text, binary = letter(), letter(data=b"\xff\x00binary")
    adapter = asyncio.run(broker(text, binary))
    code, output = invoke(adapter, "list", "--json")
    assert code == 0, output
    rows = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert [(r["id"], r["data_encoding"]) for r in rows] == [
        (text.id, "text"),
        (binary.id, "base64"),
    ]
    assert rows[0]["data"] == '{"order_id":"A1"}' and rows[1]["data"] == "/wBiaW5hcnk="
    assert rows[0]["reason"] == "ValueError: card declined"
    assert "Traceback" in rows[0]["traceback"] and rows[0]["state"] == "pending"


@pytest.mark.usefixtures("in_process")
def test_show_prints_one_letter_in_full() -> None:
    first, second = letter(), letter()
    adapter = asyncio.run(broker(first, second))
    code, output = invoke(adapter, "show", second.id)
    assert code == 0, output
    assert f"id:              {second.id}" in output and first.id not in output
    assert "reason:          ValueError: card declined" in output
    assert '{"order_id":"A1"}' in output and "raise ValueError" in output
    code, output = invoke(adapter, "show", second.id, "--json")
    assert code == 0 and json.loads(output)["id"] == second.id
    code, output = invoke(adapter, "show", "nope")
    assert code == cli.EXIT_NOT_FOUND
    assert output.startswith("error: no dead letter 'nope' on 'orders.billing.dlq'")


@pytest.mark.usefixtures("in_process")
def test_replay_one_letter_asks_first_and_prints_the_count() -> None:
    first, second = letter(), letter()
    adapter = asyncio.run(broker(first, second))
    code, output = invoke(adapter, "replay", "--id", second.id, "--whole-topic", stdin="n\n")
    assert code == 1 and "Replay 1 dead letter(s) of orders/billing to orders?" in output
    with pytest.raises(Exception, match="does not exist"):  # nothing was replayed
        asyncio.run(adapter.read(TOPIC))
    code, output = invoke(adapter, "replay", "--id", second.id, "--whole-topic", stdin="y\n")
    assert code == 0 and "replayed 1 dead letter(s) from orders/billing" in output
    assert ids(asyncio.run(adapter.read(TOPIC))) == [second.id]
    code, output = invoke(adapter, "replay", "--id", second.id, "--yes")
    assert code == 0 and "nothing to replay on orders/billing (1 already replayed" in output
    code, output = invoke(adapter, "replay", "--id", "nope", "--yes")
    assert code == cli.EXIT_NOT_FOUND and "no dead letter 'nope'" in output


@pytest.mark.usefixtures("in_process")
def test_replay_of_many_letters_completes_with_a_count() -> None:
    letters = [letter() for _ in range(25)]
    adapter = asyncio.run(broker(*letters))
    code, output = invoke(adapter, "replay", "--yes", "--whole-topic")
    assert code == 0 and "replayed 25 dead letter(s)" in output, output
    assert ids(asyncio.run(adapter.read(TOPIC))) == [x.id for x in letters]


@pytest.mark.usefixtures("in_process")
def test_replay_goes_to_the_failed_group_by_default_where_the_broker_can() -> None:
    first = letter()
    adapter = asyncio.run(broker(first))
    code, output = invoke(adapter, "replay", stdin="y\n")
    assert code == 0 and "to group billing of orders?" in output, output
    assert ids(asyncio.run(adapter.read(TOPIC))) == []  # not on the topic's log

    async def billing_gets_it() -> str:
        subscription = await adapter.subscribe(TOPIC, SubscribeOptions(group="billing"))
        async for delivery in subscription:
            await delivery.ack()
            await subscription.close()
            assert delivery.envelope is not None
            return delivery.envelope.id
        raise AssertionError("nothing delivered")

    assert asyncio.run(asyncio.wait_for(billing_gets_it(), 5)) == first.id


@pytest.mark.usefixtures("in_process")
def test_purge_asks_counts_and_hides_the_letters() -> None:
    letters = [letter() for _ in range(3)]
    adapter = asyncio.run(broker(*letters))
    code, output = invoke(adapter, "purge", stdin="n\n")
    assert code == 1 and "Purge 3 dead letter(s) of orders/billing?" in output
    code, output = invoke(adapter, "purge", "--id", letters[0].id, "--yes")
    assert code == 0 and "purged 1 dead letter(s) from orders/billing" in output
    code, output = invoke(adapter, "list")
    assert code == 0 and letters[0].id not in output and letters[1].id in output
    assert "(2 pending, 0 replayed, 1 purged; replayed and purged ones hidden" in output
    code, output = invoke(adapter, "list", "--all")
    assert f"{letters[0].id}  test.order" in output and "[purged]" in output
    code, output = invoke(adapter, "purge", stdin="y\n")
    assert code == 0 and "purged 2 dead letter(s)" in output
    code, output = invoke(adapter, "purge", "--yes")
    assert code == 0 and "nothing to purge" in output


@pytest.mark.usefixtures("in_process")
def test_replay_of_many_letters_shows_progress_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: draw live displays as on a terminal
    monkeypatch.setenv("TTY_INTERACTIVE", "1")
    adapter = asyncio.run(broker(*[letter() for _ in range(12)]))
    code, output = invoke(adapter, "replay", "--yes")
    assert code == 0 and "replaying" in output and "12/12" in output, output
    few = asyncio.run(broker(letter()))
    code, output = invoke(few, "replay", "--yes")
    assert code == 0 and "replaying" not in output, output  # one letter needs no bar
