"""The raw message of the adapter contract: bytes, transport headers and a key as one value.

It sits with the messages (:mod:`eventbus.wire` lays an event out as one), below the
contract, which re-exports it (``from eventbus.adapter import RawMessage``).

:meth:`eventbus.adapter.Adapter.publish_raw` takes a :class:`RawMessage`
(``publish_raw(topic, RawMessage(payload, headers, key=key))``); this module also holds
the one shim that keeps the old form, ``publish_raw(topic, payload, headers, key=key)``,
working for one release with a :class:`DeprecationWarning` naming the new one, for
callers and for third-party adapters still implementing the old signature alike.
:class:`~eventbus.adapter.Adapter` applies it to every subclass's ``publish_raw``
(``__init_subclass__``), so no adapter carries a copy of it.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

NEW_FORM = "publish_raw(topic, RawMessage(payload, headers, key=key))"
"""How the new call reads, quoted by the deprecation warnings."""

Publish = Callable[..., Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RawMessage:
    """Bytes to put on a topic as they are, bypassing the codec.

    ``payload`` is the message body; ``headers`` the broker's own headers (Kafka record
    headers, AMQP headers, NATS headers, Streams fields, SQS message attributes), or
    ``None`` for none; ``key`` the partition key (see :meth:`Adapter.publish_raw`).
    """

    payload: bytes
    headers: Mapping[str, bytes] | None = None
    key: str | None = None


def _warn(what: str, stacklevel: int) -> None:
    warnings.warn(
        f"{what} is deprecated and goes away in the next release: use {NEW_FORM} instead",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def _implements_old_form(method: Publish) -> bool:
    """True when ``method`` is written as ``(self, topic, payload, headers=None, *, key=None)``."""
    parameters = inspect.signature(method).parameters
    return "headers" in parameters or "payload" in parameters


def accept_old_form(cls: type, method: Publish) -> Publish:
    """``cls``'s ``publish_raw`` ``method``, taking the new form and, for one release, the
    old one (with a DeprecationWarning at the call). A method still written in the old
    form is warned about once, here, and is handed the message's parts."""
    old_implementation = _implements_old_form(method)
    if old_implementation:
        _warn(f"{cls.__qualname__}.publish_raw(topic, payload, headers, *, key)", 5)

    @functools.wraps(method)
    async def publish_raw(
        self: Any,
        topic: str,
        message: RawMessage | bytes,
        headers: Mapping[str, bytes] | None = None,
        *,
        key: str | None = None,
    ) -> None:
        if isinstance(message, RawMessage):
            if headers is not None or key is not None:
                raise TypeError(
                    f"{type(self).__name__}.publish_raw takes the headers and key inside "
                    f"the RawMessage, not beside it: call {NEW_FORM}"
                )
        elif isinstance(message, bytes | bytearray | memoryview):
            _warn("publish_raw(topic, payload, headers, key=key)", 3)
            message = RawMessage(bytes(message), headers, key)
        else:
            raise TypeError(
                f"{type(self).__name__}.publish_raw takes a RawMessage, not "
                f"{type(message).__name__}: call {NEW_FORM}"
            )
        if old_implementation:
            await method(self, topic, message.payload, message.headers, key=message.key)
        else:
            await method(self, topic, message)

    publish_raw.__accepts_old_form__ = True  # type: ignore[attr-defined]
    return publish_raw
