"""Helpers for writing adapters: what every adapter needs and should not rewrite.

Not part of the adapter contract itself (:mod:`eventbus.adapter`), just tools.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from eventbus.errors import EventBusError

ExceptionMap = Mapping[type[BaseException], type[EventBusError]]
"""Client exception class -> eventbus error class, most specific first."""


@contextlib.contextmanager
def map_exceptions(mapping: ExceptionMap, *, what: str, hint: str = "") -> Iterator[None]:
    """Re-raise a broker client's exceptions as eventbus errors saying what failed.

    The first entry of ``mapping`` (in order) whose class matches the exception
    wins, so list specific classes before their bases. The new error's message is
    ``"<what> failed: <ClientError>: <text>"`` plus ``hint`` (what to do), and the
    client's exception is its ``__cause__``. Eventbus errors, exceptions the
    mapping does not name and anything not an ``Exception`` (``CancelledError``,
    ``KeyboardInterrupt``) pass through unchanged.
    Every mapped class must take a single message argument.

    ::

        with map_exceptions(
            {KafkaConnectionError: BrokerConnectionError, KafkaError: PublishError},
            what=f"publish to topic {topic!r} on {masked_url}",
            hint="check that the broker is reachable",
        ):
            await producer.send_and_wait(topic, value)
    """
    try:
        yield
    except EventBusError:
        raise
    except Exception as exc:
        for client_error, ours in mapping.items():
            if isinstance(exc, client_error):
                message = f"{what} failed: {type(exc).__name__}: {exc}"
                raise ours(f"{message}; {hint}" if hint else message) from exc
        raise
