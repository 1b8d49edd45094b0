"""Find the adapter for a URL scheme through the ``eventbus.adapters`` entry point group."""

from __future__ import annotations

from importlib.metadata import entry_points
from urllib.parse import urlsplit

from eventbus.adapter import Adapter
from eventbus.errors import InvalidURLError, UnknownSchemeError, mask_url

ENTRY_POINT_GROUP = "eventbus.adapters"

# Which distribution provides each scheme we know of, so the error can say what to install.
PROVIDERS = {
    "memory": "eventbus",
    "kafka": "eventbus-kafka",
    "amqp": "eventbus-rabbitmq",
    "amqps": "eventbus-rabbitmq",
    "sqs": "eventbus-sqs",
    "redis": "eventbus-redis",
    "rediss": "eventbus-redis",
    "redis+streams": "eventbus-redis",
    "nats": "eventbus-nats",
}


def adapter_class(scheme: str) -> type[Adapter]:
    """The adapter class registered for ``scheme``."""
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == scheme:
            loaded = entry.load()
            if not (isinstance(loaded, type) and issubclass(loaded, Adapter)):
                raise UnknownSchemeError(
                    f"entry point {entry.value!r} for scheme {scheme!r} is not an Adapter"
                )
            return loaded
    if scheme == "memory":  # the core adapter works even when not installed as a dist
        from eventbus.memory import MemoryAdapter

        return MemoryAdapter
    provider = PROVIDERS.get(scheme)
    hint = (
        f"install it with: pip install {provider}"
        if provider
        else "no known package provides it; register an adapter under the entry point "
        f"group {ENTRY_POINT_GROUP!r}"
    )
    raise UnknownSchemeError(f"no eventbus adapter is installed for scheme {scheme!r}: {hint}")


def adapter_from_url(url: str) -> Adapter:
    """Build (not connect) the adapter for ``url``."""
    try:
        scheme = urlsplit(url).scheme
    except ValueError as exc:
        raise InvalidURLError(f"cannot parse broker URL {mask_url(url)!r}: {exc}") from exc
    # "amqp//user:pass@host" parses as a path and "user:pass@host" as scheme "user":
    # without "://" it is no broker URL, whatever urlsplit makes of it.
    if not scheme or "://" not in url:
        raise InvalidURLError(
            f"broker URL {mask_url(url)!r} has no scheme; expected e.g. memory://, "
            "kafka://host:9092, amqp://user:pass@host/, redis://host:6379, nats://host:4222"
        )
    return adapter_class(scheme)(url)
