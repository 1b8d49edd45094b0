"""Kafka adapter for eventbus (aiokafka), registered for ``kafka://`` URLs.

Install ``eventbus-kafka`` and set ``EVENTBUS_URL=kafka://host:9092``; see
``docs/adapters/kafka.md`` for the options and the guarantees.
"""

from .adapter import KafkaAdapter
from .settings import KafkaSettings

__all__ = ["KafkaAdapter", "KafkaSettings"]
