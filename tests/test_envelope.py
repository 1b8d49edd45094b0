"""The envelope: creation defaults, immutability, CloudEvents attributes and time text."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import pickle
import random
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from eventbus import Envelope, Event, codec
from eventbus.envelope import SPEC_VERSION, format_time, parse_time, validate_extension_name
from eventbus.errors import InvalidExtensionNameError
from eventbus.events import Message
from eventbus.publishing import build_envelope, build_envelopes
from tests.bus_support import random_envelope


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
    for name in (
        "correlationid",
        "causationid",
        "partitionkey",
        "traceparent",
        "tracestate",
        "subject",
        "dataschema",
    ):
        assert getattr(env, name) is None


def test_create_ids_are_unique() -> None:
    ids = {Envelope.create(type="t", source="s").id for _ in range(200)}
    assert len(ids) == 200


def test_create_keeps_given_id_and_time_and_known_attributes() -> None:
    when = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    env = Envelope.create(
        type="t",
        source="s",
        id="fixed",
        time=when,
        data=b"{}",
        partitionkey="k",
        correlationid="c",
        dataversion=3,
        subject="sub",
    )
    assert (
        env.id,
        env.time,
        env.partitionkey,
        env.correlationid,
        env.dataversion,
        env.subject,
    ) == ("fixed", when, "k", "c", 3, "sub")


def test_create_turns_unknown_keywords_into_text_extensions() -> None:
    env = Envelope.create(
        type="t", source="s", tenant="acme", priority=5, urgent=True, extensions={"region": "eu1"}
    )
    assert env.extensions == {"region": "eu1", "tenant": "acme", "priority": "5", "urgent": "true"}


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
        dataschema="https://x/s",
        subject="sub",
        correlationid="c",
        causationid="p",
        partitionkey="k",
        traceparent="tp",
        tracestate="ts",
        dataversion=4,
        datacontenttype=None,
        extensions={"tenant": "acme"},
    )
    attrs = full.attributes()
    assert "datacontenttype" not in attrs and "data" not in attrs
    assert {
        k: attrs[k]
        for k in (
            "dataschema",
            "subject",
            "correlationid",
            "causationid",
            "partitionkey",
            "traceparent",
            "tracestate",
            "dataversion",
            "tenant",
        )
    } == {
        "dataschema": "https://x/s",
        "subject": "sub",
        "correlationid": "c",
        "causationid": "p",
        "partitionkey": "k",
        "traceparent": "tp",
        "tracestate": "ts",
        "dataversion": "4",
        "tenant": "acme",
    }


def test_from_attributes_round_trips_attributes() -> None:
    env = Envelope.create(
        type="t",
        source="s",
        data=b'{"a":1}',
        subject="sub",
        dataschema="d",
        correlationid="c",
        causationid="p",
        partitionkey="k",
        traceparent="tp",
        tracestate="ts",
        dataversion=7,
        extensions={"tenant": "acme"},
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
        Envelope.from_attributes({"id": "i", "source": "s", "type": "t", "dataversion": "two"}, b"")
    with pytest.raises(ValueError):
        Envelope.from_attributes({"id": "i", "source": "s", "type": "t", "time": "yesterday"}, b"")


def test_from_attributes_extension_values_become_canonical_text() -> None:
    env = Envelope.from_attributes(
        {"id": "i", "source": "s", "type": "t", "flag": True, "off": False, "n": 5, "gone": None},
        b"",
    )
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
        {"id": "i", "source": "s", "type": "t", "subject": 5, "correlationid": 7, "dataversion": 3},
        b"",
    )
    assert (env.subject, env.correlationid, env.dataversion) == ("5", "7", 3)


# -- reserved extension names ------------------------------------------------------------

RESERVED = (
    "id",
    "source",
    "specversion",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
    "data",
    "dataversion",
    "correlationid",
    "causationid",
    "partitionkey",
    "traceparent",
    "tracestate",
)


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
    env = Envelope.create(
        type="t",
        source="s",
        extensions={"tenant": "a", "dlqreason": "r", "identity": "x", "sourcery": "y"},
    )
    assert env.extensions["identity"] == "x"


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
    expected = [
        str(uuid.UUID(int=(bits >> (128 * (count - 1 - n))) & ((1 << 128) - 1), version=4))
        for n in range(count)
    ]
    assert ids == expected


# -- every fast path builds what the general path builds -----------------------------------


class Placed(Event, type="test.envelope.placed", topic="test-envelope-placed"):
    n: int
    name: str = "ü"


class Versioned(Event, type="test.envelope.versioned", topic="test-envelope-placed", version=3):
    n: int


PARENTS = [
    None,
    Envelope.create(type="p", source="s"),
    Envelope.create(
        type="p", source="s", correlationid="flow", traceparent="00-a-b-01", tracestate="k=v"
    ),
]
OPTIONS: list[dict[str, Any]] = [
    {},
    {"key": "k-1"},
    {"subject": "naïve ✓"},
    {"correlation_id": "given"},
    {"extensions": {"tenant": "a", "region": "eu"}},
    {"key": "k", "subject": "s", "correlation_id": "c", "extensions": {"tenant": "b"}},
]


def _general(
    message: Message,
    source: str,
    like: Envelope,
    *,
    parent: Envelope | None,
    key: str | None = None,
    subject: str | None = None,
    correlation_id: str | None = None,
    extensions: dict[str, str] | None = None,
) -> Envelope:
    """The envelope the documented rules give, built by the keyword __init__."""
    return Envelope.create(
        type=message.event_type(),
        source=source,
        data=message.to_bytes(),
        id=like.id,
        time=like.time,
        dataversion=message.data_version(),
        partitionkey=key,
        subject=subject,
        correlationid=correlation_id
        or ((parent.correlationid or parent.id) if parent is not None else like.id),
        causationid=parent.id if parent is not None else None,
        traceparent=parent.traceparent if parent is not None else None,
        tracestate=parent.tracestate if parent is not None else None,
        extensions=extensions or {},
    )


def _same(fast: Envelope, general: Envelope) -> None:
    """``fast`` is indistinguishable from ``general``: equal, same repr and fields, an
    ordinary frozen Envelope that copies, pickles and evolves like any other."""
    assert type(fast) is Envelope
    assert fast == general and repr(fast) == repr(general)
    assert dataclasses.asdict(fast) == dataclasses.asdict(general)
    assert pickle.loads(pickle.dumps(fast)) == general
    assert copy.copy(fast) == general
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.id = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del fast.subject  # type: ignore[misc]
    assert fast.evolve(subject="x") == general.evolve(subject="x")


@pytest.mark.parametrize("parent", PARENTS)
@pytest.mark.parametrize("options", OPTIONS)
def test_the_publish_fast_paths_build_what_envelope_create_builds(
    parent: Envelope | None, options: dict[str, Any]
) -> None:
    one = build_envelope(Placed(n=1), "svc", parent=parent, **options)
    _same(one, _general(Placed(n=1), "svc", one, parent=parent, **options))
    messages: list[Message] = [Placed(n=2), Versioned(n=3), Placed(n=4, name="漢")]
    for batch in (messages, messages[:1], [Placed(n=5), Placed(n=6)]):
        built = build_envelopes(batch, "svc", parent=parent, **options)
        for message, envelope in zip(batch, built, strict=True):
            _same(envelope, _general(message, "svc", envelope, parent=parent, **options))
        if options.get("extensions"):  # each envelope has its own copy
            assert len({id(envelope.extensions) for envelope in built}) == len(built)


@pytest.mark.parametrize("prefix", ["ce_", "ce-", "cloudEvents:"])
def test_the_decode_fast_paths_build_what_from_attributes_builds(prefix: str) -> None:
    rng = random.Random(2026)
    samples = [
        Envelope.create(type="t", source="s", data=b"{}"),
        Envelope.create(
            type="t",
            source="s",
            data=b"{}",
            subject="sub",
            dataschema="urn:x",
            partitionkey="k",
            causationid="c",
            correlationid="corr",
            traceparent="00-a-b-01",
            tracestate="x=1",
            dataversion=4,
        ),
        Envelope.create(type="t", source="s", datacontenttype=None),
        Envelope.create(type="t", source="s", extensions={"tenant": "a"}),
        *(random_envelope(rng) for _ in range(30)),
    ]
    for envelope in samples:
        general = Envelope.from_attributes(envelope.attributes(), envelope.data)
        assert general == envelope
        _same(Envelope.from_text_attributes(dict(envelope.attributes()), envelope.data), general)
        if envelope.datacontenttype and envelope.datacontenttype.startswith(
            codec.STRUCTURED_CONTENT_TYPE
        ):
            continue  # binary mode reads these as structured: not a fast path's case
        headers, body = codec.encode_binary(envelope, prefix)
        _same(codec.decode_binary_dict(dict(headers), body, prefix), general)  # by layout
        _same(codec.decode_binary(list(headers.items()), body, prefix), general)  # general
        key = envelope.partitionkey
        if key is not None:
            _same(codec.decode_binary(dict(headers), body, prefix, key=key), general)


def test_the_old_fast_constructors_still_work_and_warn_naming_the_new_way() -> None:
    when = datetime(2024, 5, 6, 7, 8, 9, 1, tzinfo=UTC)
    public = Envelope(
        id="i",
        type="t",
        source="s",
        time=when,
        data=b"{}",
        partitionkey="k",
        correlationid="c",
        extensions={"tenant": "a"},
    )
    with pytest.warns(DeprecationWarning, match="build_envelope"):
        from eventbus.envelope import build
    assert (
        build("i", "t", "s", when, b"{}", 1, "k", None, "c", None, None, None, {"tenant": "a"})
        == public
    )
    with pytest.warns(DeprecationWarning, match="build_envelopes"):
        from eventbus.envelope import build_many
    assert build_many(
        ["i"], ["t"], [1], [b"{}"], "s", when, "k", None, "c", None, None, None, {"tenant": "a"}
    ) == [public]
    with pytest.warns(DeprecationWarning, match="from_text_attributes"):
        from eventbus.envelope import assemble
    assert (
        assemble(
            "i",
            "t",
            "s",
            when,
            b"{}",
            "application/json",
            None,
            None,
            "1.0",
            1,
            "c",
            None,
            "k",
            None,
            None,
            {"tenant": "a"},
        )
        == public
    )


@pytest.mark.parametrize("parent", PARENTS)
@pytest.mark.parametrize("started", [None, ("00-" + "1" * 32 + "-" + "2" * 16 + "-00", None)])
def test_a_trace_decided_before_the_build_is_built_in(
    parent: Envelope | None, started: tuple[str, str | None] | None
) -> None:
    """A tracing ``trace_root``'s answer is what an envelope carries when its parent
    gives no trace context (built in, as a parent's would be); it is asked only then,
    and only with a topic."""
    asked: list[str] = []

    def root(topic: str) -> tuple[str, str | None] | None:
        asked.append(topic)
        return started

    carrier = None
    if parent is not None and parent.traceparent is None and started is not None:
        carrier = parent.evolve(traceparent=started[0], tracestate=started[1])
    elif parent is None and started is not None:
        carrier = Envelope.create(
            type="p", source="s", traceparent=started[0], tracestate=started[1]
        )
    one = build_envelope(Placed(n=1), "svc", parent=parent, trace_root=root, topic="t")
    general = _general(Placed(n=1), "svc", one, parent=carrier or parent)
    if parent is None:  # the carrier stands in for the trace context only
        general = general.evolve(causationid=None, correlationid=one.id)
    _same(one, general)
    batch = [Placed(n=2), Placed(n=3)]
    for built in (
        build_envelopes(batch, "svc", parent=parent, trace_root=root),  # one class: its topic
        build_envelopes(batch, "svc", parent=parent, trace_root=root, topic="t"),
    ):
        for envelope in built:
            assert (envelope.traceparent, envelope.tracestate) == (
                (one.traceparent, one.tracestate)
            )
    wanted = [] if parent is not None and parent.traceparent else ["t", Placed.default_topic(), "t"]
    assert asked == wanted
    assert build_envelope(Placed(n=1), "svc", parent=parent, trace_root=root).traceparent == (
        parent.traceparent if parent is not None else None
    )  # no topic: not asked
    mixed = build_envelopes([Placed(n=1), Versioned(n=2)], "svc", parent=parent, trace_root=root)
    assert asked == wanted and {e.traceparent for e in mixed} == {
        parent.traceparent if parent is not None else None
    }  # two classes, no topic: not asked either
