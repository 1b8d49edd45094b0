"""The codec's fast paths give what the general functions give."""

from __future__ import annotations

import base64

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
