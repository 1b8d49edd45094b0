"""Publishing on Redis: commands share round trips, a batch is one script run.

**Shared round trips.** Commands from concurrent callers share one pipeline per
loop turn (:func:`pipeline_batcher`, the core's
:class:`~eventbus.adapters_util.TurnBatcher`): every caller submits its commands
and awaits their replies; the first caller of a turn schedules a flush, which
sends everything submitted by then as one pipeline (no MULTI: the commands are
independent) and hands each caller its replies, errors in place. Several flushes
may be in flight at once on different connections, so a slow round trip does not
hold back the next turn's commands.

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

from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError

from eventbus.adapters_util import TurnBatcher

Command = Callable[[Pipeline], Any] | tuple[Any, ...]
"""A function adding one command to a pipeline, or the command's arguments as they
are sent (``("XADD", stream, "*", field, value, ...)``: no redis-py method call per
message; its reply goes through redis-py's callback for that command name)."""


Batcher = TurnBatcher[Command, Any]
"""Commands of concurrent callers gathered into shared pipelines."""


def pipeline_batcher(
    client: Redis, max_commands: int = 2000, wait_replicas: int = 0, wait_timeout: float = 1.0
) -> Batcher:
    """The :data:`Batcher` of ``client``: each turn's commands (at most ``max_commands``
    a round trip) as one pipeline; a command Redis refused gets its error in its
    place, an error of the round trip itself (the connection lost past redis-py's
    retries) is raised to every caller of that round trip.

    ``wait_replicas``: each pipeline ends with ``WAIT wait_replicas wait_timeout``;
    fewer replicas confirming its writes within ``wait_timeout`` is an error of the
    round trip (what the primary acknowledged alone a failover can lose)."""

    async def send(commands: list[Command]) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for command in commands:
            if type(command) is tuple:
                pipe.execute_command(*command)
            else:
                command(pipe)  # type: ignore[operator]
        if wait_replicas:
            pipe.execute_command("WAIT", wait_replicas, int(wait_timeout * 1000))
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        if wait_replicas:
            confirmed = replies.pop()
            if not isinstance(confirmed, int) or confirmed < wait_replicas:
                raise RedisConnectionError(
                    f"WAIT: {confirmed} of wait_replicas={wait_replicas} replica(s) confirmed "
                    f"the writes within wait_timeout={wait_timeout:g}s (a failover could "
                    "lose them)"
                )
        return replies

    return TurnBatcher(send, max_items=max_commands)


MAX_PER_SCRIPT = 1000
"""Messages per EVAL: bounds one script's run time (Redis serves nobody meanwhile)."""

# ARGV: maxlen ('' for none), then per message its field count n and n field/value items.
_XADD_MANY = """
local out, m, i, key, maxlen = {}, 1, 2, KEYS[1], ARGV[1]
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  if maxlen == '' then
    out[m] = redis.pcall('XADD', key, <NOMK>'*', unpack(ARGV, i + 1, i + n))
  else
    out[m] = redis.pcall('XADD', key, <NOMK>'MAXLEN', '~', maxlen, '*',
                         unpack(ARGV, i + 1, i + n))
  end
  m, i = m + 1, i + n + 1
end
return out
"""
XADD_MANY = _XADD_MANY.replace("<NOMK>", "")
# provision=false: NOMKSTREAM (Redis 6.2+), so a missing stream is not created: the
# XADD answers nil (false in the script), which the adapter reports. A second text
# rather than a flag, so the usual script does no extra work per message.
XADD_MANY_EXISTING = _XADD_MANY.replace("<NOMK>", "'NOMKSTREAM', ")

# ARGV: the channel, then one payload per message.
PUBLISH_MANY = """
local out, channel = {}, ARGV[1]
for i = 2, #ARGV do out[i - 1] = redis.pcall('PUBLISH', channel, ARGV[i]) end
return out
"""


def xadd_many(
    stream: str, maxlen: int, entries: Sequence[Sequence[Any]], *, create: bool = True
) -> tuple[Any, ...]:
    """One EVAL adding ``entries`` (each a flat field/value sequence) to ``stream``; with
    ``create=False`` a missing stream is left missing (each reply ``None``)."""
    args: list[Any] = ["EVAL", XADD_MANY if create else XADD_MANY_EXISTING, 1, stream, maxlen or ""]
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
            error = (
                reply
                if isinstance(reply, BaseException)
                else RuntimeError(f"unexpected reply to a batched publish: {reply!r:.200}")
            )
            out += [error] * count
    return out
