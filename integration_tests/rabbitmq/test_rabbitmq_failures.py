"""The RabbitMQ adapter on its failure paths (#18): crashes, alarms, refusals, silent
endpoints, resources deleted underneath, foreign messages.

Node-wide settings (memory watermark, max_message_size) are changed only on the
private node of ``integration_tests/rabbitmq/node.py``, never on the shared broker.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from eventbus_rabbitmq import RabbitMQAdapter

from eventbus import Event, EventBus
from eventbus.adapter import SubscribeOptions
from eventbus.dlq import DeadLetters
from eventbus.errors import BrokerConnectionError
from integration_tests.rabbitmq import crash_consumer
from integration_tests.rabbitmq.test_rabbitmq_adapter import run, unique, with_options

pytestmark = [pytest.mark.broker("rabbitmq"), pytest.mark.timeout(180)]


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_a_message_that_kills_its_process_is_dead_lettered_after_max_attempts(
        rabbitmq_url: str, queue_type: str, tmp_path: Path) -> None:
    """Each consumer process dies in the handler (os._exit): the message comes back
    after every crash; after max_attempts runs the next process dead-letters it
    (RunsExhaustedError) without running it again (#18 defect 13)."""
    url = with_options(rabbitmq_url, queue_type=queue_type)
    topic, group = unique("crash"), unique("g")
    runs_log = tmp_path / "runs.log"

    class Boom(Event, type="tests.rabbitmq.crash.boom", topic=topic):
        n: int

    async def publish_one() -> None:
        adapter = RabbitMQAdapter(url)
        try:  # the group's queue exists before the event is published
            await (await adapter.subscribe(topic, SubscribeOptions(group=group))).close()
        finally:
            await adapter.close()
        async with EventBus.from_url(url, source="crash-tests", warn_after=None) as bus:
            await bus.publish(Boom(n=1))

    run(publish_one)
    exits = []
    for _ in range(crash_consumer.MAX_ATTEMPTS + 2):
        done = subprocess.run(
            [sys.executable, "-m", "integration_tests.rabbitmq.crash_consumer", url, topic,
             group, str(runs_log)], timeout=60, check=False)
        exits.append(done.returncode)
        if done.returncode == 0:
            break
    runs = runs_log.read_text().split()
    assert runs == [str(n) for n in range(1, crash_consumer.MAX_ATTEMPTS + 1)], (runs, exits)
    assert exits[-1] == 0, f"the last process still ran the handler: {exits}"

    async def dead_letters() -> None:
        adapter = RabbitMQAdapter(url)
        try:
            letters = await DeadLetters(adapter).list(topic, group)
        finally:
            await adapter.close()
        assert [letter.exception for letter in letters] == [
            "eventbus.errors.RunsExhaustedError"], letters
        assert letters[0].attempts == crash_consumer.MAX_ATTEMPTS

    run(dead_letters)


def test_connect_to_a_silent_endpoint_fails_in_time_and_close_returns() -> None:
    """A listener that accepts TCP and never speaks AMQP (#18 defect 16): connect()
    fails within connect_timeout with one line naming the masked URL, not forever,
    and leaves no reconnect task behind (the loop shuts down at once)."""

    async def scenario() -> None:
        accepted: list[asyncio.StreamWriter] = []

        async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)  # held open, never answered

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            for options, bound in (("?connect_timeout=2", 2.0), ("", 5.0)):  # "" = default
                adapter = RabbitMQAdapter(f"amqp://app:topsecret@127.0.0.1:{port}/{options}")
                started = time.monotonic()
                with pytest.raises(BrokerConnectionError) as info:
                    await adapter.connect()
                took = time.monotonic() - started
                assert took < bound + 1.5, f"connect() gave up after {took:.1f}s"
                message = str(info.value)
                assert f"127.0.0.1:{port}" in message and "topsecret" not in message
                assert "\n" not in message
                started = time.monotonic()
                await adapter.close()
                assert time.monotonic() - started < 1.0
            assert accepted, "the test's listener was never reached"
            leftovers = [t for t in asyncio.all_tasks()
                         if "aio_pika" in repr(t) or "aiormq" in repr(t)]
            assert not leftovers, f"tasks left running after a failed connect: {leftovers}"
        finally:
            for writer in accepted:
                writer.close()
            server.close()

    run(scenario)
