"""Size estimation, in the codec: the largest encoding of an envelope, and a bound
cheap far below a broker's limit and exact near it (what ``check_size`` relies on)."""

from __future__ import annotations

import random

import pytest

from eventbus import Envelope, codec
from tests.bus_support import random_envelope


def test_largest_size_counts_data_and_attributes() -> None:
    small = Envelope.create(type="t", source="s", data=b"", datacontenttype="x/y")
    big = small.evolve(data=b"x" * 999)
    # base64: the largest encoding
    assert codec.largest_size(big) == len(codec.encode_structured(big))
    assert codec.largest_size(big) > codec.largest_size(small) + 999
    assert codec.largest_size(small) >= sum(len(k) + len(v) for k, v in small.attributes().items())


# -- size_bound is an upper bound of every encoding -----------------------------------------


def _encoded_sizes(env: Envelope) -> dict[str, int]:
    sizes = {"structured": len(codec.encode_structured(env))}
    for prefix in ("ce_", "ce-", "cloudEvents:", "cloudEvents_"):
        pairs = codec.binary_headers(env, prefix)
        sizes[f"binary {prefix}"] = len(env.data) + sum(len(k.encode()) + len(v) for k, v in pairs)
        headers, body = codec.encode_binary(env, prefix)
        sizes[f"encode_binary {prefix}"] = len(body) + sum(
            len(k.encode()) + len(v.encode()) for k, v in headers.items()
        )
    return sizes


def test_size_bound_bounds_every_encoding_of_random_envelopes() -> None:
    """A message that passes the size check fits the broker in every encoding we use."""
    rng = random.Random(20261127)
    for _ in range(400):
        env = random_envelope(rng)
        sizes = _encoded_sizes(env)
        largest = max(sizes.values())
        assert codec.largest_size(env) >= largest, (env, sizes)
        for limit in (1, largest - 1, largest, largest + 1, 10**12):
            assert codec.size_bound(env, limit) >= largest, (limit, env, sizes)


def test_size_bound_counts_id_correlation_causation_and_traceparent() -> None:
    env = Envelope.create(type="t", source="s")
    for name in ("id", "correlationid", "causationid", "traceparent"):
        grown = env.evolve(**{name: "c" * 6000})
        assert codec.size_bound(grown, 4096) > 6000, name


def test_envelope_size_and_size_hint_still_work_and_warn_naming_the_codec() -> None:
    env = Envelope.create(type="t", source="s", data=b'{"a": 1}', tenant="x")
    with pytest.warns(DeprecationWarning, match="codec.largest_size"):
        assert env.size == codec.largest_size(env)
    with pytest.warns(DeprecationWarning, match="codec.size_bound"):
        assert env.size_hint(10) == codec.size_bound(env, 10)
