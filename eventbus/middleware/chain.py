"""Chain assembly: the ordered middleware around one subscription's handlers.

Outermost first:

1. ``correlation`` (makes the handled envelope current for publishes made inside)
2. the bus-wide ``middleware=[...]``, then the subscription's ``middleware=[...]``
3. ``DeadLetter`` (when the bus has ``dead_letter=True``)
4. the request/reply step (``ChainDefaults.replies``: for a subscription that
   answers requests): inside dead-letter, so a request whose handler failed for
   good is answered *and* dead-lettered; outside idempotency and retry, so it
   answers the final outcome once, not each attempt or a skipped duplicate
5. ``Idempotency`` (the subscription's ``idempotency=`` store or configured
   ``Idempotency``, else the bus's):
   inside dead-letter, so a dead-lettered message is not remembered as handled
   and its replay runs
6. ``Retry`` (the subscription's policy, else the bus's)
7. ``Timeout`` (when the subscription has ``timeout=``)
8. the handler

This is the one place the order is decided; the runner reads only what layers
declare about themselves (:mod:`eventbus.middleware.base`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from eventbus.adapter import Adapter
from eventbus.errors import ConfigurationError
from eventbus.middleware.base import Middleware
from eventbus.middleware.correlation import correlation
from eventbus.middleware.deadletter import DeadLetter
from eventbus.middleware.idempotency import Idempotency, IdempotencyStore
from eventbus.middleware.retry import NO_RETRY, Retry, RetryPolicy
from eventbus.middleware.timeout import Timeout

if TYPE_CHECKING:
    from eventbus.spec import SubscriptionSpec


@dataclass(frozen=True, slots=True)
class ChainDefaults:
    """The bus-wide settings a subscription's chain falls back on.

    ``replies`` makes the request/reply step of a subscription (``None`` when that
    subscription answers no requests); the bus passes
    :func:`eventbus.requests.reply_step` bound to itself.
    """

    middleware: Sequence[Middleware] = ()
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    idempotency: IdempotencyStore | Idempotency | None = None
    dead_letter: bool = True
    replies: Callable[[SubscriptionSpec], Middleware | None] | None = None


def check_middleware(middleware: Sequence[Middleware], where: str) -> None:
    """Refuse built-in steps whose place in the chain is fixed, with the right option."""
    for layer in middleware:
        if isinstance(layer, Idempotency):
            raise ConfigurationError(
                f"Idempotency in {where} middleware=[...] would run outside the dead-letter "
                "step, so a dead-lettered message would count as handled and its replay be "
                "skipped; pass it (or just its store) as subscribe(..., idempotency=...) "
                "or EventBus(idempotency=...)"
            )


def build_chain(
    spec: SubscriptionSpec, adapter: Adapter, defaults: ChainDefaults
) -> list[Middleware]:
    """The middleware around ``spec``'s handlers, outermost first (see the module doc).

    Raises :class:`ConfigurationError` for a batch subscription on a bus with
    idempotency (a batch call is not deduplicated per event).
    """
    chain: list[Middleware] = [correlation, *defaults.middleware, *spec.middleware]
    if defaults.dead_letter:
        chain.append(DeadLetter(adapter))
    reply = defaults.replies(spec) if defaults.replies is not None else None
    if reply is not None:
        chain.append(reply)
    store = spec.idempotency if spec.idempotency is not None else defaults.idempotency
    if store is not None and spec.batch is not None:
        raise ConfigurationError(
            f"{spec.topic}/{spec.group} has batch={spec.batch} and the bus's "
            "idempotency: a batch call is not deduplicated per event; give this "
            "subscription its own bus without idempotency, or drop batch="
        )
    if store is not None:
        chain.append(store if isinstance(store, Idempotency) else Idempotency(store))
    policy = spec.retry or defaults.retry
    at_most_once = spec.mode == "at_most_once"
    redelivery = adapter.capabilities.redelivery and not at_most_once
    if at_most_once and spec.retry is None:
        policy = NO_RETRY
    # Without dead letters there is nowhere to put a crash-looping message: it is run
    # again, as every other final failure is nacked for later (see RetryPolicy docs).
    chain.append(Retry(policy, broker_redelivery=redelivery, guard_crashes=defaults.dead_letter))
    if spec.timeout is not None:
        chain.append(Timeout(spec.timeout))
    return chain
