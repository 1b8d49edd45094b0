"""Single settle calls of one loop turn gathered into SQS batch requests of 10."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from eventbus.errors import BrokerConnectionError

BatchCall = Callable[[list[dict[str, Any]]], Awaitable[dict[str, Any]]]

# Per-entry answers saying the receipt handle no longer names a message this consumer
# holds: it was deleted, or its visibility lapsed and SQS may have handed it out again.
LOST_RECEIPT_CODES = frozenset({
    "ReceiptHandleIsInvalid", "InvalidReceiptHandle", "MessageNotInflight",
    "AWS.SimpleQueueService.MessageNotInflight",
})


class SettleError(BrokerConnectionError):
    """A delete or visibility change SQS did not confirm; ``code`` is SQS's error code
    for the entry (``""`` when the whole request failed: no answer, a dropped connection)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code

    @property
    def receipt_lost(self) -> bool:
        """SQS no longer knows the receipt: nothing this consumer can do to it any more."""
        return self.code in LOST_RECEIPT_CODES


class Batcher:
    """Gathers single calls made in the same loop turn into batch requests of 10.

    Each :meth:`add` returns when its own entry succeeded, or raises
    :class:`SettleError` with the broker's error for that entry only.
    """

    def __init__(self, call: BatchCall, what: str) -> None:
        self._call = call
        self._what = what
        self._pending: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def add(self, entry: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((entry, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        await future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), 10):
            task = asyncio.ensure_future(self._send(pending[start:start + 10]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, chunk: list[tuple[dict[str, Any], asyncio.Future[None]]]) -> None:
        entries = [{**entry, "Id": str(i)} for i, (entry, _) in enumerate(chunk)]
        try:
            reply = await self._call(entries)
        except Exception as exc:
            for _, future in chunk:
                if not future.done():
                    future.set_exception(SettleError(
                        f"{self._what} failed: {type(exc).__name__}: {exc}"))
            return
        failed = {str(f.get("Id")): f for f in reply.get("Failed", []) or []}
        for i, (_, future) in enumerate(chunk):
            if future.done():
                continue
            failure = failed.get(str(i))
            if failure is None:
                future.set_result(None)
            else:
                code = str(failure.get("Code", ""))
                future.set_exception(SettleError(
                    f"{self._what} failed: {code}: {failure.get('Message')}", code))
