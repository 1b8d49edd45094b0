"""Built-in middleware. See :mod:`eventbus.middleware.base` for the order they run in."""

from eventbus.middleware.base import (
    Middleware,
    Next,
    PublishMiddleware,
    PublishNext,
    RedeliveryRequested,
    compose,
    compose_publish,
)
from eventbus.middleware.chain import ChainDefaults, build_chain
from eventbus.middleware.correlation import correlation
from eventbus.middleware.deadletter import DeadLetter, dead_letter_envelope, dlq_topic
from eventbus.middleware.idempotency import (
    Claim,
    ClaimResult,
    Idempotency,
    IdempotencyStore,
    MemoryIdempotencyStore,
    idempotency_key,
)
from eventbus.middleware.retry import NO_RETRY, Retry, RetryPolicy
from eventbus.middleware.sqlite_store import SQLiteIdempotencyStore
from eventbus.middleware.timeout import Timeout

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
    "RedeliveryRequested",
    "Retry",
    "RetryPolicy",
    "SQLiteIdempotencyStore",
    "Timeout",
    "build_chain",
    "compose",
    "compose_publish",
    "correlation",
    "dead_letter_envelope",
    "dlq_topic",
    "idempotency_key",
]
