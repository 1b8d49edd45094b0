"""Failure classes of dead letters, each found losing messages on a real broker:
a letter that fails again after its replay, a letter nobody listens for, a message that
kills its consumer, and messages from producers that don't speak CloudEvents."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

from eventbus.adapter import Adapter
from eventbus.codec import encode_structured
from eventbus.context import Context
from eventbus.deadletters import DeadLetters, ListedDeadLetter
from eventbus.envelope import Envelope
from eventbus.errors import TopicNotFoundError, UnsupportedOperationError
from eventbus.raw_message import RawMessage
from eventbus.testing.collector import PATIENCE, Collector
from eventbus.testing.conformance._crashing_consumer import CRASH_EXIT
from eventbus.testing.conformance._events import Ping, on_topic, record_seqs
from eventbus.testing.conformance._support import WAIT, Capability, Case, case, requires

_STORED = requires(Capability.persistent, "dead letters are kept on the broker to be listed")


async def letters_of(
    adapter: Adapter,
    topic: str,
    group: str,
    condition: Callable[[list[ListedDeadLetter]], bool],
    what: str,
    timeout: float = WAIT,
) -> list[ListedDeadLetter]:
    """The pending dead letters of ``topic``/``group`` once ``condition`` holds, as
    ``eventbus dlq list`` shows them (browsing, or reading the DLQ queue and giving
    every letter back)."""
    dead = DeadLetters(adapter, idle=0.5)
    deadline = time.monotonic() + timeout
    letters: list[ListedDeadLetter] = []
    while True:
        with contextlib.suppress(TopicNotFoundError):
            letters = await dead.list(topic, group, limit=None, include_replayed=False)
        if condition(letters):
            return letters
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what} on the DLQ of "
                f"{topic}/{group}; listed: {[(x.envelope.id, x.reason) for x in letters]}"
            )
        await asyncio.sleep(0.3)


async def replayed_again(
    adapter: Adapter,
    topic: str,
    group: str,
    letter: ListedDeadLetter,
    what: str,
    patience: float = 1.0,
) -> list[ListedDeadLetter]:
    """Replay ``letter``, the one dead letter of ``topic``/``group``, and return its
    pending dead letters once one failed after the replay (within ``patience`` times
    the usual wait)."""
    assert await DeadLetters(adapter, idle=0.5).replay(topic, group) == 1
    return await letters_of(
        adapter,
        topic,
        group,
        lambda xs: any(x.failed_at != letter.failed_at for x in xs),
        what,
        timeout=WAIT * patience,
    )


def _failing(runs: Collector[int]) -> Callable[[Ping, Context], Awaitable[None]]:
    async def handle(event: Ping, ctx: Context) -> None:
        runs.add(ctx.attempt)
        raise RuntimeError(f"handler always fails (seq {event.seq})")

    return handle


class DeadLetterCases:
    """A failed message always ends up stored on the DLQ, whoever listens, as often as it
    fails, with everything the broker had of it."""

    @case(_STORED, timeout=90.0)
    async def test_dead_letter_stored_with_nobody_listening(self, run: Case) -> None:
        """A message failing on a brand-new group is dead-lettered before anything ever
        read its DLQ (no listener, no DLQ consumer created first); ``DeadLetters.list``
        (``eventbus dlq list``) finds the letter afterwards. A fan-out topic with nobody
        subscribed (SNS) would accept the letter and drop it."""
        event_cls = on_topic(Ping, run.topic())
        topic, group = event_cls.default_topic(), run.group()
        runs: Collector[int] = Collector("handler runs")
        await run.consumer(event_cls, _failing(runs), group=group)
        sent = await (await run.publisher()).publish(event_cls(seq=7))
        await runs.wait_count(3)
        reader = await run.connected_adapter()
        letters = await letters_of(reader, topic, group, lambda xs: len(xs) >= 1, "the dead letter")
        assert [x.envelope.id for x in letters] == [sent.id]
        assert letters[0].reason.startswith("RuntimeError") and letters[0].attempts == 3

    @case(_STORED, timeout=120.0)
    async def test_replayed_letter_that_fails_again_is_listed_again(self, run: Case) -> None:
        """Replaying a dead letter whose handler still fails gives a second letter for the
        same event id: a new message, never dropped as a duplicate of the first (a
        broker's dedupe window keyed by the event id would do that)."""
        event_cls = on_topic(Ping, run.topic())
        topic, group = event_cls.default_topic(), run.group()
        runs: Collector[int] = Collector("handler runs")
        await run.consumer(event_cls, _failing(runs), group=group)
        sent = await (await run.publisher()).publish(event_cls(seq=8))
        reader = await run.connected_adapter()
        (first,) = await letters_of(
            reader, topic, group, lambda xs: len(xs) >= 1, "the first dead letter"
        )
        again = await replayed_again(
            reader, topic, group, first, "a second dead letter after the replay failed again", 2
        )
        await runs.wait_count(6, timeout=WAIT * 2)
        assert [x.envelope.id for x in again] == [sent.id], (
            "after a replay that failed again exactly one letter is pending, for the "
            f"same event: {[(x.envelope.id, x.failed_at) for x in again]}"
        )

    @case(
        requires(Capability.raw_publish, "a foreign producer's bytes are published raw"),
        timeout=90.0,
    )
    async def test_foreign_message_keeps_its_payload_and_metadata(self, run: Case) -> None:
        """Bytes from a producer that does not speak CloudEvents go to the DLQ with their
        payload, their transport headers (foreign binary values included) and the broker's
        id of the message, and replay as they arrived. A valid structured CloudEvent with an
        extra non-UTF-8 header is handled, not dead-lettered."""
        event_cls = on_topic(Ping, run.topic())
        topic, group = event_cls.default_topic(), run.group()
        handled: Collector[int] = Collector("handler")
        bus = await run.consumer(event_cls, record_seqs(handled), group=group)
        payload = b'\x00\xff{"order": 42, not a cloudevent'
        headers: dict[str, bytes] | None = {
            "x-foreign-trace": b"\xff\x00\xfe",
            "x-kind": b"order-created",
        }
        try:
            await bus.adapter.publish_raw(topic, RawMessage(payload, headers))
        except UnsupportedOperationError as exc:
            # Some brokers carry raw headers without CloudEvents binary mode (SQS message
            # attributes), others none at all (Redis Pub/Sub): those refuse the headers.
            assert "header" in str(exc).lower(), exc
            headers = None  # a broker without headers: the payload alone
            await bus.adapter.publish_raw(topic, RawMessage(payload))
        structured = Envelope.create(
            type=Ping.event_type(), source="foreign-producer", data=Ping(seq=2).to_bytes()
        )
        extra = (
            None
            if headers is None
            else {
                "content-type": b"application/cloudevents+json; charset=utf-8",
                "x-foreign-trace": b"\xfe\xff\x01",
            }
        )
        await bus.adapter.publish_raw(topic, RawMessage(encode_structured(structured), extra))
        await handled.wait(
            lambda seqs: 2 in seqs,
            "the structured CloudEvent with a foreign binary header to be handled",
        )
        if not run.caps.persistent:
            return  # nothing kept to list: the letter went to a DLQ subject/channel
        reader = await run.connected_adapter()
        (letter,) = await letters_of(
            reader, topic, group, lambda xs: len(xs) >= 1, "the foreign message's dead letter"
        )
        assert letter.undecodable and letter.raw == payload, letter.envelope.data[:80]
        assert letter.reason.startswith("undecodable")
        assert letter.broker_message_id, "the dead letter lost the broker's message id"
        if headers is not None:
            kept = letter.raw_headers
            for name, value in headers.items():
                assert kept.get(name) == value, f"header {name!r} lost: {sorted(kept)}"
        again = await replayed_again(
            reader, topic, group, letter, "the replayed bytes to fail again as they arrived"
        )
        assert [x.raw for x in again if x.undecodable] == [payload]

    @case(
        requires(Capability.redelivery, "an unacknowledged message comes back after a crash"),
        requires(Capability.out_of_process, "the consumer runs in a process that kills itself"),
        timeout=240.0,
    )
    async def test_crash_loop_dead_lettered_after_max_attempts(self, run: Case) -> None:
        """A message whose handler kills its process (``os._exit``: no ack, no cleanup, as
        an out-of-memory kill) comes back to the next process; after ``max_attempts``
        such runs it is dead-lettered (``RunsExhaustedError``) before it runs again,
        never redelivered forever. The broker's delivery count, not a flag, counts runs."""
        max_attempts = 3
        url = run.target.short_lease.url if run.target.short_lease else run.target.url
        topic, group = run.topic(), run.group()
        start_from = "earliest" if run.caps.replay else "latest"
        with tempfile.TemporaryDirectory() as scratch:
            runs_file = os.path.join(scratch, "runs")
            spawn = _Spawner(
                url,
                topic,
                group,
                runs_file,
                max_attempts,
                start_from,
                run.target.adapter_path() or "",
            )
            try:
                await spawn.start(wait_ready=True)
                publisher = await run.publisher()
                sent = await publisher.publish_envelopes(
                    topic,
                    [
                        Envelope.create(
                            type=Ping.event_type(),
                            source="conformance",
                            data=Ping(seq=9).to_bytes(),
                        )
                    ],
                )
                reader = await run.connected_adapter()
                letters = await spawn.until_dead_lettered(reader, run, topic, group, max_attempts)
            finally:
                await spawn.kill()
            runs = spawn.runs()
        assert runs == [sent[0].id] * max_attempts, (
            f"the handler ran {len(runs)} time(s), expected exactly {max_attempts}"
        )
        (letter,) = letters
        assert letter.envelope.id == sent[0].id
        assert letter.exception.endswith("RunsExhaustedError"), letter.reason
        assert letter.attempts == max_attempts


class _Spawner:
    """Runs the crashing consumer (:mod:`._crashing_consumer`) process after process."""

    def __init__(
        self,
        url: str,
        topic: str,
        group: str,
        runs_file: str,
        max_attempts: int,
        start_from: str,
        adapter: str = "",
    ) -> None:
        self.argv = [
            sys.executable,
            "-m",
            "eventbus.testing.conformance._crashing_consumer",
            url,
            topic,
            group,
            runs_file,
            str(max_attempts),
            start_from,
            *([adapter] if adapter else []),
        ]
        self.runs_file = runs_file
        self.process: asyncio.subprocess.Process | None = None
        self.crashes = 0

    async def start(self, wait_ready: bool = False) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        if wait_ready:
            assert self.process.stdout is not None
            line = await asyncio.wait_for(self.process.stdout.readline(), 60 * PATIENCE)
            if line.strip() != b"ready":
                raise AssertionError(
                    f"the crashing consumer did not start (exit {await self.process.wait()})"
                )

    async def until_dead_lettered(
        self, reader: Adapter, run: Case, topic: str, group: str, max_attempts: int
    ) -> list[ListedDeadLetter]:
        """Restart the consumer after each crash until the message is dead-lettered."""
        deadline = time.monotonic() + 200 * PATIENCE
        while time.monotonic() < deadline:
            assert self.process is not None
            try:
                code = await asyncio.wait_for(self.process.wait(), 2.0)
            except TimeoutError:
                code = None
            if code is not None:
                assert code == CRASH_EXIT, f"the consumer exited with {code}, not by its crash"
                self.crashes += 1
                assert self.crashes <= max_attempts, (
                    f"the message ran {self.crashes} times: it was redelivered past "
                    f"max_attempts={max_attempts} instead of being dead-lettered"
                )
                await self.start()
                continue
            if self.crashes >= max_attempts:
                with contextlib.suppress(AssertionError):
                    return await letters_of(
                        reader,
                        topic,
                        group,
                        lambda xs: len(xs) >= 1,
                        "the crash-looping message",
                        timeout=1.0,
                    )
        raise AssertionError(
            f"no dead letter after {self.crashes} crash(es) within the case's time; runs "
            f"recorded: {len(self.runs())}"
        )

    async def kill(self) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()

    def runs(self) -> list[str]:
        try:
            with open(self.runs_file, encoding="utf-8") as record:
                return record.read().split()
        except FileNotFoundError:
            return []
