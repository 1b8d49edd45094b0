"""CloudEvents codecs: structured and binary mode, both directions, and clear decode errors."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from eventbus import DecodeError, Envelope
from eventbus.codec import (
    DEFAULT_PREFIX,
    KAFKA_PREFIX,
    STRUCTURED_CONTENT_TYPE,
    binary_headers,
    decode_binary,
    decode_structured,
    encode_binary,
    encode_structured,
    is_json_content_type,
)

WHEN = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def full_envelope(**changes: object) -> Envelope:
    env = Envelope.create(
        id="evt-1",
        type="com.example.order.placed",
        source="https://example.com/orders",
        time=WHEN,
        data=b'{"order":"A-1","items":[1,2,3],"note":"caf\xc3\xa9"}',
        subject="order/A-1",
        dataschema="https://schemas.example.com/order/2",
        dataversion=2,
        correlationid="corr-1",
        causationid="cause-1",
        partitionkey="order-A-1",
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        tracestate="vendor=opaque",
        extensions={"tenant": "acme", "priority": "5"},
    )
    return env.evolve(**changes)


def assert_same(got: Envelope, sent: Envelope) -> None:
    for field in (
        "id",
        "type",
        "source",
        "time",
        "data",
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
        assert getattr(got, field) == getattr(sent, field), field
    assert dict(got.extensions) == dict(sent.extensions)
    assert got == sent


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (None, True),
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("text/json", True),
        ("application/vnd.example+json", True),
        ("APPLICATION/JSON", True),
        ("application/cloudevents+json", True),
        ("text/plain", False),
        ("application/octet-stream", False),
        ("application/xml", False),
    ],
)
def test_is_json_content_type(content_type: str | None, expected: bool) -> None:
    assert is_json_content_type(content_type) is expected


# -- structured mode ---------------------------------------------------------------------


def test_structured_round_trip_keeps_every_attribute() -> None:
    sent = full_envelope()
    payload = encode_structured(sent)
    doc = json.loads(payload)
    assert doc["data"] == {"order": "A-1", "items": [1, 2, 3], "note": "café"}
    assert doc["time"] == "2024-05-06T07:08:09.123456Z"
    assert doc["tenant"] == "acme" and doc["dataversion"] == "2"
    assert_same(decode_structured(payload), sent)
    assert_same(decode_structured(payload.decode("utf-8")), sent)


def test_structured_json_data_with_whitespace_survives_byte_for_byte() -> None:
    sent = full_envelope(
        data=b'{"order": "A-1",\n "items": [1, 2, 3]}',
        datacontenttype="application/vnd.example.order+json",
    )
    got = decode_structured(encode_structured(sent))
    assert got.data == sent.data
    assert_same(got, sent)


@pytest.mark.parametrize(
    ("content_type", "data", "field"),
    [
        ("application/octet-stream", b"\x00\x01\xfe\xff", "data_base64"),
        ("image/png", b"\x89PNG\r\n", "data_base64"),
        ("text/plain", "héllo wörld".encode(), "data"),
        ("text/plain", b"\xff\xfe not utf-8", "data_base64"),
        ("application/json", b"not json at all", "data_base64"),
        ("application/json", b'"just a string"', "data"),
        ("application/json", b"[1,2,3]", "data"),
        (None, b'{"a":1}', "data"),
    ],
)
def test_structured_round_trip_per_content_type(
    content_type: str | None, data: bytes, field: str
) -> None:
    sent = full_envelope(datacontenttype=content_type, data=data)
    doc = json.loads(encode_structured(sent))
    assert field in doc
    assert ("data" in doc) != ("data_base64" in doc)
    if field == "data_base64":
        assert base64.b64decode(doc["data_base64"]) == data
    assert_same(decode_structured(encode_structured(sent)), sent)


@pytest.mark.parametrize(
    "data",
    [
        b'{"order":"A-1","items":[1,2,3],"note":"caf\xc3\xa9"}',
        b'{"a":"line\\nbreak","b":null,"c":[true,false],"d":-1.5}',
        b'"just a string"',
        b"[]",
        b"7",
        b'{"a": 1}',  # not compact: base64, not spliced
        b'{"a":1e5}',  # a re-dump would write 100000.0: base64
        b'{"a":1,"a":2}',  # duplicate keys: base64
        b"",
    ],
)
def test_structured_document_is_the_one_json_dumps_writes(data: bytes) -> None:
    """The document with JSON data spliced in is byte for byte what serializing the
    whole document at once writes (the wire format other readers see)."""
    sent = full_envelope(data=data)
    doc: dict[str, object] = dict(sent.attributes())
    if data:
        value = json.loads(data)
        if json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode() == data:
            doc["data"] = value
        else:
            doc["data_base64"] = base64.b64encode(data).decode("ascii")
    expected = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    assert encode_structured(sent) == expected


@pytest.mark.parametrize(
    "wrap",
    [
        lambda doc: b"  " + doc + b"\n",  # white space around the document
        lambda doc: b"\xef\xbb\xbf" + doc,  # a UTF-8 byte order mark
        lambda doc: doc.decode().encode("utf-16"),  # another encoding json.loads detects
        lambda doc: doc.decode(),  # text, not bytes
    ],
)
def test_structured_decode_reads_what_json_loads_reads(
    wrap: Callable[[bytes], bytes | str],
) -> None:
    sent = full_envelope()
    assert_same(decode_structured(wrap(encode_structured(sent))), sent)


@pytest.mark.parametrize("tail", [b" x", b"{}", b"\x00", b"\xff"])
def test_structured_decode_refuses_what_follows_the_document(tail: bytes) -> None:
    with pytest.raises(DecodeError, match="not JSON"):
        decode_structured(encode_structured(full_envelope()) + tail)


def test_structured_without_data_has_no_data_member() -> None:
    sent = full_envelope(data=b"")
    doc = json.loads(encode_structured(sent))
    assert "data" not in doc and "data_base64" not in doc
    assert_same(decode_structured(encode_structured(sent)), sent)


def test_structured_reads_inline_json_and_text_from_other_writers() -> None:
    doc = {
        "specversion": "1.0",
        "id": "1",
        "source": "s",
        "type": "t",
        "datacontenttype": "application/json",
        "data": {"b": 2, "a": [1, None]},
    }
    env = decode_structured(json.dumps(doc, indent=2))
    assert json.loads(env.data) == {"b": 2, "a": [1, None]}
    text = {**doc, "datacontenttype": "text/plain", "data": "hi there"}
    assert decode_structured(json.dumps(text)).data == b"hi there"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"not json", "body is not JSON"),
        (b"\xff\xfe", "body is not JSON"),
        (b"[1, 2]", "JSON but not an object"),
        (b'{"specversion":"1.0","source":"s","type":"t"}', "required attribute 'id'"),
        (b'{"specversion":"1.0","id":"1","type":"t"}', "required attribute 'source'"),
        (b'{"specversion":"1.0","id":"1","source":"s"}', "required attribute 'type'"),
        (
            b'{"specversion":"1.0","id":"1","source":"s","type":"t","time":"noon"}',
            "unreadable attribute",
        ),
        (
            b'{"specversion":"1.0","id":"1","source":"s","type":"t","dataversion":"x"}',
            "unreadable attribute",
        ),
        (
            b'{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"!!"}',
            "invalid data_base64",
        ),
    ],
)
def test_structured_decode_errors_say_what_is_wrong(payload: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_structured(payload)


# -- binary mode -------------------------------------------------------------------------


def test_binary_headers_are_prefixed_attributes_and_content_type() -> None:
    sent = full_envelope()
    headers, body = encode_binary(sent, KAFKA_PREFIX)
    assert body == sent.data
    assert headers["content-type"] == "application/json"
    assert "ce_datacontenttype" not in headers
    assert headers["ce_specversion"] == "1.0"
    assert headers["ce_id"] == "evt-1"
    assert headers["ce_time"] == "2024-05-06T07:08:09.123456Z"
    assert headers["ce_partitionkey"] == "order-A-1"
    assert headers["ce_tenant"] == "acme"
    assert all(k == "content-type" or k.startswith("ce_") for k in headers)


def test_binary_round_trip_with_text_and_byte_header_values() -> None:
    sent = full_envelope()
    headers, body = encode_binary(sent)
    assert_same(decode_binary(headers, body), sent)
    as_bytes = [(k, v.encode("utf-8")) for k, v in headers.items()]
    assert_same(decode_binary(as_bytes, body), sent)


def test_binary_round_trip_with_other_prefix_and_header_case() -> None:
    sent = full_envelope(datacontenttype=None, data=b"\x00\xff")
    headers, body = encode_binary(sent, prefix="cloudEvents:")
    assert "content-type" not in headers
    upper = {k.upper(): v for k, v in headers.items()}
    assert_same(decode_binary(upper, body, prefix="cloudEvents:"), sent)


def test_binary_key_becomes_partitionkey() -> None:
    sent = full_envelope(partitionkey=None)
    headers, body = encode_binary(sent)
    assert decode_binary(headers, body).partitionkey is None
    assert decode_binary(headers, body, key=b"k-1").partitionkey == "k-1"
    assert decode_binary(headers, body, key="k-2").partitionkey == "k-2"
    with pytest.raises(DecodeError, match="key is not UTF-8"):
        decode_binary(headers, body, key=b"\xff\xfe")


def test_binary_empty_body_is_empty_data() -> None:
    headers, _ = encode_binary(full_envelope(data=b""))
    assert decode_binary(headers, None).data == b""


def test_binary_with_structured_content_type_is_read_as_structured() -> None:
    sent = full_envelope()
    headers = {"content-type": f"{STRUCTURED_CONTENT_TYPE}; charset=utf-8"}
    assert_same(decode_binary(headers, encode_structured(sent)), sent)


def test_binary_without_specversion_names_the_headers() -> None:
    headers = iter([("ce_id", b"1"), ("ce_type", b"t"), ("other", b"x")])
    with pytest.raises(DecodeError, match="no ce_specversion header") as info:
        decode_binary(headers, b"{}", KAFKA_PREFIX)
    assert "ce_id" in str(info.value) and "other" in str(info.value)


def test_binary_missing_required_attribute() -> None:
    with pytest.raises(DecodeError, match="required attribute 'source'"):
        decode_binary({"ce_specversion": "1.0", "ce_id": "1", "ce_type": "t"}, b"", KAFKA_PREFIX)


def test_binary_headers_match_encode_binary_and_decode_back() -> None:
    sent = full_envelope()
    headers, body = encode_binary(sent)
    pairs = binary_headers(sent)
    assert dict(pairs) == {k: v.encode("utf-8") for k, v in headers.items()}
    assert len(pairs) == len(headers)  # no header twice
    assert_same(decode_binary(pairs, body), sent)


def test_binary_headers_omit_partitionkey_for_the_record_key() -> None:
    sent = full_envelope()
    pairs = binary_headers(sent, omit=("partitionkey",))
    assert "ce-partitionkey" not in dict(pairs)
    assert decode_binary(pairs, sent.data).partitionkey is None
    assert_same(decode_binary(pairs, sent.data, key=b"order-A-1"), sent)


def test_binary_headers_with_another_prefix_and_no_content_type() -> None:
    sent = full_envelope(datacontenttype=None, subject=None)
    pairs = binary_headers(sent, "cloudEvents:")
    assert "content-type" not in dict(pairs) and "cloudEvents:subject" not in dict(pairs)
    assert_same(decode_binary(pairs, sent.data, prefix="cloudEvents:"), sent)


def test_foreign_message_with_a_reserved_extension_is_a_decode_error() -> None:
    """A ``ce_data`` header from another writer would overwrite ``data`` when re-encoded."""
    headers = {
        "ce_specversion": "1.0",
        "ce_id": "1",
        "ce_source": "s",
        "ce_type": "t",
        "ce_data": "forged",
    }
    with pytest.raises(DecodeError, match="'data' is reserved"):
        decode_binary(headers, b"{}", "ce_")


def test_default_binary_prefix_is_the_generic_one_not_kafkas() -> None:
    """``ce-`` (HTTP binding) by default; only the Kafka adapter asks for ``ce_``."""
    assert DEFAULT_PREFIX == "ce-"
    sent = full_envelope()
    headers, body = encode_binary(sent)
    assert all(k == "content-type" or k.startswith("ce-") for k in headers)
    assert headers["ce-id"] == "evt-1"
    assert all(k == "content-type" or k.startswith("ce-") for k, _ in binary_headers(sent))
    assert_same(decode_binary(headers, body), sent)
    kafka_style, _ = encode_binary(sent, KAFKA_PREFIX)
    with pytest.raises(DecodeError, match="no ce-specversion header"):
        decode_binary(kafka_style, body)
