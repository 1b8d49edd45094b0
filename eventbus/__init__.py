"""eventbus: broker-agnostic event messaging for Python services.

::

    from eventbus import EventBus, Event, Context

    class OrderPlaced(Event, topic="orders"):
        order_id: str

    bus = EventBus.from_env(source="order-service")

    @bus.subscribe(OrderPlaced, group="billing")
    async def charge(event: OrderPlaced, ctx: Context) -> None: ...

What a service author needs is importable from here: the bus, messages, the
context, retry and idempotency settings, dead-letter operations and every error
a service may catch. Types for adapter authors live in :mod:`eventbus.adapter`
(a few are re-exported here too); test tools in :mod:`eventbus.testing`.
``SQLiteIdempotencyStore`` is loaded on first use, so importing eventbus does not
import aiosqlite.
"""

from typing import TYPE_CHECKING, Any

from eventbus._sync_handlers import SyncContext
from eventbus.adapter import (
    Adapter,
    Capabilities,
    Delivery,
    RawMessage,
    SubscribeOptions,
    Subscription,
)
from eventbus.backoff import Backoff
from eventbus.batching import BatchItemFailed
from eventbus.bus import BusHealth, EventBus
from eventbus.context import INHERIT, Context, Publisher, PublishOptions
from eventbus.deadletters import DeadLetterRecord, DeadLetters, ListedDeadLetter
from eventbus.envelope import Envelope
from eventbus.errors import (
    BatchPublishError,
    BrokerConnectionError,
    ConfigurationError,
    ConnectionLostError,
    DeadLetterPublishError,
    DecodeError,
    DeliveryAlreadySettledError,
    DuplicateSubscriptionError,
    EventBusError,
    GuaranteeUnavailableError,
    HandlerCancelledError,
    HandlerTimeoutError,
    IdempotencyStoreError,
    InfrastructureError,
    InvalidExtensionNameError,
    InvalidURLError,
    MessageTooLargeError,
    PoisonMessageError,
    ProvisioningError,
    PublishError,
    RunsExhaustedError,
    SchemaError,
    SubscriptionFailedError,
    TopicNotFoundError,
    UnknownSchemeError,
    UnsupportedOperationError,
    UsageError,
)
from eventbus.events import Command, Event, Message, Registry, registry
from eventbus.memory import MemoryAdapter
from eventbus.middleware import (
    Idempotency,
    IdempotencyStore,
    MemoryIdempotencyStore,
    Middleware,
    Next,
    PublishMiddleware,
    PublishNext,
    RetryPolicy,
)
from eventbus.requests import ReplyTypeError, RequestError, RequestFailedError, RequestTimeoutError
from eventbus.runner import SubscriptionHealth
from eventbus.wire import FastStream, Plain, WireFormat, WireMessage

if TYPE_CHECKING:
    from eventbus.middleware.sqlite_store import SQLiteIdempotencyStore

__all__ = [
    "INHERIT",
    "Adapter",
    "Backoff",
    "BatchItemFailed",
    "BatchPublishError",
    "BrokerConnectionError",
    "BusHealth",
    "Capabilities",
    "Command",
    "ConfigurationError",
    "ConnectionLostError",
    "Context",
    "DeadLetterPublishError",
    "DeadLetterRecord",
    "DeadLetters",
    "DecodeError",
    "Delivery",
    "DeliveryAlreadySettledError",
    "DuplicateSubscriptionError",
    "Envelope",
    "Event",
    "EventBus",
    "EventBusError",
    "FastStream",
    "GuaranteeUnavailableError",
    "HandlerCancelledError",
    "HandlerTimeoutError",
    "Idempotency",
    "IdempotencyStore",
    "IdempotencyStoreError",
    "InfrastructureError",
    "InvalidExtensionNameError",
    "InvalidURLError",
    "ListedDeadLetter",
    "MemoryAdapter",
    "MemoryIdempotencyStore",
    "Message",
    "MessageTooLargeError",
    "Middleware",
    "Next",
    "Plain",
    "PoisonMessageError",
    "ProvisioningError",
    "PublishError",
    "PublishMiddleware",
    "PublishNext",
    "PublishOptions",
    "Publisher",
    "RawMessage",
    "Registry",
    "ReplyTypeError",
    "RequestError",
    "RequestFailedError",
    "RequestTimeoutError",
    "RetryPolicy",
    "RunsExhaustedError",
    "SQLiteIdempotencyStore",
    "SchemaError",
    "SubscribeOptions",
    "Subscription",
    "SubscriptionFailedError",
    "SubscriptionHealth",
    "SyncContext",
    "TopicNotFoundError",
    "UnknownSchemeError",
    "UnsupportedOperationError",
    "UsageError",
    "WireFormat",
    "WireMessage",
    "registry",
]
# The one place the version is written: hatch reads it for eventbus and its five adapters.
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Loaded on first use, so importing eventbus does not import aiosqlite.
    if name == "SQLiteIdempotencyStore":
        from eventbus.middleware.sqlite_store import SQLiteIdempotencyStore

        return SQLiteIdempotencyStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
