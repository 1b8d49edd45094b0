"""Event-driven patterns on top of the bus: event sourcing, CQRS, sagas, outbox."""

from eventbus.patterns.cqrs import *  # noqa: F403  (CQRS: pat-cqrs)
from eventbus.patterns.design import IntegrationEvents as IntegrationEvents
from eventbus.patterns.eventsourcing import *  # noqa: F403  (event sourcing: pat-es)
from eventbus.patterns.inbox import Inbox as Inbox
from eventbus.patterns.ordering import OrderingGuard as OrderingGuard
from eventbus.patterns.outbox import Outbox as Outbox
from eventbus.patterns.outbox import OutboxRelay as OutboxRelay
from eventbus.patterns.sagas import *  # noqa: F403  (sagas: its __all__)
