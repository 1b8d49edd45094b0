"""Domain events vs integration events: what other services receive is declared, small,
and derived from the domain event when it is published.

A domain event carries what the owning service needs (whole line items, prices,
the address...); other services should get only what they use, with references
by id, so the two can evolve apart. Declare the mapping once::

    integration = IntegrationEvents()

    @integration.maps(OrderPlaced)
    def _public(event: OrderPlaced) -> OrderPlacedIntegration:
        return OrderPlacedIntegration(order_id=event.order_id, total=event.total)

    bus = EventBus(publish_middleware=[integration.middleware])
    await bus.publish(OrderPlaced(...))   # the broker gets OrderPlacedIntegration

The published envelope keeps the domain event's id, time, key, correlation and
causation (a retried publish maps to the same id, so consumers can deduplicate);
its type, version and data are the integration event's, and it goes to the
integration event's topic unless the publish named another. A mapper returning
``None`` keeps that event inside the service (it is not published).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import groupby
from typing import Any, TypeVar

from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError
from eventbus.events import Event, Registry, registry
from eventbus.middleware.base import PublishNext

D = TypeVar("D", bound=Event)
Mapper = Callable[[Any], Event | None]


class IntegrationEvents:
    """The declared mappings from domain events to integration events."""

    def __init__(self, registry: Registry = registry) -> None:
        self.registry = registry
        self._mappers: dict[str, Mapper] = {}

    def maps(
        self, domain: type[D]
    ) -> Callable[[Callable[[D], Event | None]], Callable[[D], Event | None]]:
        """Decorator: ``fn(domain_event)`` returns the integration event (or ``None``)."""
        if not (isinstance(domain, type) and issubclass(domain, Event)):
            raise ConfigurationError(
                f"IntegrationEvents.maps() takes an Event class, not {domain!r}"
            )
        name = domain.event_type()
        if name in self._mappers:
            raise ConfigurationError(f"domain event {name!r} already has an integration mapping")

        def register(fn: Callable[[D], Event | None]) -> Callable[[D], Event | None]:
            self._mappers[name] = fn
            return fn

        return register

    def to_integration(self, event: Event) -> Event | None:
        """What other services receive for ``event``: its mapping's result, or the
        event itself when its class has no mapping."""
        mapper = self._mappers.get(event.event_type())
        if mapper is None:
            return event
        result = mapper(event)
        if result is not None and not isinstance(result, Event):
            raise ConfigurationError(
                f"the integration mapping of {event.event_type()!r} returned "
                f"{type(result).__name__}; it must return an Event or None"
            )
        return result

    def _map(self, topic: str, envelope: Envelope) -> tuple[str, Envelope] | None:
        if envelope.type not in self._mappers:
            return topic, envelope
        domain = self.registry.decode(envelope)
        assert isinstance(domain, Event)
        public = self.to_integration(domain)
        if public is None:
            return None
        if topic == type(domain).default_topic():
            topic = public.default_topic()
        return topic, envelope.evolve(
            type=public.event_type(), dataversion=public.data_version(), data=public.to_bytes()
        )

    async def middleware(
        self, topic: str, envelopes: Sequence[Envelope], call_next: PublishNext
    ) -> None:
        """Publish middleware replacing mapped domain events by their integration events
        (before an outbox, so the outbox stores what is published)."""
        if not any(e.type in self._mappers for e in envelopes):
            await call_next(topic, envelopes)
            return
        mapped = [m for m in (self._map(topic, e) for e in envelopes) if m is not None]
        # Consecutive envelopes bound for one topic go together, in their order.
        for target, group in groupby(mapped, key=lambda pair: pair[0]):
            await call_next(target, [envelope for _, envelope in group])
