"""NATS adapter for eventbus (nats-py).

``nats://host:4222`` is JetStream (durable, at-least-once: a stream per topic, a
durable pull consumer per group); ``nats+core://host:4222`` is core NATS
(at-most-once, queue groups, nothing stored). See ``docs/adapters/nats.md``.
"""

from .adapter import NatsAdapter
from .core import NatsCoreAdapter
from .settings import NatsSettings

__all__ = ["NatsAdapter", "NatsCoreAdapter", "NatsSettings"]
