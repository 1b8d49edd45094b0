"""Built-in middleware. See :mod:`eventbus.middleware.base` for the order they run in."""

from typing import TYPE_CHECKING, Any

from eventbus._deprecation import renamed
from eventbus.middleware.base import (
    Middleware,
    Next,
    PublishMiddleware,
    PublishNext,
    RecoveringLayer,
    RedeliveryRequested,
    compose,
    compose_publish,
)
from eventbus.middleware.chain import ChainDefaults, build_chain
from eventbus.middleware.correlation import correlation
from eventbus.middleware.deadletter import DeadLetter
from eventbus.middleware.idempotency import (
    Claim,
    ClaimResult,
    Idempotency,
    IdempotencyStore,
    MemoryIdempotencyStore,
    idempotency_key,
)
from eventbus.middleware.retry import NO_RETRY, Retry, RetryPolicy
from eventbus.middleware.timeout import Timeout

if TYPE_CHECKING:
    from eventbus.middleware.sqlite_store import SQLiteIdempotencyStore

__all__ = [
    "NO_RETRY",
    "ChainDefaults",
    "Claim",
    "ClaimResult",
    "DeadLetter",
    "Idempotency",
    "IdempotencyStore",
    "MemoryIdempotencyStore",
    "Middleware",
    "Next",
    "PublishMiddleware",
    "PublishNext",
    "RecoveringLayer",
    "RedeliveryRequested",
    "Retry",
    "RetryPolicy",
    "SQLiteIdempotencyStore",
    "Timeout",
    "build_chain",
    "compose",
    "compose_publish",
    "correlation",
    "idempotency_key",
]


# Dead-letter names moved to eventbus.deadletters; these work for one release.
_MOVED = ("dead_letter_envelope", "dlq_topic")


def __getattr__(name: str) -> Any:
    # Loaded on first use, so importing eventbus does not import aiosqlite.
    if name == "SQLiteIdempotencyStore":
        from eventbus.middleware.sqlite_store import SQLiteIdempotencyStore

        return SQLiteIdempotencyStore
    import eventbus.deadletters as package

    table = {name: (f"eventbus.deadletters.{name}", lambda: getattr(package, name))}
    return renamed(__name__, name, table if name in _MOVED else {})
