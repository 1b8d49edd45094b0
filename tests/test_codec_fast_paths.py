"""The codec's fast paths give what the general functions give."""

from __future__ import annotations

import base64
import random
import re
import struct
from typing import Any

import pydantic_core
import pytest

from eventbus import DecodeError, Envelope, codec
from eventbus.envelope import utcnow


@pytest.mark.parametrize("prefix", ["ce_", "cé_"])
@pytest.mark.parametrize("subject", [None, "plain", "naïve ✓"])
def test_encode_binary_sized_counts_what_binary_size_counts(
    prefix: str, subject: str | None
) -> None:
    envelope = Envelope.create(
        type="t.sized", source="src", data='{"a":"ü"}'.encode(), subject=subject, tenant="añb"
    )
    headers, body, size = codec.encode_binary_sized(envelope, prefix)
    assert (headers, body) == codec.encode_binary(envelope, prefix)
    assert size == codec.binary_size(headers, body)


def layouts() -> tuple[Envelope, ...]:
    """Envelopes with every attribute, with the fewest, with an extension, with text data."""
    full = Envelope.create(
        type="t.full",
        source="s",
        data=b'{"a":[1,"x"]}',
        subject="sub",
        dataschema="urn:x",
        partitionkey="k",
        causationid="c",
        traceparent="00-a-b-01",
        tracestate="x=1",
        correlationid="corr",
        dataversion=3,
    )
    bare = Envelope.create(type="t.bare", source="s", datacontenttype=None)
    extended = Envelope.create(type="t.ext", source="s", extra="1")
    text = Envelope.create(type="t.text", source="s", data=b"hi", datacontenttype="text/plain")
    return (full, bare, extended, text, full, bare)  # the second time from the cache


def test_decode_binary_dict_reads_every_layout_as_decode_binary_does() -> None:
    for envelope in layouts():
        headers, body = codec.encode_binary(envelope, "ce_")
        assert codec.decode_binary_dict(headers, body, "ce_") == envelope
        reordered = dict(reversed(list(headers.items())))
        assert codec.decode_binary_dict(reordered, body, "ce_") == envelope


def test_encode_binary_sized_many_gives_each_envelope_what_encode_binary_sized_gives() -> None:
    when = utcnow()
    shared = {"source": "src", "time": when, "subject": "naïve ✓"}
    batch = [
        Envelope.create(type="t.a", id=f"id-{n}", correlationid=f"c-{n}", data=b"{}", **shared)
        for n in range(3)
    ]
    mixed = [
        *batch,
        Envelope.create(type="t.a", id="id-é", correlationid="c-3", **shared),  # non-ASCII id
        Envelope.create(type="t.a", id="id-4", correlationid="c-ü", **shared),  # and correlation
        Envelope.create(type="t.a", id="id-5", correlationid="c-5", **shared),
        Envelope.create(type="t.a", id="id-6", **shared),  # no correlation id
        Envelope.create(type="t.a", id="id-7", **shared),
        Envelope.create(type="t.a", id="id-8", correlationid="c-8", **shared),
        Envelope.create(type="t.b", id="id-9", correlationid="c-9", **shared),  # another type
        Envelope.create(type="t.b", id="id-10", correlationid="c-10", partitionkey="k", **shared),
        Envelope.create(type="t.b", id="id-11", correlationid="c-11", tenant="x", **shared),
        Envelope.create(type="t.b", id="id-12", correlationid="c-12", tenant="y", **shared),
        Envelope.create(type="t.b", id="id-13", correlationid="c-13", **shared),
        Envelope.create(type="t.b", id="id-14", correlationid="c-14", dataversion=2, **shared),
    ]
    # Two misses in a row end the comparisons: short runs reach every pair of neighbours.
    runs = [mixed, mixed[::-1], *(mixed[i : i + 3] for i in range(len(mixed)))]
    for prefix in ("ce_", "cé_"):
        for run in runs:
            encoded = list(codec.encode_binary_sized_many(run, prefix))
            assert len(encoded) == len(run)
            for envelope, (headers, body, size) in zip(run, encoded, strict=True):
                alone = codec.encode_binary_sized(envelope, prefix)
                assert (headers, body, size) == alone
                assert list(headers) == list(alone[0])  # the same names in the same order


def test_decode_structured_reads_every_layout_as_the_general_reader_does() -> None:
    for envelope in layouts():
        assert codec.decode_structured(codec.encode_structured(envelope)) == envelope
        reordered = dict(reversed(list(envelope.attributes().items())))
        general = Envelope.from_attributes(reordered, envelope.data)
        data_base64 = base64.b64encode(envelope.data).decode()
        encoded = codec._compact_json({**reordered, "data_base64": data_base64})
        assert codec.decode_structured(encoded) == general == envelope


@pytest.mark.parametrize(
    ("name", "value"), [("dataversion", "two"), ("time", "yesterday"), ("id", "")]
)
def test_decode_structured_reports_what_the_general_reader_reports(
    name: str, value: object
) -> None:
    attributes: dict[str, object] = dict(Envelope.create(type="t.bad", source="s").attributes())
    attributes[name] = value
    with pytest.raises(DecodeError) as fast:
        codec.decode_structured(codec._compact_json(attributes))
    with pytest.raises(DecodeError) as general:
        codec._build(attributes, b"")
    assert str(fast.value) == str(general.value)


def test_decode_structured_reads_json_typed_attributes_as_the_general_reader_does() -> None:
    attributes: dict[str, object] = dict(Envelope.create(type="t.int", source="s").attributes())
    attributes["dataversion"] = 2  # a number, not text: not the fast path's to read
    decoded = codec.decode_structured(codec._compact_json(attributes))
    assert decoded == codec._build(attributes, b"") and decoded.dataversion == 2


# -- structured mode by pydantic-core: the same bytes and values as the json module --------


def _reference_inlines(data: bytes) -> bool:
    """What ``_inlines`` answered when it asked the json module alone."""
    try:
        value = codec._parse_json(data)
    except ValueError:
        return False
    return codec._compact_json(value) == data


def _answer(call: Any, *args: Any) -> Any:
    try:
        return ("returned", call(*args))
    except Exception as exc:  # the same exception type, or the same answer
        return ("raised", type(exc))


_SMALL_FLOATS = [1.5212603486793025e-05, 6.389814116186164e-05, -7.1850441006303285e-09, 1e-7]
_DATA = [
    b'{"seq":1,"order_id":"ord-00000001","amount_cents":1,"tags":["a","b"]}',
    b"{}",
    b"[]",
    b'""',
    b"null",
    b"[true,false,null]",
    b'{"a":[1,2,{"b":null,"c":true}],"":-1}',
    b'{"a": 1}',  # white space
    b' {"a":1}',
    b'{"a":1}\n',
    b'{"a":1,"a":2}',  # a duplicate key
    b'"\\u00e9"',  # an escape the writer would not use
    b'"\\ud83d\\ude00"',
    b'"\\ud800"',  # a lone surrogate, escaped
    b'"\xed\xa0\x80"',  # one as (invalid) UTF-8 bytes
    b"\xef\xbb\xbf{}",  # a byte-order mark
    b'{"a":1',
    b"not json",
    b'"a\nb"',  # a raw control character in a string
    '"é✓\x7f \u2028"'.encode(),
    b'"\\u0000\\u001f\\n\\t\\"\\\\"',
    b"[-0,0,-1]",
    b"[NaN,Infinity,-Infinity]",
    b"1" * 4300,
    b"1" * 4301,  # past the json module's limit on an integer's digits
    b"[" * 300 + b"]" * 300,  # deeper than pydantic-core parses
    b'{"price":"12.50","v":"1e5"}',  # floats' marks in text
    b"[1.0,0.1,100.0,1e+16,1e16,12.5]",
    b"[1E5,1e5,-0.0,0.0]",
    *(f"[{value!r}]".encode() for value in _SMALL_FLOATS),  # the json module's form
    *(pydantic_core.to_json([value]) for value in _SMALL_FLOATS),  # pydantic-core's
]


@pytest.mark.parametrize("data", _DATA, ids=range(len(_DATA)))
def test_structured_inlines_the_data_the_json_module_inlined(data: bytes) -> None:
    """Data is spliced into the document exactly when the reader's compact re-dump
    gives it back byte for byte, whichever parser answered (pydantic-core's floats
    are written differently: such data never takes its path)."""
    assert _answer(codec._inlines, data) == _answer(_reference_inlines, data)


@pytest.mark.parametrize("data", _DATA, ids=range(len(_DATA)))
def test_structured_documents_parse_as_the_json_module_parses_them(data: bytes) -> None:
    document = b'{"id":"1","data":' + data + b"}"
    got, expected = _answer(codec._parse_document, document), _answer(codec._parse_json, document)
    assert repr(got) == repr(expected)  # repr: NaN equal to NaN, -0.0 apart from 0.0
    if got[0] == "raised":  # the json module's own error, as the reader reports it
        with pytest.raises(expected[1]) as raised:
            codec._parse_json(document)
        with pytest.raises(got[1], match=re.escape(str(raised.value))):
            codec._parse_document(document)


def test_random_floats_parse_as_the_json_module_parses_them() -> None:
    rng = random.Random(24)
    doubles = (struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0] for _ in range(3000))
    numbers = [repr(value) for value in doubles if value == value and abs(value) != float("inf")]
    for _ in range(3000):  # long mantissas, exponents past either end
        whole, fraction = rng.randint(0, 10 ** rng.randint(1, 30)), rng.randint(0, 10**20)
        sign, exponent = rng.choice(["", "-"]), rng.randint(-340, 320)
        numbers.append(f"{sign}{whole}.{fraction}e{exponent}")
    document = ("[" + ",".join(numbers) + "]").encode()
    assert repr(codec._parse_document(document)) == repr(codec._parse_json(document))


def test_a_text_object_is_written_as_the_json_module_writes_it() -> None:
    """Every code point, in values and in keys: the attributes' document written by
    pydantic-core is the json module's, byte for byte; a lone surrogate raises as the
    json module raises."""
    points = [chr(point) for point in range(0x110000) if not 0xD800 <= point <= 0xDFFF]
    chunks = ["".join(points[start : start + 4096]) for start in range(0, len(points), 4096)]
    values = {f"k{index}": chunk for index, chunk in enumerate(chunks)}
    keys = {chunk: "v" for chunk in chunks}
    for attributes in (values, keys, {"id": "1", "type": "t"}, {}):
        assert codec._text_object_json(attributes) == codec._compact_json(attributes)
    with pytest.raises(UnicodeEncodeError):
        codec._text_object_json({"subject": "a\ud800"})
