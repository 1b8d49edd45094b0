"""Many publishes in one command: a Lua script that runs the XADDs (or PUBLISHes)
of a batch inside Redis and returns one reply per message.

A pipeline of N XADDs costs the client N command builds and N replies to read
(redis-py reads each reply under its own timeout); one ``EVAL`` carrying the
batch costs one of each, which more than halves what publishing a message costs
the client. Each command in the script runs under ``redis.pcall``, so a message
Redis refuses becomes an error in its own place of the reply list and the others
are still stored: a partial failure names its indexes exactly as a pipeline's
replies would. The script text travels with each call (``EVAL``, not
``EVALSHA``): a few hundred bytes per batch, and nothing to reload after a
restart or ``SCRIPT FLUSH``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
