"""Interop with the official CloudEvents Python SDK, both directions, every attribute.

DESIGN: "Messages written by the official CloudEvents SDKs must be readable, and
ours must be readable by them." Checked for structured JSON (HTTP / any body) and
Kafka binary mode (``ce_`` headers as bytes, ``partitionkey`` as the record key),
with JSON, text and binary (``data_base64``) data, through both SDK APIs that
cloudevents 2.x ships: the 1.x-compatible one (``cloudevents.v1.http``,
``cloudevents.v1.conversion``, ``cloudevents.v1.kafka``) and the new core one
(``cloudevents.core.bindings.kafka`` with ``cloudevents.core.formats.json``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from cloudevents.core.bindings import kafka as core_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent as CoreCloudEvent

from eventbus import Envelope
from eventbus.codec import (
    KAFKA_PREFIX,
    binary_headers,
    decode_binary,
    decode_structured,
    encode_binary,
    encode_structured,
)

try:  # cloudevents >= 2 keeps the 1.x API under cloudevents.v1
    from cloudevents.v1 import conversion as sdk_conversion
    from cloudevents.v1 import http as sdk_http
    from cloudevents.v1 import kafka as sdk_kafka
except ImportError:  # pragma: no cover - cloudevents 1.x
    from cloudevents import conversion as sdk_conversion  # type: ignore[no-redef,attr-defined]
    from cloudevents import http as sdk_http  # type: ignore[no-redef,attr-defined]
    from cloudevents import kafka as sdk_kafka  # type: ignore[no-redef,attr-defined]

WHEN = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
WHEN_TEXT = "2024-05-06T07:08:09.123456Z"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

# Every attribute the envelope models, as CloudEvents text.
ATTRIBUTES: dict[str, str] = {
    "specversion": "1.0",
    "id": "5f0c1e5e-8d4f-4c52-9d1c-3f1d2a9b7e11",
    "source": "https://example.com/orders",
    "type": "com.example.order.placed",
    "time": WHEN_TEXT,
    "subject": "order/A-1",
    "dataschema": "https://schemas.example.com/order/2",
    "datacontenttype": "application/json",
    "dataversion": "2",
    "correlationid": "corr-42",
    "causationid": "cause-41",
    "partitionkey": "order-A-1",
    "traceparent": TRACEPARENT,
    "tracestate": "vendor=opaque1,other=2",
    "tenant": "acme",
    "priority": "5",
}
DATA = {"order": "A-1", "items": [1, 2, 3], "total": 12.5, "note": "café ✓", "gift": None}
BINARY = bytes(range(256))


def expected_envelope(data: bytes, datacontenttype: str | None = "application/json") -> Envelope:
    return Envelope(
        id=ATTRIBUTES["id"],
        type=ATTRIBUTES["type"],
        source=ATTRIBUTES["source"],
        time=WHEN,
        data=data,
        datacontenttype=datacontenttype,
        dataschema=ATTRIBUTES["dataschema"],
        subject=ATTRIBUTES["subject"],
        specversion="1.0",
        dataversion=2,
        correlationid="corr-42",
        causationid="cause-41",
        partitionkey="order-A-1",
        traceparent=TRACEPARENT,
        tracestate="vendor=opaque1,other=2",
        extensions={"tenant": "acme", "priority": "5"},
    )


def assert_envelope(got: Envelope, want: Envelope, *, json_data: bool) -> None:
    for name in (
        "id",
        "type",
        "source",
        "time",
        "datacontenttype",
        "dataschema",
        "subject",
        "specversion",
        "dataversion",
        "correlationid",
        "causationid",
        "partitionkey",
        "traceparent",
        "tracestate",
    ):
        assert getattr(got, name) == getattr(want, name), f"{name} lost"
    assert dict(got.extensions) == dict(want.extensions), "extensions lost"
    if json_data:  # the SDK holds JSON data as an object; the bytes are its encoding
        assert json.loads(got.data) == json.loads(want.data)
    else:
        assert got.data == want.data


def assert_sdk_attributes(got: Mapping[str, Any], envelope: Envelope) -> None:
    """The SDK event's attributes equal the envelope's, with time compared as an instant."""
    got = dict(got)
    want = envelope.attributes()
    got_time = got.pop("time")
    want_time = want.pop("time")
    if isinstance(got_time, str):
        got_time = datetime.fromisoformat(got_time.replace("Z", "+00:00"))
    assert got_time == datetime.fromisoformat(want_time.replace("Z", "+00:00"))
    assert {k: str(v) for k, v in got.items()} == want


def sdk_event(data: Any, **overrides: str) -> sdk_http.CloudEvent:
    return sdk_http.CloudEvent({**ATTRIBUTES, **overrides}, data)


def core_event(data: Any, **overrides: Any) -> CoreCloudEvent:
    attributes: dict[str, Any] = {**ATTRIBUTES, "time": WHEN, **overrides}
    return CoreCloudEvent(attributes=attributes, data=data)


def our_envelope(data: bytes, datacontenttype: str | None = "application/json") -> Envelope:
    return expected_envelope(data, datacontenttype)


def to_kafka_message(envelope: Envelope, message_cls: Any) -> Any:
    """What the Kafka adapter writes: ``ce_`` headers as bytes, partitionkey as the key."""
    headers, body = encode_binary(envelope, KAFKA_PREFIX)
    key = envelope.partitionkey.encode("utf-8") if envelope.partitionkey else None
    return message_cls(
        headers={k: v.encode("utf-8") for k, v in headers.items()}, key=key, value=body
    )


# -- structured mode, SDK -> eventbus ------------------------------------------------------


def test_sdk_structured_json_is_read_with_every_attribute() -> None:
    _, body = sdk_conversion.to_structured(sdk_event(DATA))
    got = decode_structured(body)
    assert_envelope(got, expected_envelope(json.dumps(DATA).encode()), json_data=True)


def test_sdk_structured_binary_data_is_read_from_data_base64() -> None:
    event = sdk_event(BINARY, datacontenttype="application/octet-stream")
    _, body = sdk_conversion.to_structured(event)
    assert "data_base64" in json.loads(body)
    got = decode_structured(body)
    assert_envelope(got, expected_envelope(BINARY, "application/octet-stream"), json_data=False)


def test_sdk_structured_text_data_is_read_as_utf8() -> None:
    _, body = sdk_conversion.to_structured(sdk_event("héllo ✓", datacontenttype="text/plain"))
    got = decode_structured(body)
    assert_envelope(got, expected_envelope("héllo ✓".encode(), "text/plain"), json_data=False)


def test_core_sdk_structured_json_is_read_with_every_attribute() -> None:
    body = JSONFormat().write(core_event(DATA))
    got = decode_structured(body)
    assert_envelope(got, expected_envelope(json.dumps(DATA).encode()), json_data=True)
    binary = JSONFormat().write(core_event(BINARY, datacontenttype="application/octet-stream"))
    got = decode_structured(binary)
    assert_envelope(got, expected_envelope(BINARY, "application/octet-stream"), json_data=False)


# -- structured mode, eventbus -> SDK ------------------------------------------------------


def test_our_structured_json_is_read_by_sdk_from_json_and_from_http() -> None:
    envelope = our_envelope(json.dumps(DATA, separators=(",", ":"), ensure_ascii=False).encode())
    body = encode_structured(envelope)
    for event in (
        sdk_http.from_json(body),
        sdk_http.from_http({"content-type": "application/cloudevents+json"}, body),
    ):
        assert_sdk_attributes(event.get_attributes(), envelope)
        assert event.get_data() == DATA


def test_our_structured_binary_data_is_read_by_sdk() -> None:
    envelope = our_envelope(BINARY, "application/octet-stream")
    event = sdk_http.from_json(encode_structured(envelope))
    assert_sdk_attributes(event.get_attributes(), envelope)
    assert event.get_data() == BINARY


def test_our_structured_json_with_whitespace_is_read_by_sdk() -> None:
    # Not compact JSON, so it travels as data_base64 to keep our bytes exact; the SDK
    # still sees its JSON content type and hands out the parsed object.
    raw = b'{"order": "A-1",\n  "items": [1, 2, 3]}'
    envelope = our_envelope(raw)
    body = encode_structured(envelope)
    assert "data_base64" in json.loads(body)
    event = sdk_http.from_json(body)
    assert_sdk_attributes(event.get_attributes(), envelope)
    assert event.get_data() == json.loads(raw)
    assert decode_structured(body).data == raw


def test_our_structured_is_read_by_core_sdk() -> None:
    envelope = our_envelope(json.dumps(DATA, separators=(",", ":"), ensure_ascii=False).encode())
    event = JSONFormat().read(None, encode_structured(envelope))
    assert_sdk_attributes(event.get_attributes(), envelope)
    assert event.get_data() == DATA
    binary = our_envelope(BINARY, "application/octet-stream")
    event = JSONFormat().read(None, encode_structured(binary))
    assert_sdk_attributes(event.get_attributes(), binary)
    assert event.get_data() == BINARY


def test_structured_round_trip_through_sdk_and_back_is_lossless() -> None:
    envelope = our_envelope(b'{"order":"A-1","items":[1,2,3]}')
    event = sdk_http.from_json(encode_structured(envelope))
    _, body = sdk_conversion.to_structured(event)
    assert decode_structured(body) == envelope


# -- Kafka binary mode, SDK -> eventbus ----------------------------------------------------


def test_sdk_kafka_binary_json_is_read_with_every_attribute() -> None:
    message = sdk_kafka.to_binary(sdk_event(DATA))
    assert all(isinstance(v, bytes) for v in message.headers.values())
    assert "ce_partitionkey" not in message.headers  # the SDK sends it only as the key
    assert message.key == "order-A-1"
    got = decode_binary(message.headers, body_of(message), KAFKA_PREFIX, key=message.key)
    assert_envelope(got, expected_envelope(json.dumps(DATA).encode()), json_data=True)


def test_sdk_kafka_binary_data_is_read_byte_for_byte() -> None:
    event = sdk_event(BINARY, datacontenttype="application/octet-stream")
    message = sdk_kafka.to_binary(event, data_marshaller=lambda data: data)
    got = decode_binary(message.headers, body_of(message), KAFKA_PREFIX, key=message.key)
    assert_envelope(got, expected_envelope(BINARY, "application/octet-stream"), json_data=False)


def test_core_sdk_kafka_binary_is_read_with_every_attribute() -> None:
    message = core_kafka.to_binary(core_event(DATA), JSONFormat())
    got = decode_binary(message.headers, body_of(message), KAFKA_PREFIX, key=message.key)
    assert_envelope(got, expected_envelope(json.dumps(DATA).encode()), json_data=True)
    event = core_event(BINARY, datacontenttype="application/octet-stream")
    message = core_kafka.to_binary(event, JSONFormat())
    got = decode_binary(message.headers, body_of(message), KAFKA_PREFIX, key=message.key)
    assert_envelope(got, expected_envelope(BINARY, "application/octet-stream"), json_data=False)


def test_core_sdk_kafka_structured_is_read_by_decode_binary() -> None:
    message = core_kafka.to_structured(core_event(DATA), JSONFormat())
    assert message.headers == {"content-type": b"application/cloudevents+json"}
    got = decode_binary(message.headers, body_of(message), KAFKA_PREFIX, key=message.key)
    assert_envelope(got, expected_envelope(json.dumps(DATA).encode()), json_data=True)


# -- Kafka binary mode, eventbus -> SDK ----------------------------------------------------


def test_our_kafka_binary_json_is_read_by_sdk() -> None:
    envelope = our_envelope(json.dumps(DATA).encode())
    message = to_kafka_message(envelope, sdk_kafka.KafkaMessage)
    event = sdk_kafka.from_binary(message)
    assert_sdk_attributes(
        {**event.get_attributes(), "partitionkey": _text(event["partitionkey"])}, envelope
    )
    assert event.get_data() == DATA


def test_our_kafka_binary_data_is_read_by_sdk_byte_for_byte() -> None:
    envelope = our_envelope(BINARY, "application/octet-stream")
    message = to_kafka_message(envelope, sdk_kafka.KafkaMessage)
    event = sdk_kafka.from_binary(message, data_unmarshaller=lambda body: body)
    assert_sdk_attributes(
        {**event.get_attributes(), "partitionkey": _text(event["partitionkey"])}, envelope
    )
    assert event.get_data() == BINARY


@pytest.mark.parametrize(
    ("data", "content_type", "expected"),
    [
        (json.dumps(DATA).encode(), "application/json", DATA),
        (BINARY, "application/octet-stream", BINARY),
        ("plain ✓".encode(), "text/plain", "plain ✓"),
    ],
)
def test_our_kafka_binary_is_read_by_core_sdk(
    data: bytes, content_type: str, expected: Any
) -> None:
    envelope = our_envelope(data, content_type)
    message = to_kafka_message(envelope, core_kafka.KafkaMessage)
    event = core_kafka.from_binary(message, JSONFormat())
    assert_sdk_attributes(event.get_attributes(), envelope)
    assert event.get_data() == expected


def test_kafka_adapter_header_list_is_read_by_both_sdks() -> None:
    """The Kafka adapter's own path: header pairs without partitionkey, which is the key."""
    envelope = our_envelope(json.dumps(DATA).encode())
    headers = dict(binary_headers(envelope, KAFKA_PREFIX, omit=("partitionkey",)))
    key = envelope.partitionkey
    assert key is not None
    legacy = sdk_kafka.from_binary(sdk_kafka.KafkaMessage(headers, key.encode(), envelope.data))
    assert_sdk_attributes(
        {**legacy.get_attributes(), "partitionkey": _text(legacy["partitionkey"])}, envelope
    )
    assert legacy.get_data() == DATA
    core = core_kafka.from_binary(
        core_kafka.KafkaMessage(headers=headers, key=key.encode(), value=envelope.data),
        JSONFormat(),
    )
    assert_sdk_attributes(core.get_attributes(), envelope)
    assert core.get_data() == DATA


def test_kafka_binary_round_trip_through_sdk_and_back_is_lossless() -> None:
    envelope = our_envelope(b'{"order": "A-1"}')
    event = sdk_kafka.from_binary(
        to_kafka_message(envelope, sdk_kafka.KafkaMessage), data_unmarshaller=lambda body: body
    )
    message = sdk_kafka.to_binary(event, data_marshaller=lambda data: data)
    got = decode_binary(message.headers, body_of(message), KAFKA_PREFIX, key=message.key)
    assert got == envelope


def body_of(message: Any) -> bytes:
    value = message.value
    assert isinstance(value, bytes), f"Kafka message value should be bytes, got {type(value)}"
    return value


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value
