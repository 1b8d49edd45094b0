"""The seed's order saga, choreographed: order, payment and inventory services.

Each service module has ``register(bus)`` (its handlers on a given bus) and
``create_bus()`` (for ``eventbus run``); :mod:`examples.order_saga.demo` runs all
three in one process and checks the outcome.
"""
