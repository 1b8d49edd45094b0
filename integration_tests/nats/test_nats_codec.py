"""The CloudEvents NATS protocol binding, to the letter, against a real server
(issue #18, defect 5): what other producers write is read, what eventbus writes
is what the binding says.

- structured mode without any header (a producer from before NATS headers, a
  bridge) is an event, not poison; only a payload that is no CloudEvent is;
- binary mode: ``ce-datacontenttype``, percent-encoded and double-quoted values,
  header names in any case; percent-encoded bytes that are not UTF-8 are refused;
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Coroutine
from typing import Any

import nats
import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat

from eventbus import Context, Event, EventBus
from eventbus.adapter import RawMessage
from eventbus.deadletters import DeadLetters
from eventbus.errors import ConfigurationError, TopicNotFoundError
from integration_tests import harness

pytestmark = [pytest.mark.broker("nats"), pytest.mark.timeout(120)]

TAG = uuid.uuid4().hex[:8]
EURO = "Euro \u20ac \U0001f600"


def order_class(topic: str) -> type[Event]:
    """An event class of its own (type and topic) per test."""

    class Order(Event, type=f"test.{topic}", topic=topic):
        order_id: str

    return Order


def run(scenario: Coroutine[Any, Any, None], timeout: float = 60.0) -> None:
    asyncio.run(asyncio.wait_for(scenario, timeout))


def structured(event_type: str, order_id: str) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": "/legacy",
            "type": event_type,
            "datacontenttype": "application/json",
            "data": {"order_id": order_id},
        }
    ).encode()


async def until(predicate: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("scheme", ["nats", "nats+core"])
def test_headerless_structured_event_is_handled(
    nats_endpoint: harness.Endpoint, scheme: str
) -> None:
    """A JSON CloudEvent as the whole payload is an event with or without headers
    (no headers, a foreign header only, or content-type application/cloudevents);
    only a payload that is not one is dead-lettered, with its headers."""
    address = f"{nats_endpoint.host}:{nats_endpoint.port}"
    topic = f"nats.codec.structured.{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        bus = EventBus.from_url(f"{scheme}://{address}", source="t")
        handled: list[str] = []
        order = order_class(topic)

        @bus.subscribe(order, group="g")
        async def on_order(event: Any) -> None:
            handled.append(event.order_id)

        nc = await nats.connect(f"nats://{address}")
        publish = nc.jetstream().publish if scheme == "nats" else nc.publish
        async with bus:
            dead = DeadLetters(bus.adapter)
            await publish(topic, structured(order.event_type(), "no-headers"))
            await publish(
                topic, structured(order.event_type(), "foreign-header"), headers={"x-trace": "abc"}
            )
            await publish(
                topic,
                structured(order.event_type(), "structured-ct"),
                headers={"Content-Type": "application/cloudevents+json"},
            )
            await publish(topic, b"plain text, not an event", headers={"x-trace": "abc"})
            await nc.flush()
            await until(lambda: len(handled) == 3)
            if scheme == "nats":
                letters: list[Any] = []
                for _ in range(100):
                    with contextlib.suppress(TopicNotFoundError):
                        letters = await dead.list(topic, "g")
                    if letters:
                        break
                    await asyncio.sleep(0.1)
                assert len(letters) == 1 and letters[0].undecodable, letters
                assert letters[0].raw == b"plain text, not an event"
                assert letters[0].raw_headers == {"x-trace": b"abc"}
                assert letters[0].broker_message_id.endswith("/4")  # its stream sequence
        assert sorted(handled) == ["foreign-header", "no-headers", "structured-ct"]
        await nc.close()

    run(scenario())


def test_binary_mode_read_by_the_binding(nats_endpoint: harness.Endpoint) -> None:
    """Headers written as the binding's own example (ce-datacontenttype, percent-
    encoded values, a double-quoted one, names in other cases) are read; a
    percent-encoded value that is not UTF-8 is poison."""
    address = f"{nats_endpoint.host}:{nats_endpoint.port}"
    topic = f"nats.codec.binary.{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        bus = EventBus.from_url(f"nats://{address}", source="t")
        seen: list[tuple[str, str | None, str | None, dict[str, str]]] = []
        order = order_class(topic)

        @bus.subscribe(order, group="g")
        async def on_order(event: Any, ctx: Context) -> None:
            envelope = ctx.envelope
            seen.append(
                (
                    event.order_id,
                    envelope.subject,
                    envelope.datacontenttype,
                    dict(envelope.extensions),
                )
            )

        nc = await nats.connect(f"nats://{address}")
        js = nc.jetstream()

        def headers(order_id: str, **more: str) -> dict[str, str]:
            return {
                "ce-specversion": "1.0",
                "ce-id": order_id,
                "ce-source": "/go",
                "ce-type": order.event_type(),
                **more,
            }

        async with bus:
            dead = DeadLetters(bus.adapter)
            body = json.dumps({"order_id": "a"}).encode()
            await js.publish(
                topic,
                body,
                headers=headers(
                    "a",
                    **{
                        "ce-datacontenttype": "application/json",
                        "ce-subject": "Euro%20%E2%82%AC%20%F0%9F%98%80",
                        "ce-note": '"two words \\"quoted\\""',
                    },
                ),
            )
            await js.publish(
                topic,
                json.dumps({"order_id": "b"}).encode(),
                headers={
                    "CE-SpecVersion": "1.0",
                    "Ce-Id": "b",
                    "ce-SOURCE": "/go",
                    "CE-TYPE": order.event_type(),
                    "Content-Type": "application/json",
                },
            )
            await js.publish(
                topic,
                json.dumps({"order_id": "d"}).encode(),
                headers=headers("d", **{"ce-subject": "bad%C0%A0"}),
            )
            await until(lambda: len(seen) == 2)
            letters: list[Any] = []
            for _ in range(100):
                with contextlib.suppress(TopicNotFoundError):
                    letters = await dead.list(topic, "g")
                if letters:
                    break
                await asyncio.sleep(0.1)
        by_id = {order_id: rest for order_id, *rest in seen}
        assert by_id["a"] == [EURO, "application/json", {"note": 'two words "quoted"'}]
        assert by_id["b"] == [None, "application/json", {}]
        assert len(letters) == 1 and "UTF-8" in letters[0].reason, letters
        await nc.close()

    run(scenario())


def test_what_eventbus_writes_is_the_binding(nats_endpoint: harness.Endpoint) -> None:
    """Published by eventbus: ce-datacontenttype (no content-type, which in the
    binding says "structured"), values percent-encoded where the binding says; the
    official SDK reads it back."""
    address = f"{nats_endpoint.host}:{nats_endpoint.port}"
    topic = f"nats.codec.write.{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        bus = EventBus.from_url(f"nats://{address}", source="t")
        order = order_class(topic)
        async with bus:
            sent = await bus.publish(order(order_id="x"), subject=EURO)
            nc = await nats.connect(f"nats://{address}")
            stream = bus.adapter._provisioner.stream_name(topic)  # type: ignore[attr-defined]
            raw = await nc.jetstream().get_msg(stream, 1)
            headers = dict(raw.headers or {})
            await nc.close()
        assert headers["ce-datacontenttype"] == "application/json"
        assert "content-type" not in {name.lower() for name in headers}
        assert headers["ce-subject"] == "Euro%20%E2%82%AC%20%F0%9F%98%80"
        assert all(value.isascii() for value in headers.values())
        event = ce_http.from_binary(
            ce_http.HTTPMessage(headers=headers, body=raw.data or b""), JSONFormat()
        )
        assert (event.get_id(), event.get_subject()) == (sent.id, EURO)

    run(scenario())


@pytest.mark.parametrize("scheme", ["nats", "nats+core"])
def test_foreign_binary_header_beside_an_event_is_ignored(
    nats_endpoint: harness.Endpoint, scheme: str
) -> None:
    """A binary-mode event with a foreign header that is not UTF-8 (a tracing
    interceptor's) is handled; publish_raw carries header values byte for byte and
    refuses what NATS cannot carry (a line break) before sending."""
    address = f"{nats_endpoint.host}:{nats_endpoint.port}"
    topic = f"nats.codec.foreign.{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        bus = EventBus.from_url(f"{scheme}://{address}", source="t")
        handled: list[str] = []
        order = order_class(topic)

        @bus.subscribe(order, group="g")
        async def on_order(event: Any) -> None:
            handled.append(event.order_id)

        async with bus:
            await bus.adapter.publish_raw(
                topic,
                RawMessage(
                    json.dumps({"order_id": "c"}).encode(),
                    {
                        "ce-specversion": b"1.0",
                        "ce-id": b"c-1",
                        "ce-source": b"/go",
                        "ce-type": order.event_type().encode(),
                        "x-bin": b"\xff\xfe\x00",
                    },
                ),
            )
            await until(lambda: handled == ["c"])
            with pytest.raises(ConfigurationError, match="line break"):
                await bus.adapter.publish_raw(topic, RawMessage(b"x", {"x-bad": b"a\r\nb"}))

    run(scenario())
