"""Plain ``def`` handlers: run in a bounded pool of worker threads, off the event loop.

A handler that is not ``async def`` is wrapped, where it is subscribed, in a coroutine
function that runs it in a thread of one process-wide pool (``eventbus-sync-handler-N``;
``$EVENTBUS_SYNC_HANDLER_THREADS`` threads, default ``min(32, CPUs + 4)``), with the
context variables of the delivery. Its ``ctx`` is a :class:`SyncContext`: ``publish``
and ``send`` block the thread until the event loop has published, so nothing a sync
handler publishes is left unawaited. Everything else (retries, dead letters,
idempotency, batches, command replies) is the same as for an async handler.

What a thread cannot do, and why async handlers stay the default: Python cannot stop a
running thread, so a subscription's ``timeout`` and the bus's ``stop()`` give up waiting
on a sync handler but do not end it (the message is retried or returned while the old
call may still be running; make such handlers idempotent), and the process waits for a
running call at exit. A pool thread busy in one handler is not free for another: with
more blocked sync handlers than threads, the next ones wait their turn.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import os
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Unpack

from eventbus.errors import UsageError

if TYPE_CHECKING:
    from eventbus.context import Context, PublishOptions
    from eventbus.envelope import Envelope
    from eventbus.events import Command, Message

THREADS_VARIABLE = "EVENTBUS_SYNC_HANDLER_THREADS"
_SYNC_ORIGINAL = "__eventbus_sync_handler__"
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def worker_threads() -> int:
    """How many threads run sync handlers at once, in this process."""
    configured = os.environ.get(THREADS_VARIABLE, "").strip()
    if configured:
        try:
            value = int(configured)
        except ValueError:
            value = 0
        if value < 1:
            raise UsageError(
                f"${THREADS_VARIABLE}={configured!r} is not a positive number of threads"
            )
        return value
    return min(32, (os.cpu_count() or 1) + 4)


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=worker_threads(), thread_name_prefix="eventbus-sync-handler"
            )
        return _pool


class SyncContext:
    """The :class:`~eventbus.context.Context` of a sync handler, usable from its thread.

    ``publish`` and ``send`` are plain methods that block the handler's thread until
    the event loop has published (and return the envelope); every other attribute
    (``envelope``, ``event``, ``attempt``, ``topic``, ``group``, ``logger``...) is the
    context's own.
    """

    def __init__(self, ctx: Context, loop: asyncio.AbstractEventLoop) -> None:
        self._ctx = ctx
        self._loop = loop

    def publish(
        self, event: Message, *, topic: str | None = None, **options: Unpack[PublishOptions]
    ) -> Envelope:
        """Publish ``event`` as :meth:`Context.publish` does, from the handler's thread."""
        return self._run(self._ctx.publish(event, topic=topic, **options))

    def send(self, command: Command, **options: Unpack[PublishOptions]) -> Envelope:
        """Send ``command`` as :meth:`Context.send` does, from the handler's thread."""
        return self._run(self._ctx.send(command, **options))

    def _run(self, call: Awaitable[Envelope]) -> Envelope:
        async def on_the_loop() -> Envelope:
            return await call

        return asyncio.run_coroutine_threadsafe(on_the_loop(), self._loop).result()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


def user_function(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The user's function behind ``fn`` (itself unless it is a sync handler's wrapper)."""
    original: Callable[..., Any] = getattr(fn, _SYNC_ORIGINAL, fn)
    return original


def check_sync(fn: object) -> None:
    """Refuse a would-be handler that cannot run in a thread and give a result."""
    if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
        name = getattr(fn, "__qualname__", repr(fn))
        raise UsageError(
            f"handler {name} is a generator function: a handler returns "
            "(async def, or a plain def run in a worker thread); it does not yield"
        )
    if not callable(fn):
        raise UsageError(f"a handler must be a function; {fn!r} is not callable")


def in_worker_thread(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """A coroutine function running ``fn`` in the sync-handler pool, its contexts (the
    second argument, or the list of them of a batch handler) as :class:`SyncContext`."""

    @functools.wraps(fn)
    async def run_in_thread(*args: Any) -> Any:
        loop = asyncio.get_running_loop()
        if len(args) == 2:
            ctx = args[1]
            args = (
                args[0],
                [SyncContext(c, loop) for c in ctx]
                if isinstance(ctx, list)
                else SyncContext(ctx, loop),
            )
        context = contextvars.copy_context()  # the delivery's envelope, for logging too
        result = await loop.run_in_executor(_executor(), context.run, fn, *args)
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()  # never to be run: no "never awaited" warning on top
            raise UsageError(
                f"handler {fn.__qualname__} is a plain def that returned a coroutine, which "
                f"nothing would await: declare it async def {fn.__name__}(...) and await "
                "inside it"
            )
        return result

    setattr(run_in_thread, _SYNC_ORIGINAL, fn)
    return run_in_thread
