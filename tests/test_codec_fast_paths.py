"""The codec's fast paths give what the general functions give."""

from __future__ import annotations

import pytest

from eventbus import Envelope, codec
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


def test_decode_binary_dict_reads_every_layout_as_decode_binary_does() -> None:
    full = Envelope.create(
        type="t.full",
        source="s",
        data=b"{}",
        subject="sub",
        dataschema="urn:x",
        partitionkey="k",
        causationid="c",
        traceparent="00-a-b-01",
        tracestate="x=1",
        correlationid="corr",
    )
    bare = Envelope.create(type="t.bare", source="s", datacontenttype=None)
    extended = Envelope.create(type="t.ext", source="s", extra="1")
    for envelope in (full, bare, extended, full, bare):  # the second time from the cache
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
