"""The envelope: creation defaults, immutability, CloudEvents attributes and time text."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from eventbus import Envelope, codec
from eventbus.envelope import SPEC_VERSION, format_time, parse_time, validate_extension_name
from eventbus.errors import InvalidExtensionNameError


def test_create_fills_id_time_and_defaults() -> None:
    before = datetime.now(UTC)
    env = Envelope.create(type="OrderPlaced", source="orders")
    after = datetime.now(UTC)
    assert uuid.UUID(env.id).version == 4
    assert before <= env.time <= after
    assert env.time.tzinfo is not None
    assert env.specversion == SPEC_VERSION == "1.0"
    assert env.datacontenttype == "application/json"
    assert env.dataversion == 1
    assert env.data == b""
    assert env.extensions == {}
    for name in ("correlationid", "causationid", "partitionkey", "traceparent", "tracestate",
                 "subject", "dataschema"):
        assert getattr(env, name) is None


def test_create_ids_are_unique() -> None:
    ids = {Envelope.create(type="t", source="s").id for _ in range(200)}
    assert len(ids) == 200


def test_create_keeps_given_id_and_time_and_known_attributes() -> None:
    when = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    env = Envelope.create(
        type="t", source="s", id="fixed", time=when, data=b"{}", partitionkey="k",
        correlationid="c", dataversion=3, subject="sub",
    )
    assert (env.id, env.time, env.partitionkey, env.correlationid, env.dataversion,
            env.subject) == ("fixed", when, "k", "c", 3, "sub")


def test_create_turns_unknown_keywords_into_text_extensions() -> None:
    env = Envelope.create(type="t", source="s", tenant="acme", priority=5, urgent=True,
                          extensions={"region": "eu1"})
    assert env.extensions == {"region": "eu1", "tenant": "acme", "priority": "5",
                              "urgent": "true"}


@pytest.mark.parametrize("name", ["Tenant", "has-dash", "under_score", "", "x" * 21, "ümlaut"])
def test_create_rejects_invalid_extension_names(name: str) -> None:
    with pytest.raises(ValueError, match="not a valid CloudEvents name"):
        Envelope.create(type="t", source="s", extensions={name: "v"})


def test_valid_extension_names_pass() -> None:
    for name in ("a", "tenant", "x" * 20, "abc123"):
        validate_extension_name(name)


def test_envelope_is_immutable_and_evolve_copies() -> None:
    env = Envelope.create(type="t", source="s", data=b"1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.type = "other"  # type: ignore[misc]
    changed = env.evolve(subject="x", data=b"2")
    assert (changed.subject, changed.data, changed.id) == ("x", b"2", env.id)
    assert (env.subject, env.data) == (None, b"1")


def test_attributes_are_cloudevents_text_and_leave_out_absent_ones() -> None:
    when = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    env = Envelope.create(type="t", source="s", id="i", time=when, data=b"ignored")
    assert env.attributes() == {
        "specversion": "1.0",
        "id": "i",
        "source": "s",
        "type": "t",
        "time": "2024-05-06T07:08:09.123456Z",
        "datacontenttype": "application/json",
        "dataversion": "1",
    }
    full = env.evolve(
        dataschema="https://x/s", subject="sub", correlationid="c", causationid="p",
        partitionkey="k", traceparent="tp", tracestate="ts", dataversion=4,
        datacontenttype=None, extensions={"tenant": "acme"},
    )
    attrs = full.attributes()
    assert "datacontenttype" not in attrs and "data" not in attrs
    assert {k: attrs[k] for k in ("dataschema", "subject", "correlationid", "causationid",
                                  "partitionkey", "traceparent", "tracestate", "dataversion",
                                  "tenant")} == {
        "dataschema": "https://x/s", "subject": "sub", "correlationid": "c",
        "causationid": "p", "partitionkey": "k", "traceparent": "tp", "tracestate": "ts",
        "dataversion": "4", "tenant": "acme",
    }


def test_from_attributes_round_trips_attributes() -> None:
    env = Envelope.create(
        type="t", source="s", data=b'{"a":1}', subject="sub", dataschema="d",
        correlationid="c", causationid="p", partitionkey="k", traceparent="tp",
        tracestate="ts", dataversion=7, extensions={"tenant": "acme"},
        time=datetime(2024, 5, 6, 7, 8, 9, 1, tzinfo=UTC),
    )
    assert Envelope.from_attributes(env.attributes(), env.data) == env


def test_from_attributes_requires_id_source_type() -> None:
    base = {"id": "i", "source": "s", "type": "t", "specversion": "1.0"}
    for missing in ("id", "source", "type"):
        attrs = {k: v for k, v in base.items() if k != missing}
        with pytest.raises(KeyError) as info:
            Envelope.from_attributes(attrs, b"")
        assert info.value.args[0] == missing


def test_from_attributes_defaults_and_reads_datetime_and_bad_version() -> None:
    when = datetime(2023, 1, 1, tzinfo=UTC)
    env = Envelope.from_attributes({"id": "i", "source": "s", "type": "t", "time": when}, b"")
    assert env.time == when
    assert env.specversion == "1.0" and env.dataversion == 1
    assert env.datacontenttype is None  # absent on the wire stays absent
    no_time = Envelope.from_attributes({"id": "i", "source": "s", "type": "t"}, b"")
    assert abs(no_time.time - datetime.now(UTC)) < timedelta(seconds=5)
    with pytest.raises(ValueError):
        Envelope.from_attributes({"id": "i", "source": "s", "type": "t",
                                  "dataversion": "two"}, b"")
    with pytest.raises(ValueError):
        Envelope.from_attributes({"id": "i", "source": "s", "type": "t",
                                  "time": "yesterday"}, b"")


def test_from_attributes_extension_values_become_canonical_text() -> None:
    env = Envelope.from_attributes(
        {"id": "i", "source": "s", "type": "t", "flag": True, "off": False, "n": 5,
         "gone": None}, b"")
    assert env.extensions == {"flag": "true", "off": "false", "n": "5"}


def test_format_time_is_utc_with_z_and_keeps_microseconds() -> None:
    assert format_time(datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)) == "2024-01-01T12:00:00Z"
    plus_two = timezone(timedelta(hours=2))
    assert format_time(datetime(2024, 1, 1, 14, 0, 0, 5, tzinfo=plus_two)) == (
        "2024-01-01T12:00:00.000005Z"
    )
    assert format_time(datetime(2024, 1, 1, 12, 0)) == "2024-01-01T12:00:00Z"  # naive is UTC


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-06T07:08:09Z", datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)),
        ("2024-05-06t07:08:09z", datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)),
        ("2024-05-06T07:08:09.5Z", datetime(2024, 5, 6, 7, 8, 9, 500000, tzinfo=UTC)),
        ("2024-05-06T09:08:09+02:00", datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)),
        ("2024-05-06T07:08:09", datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)),
    ],
)
def test_parse_time_reads_rfc3339(text: str, expected: datetime) -> None:
    parsed = parse_time(text)
    assert parsed == expected
    assert parsed.tzinfo is not None


def test_parse_and_format_round_trip() -> None:
    when = datetime(2024, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert parse_time(format_time(when)) == when


def test_size_counts_data_and_attributes() -> None:
    small = Envelope.create(type="t", source="s", data=b"", datacontenttype="x/y")
    big = small.evolve(data=b"x" * 999)
    assert big.size == len(codec.encode_structured(big))  # base64: the largest encoding
    assert big.size > small.size + 999
    assert small.size >= sum(len(k) + len(v) for k, v in small.attributes().items())


# -- size_hint is an upper bound of every encoding ------------------------------------------

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


def _random_envelope(rng: random.Random) -> Envelope:
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


def test_size_hint_bounds_every_encoding_of_random_envelopes() -> None:
    """A message that passes the size check fits the broker in every encoding we use."""
    rng = random.Random(20261127)
    for _ in range(400):
        env = _random_envelope(rng)
        sizes = _encoded_sizes(env)
        largest = max(sizes.values())
        assert env.size >= largest, (env, sizes)
        for limit in (1, largest - 1, largest, largest + 1, 10**12):
            assert env.size_hint(limit) >= largest, (limit, env, sizes)


def test_size_hint_counts_id_correlation_causation_and_traceparent() -> None:
    env = Envelope.create(type="t", source="s")
    for name in ("id", "correlationid", "causationid", "traceparent"):
        grown = env.evolve(**{name: "c" * 6000})
        assert grown.size_hint(4096) > 6000, name


def test_publish_refuses_an_event_whose_correlation_makes_it_too_large() -> None:
    from eventbus import Event, EventBus, MessageTooLargeError

    class Small(Event, type="test.envelope.small", topic="small"):
        n: int

    async def scenario() -> None:
        async with EventBus(f"memory://{uuid.uuid4().hex}?max_message_bytes=4096") as bus:
            with pytest.raises(MessageTooLargeError, match="over the 4096-byte limit"):
                await bus.publish(Small(n=1), correlation_id="c" * 6000)

    asyncio.run(scenario())


def test_from_attributes_turns_non_text_attribute_values_into_text() -> None:
    env = Envelope.from_attributes(
        {"id": "i", "source": "s", "type": "t", "subject": 5, "correlationid": 7,
         "dataversion": 3}, b"")
    assert (env.subject, env.correlationid, env.dataversion) == ("5", "7", 3)


# -- reserved extension names ------------------------------------------------------------

RESERVED = ("id", "source", "specversion", "type", "datacontenttype", "dataschema", "subject",
            "time", "data", "dataversion", "correlationid", "causationid", "partitionkey",
            "traceparent", "tracestate")


@pytest.mark.parametrize("name", RESERVED)
def test_extensions_cannot_shadow_attributes(name: str) -> None:
    """An extension named like an attribute would replace or duplicate it on the wire."""
    with pytest.raises(InvalidExtensionNameError, match=f"{name!r} is reserved"):
        Envelope.create(type="t", source="s", extensions={name: "forged"})
    with pytest.raises(InvalidExtensionNameError, match="reserved"):
        validate_extension_name(name)
    env = Envelope.create(type="t", source="s")
    with pytest.raises(InvalidExtensionNameError, match="reserved"):
        env.evolve(extensions={name: "forged"})
    with pytest.raises(InvalidExtensionNameError, match="reserved"):
        Envelope(id="i", type="t", source="s", time=env.time, extensions={name: "forged"})


def test_bus_refuses_extensions_that_shadow_attributes() -> None:
    from eventbus import Event, EventBus

    class Shadowed(Event, type="test.envelope.shadowed", topic="shadowed"):
        n: int

    bus = EventBus(f"memory://{uuid.uuid4().hex}", source="billing")
    with pytest.raises(InvalidExtensionNameError, match="'source' is reserved"):
        bus.envelope_for(Shadowed(n=1), extensions={"source": "attacker"})
    with pytest.raises(ValueError, match="'correlationid' is reserved"):
        bus.envelope_for(Shadowed(n=1), extensions={"correlationid": "forged"})


def test_ordinary_and_dead_letter_extensions_stay_allowed() -> None:
    env = Envelope.create(type="t", source="s", extensions={"tenant": "a", "dlqreason": "r",
                                                            "identity": "x", "sourcery": "y"})
    assert env.extensions["identity"] == "x"


def test_fast_constructors_build_ordinary_frozen_envelopes() -> None:
    # build/assemble/from_text_attributes skip the keyword __init__ (the hot paths);
    # what they return must be indistinguishable from a public construction.
    from eventbus.envelope import assemble, build

    when = datetime(2024, 5, 6, 7, 8, 9, 1, tzinfo=UTC)
    public = Envelope(id="i", type="t", source="s", time=when, data=b"{}",
                      partitionkey="k", correlationid="c", extensions={"tenant": "a"})
    built = build("i", "t", "s", when, b"{}", 1, "k", None, "c", None, None, None,
                  {"tenant": "a"})
    assembled = assemble("i", "t", "s", when, b"{}", "application/json", None, None, "1.0",
                         1, "c", None, "k", None, None, {"tenant": "a"})
    decoded = Envelope.from_text_attributes(dict(public.attributes()), b"{}")
    for env in (built, assembled, decoded):
        assert type(env) is Envelope
        assert env == public and repr(env) == repr(public)
        assert dataclasses.asdict(env) == dataclasses.asdict(public)
        with pytest.raises(dataclasses.FrozenInstanceError):
            env.id = "other"  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            del env.subject  # type: ignore[misc]
        assert env.evolve(subject="x").subject == "x" and env.subject is None


@pytest.mark.parametrize("count", [1, 31, 32, 500])
def test_new_ids_are_distinct_uuid4_texts_made_of_the_random_bits(count: int) -> None:
    from eventbus.envelope import new_ids

    random.seed(7)
    ids = new_ids(count)
    assert len(set(ids)) == count
    for text in ids:
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 4, uuid.RFC_4122)
    # The same bits as uuid4 of them: 122 random bits, version and variant set.
    random.seed(7)
    bits = random.getrandbits(128 * count)
    expected = [str(uuid.UUID(int=(bits >> (128 * (count - 1 - n))) & ((1 << 128) - 1),
                               version=4)) for n in range(count)]
    assert ids == expected
