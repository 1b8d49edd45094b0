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
from eventbus.bus import EventBus
from eventbus.context import Context
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
    UnknownSchemeError,
)
from eventbus.events import Command, Event, Message, Registry, registry
from eventbus.memory import MemoryAdapter
from eventbus.middleware import (
    Idempotency,
    MemoryIdempotencyStore,
    RetryPolicy,
    SQLiteIdempotencyStore,
)

__all__ = [
    "Adapter",
    "BatchPublishError",
    "BrokerConnectionError",
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
    "Registry",
    "RetryPolicy",
    "SQLiteIdempotencyStore",
    "SchemaError",
    "SubscribeOptions",
    "Subscription",
    "UnknownSchemeError",
    "registry",
]
__version__ = "0.1.0"
