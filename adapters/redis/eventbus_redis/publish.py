"""Publishing on Redis: commands share round trips, a batch is one script run.

**Shared round trips.** Commands from concurrent callers share one pipeline per
loop turn (:class:`Batcher`): every caller queues its commands and awaits their
replies; the first caller of a turn schedules a flush, which sends everything
queued by then as one pipeline (no MULTI: the commands are independent) and
hands each caller its replies, errors in place. Several flushes may be in flight
at once on different connections, so a slow round trip does not hold back the
next turn's commands.

**Many publishes in one command.** A Lua script runs the XADDs (or PUBLISHes) of
a batch inside Redis and returns one reply per message. A pipeline of N XADDs
costs the client N command builds and N replies to read (redis-py reads each
reply under its own timeout); one ``EVAL`` carrying the batch costs one of each,
which more than halves what publishing a message costs the client. Each command
in the script runs under ``redis.pcall``, so a message Redis refuses becomes an
error in its own place of the reply list and the others are still stored: a
partial failure names its indexes exactly as a pipeline's replies would. The
script text travels with each call (``EVAL``, not ``EVALSHA``): a few hundred
bytes per batch, and nothing to reload after a restart or ``SCRIPT FLUSH``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
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


MAX_PER_SCRIPT = 1000
"""Messages per EVAL: bounds one script's run time (Redis serves nobody meanwhile)."""

# ARGV: maxlen ('' for none), then per message its field count n and n field/value items.
XADD_MANY = """
local out, m, i, key, maxlen = {}, 1, 2, KEYS[1], ARGV[1]
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  if maxlen == '' then
    out[m] = redis.pcall('XADD', key, '*', unpack(ARGV, i + 1, i + n))
  else
    out[m] = redis.pcall('XADD', key, 'MAXLEN', '~', maxlen, '*', unpack(ARGV, i + 1, i + n))
  end
  m, i = m + 1, i + n + 1
end
return out
"""

# ARGV: the channel, then one payload per message.
PUBLISH_MANY = """
local out, channel = {}, ARGV[1]
for i = 2, #ARGV do out[i - 1] = redis.pcall('PUBLISH', channel, ARGV[i]) end
return out
"""


def xadd_many(stream: str, maxlen: int, entries: Sequence[Sequence[Any]]) -> tuple[Any, ...]:
    """One EVAL adding ``entries`` (each a flat field/value sequence) to ``stream``."""
    args: list[Any] = ["EVAL", XADD_MANY, 1, stream, maxlen or ""]
    for fields in entries:
        args.append(len(fields))
        args += fields
    return tuple(args)


def publish_many(channel: str, payloads: Sequence[bytes]) -> tuple[Any, ...]:
    """One EVAL publishing ``payloads`` to ``channel`` in order."""
    return ("EVAL", PUBLISH_MANY, 0, channel, *payloads)


def expand(replies: Sequence[Any], counts: Sequence[int]) -> list[Any]:
    """One reply per message: each EVAL's list spread out, or its error repeated."""
    out: list[Any] = []
    for reply, count in zip(replies, counts, strict=True):
        if isinstance(reply, list) and len(reply) == count:
            out += reply
        else:  # the whole script failed (or answered oddly): every message with it
            error = reply if isinstance(reply, BaseException) else RuntimeError(
                f"unexpected reply to a batched publish: {reply!r:.200}")
            out += [error] * count
    return out
