"""The NATS hot paths done in bulk: header blocks, batched writes, PubAcks per batch.

nats-py builds and parses message headers in pure Python one character at a
time (its parser calls ``str.isspace`` per character of every header name) and
every ``publish`` or ``ack`` goes through subject validation, a command built
with an f-string and a flush hand-off. For a CloudEvent in binary mode, with
eight or more headers, that was more than everything else the adapters do per
message. :class:`FastClient` keeps nats-py's connection, reconnect and
subscription machinery and replaces only those paths:

- :func:`header_block` encodes the envelope's headers into the wire block once
  (``NATS/1.0\\r\\n`` + ``name: value\\r\\n``...), and :func:`write` sends many
  ``HPUB``/``PUB`` commands as one buffer (on any nats-py client, a client the
  user configured too);
- :meth:`FastClient._parse_header_lines` reads a received header block with
  ``str`` methods on the whole line instead of a per-character generator;
- :class:`PubAcks` publishes a JetStream batch with one reply subscription and
  one future per batch (instead of a request, a future and a timer per message).

Everything falls back to nats-py's own code for what it does not recognise
(status lines, non-ASCII header names, values with line breaks).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from nats import errors as nats_errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSub
from nats.js.errors import APIError

_CRLF = "\r\n"
_HEAD = "NATS/1.0\r\n"
_SPACE = re.compile(r"\s")
_STATUS = "Status"
_NO_RESPONDERS = "503"


def header_block(headers: Mapping[str, str]) -> bytes:
    """The header block of ``headers`` as the server reads it (UTF-8).

    A line break inside a value would end the header line (or inject a command),
    so, as nats-py does, values are then stripped and line breaks become spaces.
    """
    text = _HEAD + "".join([f"{name}: {value}\r\n" for name, value in headers.items()]) + _CRLF
    if text.count("\n") != len(headers) + 2 or text.count("\r") != len(headers) + 2:
        text = (
            _HEAD
            + "".join(
                [
                    f"{name.strip()}: {value.strip().translate(_NEWLINES)}\r\n"
                    for name, value in headers.items()
                ]
            )
            + _CRLF
        )
    return text.encode()


_NEWLINES = str.maketrans({"\r": " ", "\n": " "})


def _parse_header_lines(raw: bytes) -> dict[str, str]:
    """nats-py's header-line parser, same results, one regex pass for the usual shape.

    Every line ``name: value`` with a name free of spaces and colons and a value
    without surrounding whitespace (what nats-py and this module write) is read
    in one ``findall``; anything else (a count that does not add up) goes to
    nats-py's own line-by-line parser.
    """
    if raw.isascii():
        text = raw.decode("ascii")
        pairs = _LINE.findall(text)
        if len(pairs) == text.count("\r\n") - 1:
            return dict(pairs)
    return _parse_lines(raw)


def _parse_lines(raw: bytes) -> dict[str, str]:
    """nats-py's line-by-line parser, but a value that is not UTF-8 keeps its bytes
    (``surrogateescape``) where nats-py replaces them: a foreign binary header is
    then ignored by the codec and kept intact in an undecodable message's dead
    letter (``value.encode("utf-8", "surrogateescape")`` gives the bytes back)."""
    out: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue  # not a header name (nats-py skips it too)
        if _SPACE.search(key):
            continue
        out[key] = value.strip().decode("utf-8", "surrogateescape")
    return out


parse_header_lines = _parse_header_lines
"""Public name of the parser (the adapter reads stored messages' headers with it)."""
_LINE = re.compile(r"^([^\s:]+): ((?:\S(?:[^\r\n]*\S)?)?)\r\n", re.MULTILINE)


class FastClient(Client):
    """nats-py's ``Client`` with bulk writes and a cheaper header parser."""

    _parse_header_lines = staticmethod(_parse_header_lines)
    closing = False
    """Set by :func:`~eventbus_nats.connection.close_quietly`: a disconnect is ours."""

    async def _process_pong(self) -> None:
        # Each PONG answers the oldest PING. nats-py resolves that PING's future even
        # when its flush() gave up waiting and cancelled it (a health check on a
        # silent path): InvalidStateError kills the read loop, and the connection
        # then reads nothing until the stale-connection check replaces it. A late
        # PONG is consumed by the PING it answers and resolves nothing.
        if self._pongs:
            future = self._pongs.pop(0)
            if not future.done():
                future.set_result(True)
            self._pongs_received += 1
            self._pings_outstanding = 0


async def write(client: Client, commands: Sequence[bytes], count: int, size: int) -> None:
    """Queue ``commands`` (whole ``PUB``/``HPUB`` lines, ``count`` messages, ``size``
    payload bytes) on ``client`` as one write, with the checks ``publish`` makes."""
    if client.is_closed:
        raise nats_errors.ConnectionClosedError
    if client.is_draining_pubs:
        raise nats_errors.ConnectionDrainingError
    data = b"".join(commands)
    if not client.is_connected and (
        client._max_pending_size <= 0
        or len(data) + client._pending_data_size > client._max_pending_size
    ):
        raise nats_errors.OutboundBufferLimitError
    client.stats["out_msgs"] += count
    client.stats["out_bytes"] += size
    await client._send_command(data)
    if client._flush_queue is not None and client._flush_queue.empty():
        await client._flush_pending()


async def flush(client: Client, timeout: int) -> None:
    """``client.flush(timeout)``, whose PONG covers every command sent before it.

    nats-py writes a flush's ``PING`` straight to the socket, while the commands
    before it (a ``SUB``, ``PUB`` commands) wait in its buffer for its flusher task to
    write them in a later turn of the loop: the server can answer the ``PING`` before
    it has read them. A core subscription was then not on the server when
    ``start()`` returned, and a message published right after from another
    connection was dropped (seen under CI's load). So the buffer goes out first, as
    nats-py itself writes it when its flusher task is gone.
    """
    transport = client._transport
    if client._pending and client.is_connected and transport is not None:
        transport.writelines(client._pending[:])
        client._pending = []
        client._pending_data_size = 0
    await client.flush(timeout)


def hpub(subject: str, reply: str, block: bytes, payload: bytes) -> bytes:
    """One ``HPUB`` command."""
    size = len(block)
    return (
        f"HPUB {subject} {reply} {size} {size + len(payload)}\r\n".encode()
        + block
        + payload
        + b"\r\n"
    )


def pub(subject: str, reply: str, payload: bytes) -> bytes:
    """One ``PUB`` command (no headers)."""
    return f"PUB {subject} {reply} {len(payload)}\r\n".encode() + payload + b"\r\n"


def ack_facts(msg: Msg) -> tuple[int, str]:
    """The delivery count and stream sequence from the ack subject, read directly
    (``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>...``, or with domain and
    account hash first): nats-py's full metadata parse costs more than the rest."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9:
        return int(tokens[4]) or 1, tokens[5]
    if len(tokens) >= 11:
        return int(tokens[6]) or 1, tokens[7]
    meta = msg.metadata
    return meta.num_delivered or 1, str(meta.sequence.stream)


def ack_command(reply: str) -> bytes:
    """The ``+ACK`` of a JetStream message whose ack subject is ``reply`` (what
    ``Msg.ack`` sends, without its subject validation and formatting per message)."""
    if not reply:
        raise nats_errors.Error("the message has no reply subject to acknowledge on")
    return pub(reply, "", b"+ACK")


_PENDING = nats_errors.TimeoutError()  # no PubAck (yet): what a message ends with if none comes


class _Batch:
    __slots__ = ("due", "future", "results")

    def __init__(self, size: int, future: asyncio.Future[None]) -> None:
        self.results: list[BaseException | None] = [_PENDING] * size
        self.due = size
        self.future = future


class PubAcks:
    """JetStream publishes with their PubAcks collected per batch.

    Each message of a batch carries the reply subject ``<inbox>.<batch>.<index>``;
    one wildcard subscription receives every PubAck and counts them into their
    batch, whose single future completes when the last one arrived.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self._inbox = ""
        self._sub: NatsSub | None = None
        self._batches: dict[str, _Batch] = {}
        self._ids = itertools.count()
        self._lock = asyncio.Lock()

    async def _ready(self) -> str:
        if self._sub is None:
            async with self._lock:
                if self._sub is None:
                    inbox = self.client.new_inbox()
                    self._sub = await self.client.subscribe(f"{inbox}.>", cb=self._on_reply)
                    self._inbox = inbox
        return self._inbox

    async def _on_reply(self, msg: Msg) -> None:
        batch_id, _, index = msg.subject.rpartition(".")
        batch = self._batches.get(batch_id.rpartition(".")[2])
        if batch is None:
            return  # its publish gave up waiting
        i = int(index)
        if batch.results[i] is not _PENDING:
            return
        data = msg.data
        result: BaseException | None = None
        if not data or b'"error"' in data:
            result = _reply_error(msg)
        batch.results[i] = result
        batch.due -= 1
        if batch.due == 0 and not batch.future.done():
            batch.future.set_result(None)

    async def publish(
        self, subject: str, messages: Sequence[tuple[bytes, bytes]], timeout: float
    ) -> list[BaseException | None]:
        """Publish ``(header block, body)`` pairs; each one's error or ``None`` (acked).

        A message without a PubAck within ``timeout`` gets nats-py's TimeoutError.
        """
        inbox = await self._ready()
        batch_id = str(next(self._ids))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        batch = _Batch(len(messages), future)
        prefix = f"{inbox}.{batch_id}."
        commands = [
            hpub(subject, prefix + str(i), block, body) for i, (block, body) in enumerate(messages)
        ]
        self._batches[batch_id] = batch
        try:
            await write(
                self.client, commands, len(commands), sum(len(body) for _, body in messages)
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(future, timeout)
        finally:
            del self._batches[batch_id]
        return [nats_errors.TimeoutError() if r is _PENDING else r for r in batch.results]

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):  # closing anyway; the connection goes next
                await sub.unsubscribe()


def _reply_error(msg: Msg) -> BaseException | None:
    headers = msg.headers or {}
    if not msg.data:
        if headers.get(_STATUS) == _NO_RESPONDERS:
            return nats_errors.NoRespondersError()
        return APIError(description=f"empty PubAck (status {headers.get(_STATUS)})")
    try:
        reply: Any = json.loads(msg.data)
    except ValueError as exc:
        return APIError(description=f"unreadable PubAck {msg.data[:100]!r}: {exc}")
    if isinstance(reply, dict) and isinstance(reply.get("error"), dict):
        try:
            APIError.from_error(reply["error"])  # raises the error class of its code
        except APIError as exc:
            return exc
        except Exception as exc:  # an error object without the usual fields
            return APIError(description=f"PubAck error {reply['error']!r} ({exc})")
    return None  # '"error"' appeared inside another field: acknowledged
