"""A small service: charge each order through a payment gateway that sometimes times out."""

from eventbus import Context, Event, EventBus, MemoryIdempotencyStore, RetryPolicy


class OrderPlaced(Event, type="shop.order-placed", topic="shop-orders"):
    order_id: str
    amount_cents: int


class PaymentCharged(Event, type="shop.payment-charged", topic="shop-payments"):
    order_id: str
    amount_cents: int


class PaymentGateway:
    """Stands in for a remote payment API."""

    def __init__(self) -> None:
        self.charged: list[str] = []
        self.timeouts_to_come = 0

    async def charge(self, order_id: str, amount_cents: int) -> None:
        if amount_cents <= 0:
            raise ValueError(f"cannot charge {amount_cents} cents for order {order_id}")
        if self.timeouts_to_come:
            self.timeouts_to_come -= 1
            raise TimeoutError("the payment gateway did not answer")
        self.charged.append(order_id)


gateway = PaymentGateway()
bus = EventBus.from_env(
    source="shop",
    retry=RetryPolicy(max_attempts=3, initial_delay=1.0),
    idempotency=MemoryIdempotencyStore(),
)


@bus.subscribe(OrderPlaced, group="billing")
async def charge(event: OrderPlaced, ctx: Context) -> None:
    await gateway.charge(event.order_id, event.amount_cents)
    await ctx.publish(PaymentCharged(order_id=event.order_id, amount_cents=event.amount_cents))
