"""Envelope <-> SQS message body, in CloudEvents structured mode.

SQS carries at most 10 message attributes, fewer than a CloudEvent's attributes
plus extensions, so the whole event travels as one JSON document in the body
(``application/cloudevents+json``), which the official SDKs read as it is.

A body must be text (SQS refuses some code points, NUL among them). Bytes that are
not such text (only ever raw bytes sent by :meth:`SqsAdapter.publish_raw`) travel
base64-encoded, marked by the ``eventbus-body`` message attribute, so a consumer
sees the original bytes and dead-letters them with the reason.

Transport headers (:meth:`SqsAdapter.publish_raw`, a foreign producer's message)
are SQS message attributes: a value that is text SQS accepts as a ``String``, any
other bytes as ``Binary``. Only the body is decoded as the event: an attribute never
makes a valid CloudEvent poison, and an undecodable message's attributes are kept
(as bytes) for its dead letter.

Decoding never raises: an unreadable message becomes envelope ``None`` plus why.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from typing import Any

from eventbus.adapter import Decoded
from eventbus.codec import decode_structured, encode_structured
from eventbus.envelope import Envelope

BODY_ATTRIBUTE = "eventbus-body"
BASE64 = "base64"
# Receives of the earlier copies of a message sent anew on its last receive before
# the redrive policy would take it (see SqsSubscription.release).
RECEIVES_ATTRIBUTE = "eventbus-receives"
OWN_ATTRIBUTES = frozenset({BODY_ATTRIBUTE, RECEIVES_ATTRIBUTE})
MAX_ATTRIBUTES = 10
# SQS message attribute names: letters, digits, "_", "-", "." (no "..", not first or
# last), not starting with "AWS." or "Amazon.", up to 256 characters.
_ATTRIBUTE_NAME = re.compile(r"^(?!\.)(?!.*\.\.)(?!.*\.$)[A-Za-z0-9_.-]{1,256}$")
# Characters SQS accepts in a body: #x9 | #xA | #xD | #x20-#xD7FF | #xE000-#xFFFD | #x10000+.
_REFUSED = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def encode(envelope: Envelope) -> str:
    """The structured-mode body of ``envelope`` (JSON text)."""
    return encode_structured(envelope).decode("utf-8")


def body_for_bytes(payload: bytes) -> tuple[str, dict[str, Any]]:
    """A body SQS accepts for arbitrary ``payload`` and the message attributes it needs."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and not _REFUSED.search(text):
        return text, {}
    marker = {BODY_ATTRIBUTE: {"DataType": "String", "StringValue": BASE64}}
    return base64.b64encode(payload).decode("ascii"), marker


def body_size(body: str, attributes: dict[str, Any]) -> int:
    """Bytes SQS counts against its limit: the body plus attribute names, types and values."""
    size = len(body.encode("utf-8"))
    for name, value in attributes.items():
        size += len(name) + len(value.get("DataType", "")) + len(value.get("StringValue", ""))
        size += len(value.get("BinaryValue", b""))
    return size


def header_attributes(headers: Mapping[str, bytes]) -> dict[str, Any]:
    """``headers`` as SQS message attributes; raises ``ValueError`` saying which header
    SQS cannot carry (a name it refuses, an empty value, more than it allows)."""
    attributes: dict[str, Any] = {}
    for name, value in headers.items():
        if (
            not _ATTRIBUTE_NAME.match(name)
            or name.lower().startswith(("aws.", "amazon."))
            or name in OWN_ATTRIBUTES
        ):
            raise ValueError(
                f"header {name!r} cannot be an SQS message attribute name (letters, digits, "
                "'_', '-', '.', not starting with AWS. or Amazon., and not "
                f"{sorted(OWN_ATTRIBUTES)})"
            )
        if not value:
            raise ValueError(f"header {name!r} is empty; SQS refuses empty attribute values")
        try:
            text: str | None = value.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None and not _REFUSED.search(text):
            attributes[name] = {"DataType": "String", "StringValue": text}
        else:
            attributes[name] = {"DataType": "Binary", "BinaryValue": bytes(value)}
    if len(attributes) > MAX_ATTRIBUTES - 1:  # one is kept for the body marker
        raise ValueError(
            f"{len(attributes)} headers; SQS carries at most "
            f"{MAX_ATTRIBUTES - 1} beside eventbus's own"
        )
    return attributes


def foreign_headers(attributes: Mapping[str, Any]) -> dict[str, bytes]:
    """A received message's attributes (not eventbus's own) as header bytes."""
    headers: dict[str, bytes] = {}
    for name, value in attributes.items():
        if name in OWN_ATTRIBUTES or not isinstance(value, Mapping):
            continue
        if "BinaryValue" in value:
            headers[name] = bytes(value["BinaryValue"])
        elif "StringValue" in value:
            headers[name] = str(value["StringValue"]).encode("utf-8")
    return headers


def decode(message: dict[str, Any]) -> Decoded:
    """The envelope of a received message, or why not with the bytes and attributes
    that arrived (its dead letter keeps them); never raises."""
    body = str(message.get("Body", ""))
    attributes = message.get("MessageAttributes", {}) or {}
    marker = attributes.get(BODY_ATTRIBUTE, {}).get("StringValue")
    try:
        raw = base64.b64decode(body) if marker == BASE64 else body.encode("utf-8")
    except ValueError as exc:
        return Decoded(
            None,
            f"DecodeError: body marked base64 is not ({exc})",
            body.encode("utf-8"),
            foreign_headers(attributes),
        )
    try:
        return Decoded(decode_structured(raw))
    except Exception as exc:  # any unreadable body is poison, never a consumer crash
        unwrapped = _sns_notification(raw)
        if unwrapped is not None:
            try:
                return Decoded(decode_structured(unwrapped))
            except Exception:
                pass
        return Decoded(None, f"{type(exc).__name__}: {exc}", raw, foreign_headers(attributes))


def _sns_notification(raw: bytes) -> bytes | None:
    """The message inside an SNS notification document, or ``None``.

    A queue subscribed without raw delivery (made by hand, with ``provision=false``)
    gets each event wrapped in SNS's JSON; the event inside is still a valid
    CloudEvent, so that transport detail must not make it poison.
    """
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if (
        isinstance(doc, dict)
        and doc.get("Type") == "Notification"
        and isinstance(doc.get("Message"), str)
        and "TopicArn" in doc
    ):
        return str(doc["Message"]).encode("utf-8")
    return None
