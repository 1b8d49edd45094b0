"""Commands from concurrent callers share round trips: one pipeline per loop turn.

Every caller queues its commands and awaits their replies; the first caller of a
turn schedules a flush, which sends everything queued by then as one pipeline
(no MULTI: the commands are independent) and hands each caller its replies,
errors in place. Several flushes may be in flight at once on different
connections, so a slow round trip does not hold back the next turn's commands.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

Command = Callable[[Pipeline], Any] | tuple[Any, ...]
"""A function adding one command to a pipeline, or the command's arguments as they
are sent (``("XADD", stream, "*", field, value, ...)``: no redis-py method call per
message; its reply goes through redis-py's callback for that command name)."""


class Batcher:
    """Coalesces the commands of concurrent callers into shared pipelines."""

    def __init__(self, client: Redis, max_commands: int = 2000) -> None:
        self.client = client
        self.max_commands = max_commands
        self._queued: list[tuple[list[Command], asyncio.Future[list[Any]]]] = []
        self._scheduled = False
        self._flushes: set[asyncio.Task[None]] = set()

    async def run(self, commands: list[Command]) -> list[Any]:
        """Send ``commands`` (each adds one command to a pipeline); return their replies.

        A reply that is an error is returned in its place, not raised; an error of
        the round trip itself (connection lost after the client's retries) is raised.
        """
        if not commands:
            return []
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queued.append((commands, future))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_soon)
        return await future

    def _flush_soon(self) -> None:
        self._scheduled = False
        while self._queued:
            taken: list[tuple[list[Command], asyncio.Future[list[Any]]]] = []
            size = 0
            while self._queued and (not taken or size + len(self._queued[0][0])
                                    <= self.max_commands):
                item = self._queued.pop(0)
                taken.append(item)
                size += len(item[0])
            task = asyncio.create_task(self._flush(taken))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _flush(self, taken: list[tuple[list[Command], asyncio.Future[list[Any]]]]) -> None:
        try:
            pipe = self.client.pipeline(transaction=False)
            for commands, _ in taken:
                for command in commands:
                    if type(command) is tuple:
                        pipe.execute_command(*command)
                    else:
                        command(pipe)  # type: ignore[operator]
            replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            for _, future in taken:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        start = 0
        for commands, future in taken:
            if not future.done():
                future.set_result(replies[start:start + len(commands)])
            start += len(commands)

    async def drain(self) -> None:
        """Wait for every flush in flight (close() calls it before closing the client)."""
        while self._flushes:
            await asyncio.gather(*list(self._flushes), return_exceptions=True)
