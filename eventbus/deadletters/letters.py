"""Dead letters, in one place: where they go, what they carry, how they read back.

A message that failed for good is kept on the DLQ topic ``<topic>.<group>.dlq``
of the same broker. The dead letter is the original envelope (same id, type,
data, correlation) plus ``dlq*`` extension attributes saying what happened. When
that would exceed the broker's size limit it is shrunk until it fits: the
traceback is truncated, then dropped, and at last only a reference is kept (the
original's attributes and the reason, without its data); ``dlqdropped`` names
what went. The :class:`~eventbus.middleware.DeadLetter` middleware decides *when*
a message is dead-lettered; :mod:`eventbus.deadletters.tooling` lists and replays them.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from eventbus.adapter import Adapter, Delivery
from eventbus.adapter_names import dlq_topic
from eventbus.codec import largest_size, size_bound
from eventbus.envelope import Envelope, format_time, utcnow
from eventbus.errors import BatchPublishError, DeadLetterPublishError, MessageTooLargeError

UNDECODABLE_TYPE = "eventbus.undecodable"
"""Type of the envelope wrapping bytes that were not a CloudEvent."""

DLQ_EXTENSIONS = (
    "dlqreason",
    "dlqexception",
    "dlqmessage",
    "dlqtraceback",
    "dlqattempts",
    "dlqtopic",
    "dlqgroup",
    "dlqfailedat",
    "dlqdropped",
    "dlqheaders",
    "dlqmessageid",
)
"""Extension attributes a dead letter carries besides the original's own."""

MAX_REASON = 500
MAX_MESSAGE = 1000
MAX_TRACEBACK = 4000
# Room left for what a codec adds to ``codec.largest_size`` (header prefixes, JSON
# quoting) when the traceback is cut to fit the broker's limit.
_CODEC_SLACK = 256
_MIN_TRACEBACK = 200
_TRUNCATED = "[... traceback truncated to fit the broker's size limit ...]\n"

# The logger name users configure: unchanged by the move to eventbus.deadletters.
log = logging.getLogger("eventbus.deadletter")
Logger = logging.Logger | logging.LoggerAdapter[Any]


def dead_letter_envelope(
    envelope: Envelope,
    *,
    reason: str,
    topic: str,
    group: str,
    attempts: int,
    exc: BaseException | None = None,
    transport: Mapping[str, str] | None = None,
) -> Envelope:
    """``envelope`` annotated with why and where it failed (not yet shrunk to any limit).

    ``transport`` adds what the broker had of the message besides its bytes
    (``dlqheaders``, ``dlqmessageid``); any ``dlq*`` attribute the envelope carries from
    an earlier failure is replaced."""
    extensions = {k: v for k, v in envelope.extensions.items() if k not in DLQ_EXTENSIONS}
    extensions.update(transport or {})
    extensions.update(
        dlqreason=reason[:MAX_REASON],
        dlqattempts=str(attempts),
        dlqtopic=topic,
        dlqgroup=group,
        dlqfailedat=format_time(utcnow()),
    )
    if exc is not None:
        extensions["dlqexception"] = f"{type(exc).__module__}.{type(exc).__qualname__}"
        extensions["dlqmessage"] = str(exc)[:MAX_MESSAGE]
        text = "".join(traceback.format_exception(exc))
        extensions["dlqtraceback"] = text[-MAX_TRACEBACK:]
    return envelope.evolve(extensions=extensions)


def _with(dead: Envelope, dropped: list[str], **changes: Any) -> Envelope:
    extensions = dict(changes.pop("extensions", dead.extensions))
    extensions.pop("dlqdropped", None)
    if dropped:
        extensions["dlqdropped"] = ",".join(dropped)
    return dead.evolve(extensions=extensions, **changes)


def shrink_stages(dead: Envelope, limit: int) -> Iterator[tuple[Envelope, str]]:
    """``dead`` and ever smaller versions of it, each with what it gave up.

    In order: as it is; with the traceback's tail cut to fit; without the
    traceback; a reference (the original's attributes, reason and where it
    failed, without data, message or other extensions).
    """
    yield dead, ""
    ext = dict(dead.extensions)
    tb = ext.pop("dlqtraceback", None)
    if tb is not None:
        bare = _with(dead, ["traceback"], extensions=ext)
        room = limit - largest_size(bare) - len("dlqtraceback") - len(_TRUNCATED) - _CODEC_SLACK
        if _MIN_TRACEBACK <= room < len(tb):
            cut = _with(dead, [], extensions={**ext, "dlqtraceback": _TRUNCATED + tb[-room:]})
            yield cut, f"traceback truncated to its last {room} characters"
        yield bare, "traceback dropped"
    kept = {k: v for k, v in ext.items() if k in DLQ_EXTENSIONS and k != "dlqmessage"}
    dropped = [
        name
        for name, present in (
            ("traceback", tb is not None),
            ("message", "dlqmessage" in ext),
            ("data", bool(dead.data)),
            ("extensions", any(k not in DLQ_EXTENSIONS for k in ext)),
        )
        if present
    ]
    reference = _with(
        dead, dropped, data=b"", datacontenttype=None, dataschema=None, extensions=kept
    )
    yield reference, f"only a reference kept (dropped: {', '.join(dropped) or 'nothing'})"


async def publish_dead_letter(
    adapter: Adapter, dead: Envelope, *, topic: str, group: str, logger: Logger = log
) -> Envelope:
    """Publish ``dead`` to the DLQ of ``topic``/``group``, shrunk to fit; returns what was sent.

    Raises :class:`~eventbus.errors.DeadLetterPublishError` when the broker does
    not take it (unreachable, or not even the reference fits): the message is then
    redelivered, never lost.
    """
    target = dlq_topic(topic, group)
    limit = adapter.capabilities.max_message_bytes
    refused: Exception | None = None
    # The bound is of the largest encoding (structured JSON, where bytes data becomes
    # base64); an adapter in binary mode (headers) sends the data as it is and is the
    # only judge of its size, so a letter it would take is never shrunk by a guess.
    binary = adapter.capabilities.headers
    for candidate, change in shrink_stages(dead, limit):
        if not binary and size_bound(candidate, limit) > limit:
            continue
        try:
            await adapter.publish(target, [candidate])
        except MessageTooLargeError as exc:  # the adapter's encoded size is the judge
            refused = exc
            continue
        except BatchPublishError as exc:
            if all(isinstance(e, MessageTooLargeError) for e in exc.failures.values()):
                refused = exc
                continue
            raise _publish_failed(dead, target, exc) from exc
        except Exception as exc:
            raise _publish_failed(dead, target, exc) from exc
        if change:
            logger.warning(
                "dead letter of event %s was over the %d-byte limit of %s: %s",
                dead.id,
                limit,
                target,
                change,
            )
        return candidate
    detail = f" ({refused})" if refused is not None else ""
    raise DeadLetterPublishError(
        f"dead letter of event {dead.id} ({dead.type}) does not fit the {limit}-byte limit "
        f"of {target!r} even reduced to a reference{detail}; the message will be "
        "redelivered. Raise the broker's message size limit or shorten the event's attributes"
    )


def _publish_failed(dead: Envelope, target: str, exc: Exception) -> DeadLetterPublishError:
    if isinstance(exc, BatchPublishError) and exc.failures:
        exc = next(iter(exc.failures.values()))  # a batch of one: its own error says why
    return DeadLetterPublishError(
        f"could not publish the dead letter of event {dead.id} ({dead.type}) to {target!r} "
        f"({type(exc).__name__}: {exc}); the message will be redelivered and dead-lettered "
        "once the broker takes it"
    )


async def dead_letter(
    adapter: Adapter,
    envelope: Envelope,
    *,
    reason: str,
    topic: str,
    group: str,
    attempts: int,
    exc: BaseException | None = None,
    logger: Logger = log,
    transport: Mapping[str, str] | None = None,
) -> Envelope:
    """Build the dead letter of ``envelope`` and publish it (see :func:`publish_dead_letter`)."""
    dead = dead_letter_envelope(
        envelope,
        reason=reason,
        topic=topic,
        group=group,
        attempts=attempts,
        exc=exc,
        transport=transport,
    )
    return await publish_dead_letter(adapter, dead, topic=topic, group=group, logger=logger)


def encode_headers(headers: Mapping[str, bytes]) -> str:
    """Transport headers as one text attribute: JSON pairs of name and value, each
    value as UTF-8 text where it is text, else base64 (``[name, "b64", value]``)."""
    pairs: list[list[str]] = []
    for name, value in headers.items():
        try:
            pairs.append([name, value.decode("utf-8")])
        except UnicodeDecodeError:
            pairs.append([name, "b64", base64.b64encode(value).decode("ascii")])
    return json.dumps(pairs, separators=(",", ":"))


def decode_headers(text: str) -> dict[str, bytes]:
    """The headers :func:`encode_headers` wrote (``{}`` for text it did not write)."""
    try:
        pairs = json.loads(text)
        return {
            str(pair[0]): base64.b64decode(pair[2]) if len(pair) == 3 else str(pair[1]).encode()
            for pair in pairs
        }
    except (ValueError, TypeError, IndexError, KeyError, binascii.Error):
        return {}


async def dead_letter_undecodable(adapter: Adapter, delivery: Delivery) -> Envelope:
    """Keep bytes that are not a CloudEvent on the DLQ, wrapped in an envelope that says so,
    with the transport metadata they came with: their headers (or stream fields) in
    ``dlqheaders`` and the broker's id of the message (a stream entry id, an offset) in
    ``dlqmessageid``, so the letter holds everything the broker had of them."""
    transport: dict[str, str] = {}
    if delivery.raw_headers:
        transport["dlqheaders"] = encode_headers(delivery.raw_headers)
    if delivery.message_id:
        transport["dlqmessageid"] = str(delivery.message_id)
    wrapper = Envelope.create(
        type=UNDECODABLE_TYPE,
        source="eventbus",
        data=delivery.raw or b"",
        datacontenttype="application/octet-stream",
    )
    return await dead_letter(
        adapter,
        wrapper,
        reason=f"undecodable: {delivery.decode_error}",
        topic=delivery.topic,
        group=delivery.group,
        attempts=delivery.attempt,
        transport=transport,
    )


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """One dead letter and why it is there.

    ``dropped`` names what was left out to fit the broker's size limit
    (``traceback``, ``message``, ``data``, ``extensions``).
    """

    envelope: Envelope
    reason: str
    exception: str
    message: str
    attempts: int
    topic: str
    group: str
    failed_at: str
    traceback: str
    dropped: tuple[str, ...] = ()

    @classmethod
    def from_envelope(cls, envelope: Envelope) -> DeadLetterRecord:
        """Read a dead letter's ``dlq*`` attributes."""
        ext = envelope.extensions
        return cls(
            envelope=envelope,
            reason=ext.get("dlqreason", ""),
            exception=ext.get("dlqexception", ""),
            message=ext.get("dlqmessage", ""),
            attempts=int(ext.get("dlqattempts", "0") or 0),
            topic=ext.get("dlqtopic", ""),
            group=ext.get("dlqgroup", ""),
            failed_at=ext.get("dlqfailedat", ""),
            traceback=ext.get("dlqtraceback", ""),
            dropped=tuple(n for n in ext.get("dlqdropped", "").split(",") if n),
        )

    @property
    def original(self) -> Envelope:
        """The envelope as first published, without the dead-letter attributes."""
        ext = {k: v for k, v in self.envelope.extensions.items() if k not in DLQ_EXTENSIONS}
        return self.envelope.evolve(extensions=ext)

    @property
    def undecodable(self) -> bool:
        """Whether the letter holds bytes that were not a CloudEvent (see :attr:`raw`)."""
        return self.envelope.type == UNDECODABLE_TYPE

    @property
    def raw(self) -> bytes | None:
        """For an undecodable letter, the bytes as they arrived (``None`` otherwise)."""
        return self.envelope.data if self.undecodable else None

    @property
    def raw_headers(self) -> dict[str, bytes]:
        """The transport headers (or stream fields) an undecodable message came with."""
        return decode_headers(self.envelope.extensions.get("dlqheaders", "[]"))

    @property
    def broker_message_id(self) -> str:
        """The broker's id of the failed message, where the dead-letter step knew it
        (undecodable messages: a stream entry id, an offset)."""
        return self.envelope.extensions.get("dlqmessageid", "")

    @property
    def replayable(self) -> bool:
        """Whether the letter holds the whole message, so a replay puts back what
        failed: :attr:`original` (an event) or :attr:`raw` with its headers (bytes that
        were not one, replayed as they arrived); false for a reference whose data was
        dropped to fit the DLQ."""
        dropped = set(self.dropped)
        if self.undecodable:
            return "data" not in dropped
        return not ({"data", "extensions"} & dropped)
