"""FastStream's binary message frame (version 1), as FastStream 0.7 writes it on Redis.

Layout, all integers big-endian::

    magic     8 bytes   89 42 49 4E 0D 0A 1A 0A  ("\\x89BIN\\r\\n\\x1a\\n")
    version   u16       1
    headers   u32       offset of the header count (always 18)
    data      u32       offset of the body
    count     u16       number of headers
    count x   (u16 length + UTF-8 name, u16 length + UTF-8 value)
    body      the rest

Used by :class:`eventbus.wire.FastStream`; nothing here knows of envelopes.
"""

from __future__ import annotations

import struct

from eventbus.errors import DecodeError

MAGIC = b"\x89BIN\r\n\x1a\n"
_VERSION = 1
_PREFIX = struct.Struct(">8sHII")


def is_frame(data: bytes | None) -> bool:
    """Whether ``data`` starts like a version-1 frame."""
    return data is not None and len(data) >= _PREFIX.size + 2 and data.startswith(MAGIC)


def pack_frame(body: bytes, headers: dict[str, str]) -> bytes:
    """A frame holding ``headers`` (text) and ``body``."""
    packed = bytearray()
    for name, value in headers.items():
        for text in (name.encode(), value.encode()):
            if len(text) > 0xFFFF:
                raise ValueError(f"a FastStream frame header is at most 65535 bytes: {name!r}")
            packed += struct.pack(">H", len(text)) + text
    headers_at = _PREFIX.size
    data_at = headers_at + 2 + len(packed)
    head = _PREFIX.pack(MAGIC, _VERSION, headers_at, data_at)
    return head + struct.pack(">H", len(headers)) + bytes(packed) + body


def unpack_frame(frame: bytes) -> tuple[bytes, dict[str, str]]:
    """The body and headers of ``frame``; :class:`DecodeError` when it is truncated."""
    try:
        _, version, headers_at, data_at = _PREFIX.unpack_from(frame)
        if version != _VERSION:
            raise DecodeError(f"FastStream frame version {version}, only 1 is known")
        (count,) = struct.unpack_from(">H", frame, headers_at)
        at = headers_at + 2
        headers: dict[str, str] = {}
        for _ in range(count):
            texts = []
            for _part in range(2):
                (size,) = struct.unpack_from(">H", frame, at)
                texts.append(frame[at + 2 : at + 2 + size].decode())
                at += 2 + size
            headers[texts[0]] = texts[1]
        return frame[data_at:], headers
    except (struct.error, UnicodeDecodeError) as exc:
        raise DecodeError(f"a truncated or unreadable FastStream frame: {exc}") from None
