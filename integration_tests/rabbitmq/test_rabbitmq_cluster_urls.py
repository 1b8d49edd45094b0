"""Several nodes in one URL: parsed, the first connect tries each in turn, and a lost
connection comes back on the next node (two routes to the shared broker stand in for
two nodes: a fault proxy that refuses connections, and the broker itself)."""

from __future__ import annotations

import asyncio
import time

import pytest
from eventbus_rabbitmq import RabbitMQAdapter, RabbitMQSettings
from yarl import URL

from eventbus.errors import BrokerConnectionError, InvalidURLError
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
