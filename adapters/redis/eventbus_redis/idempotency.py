"""A Redis idempotency store for the core middleware, shared by every process.

Each key holds ``"claimed:<owner>"`` while a run holds the claim (with the lease
as its expiry) and ``"done:<owner>"`` once handled (with the TTL as its expiry).
``claim`` is one ``SET NX PX``; ``complete`` and ``release`` are Lua scripts, so
checking the owner and changing the key happen atomically.

``<owner>`` is a token made for each claim, so a claim recognises itself: when
the reply to its ``SET NX`` is lost (the connection dropped after Redis ran it),
redis-py sends it again, which now finds the key taken; reading the key back
then shows this claim's own token, and the claim is ours, not "in progress"
elsewhere (which would bounce the message until the lease ran out).

Example::

    store = RedisIdempotencyStore("redis://localhost:6379/0")
    bus = EventBus.from_url("redis+streams://localhost:6379/0", idempotency=store)
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from eventbus.middleware.idempotency import Claim, ClaimResult, new_owner

from .settings import RedisSettings

# Returns 1 if ARGV[1] still held the claim; marks the key done either way
# (the handler's effect happened).
COMPLETE = """
local held = redis.call('GET', KEYS[1]) == 'claimed:' .. ARGV[1]
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], 'done:' .. ARGV[1], 'PX', ARGV[2])
else
  redis.call('DEL', KEYS[1])  -- remembered for no time at all
end
if held then return 1 else return 0 end
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == 'claimed:' .. ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


class RedisIdempotencyStore:
    """:class:`~eventbus.middleware.idempotency.IdempotencyStore` on Redis.

    ``url`` is any Redis URL of this package (its host, database, credentials and
    TLS options are used); or pass a ready ``client``. Keys are ``prefix + key``.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        client: Redis | None = None,
        prefix: str = "eventbus:idem:",
    ) -> None:
        self.prefix = prefix
        if client is None:
            from .adapter import RedisStreamsAdapter
            from .pubsub import RedisPubSubAdapter

            adapter_class = (
                RedisStreamsAdapter
                if RedisSettings.from_url(url).mode == "streams"
                else RedisPubSubAdapter
            )
            client = adapter_class(url).new_client()
            self._owns_client = True
        else:
            self._owns_client = False
        self.client: Any = client
        self._complete = client.register_script(COMPLETE)
        self._release = client.register_script(RELEASE)

    async def claim(self, key: str, lease: float) -> ClaimResult:
        """Claim ``key`` for ``lease`` seconds unless it is held or done."""
        owner = new_owner()
        name = self.prefix + key
        if lease <= 0:  # a claim that has already expired: nothing to store
            value = await self.client.get(name)
            if value is None:
                return ClaimResult(Claim.CLAIMED, owner)
            return ClaimResult(Claim.DONE if value.startswith(b"done:") else Claim.IN_PROGRESS)
        mine = f"claimed:{owner}".encode()
        if await self.client.set(name, mine, nx=True, px=_ms(lease)):
            return ClaimResult(Claim.CLAIMED, owner)
        value = await self.client.get(name)
        if value is None:  # expired between the two calls: try once more
            if await self.client.set(name, mine, nx=True, px=_ms(lease)):
                return ClaimResult(Claim.CLAIMED, owner)
            value = await self.client.get(name)
        if value == mine:  # our SET ran; only its reply was lost (see the docstring)
            return ClaimResult(Claim.CLAIMED, owner)
        done = value is not None and value.startswith(b"done:")
        return ClaimResult(Claim.DONE if done else Claim.IN_PROGRESS)

    async def complete(self, key: str, owner: str, ttl: float) -> bool:
        """Mark ``key`` done for ``ttl`` seconds; whether ``owner`` still held it."""
        ttl_ms = int(ttl * 1000) if ttl > 0 else 0
        return bool(await self._complete(keys=[self.prefix + key], args=[owner, ttl_ms]))

    async def release(self, key: str, owner: str) -> bool:
        """Drop ``owner``'s claim on ``key``; ``False`` if not held by it (or done)."""
        return bool(await self._release(keys=[self.prefix + key], args=[owner]))

    async def close(self) -> None:
        """Close the connections (only those this store opened)."""
        if self._owns_client:
            await self.client.aclose()


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
