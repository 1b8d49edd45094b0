"""Redis adapters for eventbus (redis-py asyncio), plus a Redis idempotency store.

- ``redis://`` / ``rediss://``: Pub/Sub (fan-out, at most once, nothing kept).
- ``redis+streams://`` / ``rediss+streams://``: Streams (consumer groups, at least once).

See ``docs/adapters/redis.md`` for the options and the guarantees.
"""

from .adapter import RedisAdapter, RedisStreamsAdapter
from .idempotency import RedisIdempotencyStore
from .pubsub import RedisPubSubAdapter
from .settings import RedisSettings

__all__ = [
    "RedisAdapter",
    "RedisIdempotencyStore",
    "RedisPubSubAdapter",
    "RedisSettings",
    "RedisStreamsAdapter",
]
