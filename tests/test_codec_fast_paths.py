"""The codec's fast paths give what the general functions give."""

from __future__ import annotations

import pytest

from eventbus import Envelope, codec


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
