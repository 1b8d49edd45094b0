"""The CloudEvents NATS protocol binding (1.0.3) with the official SDK, through a
real NATS server, both ways, non-ASCII values included (issue #21).

The SDK has no NATS binding; the NATS binding's header rules are the HTTP
binding's (``ce-`` names, values percent-encoded by 3.1.3.2) but for the content
type, which is ``ce-datacontenttype``. So the SDK's HTTP binding writes the
headers nats-py sends and reads the headers nats-py received, and a reader
written here from the spec's text checks what eventbus writes, value by value.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats
import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from eventbus_nats.wire import flush

from eventbus import Context, Envelope, EventBus
from eventbus.testing.conformance import on_topic
from integration_tests import harness
from integration_tests.interop.cloudevents_peer import (
    CITY,
    SUBJECT,
    Order,
    assert_read_by_eventbus,
    assert_read_by_sdk,
    handled_by_eventbus,
    publish_sample,
    run,
    sdk_event,
    unique,
)

pytestmark = [pytest.mark.broker("nats"), pytest.mark.timeout(120)]


# -- the binding's text, 3.1.3.2, as a reader and a writer --------------------------------


def spec_percent_encode(value: str) -> str:
    """3.1.3.2: space, '"', '%' and every character outside U+0021-U+007E become
    the upper-case %XY of each of its UTF-8 bytes; nothing else is encoded."""
    out = []
    for char in value:
        if char in ' "%' or not "\u0021" <= char <= "\u007e":
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8"))
        else:
            out.append(char)
    return "".join(out)


def spec_decode_value(value: str) -> str:
    """3.1.3.2: undo a double-quoted string (RFC 7230 3.2.6), then one round of
    percent-decoding, accepting lower case; invalid UTF-8 is rejected."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner, value, index = value[1:-1], "", 0
        while index < len(inner):
            if inner[index] == "\\":
                index += 1
            value += inner[index]
            index += 1
    raw, index = bytearray(), 0
    while index < len(value):
        if value[index] == "%":
            raw.append(int(value[index + 1 : index + 3], 16))
            index += 3
        else:
            raw.extend(value[index].encode("utf-8"))
            index += 1
    return raw.decode("utf-8")  # strict: an overlong or broken sequence raises


def spec_read(headers: dict[str, str]) -> dict[str, str]:
    """3. and 3.1.3: binary mode unless Content-Type is application/cloudevents;
    every ``ce-`` header (names case-insensitive) is an attribute."""
    lowered = {name.lower(): value for name, value in headers.items()}
    assert not lowered.get("content-type", "").lower().startswith("application/cloudevents")
    return {
        name[3:]: spec_decode_value(value)
        for name, value in lowered.items()
        if name.startswith("ce-")
    }


def nats_headers_of(message: ce_http.HTTPMessage) -> dict[str, str]:
    """The SDK's HTTP binary headers as the NATS binding has them: the content type
    as ``ce-datacontenttype``, every other header as it is."""
    headers = dict(message.headers)
    headers["ce-datacontenttype"] = headers.pop("content-type")
    return headers


# -- SDK writes, eventbus reads -----------------------------------------------------------


async def sent_by_nats_py(
    scheme: str, address: str, topic: str, body: bytes, headers: dict[str, str]
) -> tuple[Envelope, Order]:
    """What eventbus's handler (``scheme``: JetStream or core NATS) gets from a
    message nats-py publishes (to JetStream, or to the core subject)."""
    nc = await nats.connect(f"nats://{address}")

    async def send() -> None:
        if scheme == "nats":
            await nc.jetstream().publish(topic, body, headers=dict(headers))
        else:
            await nc.publish(topic, body, headers=dict(headers))
            await nc.flush()

    try:
        return await handled_by_eventbus(f"{scheme}://{address}", topic, send)
    finally:
        await nc.close()


@pytest.mark.parametrize("scheme", ["nats", "nats+core"])
@pytest.mark.parametrize("shape", ["nats", "http"])
def test_sdk_binary_event_is_read_by_eventbus(
    nats_endpoint: harness.Endpoint, shape: str, scheme: str
) -> None:
    """The SDK's percent-encoded headers (the NATS binding's ``ce-datacontenttype``,
    or as the HTTP binding has it, ``content-type``) sent by nats-py to JetStream
    or core NATS: the handler gets the subject, the extension and the data decoded."""
    address = f"{nats_endpoint.host}:{nats_endpoint.port}"
    topic = unique("interop.nats.sdk")
    sent = sdk_event()
    message = ce_http.to_binary(sent, JSONFormat())
    headers = nats_headers_of(message) if shape == "nats" else dict(message.headers)
    assert headers["ce-subject"] == "Euro%20%E2%82%AC"  # the SDK encodes as the binding says

    envelope, event = run(lambda: sent_by_nats_py(scheme, address, topic, message.body, headers))
    assert_read_by_eventbus(envelope, event, sent)


def test_sdk_structured_event_is_read_by_eventbus(nats_endpoint: harness.Endpoint) -> None:
    """Structured mode (3.2): the SDK's JSON event format as the payload, with
    Content-Type application/cloudevents+json."""
    address = f"{nats_endpoint.host}:{nats_endpoint.port}"
    topic = unique("interop.nats.structured")
    sent = sdk_event()
    message = ce_http.to_structured(sent, JSONFormat())

    envelope, event = run(
        lambda: sent_by_nats_py("nats", address, topic, message.body, message.headers)
    )
    assert_read_by_eventbus(envelope, event, sent)


def test_unencoded_values_are_taken_as_they_are(nats_endpoint: harness.Endpoint) -> None:
    """Messages stored before eventbus followed the binding (raw UTF-8 values, the
    content type in ``content-type``), or from writers that do not percent-encode:
    a value no encoder writes (a raw space, a non-ASCII character) tells them apart,
    and then a literal ``%20`` beside it stays as it is. A message whose values are
    all in the encoded alphabet is percent-decoded, as the binding says."""
    url = f"nats://{nats_endpoint.host}:{nats_endpoint.port}"
    topic = unique("interop.nats.legacy")
    sent = sdk_event()
    body = json.dumps(sent.get_data()).encode()
    base = {
        "ce-specversion": "1.0",
        "ce-source": sent.get_source(),
        "ce-type": sent.get_type(),
        "ce-time": "2026-05-06T07:08:09.123Z",
        "content-type": "application/json",
    }
    legacy = {**base, "ce-id": "legacy", "ce-subject": SUBJECT, "ce-city": CITY, "ce-code": "a%20b"}
    encoded = {**base, "ce-id": "encoded", "ce-subject": "a%20b"}

    async def scenario() -> None:
        nc = await nats.connect(url)
        bus = EventBus.from_url(url, source="interop")
        seen: dict[str, Any] = {}

        @bus.subscribe(on_topic(Order, topic), group="g")
        async def on_order(event: Order, ctx: Context) -> None:
            seen[ctx.envelope.id] = ctx.envelope

        try:
            async with bus:
                js = nc.jetstream()
                await js.publish(topic, body, headers=legacy)
                await js.publish(topic, body, headers=encoded)
                for _ in range(300):
                    if len(seen) == 2:
                        break
                    await asyncio.sleep(0.05)
        finally:
            await nc.close()
        old, new = seen["legacy"], seen["encoded"]
        assert (old.subject, old.extensions, old.datacontenttype) == (
            SUBJECT,
            {"city": CITY, "code": "a%20b"},
            "application/json",
        )
        assert new.subject == "a b"

    run(scenario)


# -- eventbus writes, SDK (and the spec's text) reads -------------------------------------


@pytest.mark.parametrize("scheme", ["nats", "nats+core"])
def test_eventbus_binary_event_is_read_by_the_spec_and_the_sdk(
    nats_endpoint: harness.Endpoint, scheme: str
) -> None:
    """What eventbus publishes, as a plain nats-py subscriber receives it: every
    ``ce-`` value is exactly the binding's encoding of the attribute (no more, no
    less), the content type is ``ce-datacontenttype`` and nothing says structured;
    the spec reader and the SDK's HTTP binding read the same event back."""
    address = f"{nats_endpoint.host}:{nats_endpoint.port}"
    topic = unique("interop.nats.eventbus")

    async def scenario() -> None:
        nc = await nats.connect(f"nats://{address}")
        sub = await nc.subscribe(topic)
        await flush(nc, 5)  # the server has the SUB before anything is published
        bus = EventBus.from_url(f"{scheme}://{address}", source="interop")
        try:
            async with bus:
                sent = await publish_sample(bus, topic)
            received = await sub.next_msg(timeout=10)
        finally:
            await nc.close()
        headers = dict(received.headers or {})
        headers.pop("Nats-Msg-Id", None)
        attributes = spec_read(headers)
        for name, value in sent.attributes().items():
            assert attributes[name] == value, name
            assert headers[f"ce-{name}"] == spec_percent_encode(value), name
        assert set(attributes) == set(sent.attributes())
        assert "content-type" not in {name.lower() for name in headers}
        event = ce_http.from_binary(  # it reads ce-datacontenttype as the attribute
            ce_http.HTTPMessage(headers=headers, body=received.data), JSONFormat()
        )
        assert_read_by_sdk(event, sent)

    run(scenario)
