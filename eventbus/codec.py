"""CloudEvents codecs: binary mode (headers + body) and structured mode (one JSON document).

Adapters pick the mode their broker suits (DESIGN: binary where there are headers,
structured where there are none or too few) and call these functions, so every
adapter reads and writes the same CloudEvents as the official SDKs. How large an
envelope is in these encodings is said here too (:func:`largest_size`,
:func:`size_bound`), for the adapters' size checks.

Over 400 lines on purpose: this is the adapter author's one module for the wire
format (each direction's fast path beside the general one it must equal, and the
size bounds that must hold for both encodings), so it stays in one place.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from operator import itemgetter
from typing import Any, Literal

import pydantic_core

from eventbus.envelope import (
    CORE_ATTRIBUTES,
    EVENTBUS_EXTENSIONS,
    JSON,
    Envelope,
    _assemble,
    format_time,
    parse_time,
    utcnow,
)
from eventbus.errors import DecodeError

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
HTTP_PREFIX = "ce-"
"""Attribute header prefix of the CloudEvents HTTP binding."""
KAFKA_PREFIX = "ce_"
"""Attribute header prefix of the CloudEvents Kafka binding (the Kafka adapter passes it)."""
AMQP_PREFIX = "cloudEvents:"
"""Attribute property prefix of the CloudEvents AMQP binding."""
DEFAULT_PREFIX = HTTP_PREFIX
"""The generic prefix used when an adapter names none; each adapter should pass its
binding's prefix explicitly."""


def is_json_content_type(content_type: str | None) -> bool:
    """True for ``application/json``, ``text/json`` and ``+json`` suffixed types (or none)."""
    if content_type is None:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("application/json", "text/json") or media.endswith("+json")


def encode_structured(envelope: Envelope) -> bytes:
    """One JSON document holding the attributes and the data (``data`` or ``data_base64``).

    Data that is compact JSON already (what the JSON payload format writes) is spliced
    in as it is, after the serialized attributes, not parsed into the document and
    serialized a second time: the bytes are the same as ``json.dumps`` of the whole
    document (``_inlines`` admits only data that a compact re-dump reproduces
    byte for byte, and ``data`` is the document's last member either way).
    """
    attributes = envelope.attributes()
    data = envelope.data
    if not data:
        return _text_object_json(attributes)
    if is_json_content_type(envelope.datacontenttype):
        if _inlines(data):
            return b"".join((_text_object_json(attributes)[:-1], b',"data":', data, b"}"))
        attributes["data_base64"] = base64.b64encode(data).decode("ascii")
    elif (envelope.datacontenttype or "").startswith("text/"):
        try:
            attributes["data"] = data.decode("utf-8")
        except UnicodeDecodeError:
            attributes["data_base64"] = base64.b64encode(data).decode("ascii")
    else:
        attributes["data_base64"] = base64.b64encode(data).decode("ascii")
    return _text_object_json(attributes)


def _text_object_json(attributes: dict[str, str]) -> bytes:
    """:func:`_compact_json` of an object whose values are all text, by pydantic-core's
    serializer (~6x faster here): for text it writes the same bytes as the json module
    (every code point checked, tests/test_codec_fast_paths.py). Text it cannot encode
    (a lone surrogate) goes through the json module, which raises as it always has."""
    try:
        return _to_json(attributes)
    except ValueError:
        return _compact_json(attributes)


def _make_compact_encoder() -> Callable[[Any], str]:
    """``json.dumps(value, separators=(",", ":"), ensure_ascii=False)``, made once.

    ``json.dumps`` with options builds a ``JSONEncoder`` and its C encoder on every
    call, which costs more than encoding a small document; this builds them once
    and calls the C encoder as ``JSONEncoder.iterencode`` does (the same output).
    Without the C accelerator it is the encoder's ``encode``.
    """
    encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return encoder.encode
    try:
        chunks = make(
            None,
            encoder.default,
            json.encoder.encode_basestring,
            None,
            ":",
            ",",
            False,
            False,
            True,
        )
    except TypeError:  # another signature: the plain encoder
        return encoder.encode
    join = "".join
    return lambda value: join(chunks(value, 0))


_compact_text = _make_compact_encoder()
_from_json = pydantic_core.from_json
_to_json = pydantic_core.to_json
_FLOAT = re.compile(rb"[0-9][.eE]")  # where a JSON number may be a float
_raw_decode = json.JSONDecoder().raw_decode


def _compact_json(value: Any) -> bytes:
    return _compact_text(value).encode("utf-8")


def _parse_json(raw: bytes | str) -> Any:
    """``json.loads(raw)``: UTF-8 text that is one JSON value from its first character
    to its last is parsed directly; anything else (a BOM, another encoding, white
    space around the value, an error to report) goes through ``json.loads`` itself.
    ``json.loads`` detects the encoding of bytes in Python on every call."""
    if isinstance(raw, str | bytes | bytearray):
        try:
            text = raw if isinstance(raw, str) else raw.decode("utf-8")
            value, end = _raw_decode(text)
            if end == len(text):
                return value
        except ValueError:  # UnicodeDecodeError included
            pass
    return json.loads(raw)


def _parse_document(payload: bytes | str) -> Any:
    """:func:`_parse_json` of a structured CloudEvent, by pydantic-core's parser (~2x
    faster here): it gives the same values as the json module (floats included,
    checked on random and edge-case numbers in tests/test_codec_fast_paths.py). What
    it refuses (a byte-order mark, invalid UTF-8, malformed JSON) is parsed by the
    json module, which reads it, or raises its own error, as it always has."""
    try:
        return _from_json(payload)
    except ValueError:
        return _parse_json(payload)


def _inlines(data: bytes) -> bool:
    """Whether embedding ``data`` as the document's ``data`` is lossless.

    The reader re-serialises inline JSON compactly, so only data already in that
    form comes back byte for byte; anything else (whitespace, escapes, invalid
    JSON) travels as ``data_base64`` so the envelope's bytes survive exactly.

    Data with no float in it (no digit followed by ``.``, ``e`` or ``E`` anywhere) is
    parsed and written again by pydantic-core (~2x faster than the json module): for
    such JSON both parse the same values and write the same bytes (they differ only
    in how they write some floats). What pydantic-core refuses is asked of the json
    module, which answers (or raises) as it always has.
    """
    if _FLOAT.search(data) is None:
        try:
            return bool(_to_json(_from_json(data)) == data)
        except ValueError:
            pass
    try:
        value = _parse_json(data)
    except ValueError:
        return False
    return _compact_json(value) == data


def decode_structured(payload: bytes | str) -> Envelope:
    """Parse a structured-mode CloudEvent; raise :class:`DecodeError` saying what is wrong."""
    try:
        doc = _parse_document(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"not a structured CloudEvent: body is not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise DecodeError("not a structured CloudEvent: body is JSON but not an object")
    data = b""
    if "data_base64" in doc:
        try:
            data = base64.b64decode(doc.pop("data_base64"), validate=True)
        except (ValueError, TypeError) as exc:
            raise DecodeError(f"structured CloudEvent has invalid data_base64 ({exc})") from exc
    elif "data" in doc:
        value = doc.pop("data")
        if isinstance(value, str) and not is_json_content_type(doc.get("datacontenttype")):
            data = value.encode("utf-8")
        else:
            data = _compact_json(value)
    # Our own documents' attributes, read by lookups (as binary mode's headers are).
    envelope = _decode_own_dict(doc, data, "", None, content_type_name="datacontenttype")
    return envelope if envelope is not None else _build(doc, data)


def binary_headers(
    envelope: Envelope, prefix: str = DEFAULT_PREFIX, *, omit: tuple[str, ...] = ()
) -> list[tuple[str, bytes]]:
    """Binary-mode headers as ``(name, utf-8 bytes)`` pairs, built in one pass.

    The fast path for adapters whose clients take header lists (Kafka, NATS);
    ``omit`` leaves attributes out that travel elsewhere (Kafka: ``partitionkey``
    in the record key).
    """
    names = _header_names(prefix)
    out = [
        (names["specversion"], envelope.specversion.encode()),
        (names["id"], envelope.id.encode()),
        (names["source"], envelope.source.encode()),
        (names["type"], envelope.type.encode()),
        (names["time"], format_time(envelope.time).encode()),
        (names["dataversion"], str(envelope.dataversion).encode()),
    ]
    if envelope.datacontenttype is not None:
        out.append(("content-type", envelope.datacontenttype.encode()))
    for name in _OPTIONAL:
        value = getattr(envelope, name)
        if value is not None and name not in omit:
            out.append((names[name], value.encode()))
    for name, value in envelope.extensions.items():
        out.append((prefix + name, value.encode()))
    return out


_REQUIRED = ("specversion", "id", "source", "type", "time", "dataversion")
_OPTIONAL = (
    "dataschema",
    "subject",
    "correlationid",
    "causationid",
    "partitionkey",
    "traceparent",
    "tracestate",
)
_ATTRIBUTE_NAMES = (*_REQUIRED, *_OPTIONAL)
_NAME_CACHE: dict[str, dict[str, str]] = {}


def _header_names(prefix: str) -> dict[str, str]:
    names = _NAME_CACHE.get(prefix)
    if names is None:
        names = _NAME_CACHE[prefix] = {name: prefix + name for name in _ATTRIBUTE_NAMES}
    return names


def encode_binary(envelope: Envelope, prefix: str = DEFAULT_PREFIX) -> tuple[dict[str, str], bytes]:
    """Headers (attributes as ``prefix + name``, ``content-type``) and the body bytes.

    Built straight from the envelope's fields in one pass (the same headers, in
    the same order, as ``envelope.attributes()`` would give): this runs once per
    published message on every broker that encodes, the memory broker included.
    """
    names = _ENCODE_NAMES.get(prefix) or _encode_names(prefix)
    (
        n_spec,
        n_id,
        n_source,
        n_type,
        n_time,
        n_version,
        n_schema,
        n_subject,
        n_corr,
        n_cause,
        n_key,
        n_parent,
        n_state,
    ) = names
    headers = {
        n_spec: envelope.specversion,
        n_id: envelope.id,
        n_source: envelope.source,
        n_type: envelope.type,
        n_time: format_time(envelope.time),
    }
    value = envelope.datacontenttype
    if value is not None:
        headers["content-type"] = value
    value = envelope.dataschema
    if value is not None:
        headers[n_schema] = value
    value = envelope.subject
    if value is not None:
        headers[n_subject] = value
    version = envelope.dataversion
    headers[n_version] = "1" if version == 1 else str(version)
    value = envelope.correlationid
    if value is not None:
        headers[n_corr] = value
    value = envelope.causationid
    if value is not None:
        headers[n_cause] = value
    value = envelope.partitionkey
    if value is not None:
        headers[n_key] = value
    value = envelope.traceparent
    if value is not None:
        headers[n_parent] = value
    value = envelope.tracestate
    if value is not None:
        headers[n_state] = value
    if envelope.extensions:
        for name, text in envelope.extensions.items():
            headers[prefix + name] = text
    return headers, envelope.data


def encode_binary_sized(envelope: Envelope, prefix: str) -> tuple[dict[str, str], bytes, int]:
    """:func:`encode_binary` and :func:`binary_size` of its result, in one call."""
    headers, body = encode_binary(envelope, prefix)
    text = "".join((*headers, *headers.values()))  # names and values: one join
    return headers, body, len(body) + (len(text) if text.isascii() else len(text.encode("utf-8")))


def encode_binary_sized_many(
    envelopes: Sequence[Envelope], prefix: str
) -> Iterator[tuple[dict[str, str], bytes, int]]:
    """:func:`encode_binary_sized` of each envelope, in order, with the work a batch
    shares done once.

    The envelopes of one ``publish_many`` differ only in their id and correlation
    id (source, type, time, versions... are the same objects): an envelope whose
    other attributes equal the previous one's, with no extensions, gets a copy of
    its headers with those two values replaced (same names, same order, so what
    :func:`encode_binary` gives), and its size from theirs. Any other envelope is
    encoded on its own and becomes the one the next is compared with; after two
    such misses in a row (envelopes built one at a time, each with its own time)
    the rest are encoded on their own without the comparison.
    """
    if len(envelopes) == 1:  # a lone publish: nothing to share
        yield encode_binary_sized(envelopes[0], prefix)
        return
    names = _ENCODE_NAMES.get(prefix) or _encode_names(prefix)
    n_id, n_corr = names[1], names[8]
    shape: tuple[Any, ...] | None = None
    template: dict[str, str] = {}
    fixed = 0  # the template's size without its id, correlation id and body
    misses = 0
    for index, envelope in enumerate(envelopes):
        if misses == 2:
            for rest in envelopes[index:]:
                yield encode_binary_sized(rest, prefix)
            return
        id_, corr = envelope.id, envelope.correlationid
        current = (
            envelope.source,
            envelope.type,
            envelope.time,
            envelope.datacontenttype,
            envelope.dataschema,
            envelope.subject,
            envelope.specversion,
            envelope.dataversion,
            corr is None,
            envelope.causationid,
            envelope.partitionkey,
            envelope.traceparent,
            envelope.tracestate,
        )
        body = envelope.data
        if (
            current == shape
            and not envelope.extensions
            and id_.isascii()
            and (corr is None or corr.isascii())
        ):
            headers = template.copy()
            headers[n_id] = id_
            size = fixed + len(body) + len(id_)
            if corr is not None:
                headers[n_corr] = corr
                size += len(corr)
            misses = 0
            yield headers, body, size
            continue
        if shape is not None:
            misses += 1
        headers, body, size = encode_binary_sized(envelope, prefix)
        if envelope.extensions or not id_.isascii() or not (corr is None or corr.isascii()):
            shape = None  # the next envelope is encoded on its own too
        else:
            shape, template = current, headers
            fixed = size - len(body) - len(id_) - (0 if corr is None else len(corr))
        yield headers, body, size


# encode_binary's header names per prefix, in the order of _ATTRIBUTE_NAMES.
_ENCODE_NAMES: dict[str, tuple[str, ...]] = {}


def _encode_names(prefix: str) -> tuple[str, ...]:
    names = _ENCODE_NAMES[prefix] = tuple(_header_names(prefix).values())
    return names


def binary_size(headers: Mapping[str, str], body: bytes) -> int:
    """Bytes of a binary-mode message: the body plus every header name and value (UTF-8)."""
    text = "".join(headers) + "".join(headers.values())
    return len(body) + (len(text) if text.isascii() else len(text.encode("utf-8")))


def _decode_own_dict(
    headers: dict[str, Any],
    body: bytes | None,
    prefix: str,
    key: str | None,
    text: bool = False,
    content_type_name: str = "content-type",
) -> Envelope | None:
    """The common case read by lookups: text values under the exact prefix, no
    extensions and no structured content type. ``None`` when the headers are
    anything else; the general reader then takes them (and its errors apply).
    ``text``: the caller knows every value is a ``str`` (it stored them).
    ``content_type_name``: where the content type is (a structured document's
    attributes, prefix ``""``, have it as ``datacontenttype``)."""
    if not text:
        try:
            "".join(headers.values())  # raises unless every value is text
        except TypeError:
            return None
    layouts = _LAYOUTS.get((prefix, content_type_name))
    if layouts is None:
        layouts = _LAYOUTS[prefix, content_type_name] = {}
    names = tuple(headers)
    pick = layouts.get(names)
    if pick is None:
        pick = _layout(names, prefix, content_type_name)
        if len(layouts) < _MAX_LAYOUTS:
            layouts[names] = pick
    if pick is False:
        return None  # extensions, other casing or a name we do not read here
    (
        specversion,
        id_,
        source,
        type_,
        time_text,
        version,
        content_type,
        schema,
        subject,
        correlation,
        causation,
        partition,
        traceparent,
        tracestate,
    ) = pick((*headers.values(), None))
    if specversion is None or not (id_ and source and type_):
        return None  # not a CloudEvent, or an error the general reader reports
    if (
        content_type is not None
        and content_type != JSON
        and content_type.lower().startswith(STRUCTURED_CONTENT_TYPE)
    ):
        return None
    try:
        when = parse_time(time_text) if time_text else utcnow()
        dataversion = 1 if version is None or version == "1" else int(version)
    except (ValueError, TypeError) as exc:
        raise DecodeError(f"CloudEvent has an unreadable attribute ({exc})") from exc
    return _assemble(
        id_,
        type_,
        source,
        when,
        body or b"",
        content_type,
        schema,
        subject,
        specversion,
        dataversion,
        correlation,
        causation,
        partition if key is None else key,
        traceparent,
        tracestate,
        {},
    )


decode_own_dict = _decode_own_dict
"""The common case of :func:`decode_binary_dict` alone: ``None`` when the headers
need the general reader (for callers that call that one then)."""


# Per prefix: the header names of a message, in order -> a getter picking the
# attribute values out of its header values (a missing attribute picks the None
# appended after them), or False when a name is not one this fast path reads.
# Messages from one codec come in a handful of layouts, so this stays small.
_LAYOUTS: dict[
    tuple[str, str],
    dict[tuple[str, ...], Callable[[tuple[str | None, ...]], tuple[Any, ...]] | Literal[False]],
] = {}
_MAX_LAYOUTS = 256
_FIELD_ORDER = (*_REQUIRED, "content-type", *_OPTIONAL)


def _layout(
    names: tuple[str, ...], prefix: str, content_type_name: str
) -> Callable[[tuple[str | None, ...]], tuple[Any, ...]] | Literal[False]:
    wanted = {
        content_type_name if name == "content-type" else prefix + name: index
        for index, name in enumerate(_FIELD_ORDER)
    }
    if not set(names) <= wanted.keys():
        return False
    position = {name: index for index, name in enumerate(names)}
    missing = len(names)  # the None after the values
    return itemgetter(*(position.get(name, missing) for name in wanted))


def decode_binary_dict(headers: dict[str, str], body: bytes | None, prefix: str) -> Envelope:
    """:func:`decode_binary` for a header dict of text values and no message key (the
    memory broker's stored form), with the common case read first, by lookups."""
    if type(headers) is dict:
        envelope = _decode_own_dict(headers, body, prefix, None)
        if envelope is not None:
            return envelope
    return _decode_binary(headers, body, prefix, None)


def decode_binary(
    headers: Mapping[str, str | bytes] | Iterable[tuple[str, str | bytes]],
    body: bytes | None,
    prefix: str = DEFAULT_PREFIX,
    *,
    key: str | bytes | None = None,
) -> Envelope:
    """Rebuild an envelope from binary-mode headers and body.

    A message whose ``content-type`` is ``application/cloudevents+json`` is read
    as structured mode, as the CloudEvents protocol bindings require. ``key`` is
    the broker's message key (the Kafka record key): the CloudEvents Kafka binding
    maps ``partitionkey`` to it, and the official SDKs send it only there, so when
    given it becomes the envelope's ``partitionkey``.
    """
    text: str | None = None
    if key is not None:
        try:
            text = key.decode("utf-8") if isinstance(key, bytes | bytearray) else str(key)
        except UnicodeDecodeError as exc:
            raise DecodeError(f"message key is not UTF-8 text ({exc})") from exc
    return _decode_binary(headers, body, prefix, text)


def _decode_binary(
    headers: Mapping[str, str | bytes] | Iterable[tuple[str, str | bytes]],
    body: bytes | None,
    prefix: str,
    key: str | None,
) -> Envelope:
    if type(headers) is dict:
        envelope = _decode_own_dict(headers, body, prefix, key)
        if envelope is not None:
            return envelope
    # A dict is read in place; any other iterable becomes a list, so the error
    # below can still name the headers of a one-shot iterable.
    if isinstance(headers, dict):
        items: Iterable[tuple[str, str | bytes]] = headers.items()
    elif isinstance(headers, Mapping):
        items = list(headers.items())
    else:
        items = list(headers)
    attrs: dict[str, str] = {}
    content_type: str | None = None
    lprefix, skip = prefix.lower(), len(prefix)
    # Only the protocol's own headers are read as text: a foreign header (a tracing
    # interceptor's binary value) is not ours to decode and never makes a valid
    # CloudEvent unreadable.
    for name, raw in items:
        if name.startswith(lprefix):
            attrs[name[skip:]] = _text(name, raw)
            continue
        lowered = name.lower()
        if lowered.startswith(lprefix):
            attrs[lowered[skip:]] = _text(name, raw)
        elif lowered == "content-type":
            content_type = _text(name, raw)
    if content_type and content_type.lower().startswith(STRUCTURED_CONTENT_TYPE):
        return decode_structured(body or b"")
    if "specversion" not in attrs:
        raise DecodeError(
            f"not a binary-mode CloudEvent: no {prefix}specversion header "
            f"(headers: {sorted(k for k, _ in items)})"
        )
    if content_type is not None:
        attrs["datacontenttype"] = content_type
    if key is not None:
        attrs["partitionkey"] = key
    return _build(attrs, body or b"", Envelope.from_text_attributes)


def _text(name: str, raw: str | bytes) -> str:
    if type(raw) is str:
        return raw
    if isinstance(raw, bytes | bytearray):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"header {name!r} is not UTF-8 text ({exc})") from exc
    return str(raw)


def _build(
    attrs: dict[str, Any],
    data: bytes,
    make: Callable[[dict[str, Any], bytes], Envelope] = Envelope.from_attributes,
) -> Envelope:
    """``make(attrs, data)``, its errors said as the :class:`DecodeError` of an unreadable
    CloudEvent."""
    try:
        return make(attrs, data)
    except KeyError as exc:
        raise DecodeError(f"CloudEvent lacks the required attribute {exc.args[0]!r}") from exc
    except (ValueError, TypeError) as exc:
        raise DecodeError(f"CloudEvent has an unreadable attribute ({exc})") from exc


# -- sizes ------------------------------------------------------------------------------------


def largest_size(envelope: Envelope) -> int:
    """Bytes of the largest encoding eventbus uses for ``envelope``.

    The larger of structured mode (one JSON document) and binary mode (body plus
    every header name and value, with the longest prefix a binding uses), so a
    broker limit checked against it holds whichever mode an adapter picks.
    """
    binary = len(envelope.data)
    for name, value in envelope.attributes().items():
        header = "content-type" if name == "datacontenttype" else name
        binary += _LONGEST_PREFIX + len(header) + len(value.encode("utf-8"))
    return max(binary, len(encode_structured(envelope)))


def size_bound(envelope: Envelope, limit: int) -> int:
    """An upper bound of :func:`largest_size`: cheap far below ``limit``, exact near or
    above it (so safe for ``Adapter.check_size`` whichever mode an adapter picks).

    Every attribute counts (id, correlation, traceparent, extensions...), each at
    the most its text can take in any encoding, so an envelope whose bound is within
    the broker's limit fits in binary and in structured mode.
    """
    estimate = _FIXED_BOUND + len(str(envelope.dataversion))
    estimate += _data_bound(envelope.data, envelope.datacontenttype)
    values = [
        value
        for value in (
            envelope.id,
            envelope.type,
            envelope.source,
            envelope.specversion,
            envelope.datacontenttype,
            envelope.dataschema,
            envelope.subject,
            envelope.correlationid,
            envelope.causationid,
            envelope.partitionkey,
            envelope.traceparent,
            envelope.tracestate,
        )
        if value is not None
    ]
    text = "".join(values)
    if text.isascii() and text.isprintable():
        # Every value is printable ASCII, so the sum of their bounds is this.
        estimate += len(text) + text.count('"') + text.count("\\")
    else:
        estimate += sum(_text_bound(value) for value in values)
    for name, value in envelope.extensions.items():
        estimate += len(name) + _PER_ATTRIBUTE + _text_bound(value)
    return estimate if estimate < limit else largest_size(envelope)


# Binary mode prefixes each attribute header (AMQP_PREFIX is the longest binding's);
# structured mode spends quotes, a colon and a comma on each member. Either way an
# attribute takes at most its name plus this many bytes beyond its value's text.
_LONGEST_PREFIX = len(AMQP_PREFIX)
_PER_ATTRIBUTE = max(_LONGEST_PREFIX, len('"":"",'))
# Every attribute name the envelope may send as a field, the braces, the time text
# (RFC 3339, UTC, microseconds: at most 27 bytes) and the ``"data_base64":`` member.
_FIXED_BOUND = (
    sum(len(name) + _PER_ATTRIBUTE for name in (*CORE_ATTRIBUTES, *EVENTBUS_EXTENSIONS))
    + len("{}")
    + 32
    + len('"data_base64":')
)


def _text_bound(value: str) -> int:
    """Most bytes ``value`` takes as a UTF-8 header value or as a JSON string's contents."""
    if value.isascii() and value.isprintable():
        # json.dumps escapes only quotes and backslashes among printable ASCII.
        return len(value) + value.count('"') + value.count("\\")
    # A control character becomes a 6-byte \u00XX escape; UTF-8 needs at most 4 bytes.
    return 6 * len(value)


def _data_bound(data: bytes, content_type: str | None) -> int:
    """Most bytes ``data`` takes: raw in binary mode, inline, text or base64 in structured."""
    if not data:
        return 0
    base64_size = (len(data) + 2) // 3 * 4 + 2
    if content_type is not None and content_type.startswith("text/"):
        return max(base64_size, 6 * len(data) + 2)  # decoded text, JSON-escaped
    return base64_size  # inline JSON is only used when it is the exact bytes: smaller
