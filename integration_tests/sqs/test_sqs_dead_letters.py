"""Dead letters on SQS: kept whoever listens, and the DLQ tooling (API and CLI) works.

SNS accepts a publish to a topic with no subscribed queue and discards it, so a
dead letter is only stored if a queue is subscribed to the DLQ topic before the
first failure: the adapter declares it with the group (#18 defect 18). SQS cannot
browse, so ``DeadLetters`` reads that queue by receiving and handing back
(#18 defect 19).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from eventbus_sqs import SqsAdapter
from typer.testing import CliRunner

from eventbus import EventBus, RawMessage, RetryPolicy
from eventbus.cli import app
from eventbus.deadletters import DeadLetters
from eventbus.errors import TopicNotFoundError
from eventbus.testing.conformance import Collector, Ping, on_topic

pytestmark = pytest.mark.broker("sqs")

cli = CliRunner()


def _names() -> tuple[str, str]:
    run = uuid.uuid4().hex[:10]
    return f"sqs-dl-{run}", f"g-{run}"


async def _held(sqs: Any, prefix: str) -> dict[str, int]:
    """Messages in every queue whose name starts with ``prefix`` (visible, in flight,
    delayed): what the broker keeps, read with the raw client."""
    held = {}
    for url in (await sqs.list_queues(QueueNamePrefix=prefix)).get("QueueUrls", []):
        attributes = (
            await sqs.get_queue_attributes(
                QueueUrl=url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                    "ApproximateNumberOfMessagesDelayed",
                ],
            )
        )["Attributes"]
        held[url.rsplit("/", 1)[1]] = sum(int(v) for v in attributes.values())
    return held


@pytest.mark.parametrize("fifo", [False, True], ids=["standard", "fifo"])
def test_dead_letter_is_kept_when_nobody_listens(sqs_url: str, fifo: bool) -> None:
    """Defect 18: a message failed on a brand-new group, before anything ever read its
    DLQ, is on the broker afterwards (the failed original is deleted)."""
    topic, group = _names()
    url = f"{sqs_url}&fifo={str(fifo).lower()}"

    async def body() -> None:
        event_cls = on_topic(Ping, topic)
        runs: Collector[int] = Collector("runs")
        bus = EventBus(SqsAdapter(url), source="sqs-dl", retry=RetryPolicy(max_attempts=1))

        @bus.subscribe(event_cls, group=group)
        async def fail(event: Ping) -> None:
            runs.add(event.seq)
            raise ValueError("card declined")

        async with bus:
            await bus.publish(event_cls(seq=7))
            await runs.wait_count(1)
            sqs = bus.adapter.sqs_client()  # type: ignore[attr-defined]
            for _ in range(100):  # the original's delete goes out after the dead letter
                held = await _held(sqs, topic)
                if sum(held.values()) == 1 and len(held) > 1:
                    break
                await asyncio.sleep(0.1)
            assert sum(held.values()) == 1, f"the dead letter is kept nowhere: {held}"
            letters = await DeadLetters(bus.adapter).list(topic, group)
            assert [letter.envelope.type for letter in letters] == [event_cls.event_type()]
            assert "card declined" in letters[0].reason
            assert sum((await _held(sqs, topic)).values()) == 1, "listing consumed it"

    asyncio.run(body())


@pytest.mark.parametrize("fifo", [False, True], ids=["standard", "fifo"])
def test_dlq_tooling_lists_replays_and_purges(sqs_url: str, fifo: bool) -> None:
    """Defect 19: ``DeadLetters`` and ``eventbus dlq`` list (receiving and handing back),
    replay (the group handles the event again) and purge SQS dead letters."""
    topic, group = _names()
    url = f"{sqs_url}&fifo={str(fifo).lower()}"

    async def body() -> None:
        event_cls = on_topic(Ping, topic)
        handled: Collector[int] = Collector("handled")
        failing = {1, 2, 3}
        bus = EventBus(SqsAdapter(url), source="sqs-dl", retry=RetryPolicy(max_attempts=1))

        @bus.subscribe(event_cls, group=group)
        async def handle(event: Ping) -> None:
            if event.seq in failing:
                raise ValueError(f"event {event.seq} refused")
            handled.add(event.seq)

        async with bus:
            # One key: a FIFO DLQ must still show them all at once.
            for event in [event_cls(seq=n) for n in (1, 2, 3)]:
                await bus.publish(event, key="acct-1")
            dead = DeadLetters(bus.adapter)
            letters = await _until_listed(dead, topic, group, 3)
            ids = {_seq(letter.envelope.data): letter.envelope.id for letter in letters}
            assert sorted(ids) == [1, 2, 3]
            # Listing hands every letter back: a second listing shows them again.
            assert len(await dead.list(topic, group)) == 3
            listed = await asyncio.to_thread(
                cli.invoke, app, ["dlq", "list", topic, group, "--json", "--url", url]
            )
            assert listed.exit_code == 0, listed.output
            assert {json.loads(line)["id"] for line in listed.stdout.splitlines()} == set(
                ids.values()
            )

            failing.discard(1)
            assert await dead.replay(topic, group, ids=[ids[1]]) == 1
            await handled.wait(lambda seqs: 1 in seqs, "the replayed event to be handled")
            assert {x.envelope.id for x in await dead.list(topic, group)} == {ids[2], ids[3]}

            purged = await asyncio.to_thread(
                cli.invoke, app, ["dlq", "purge", topic, group, "--yes", "--url", url]
            )
            assert purged.exit_code == 0, purged.output
            assert await dead.list(topic, group) == []
            assert handled.items == [1]

    asyncio.run(body())


def test_dlq_tooling_on_a_typo_group_creates_nothing(sqs_url: str) -> None:
    """A typo in the topic or group is "no such dead-letter topic" (CLI exit 8), and no
    queue or topic is created by asking."""
    topic, group = _names()

    async def body() -> None:
        adapter = SqsAdapter(sqs_url)
        await adapter.connect()
        try:
            await (await adapter.subscribe(topic, _options(group))).close()
            with pytest.raises(TopicNotFoundError, match="nothing was created"):
                await DeadLetters(adapter).list(topic, group + "-typo")
            before = await _held(adapter.sqs_client(), topic)
            result = await asyncio.to_thread(
                cli.invoke, app, ["dlq", "list", topic + "x", group, "--url", sqs_url]
            )
            assert result.exit_code == 8, result.output
            after = await _held(adapter.sqs_client(), topic)
            assert sorted(after) == sorted(before), "asking created a queue"
            # The real group's (empty) DLQ is there from the group's first subscribe on.
            assert await DeadLetters(adapter).list(topic, group) == []
        finally:
            await adapter.close()

    asyncio.run(body())


def _seq(data: bytes) -> int:
    return int(json.loads(data)["seq"])


def _options(group: str) -> Any:
    from eventbus.adapter import SubscribeOptions

    return SubscribeOptions(group=group)


async def _until_listed(dead: DeadLetters, topic: str, group: str, count: int) -> list[Any]:
    for _ in range(60):
        letters = await dead.list(topic, group)
        if len(letters) >= count:
            return letters
        await asyncio.sleep(0.5)
    raise AssertionError(f"only {len(letters)} of {count} dead letters listed")


@pytest.mark.parametrize(
    "options",
    ["topology=queue", "fifo=true&topology=queue", ""],
    ids=["queue", "queue-fifo", "sns-text-headers"],
)
def test_foreign_message_keeps_payload_attributes_and_id(sqs_url: str, options: str) -> None:
    """A message that is no CloudEvent is dead-lettered with its bytes, its message
    attributes (as header bytes) and SQS's MessageId, and replays as it arrived.

    moto's SNS hands Binary attributes to SQS in a form its own ReceiveMessage then fails
    on (docs/adapters/sqs.md, MOTO_LIMITS), so binary values are sent straight to the
    queue here; through SNS, text values only."""
    topic, group = _names()
    url = f"{sqs_url}&{options}" if options else sqs_url
    headers = {"x-kind": b"order-created"}
    if "topology=queue" in options:
        headers["x-foreign-trace"] = b"\xff\x00\xfe"

    async def body() -> None:
        event_cls = on_topic(Ping, topic)
        bus = EventBus(SqsAdapter(url), source="sqs-foreign")

        @bus.subscribe(event_cls, group=group)
        async def handle(event: Ping) -> None:
            pass

        async with bus:
            payload = b'\x00\xff{"order": 42, not a cloudevent'
            await bus.adapter.publish_raw(topic, RawMessage(payload, headers))
            dead = DeadLetters(bus.adapter)
            (letter,) = await _until_listed(dead, topic, group, 1)
            assert letter.undecodable and letter.raw == payload
            assert letter.raw_headers == headers
            assert letter.broker_message_id  # SQS's MessageId
            assert await dead.replay(topic, group) == 1
            (again,) = await _until_listed(dead, topic, group, 1)
            assert again.raw == payload and again.raw_headers == headers
            assert again.failed_at != letter.failed_at
