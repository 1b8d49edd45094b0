"""Size estimation, in the codec: the largest encoding of an envelope, and a bound
cheap far below a broker's limit and exact near it (what ``check_size`` relies on)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import pytest

from eventbus import Envelope, codec


def test_largest_size_counts_data_and_attributes() -> None:
    small = Envelope.create(type="t", source="s", data=b"", datacontenttype="x/y")
    big = small.evolve(data=b"x" * 999)
    # base64: the largest encoding
    assert codec.largest_size(big) == len(codec.encode_structured(big))
    assert codec.largest_size(big) > codec.largest_size(small) + 999
    assert codec.largest_size(small) >= sum(
        len(k) + len(v) for k, v in small.attributes().items())


# -- size_bound is an upper bound of every encoding -----------------------------------------

_ALPHABETS = (
    "abcdefghijklmnopqrstuvwxyz0123456789-",
    'quote"back\\slash',
    "\x00\x01\x1f\t\n\x7f control",
    "é€漢字🙂ü",
    "\u2028\u2029\ufeff",
)


def _text(rng: random.Random, longest: int) -> str:
    alphabet = rng.choice(_ALPHABETS)
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, longest)))


def random_envelope(rng: random.Random) -> Envelope:
    """An envelope with random attributes, extensions and data of every kind."""
    longest = rng.choice((8, 200, 3000))
    optional = {
        name: _text(rng, longest) if rng.random() < 0.7 else None
        for name in ("dataschema", "subject", "correlationid", "causationid", "partitionkey",
                     "traceparent", "tracestate")
    }
    content_type = rng.choice((None, "application/json", "text/plain", "application/x-bin",
                               "application/cloudevents+json"))
    kind = rng.choice(("empty", "json", "spaced-json", "bytes", "text"))
    data = {
        "empty": b"",
        "json": json.dumps({"k": _text(rng, longest)}, separators=(",", ":"),
                           ensure_ascii=False).encode(),
        "spaced-json": json.dumps({"k": _text(rng, longest)}, indent=2).encode(),
        "bytes": rng.randbytes(rng.randint(0, 5000)),
        "text": _text(rng, longest).encode("utf-8"),
    }[kind]
    extensions = {f"x{i}": _text(rng, longest) for i in range(rng.randint(0, 4))}
    return Envelope(
        id=_text(rng, longest), type=_text(rng, longest), source=_text(rng, longest),
        time=datetime(rng.randint(1, 9999), 1, 1, tzinfo=UTC)
        + timedelta(microseconds=rng.randint(0, 10**12)),
        data=data, datacontenttype=content_type, dataversion=rng.choice((1, 2**70)),
        extensions=extensions, **optional,
    )


def _encoded_sizes(env: Envelope) -> dict[str, int]:
    sizes = {"structured": len(codec.encode_structured(env))}
    for prefix in ("ce_", "ce-", "cloudEvents:", "cloudEvents_"):
        pairs = codec.binary_headers(env, prefix)
        sizes[f"binary {prefix}"] = len(env.data) + sum(len(k.encode()) + len(v) for k, v in pairs)
        headers, body = codec.encode_binary(env, prefix)
        sizes[f"encode_binary {prefix}"] = len(body) + sum(
            len(k.encode()) + len(v.encode()) for k, v in headers.items())
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
