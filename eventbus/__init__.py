"""eventbus: broker-agnostic event messaging for Python services.

::

    from eventbus import EventBus, Event, Context

    class OrderPlaced(Event, topic="orders"):
        order_id: str

    bus = EventBus.from_env(source="order-service")

    @bus.subscribe(OrderPlaced, group="billing")
    async def charge(event: OrderPlaced, ctx: Context) -> None: ...
"""

from eventbus.adapter import Adapter, Capabilities, Delivery, SubscribeOptions, Subscription
from eventbus.backoff import Backoff
from eventbus.batching import BatchItemFailed
from eventbus.bus import BusHealth, EventBus
from eventbus.context import INHERIT, Context, Publisher
from eventbus.envelope import Envelope
from eventbus.errors import (
    BatchPublishError,
    BrokerConnectionError,
    ConfigurationError,
    DecodeError,
    EventBusError,
    InvalidURLError,
    MessageTooLargeError,
    PoisonMessageError,
    PublishError,
    SchemaError,
    SubscriptionFailedError,
    UnknownSchemeError,
)
from eventbus.events import Command, Event, Message, Registry, registry
from eventbus.memory import MemoryAdapter
from eventbus.middleware import (
    Idempotency,
    MemoryIdempotencyStore,
    PublishMiddleware,
    PublishNext,
    RetryPolicy,
    SQLiteIdempotencyStore,
)
from eventbus.runner import SubscriptionHealth

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
    "Context",
    "DecodeError",
    "Delivery",
    "Envelope",
    "Event",
    "EventBus",
    "EventBusError",
    "Idempotency",
    "InvalidURLError",
    "MemoryAdapter",
    "MemoryIdempotencyStore",
    "Message",
    "MessageTooLargeError",
    "PoisonMessageError",
    "PublishError",
    "PublishMiddleware",
    "PublishNext",
    "Publisher",
    "Registry",
    "RetryPolicy",
    "SQLiteIdempotencyStore",
    "SchemaError",
    "SubscribeOptions",
    "Subscription",
    "SubscriptionFailedError",
    "SubscriptionHealth",
    "UnknownSchemeError",
    "registry",
]
__version__ = "0.1.0"
