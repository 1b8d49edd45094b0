"""Envelope <-> NATS message, by the CloudEvents NATS protocol binding (1.0.3).

- **Content mode** (binding 3.): a message whose ``Content-Type`` header starts
  with ``application/cloudevents`` is *structured* (the JSON event format is the
  payload); any other message with headers is *binary* (``ce-`` headers and the
  data as payload). A message without headers, or without a ``ce-specversion``
  header, is read as structured too (a producer from before NATS headers, or a
  bridge); only a payload that is not a structured CloudEvent then is poison.
- **Header names** (3.1.3.1): every attribute, ``datacontenttype`` included, is
  ``ce-<name>``; names are case-insensitive. ``content-type`` is not written (in
  the binding it only says "structured"); it is read as the data's content type
  when ``ce-datacontenttype`` is absent (HTTP-shaped writers, eventbus before the
  binding).
- **Header values** (3.1.3.2): written percent-encoded where the binding says
  (space, ``"``, ``%`` and anything outside printable ASCII); read by undoing a
  double-quoted string, then one round of percent-decoding; a value that is not
  UTF-8 is refused. Values that need none of this (nearly all) cost one scan.
- **Writers that did not percent-encode** (eventbus before it followed the
  binding, the Go SDK): a message with a ``ce-`` value that no binding encoder
  writes (a raw space, a character outside printable ASCII, a ``%`` not starting
  a ``%XX`` escape) was not percent-encoded, so its values are taken as they are.
- Only ``ce-`` headers and ``content-type`` are read as text: a foreign header
  (a tracing interceptor's binary value) never makes a valid event poison.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, unquote_to_bytes

from eventbus import codec
from eventbus.adapter import Decoded
from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError, DecodeError, MessageTooLargeError

from .wire import header_block

HEADER_PREFIX = codec.HTTP_PREFIX
"""The CloudEvents NATS binding maps attributes to ``ce-`` headers."""
MSG_ID = "Nats-Msg-Id"
CONTENT_TYPE = "content-type"
DATACONTENTTYPE = "ce-datacontenttype"
SPECVERSION = "ce-specversion"
_STRUCTURED = "application/cloudevents"
_FRAMING = len("NATS/1.0\r\n\r\n")
# Printable ASCII but space, '"' and '%': what a ce- value may hold unencoded.
_NEEDS_ENCODING = re.compile(r"[^\x21\x23\x24\x26-\x7e]")
_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')
_QUOTED_PAIR = re.compile(r"\\(.)")
_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def wire_size(headers: Mapping[str, str], body: bytes) -> int:
    """Bytes the server counts against ``max_payload``: the header block plus the body."""
    size = _FRAMING + len(body)
    for name, value in headers.items():
        size += len(name.encode()) + len(value.encode()) + 4  # "name: value\r\n"
    return size


def encode(envelope: Envelope) -> tuple[dict[str, str], bytes]:
    """Binary-mode headers and body of ``envelope`` (values percent-encoded,
    ``datacontenttype`` as ``ce-datacontenttype``)."""
    headers, body = codec.encode_binary(envelope, HEADER_PREFIX)
    content_type = headers.pop(CONTENT_TYPE, None)
    if content_type is not None:
        headers[DATACONTENTTYPE] = content_type
    if _NEEDS_ENCODING.search("".join(headers.values())):
        for name, value in headers.items():
            if name.startswith(HEADER_PREFIX) and _NEEDS_ENCODING.search(value):
                headers[name] = quote(value, safe=_SAFE)
    return headers, body


def encode_block(envelope: Envelope, msg_id: str | None) -> tuple[bytes, bytes]:
    """The header block (with ``Nats-Msg-Id: msg_id`` if given) and body of
    ``envelope``; their lengths together are what the server counts against
    ``max_payload``."""
    headers, body = encode(envelope)
    if msg_id is not None:
        headers[MSG_ID] = msg_id
    return header_block(headers), body


def decode(headers: dict[str, str] | None, body: bytes) -> Decoded:
    """The envelope of a message; for one that cannot be read, why, and its body and
    headers as they arrived (:func:`raw_headers`), which its dead letter keeps.

    ``headers`` is the message's own dict (nats-py builds one per message):
    ``Nats-Msg-Id`` is removed from it in place; nothing else is changed.
    """
    try:
        return Decoded(_decode(headers, body))
    except Exception as exc:  # DecodeError, or a value the envelope refuses
        return Decoded(None, f"{type(exc).__name__}: {exc}", body, raw_headers(headers))


def _decode(headers: dict[str, str] | None, body: bytes) -> Envelope:
    if not headers:
        return _structured(body, "the message has no headers")
    headers.pop(MSG_ID, None)  # transport header, not an attribute
    text = "".join(headers.values())
    if text.isascii() and "%" not in text and '"' not in text:
        if DATACONTENTTYPE in headers:  # ours: content-type says the same
            headers = dict(headers)
            headers[CONTENT_TYPE] = headers.pop(DATACONTENTTYPE)
        content_type = headers.get(CONTENT_TYPE)
        if SPECVERSION in headers and not _is_structured(content_type):
            return codec.decode_binary(headers, body, HEADER_PREFIX)
    headers = _attributes(headers)
    if _is_structured(headers.get(CONTENT_TYPE)):
        return codec.decode_structured(body)
    if SPECVERSION not in headers:
        names = sorted(headers)
        return _structured(body, f"no {SPECVERSION} header (CloudEvents headers: {names})")
    return codec.decode_binary(headers, body, HEADER_PREFIX)


def _is_structured(content_type: str | None) -> bool:
    return content_type is not None and content_type.lower().startswith(_STRUCTURED)


def _structured(body: bytes, why_not_binary: str) -> Envelope:
    try:
        return codec.decode_structured(body)
    except DecodeError as exc:
        raise DecodeError(f"not a CloudEvent: {why_not_binary}, and {exc}") from None


def _attributes(headers: Mapping[str, str]) -> dict[str, str]:
    """The ``ce-`` headers (lower-cased names, values decoded) and the content type
    (``ce-datacontenttype``, else ``content-type``); every other header dropped.

    Values are decoded by the binding unless one of them shows the writer did not
    percent-encode (:func:`percent_encoded`): then all are taken as they are."""
    cloud: dict[str, str] = {}
    content_type: str | None = None
    for name, value in headers.items():
        lowered = name.lower()
        if lowered.startswith(HEADER_PREFIX):
            cloud[lowered] = value
        elif lowered == CONTENT_TYPE:
            content_type = _strict_text(name, value)
    decode = unescape if percent_encoded(cloud.values()) else _strict_text
    out = {
        CONTENT_TYPE if name == DATACONTENTTYPE else name: decode(name, value)
        for name, value in cloud.items()
    }
    if content_type is not None:
        out.setdefault(CONTENT_TYPE, content_type)
    return out


def percent_encoded(values: Iterable[str]) -> bool:
    """False when a value holds what no binding encoder writes (a raw space or
    ``"`` outside a double-quoted value, a character outside printable ASCII, a
    ``%`` not starting a ``%XX`` escape): the writer took values as they are."""
    values = list(values)
    joined = "!".join(values)  # '!' is printable and no hex digit: a stray '%' shows
    if '"' not in joined:
        return _encoded(joined)
    return all(
        (len(value) >= 2 and value[0] == '"' and value[-1] == '"')  # older binding versions
        or _encoded(value)
        for value in values
    )


def _encoded(text: str) -> bool:
    """Only printable ASCII but space and '"', and every '%' starting a %XX escape."""
    if not text.isascii() or not text.isprintable() or " " in text or '"' in text:
        return False
    return "%" not in text or _STRAY_PERCENT.search(text) is None


def unescape(name: str, value: str) -> str:
    """A ``ce-`` header value as the binding decodes it: a double-quoted string
    unescaped (RFC 7230 3.2.6), then one round of percent-decoding; invalid UTF-8
    (raw or percent-encoded) raises :class:`DecodeError`."""
    value = _strict_text(name, value)
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = _QUOTED_PAIR.sub(r"\1", value[1:-1])
    if "%" not in value:
        return value
    try:
        return unquote_to_bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"header {name!r} percent-decodes to invalid UTF-8 ({exc})") from None


def _strict_text(name: str, value: str) -> str:
    if not value.isascii():
        try:
            value.encode("utf-8")  # lone surrogates: bytes that were not UTF-8
        except UnicodeEncodeError:
            raise DecodeError(f"header {name!r} is not UTF-8 text") from None
    return value


def raw_headers(headers: Mapping[str, str] | None) -> dict[str, bytes] | None:
    """A message's headers as the bytes it carried (what an undecodable message's
    dead letter keeps), without the server's own ``Nats-*`` headers: replayed, a
    ``Nats-Msg-Id`` would be dropped by the duplicate window."""
    if not headers:
        return None
    return {
        name: value.encode("utf-8", "surrogateescape")
        for name, value in headers.items()
        if not name.lower().startswith(("nats-", "eventbus-"))
    }


_TOKEN = re.compile(r"[!-9;-~]+")  # printable ASCII but ':' (a header name)


def raw_block(topic: str, headers: Mapping[str, bytes] | None) -> bytes:
    """The header block of a raw message: ``headers`` as the bytes they are.

    NATS carries any byte in a value but a line break (which would end the header
    line) and reads names as ASCII tokens; anything else is refused, naming it.
    """
    lines = [b"NATS/1.0\r\n"]
    for name, value in (headers or {}).items():
        if not _TOKEN.fullmatch(name):
            raise ConfigurationError(
                f"header name {name!r} for {topic!r} cannot travel in NATS: use printable "
                "ASCII without spaces or ':'"
            )
        if b"\r" in value or b"\n" in value:
            raise ConfigurationError(
                f"header {name!r} for {topic!r} holds a line break, which NATS cannot carry "
                "in a header value; encode it first"
            )
        lines.append(name.encode() + b": " + value + b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def check_raw_size(topic: str, block: bytes, payload: bytes, limit: int) -> None:
    """Raise MessageTooLargeError before sending raw bytes over ``limit``."""
    size = len(block) + len(payload)
    if size > limit:
        raise MessageTooLargeError(
            f"raw message of {size} bytes (headers and payload) to {topic!r} is over the "
            f"{limit}-byte limit; nothing was sent"
        )
