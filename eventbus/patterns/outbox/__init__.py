"""Transactional outbox: events commit with the state change, a relay publishes them.

::

    outbox = Outbox(await Database.connect("postgresql://..."))
    await outbox.setup()
    bus = EventBus("kafka://...", publish_middleware=[outbox.middleware])

    async with outbox.unit_of_work() as tx:
        await tx.execute("UPDATE orders SET status = 'paid' WHERE id = $1", order_id)
        await bus.publish(OrderPaid(order_id=order_id), key=order_id)  # into the outbox

    async with bus, OutboxRelay(outbox, bus):  # publishes, in order per key
        ...
"""

from eventbus.patterns.outbox.relay import OutboxRelay, RelayHealth
from eventbus.patterns.outbox.store import Outbox, current_transaction, stream_of

__all__ = ["Outbox", "OutboxRelay", "RelayHealth", "current_transaction", "stream_of"]
