"""RabbitMQ adapter for eventbus (aio-pika), registered for ``amqp://`` and ``amqps://``.

Install ``eventbus-rabbitmq`` and set ``EVENTBUS_URL=amqp://user:pass@host:5672/vhost``;
see ``docs/adapters/rabbitmq.md`` for the options and the guarantees.
"""

from .adapter import RabbitMQAdapter
from .settings import RabbitMQSettings

__all__ = ["RabbitMQAdapter", "RabbitMQSettings"]
