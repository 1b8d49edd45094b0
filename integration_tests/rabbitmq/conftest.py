"""The RabbitMQ adapter's own tests reach the broker through the shared harness
(``rabbitmq_endpoint`` in ``integration_tests/conftest.py``)."""
