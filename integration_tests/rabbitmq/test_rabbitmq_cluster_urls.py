"""Several nodes in one URL: parsed, the first connect tries each in turn, and a lost
connection comes back on the next node (two routes to the shared broker stand in for
two nodes: a fault proxy that refuses connections, and the broker itself). And a
nacked publish moves the next one to a new channel, which is how a cluster's publisher
gets past a quorum queue leader's death (#25)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import aio_pika
import pytest
from eventbus_rabbitmq import RabbitMQAdapter, RabbitMQSettings
from yarl import URL

from eventbus.envelope import Envelope
from eventbus.errors import BrokerConnectionError, InvalidURLError, PublishError
from eventbus.testing.faultproxy import FaultProxy
from eventbus.testing.ports import stable_port


def test_several_nodes_are_parsed_in_order() -> None:
    s = RabbitMQSettings.from_url("amqps://u:p%2Cq@n1:5001,n2,[::1]:5003/orders?heartbeat=10")
    assert s.addresses == [("n1", 5001), ("n2", 5671), ("::1", 5003)]
    assert (s.username, s.password, s.vhost, s.heartbeat) == ("u", "p,q", "orders", 10)
    with pytest.raises(InvalidURLError, match=r"invalid port \(server 2"):
        RabbitMQSettings.from_url("amqp://n1:1,n2:x/")


def test_the_first_connect_skips_a_dead_node_and_a_drop_moves_to_the_next(
    rabbitmq_url: str,
) -> None:
    broker = URL(rabbitmq_url)
    dead = stable_port()

    async def scenario() -> None:
        with FaultProxy(broker.host or "127.0.0.1", broker.port or 5672) as proxy:
            nodes = f"127.0.0.1:{dead},127.0.0.1:{proxy.port},{broker.host}:{broker.port}"
            adapter = RabbitMQAdapter(f"amqp://guest:guest@{nodes}/?connect_timeout=2")
            await adapter.connect()
            try:
                connection = await adapter.consuming_connection()
                assert connection.url.port == proxy.port  # node 1 refused, node 2 took it
                await proxy.refuse_connections(60)
                await proxy.drop_connections()
                deadline = time.monotonic() + 30
                while connection.url.port != broker.port or connection.is_closed:
                    assert time.monotonic() < deadline, f"still on {connection.url.port}"
                    await asyncio.sleep(0.1)
                await asyncio.wait_for(connection.connected.wait(), 30)
                assert (await adapter.health()).ok
            finally:
                await adapter.close()

    asyncio.run(scenario())


def test_every_node_dead_is_one_error_naming_the_url() -> None:
    nodes = f"127.0.0.1:{stable_port()},127.0.0.1:{stable_port()}"
    adapter = RabbitMQAdapter(f"amqp://guest:secret1@{nodes}/?connect_timeout=1")
    with pytest.raises(BrokerConnectionError, match=r"node 2 of 2") as caught:
        asyncio.run(adapter.connect())
    assert "secret1" not in str(caught.value)


def test_a_nacked_publish_moves_the_next_publish_to_a_new_channel(
    rabbitmq_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """RabbitMQ 3.10 leaves a channel nacking every publish to a quorum queue whose
    leader node died just as the channel first routed there, for as long as that node
    is down; a new channel gets past it (#25, the chaos cluster scenario). So after a
    nack the next publish goes on a new channel, and the nacked one is closed once its
    confirms are in. Here a full queue with ``x-overflow=reject-publish`` nacks."""
    topic = f"nacked-{uuid.uuid4().hex[:10]}"
    caplog.set_level(logging.WARNING, "eventbus.rabbitmq")

    def event(n: int) -> Envelope:
        return Envelope.create(type="test.nacked", source="rabbitmq-tests", data=b"%d" % n)

    async def scenario() -> None:
        adapter = RabbitMQAdapter(f"{rabbitmq_url}?publish_timeout=1")
        connection = await aio_pika.connect(rabbitmq_url)
        try:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(topic, "topic", durable=True)
            arguments = {"x-max-length": 1, "x-overflow": "reject-publish"}
            queue = await channel.declare_queue(f"{topic}/full", arguments=arguments)
            await queue.bind(exchange, "#")
            await adapter.publish(topic, [event(1)])
            nacked = adapter._channel
            assert nacked is not None
            with pytest.raises(PublishError, match="nacked"):
                await adapter.publish(topic, [event(2)])
            assert "nacked a publish; the next publish goes on a new channel" in caplog.text
            await queue.purge()
            await adapter.publish(topic, [event(3)])
            assert adapter._channel is not None and adapter._channel is not nacked
            deadline = time.monotonic() + 5
            while not nacked.is_closed:
                assert time.monotonic() < deadline, "the nacked channel is still open"
                await asyncio.sleep(0.1)
            await queue.delete(if_unused=False, if_empty=False)
            await exchange.delete()
        finally:
            await connection.close()
            await adapter.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
