"""Find the adapter for a URL scheme through the ``eventbus.adapters`` entry point group."""

from __future__ import annotations

from importlib.metadata import entry_points
from urllib.parse import urlsplit

from eventbus.adapter import Adapter
from eventbus.errors import InvalidURLError, UnknownSchemeError, mask_url

ENTRY_POINT_GROUP = "eventbus.adapters"

# Adapters that ship in the eventbus repository (scheme -> directory under adapters/).
# Only these may be recommended for installation, and only from the repository: a
# package name that is not published on an index would invite dependency confusion
# (anyone could publish it with malicious code).
REPOSITORY_ADAPTERS = {
    "kafka": "kafka",
    "amqp": "rabbitmq", "amqps": "rabbitmq",
    "redis": "redis", "rediss": "redis", "redis+streams": "redis", "rediss+streams": "redis",
    "nats": "nats", "nats+core": "nats",
    "sqs": "sqs",
}


def installed_schemes() -> list[str]:
    """The URL schemes an adapter is installed for (``memory`` always is)."""
    return sorted({entry.name for entry in entry_points(group=ENTRY_POINT_GROUP)} | {"memory"})


def adapter_class(scheme: str) -> type[Adapter]:
    """The adapter class registered for ``scheme``.

    Raises :class:`~eventbus.errors.UnknownSchemeError` naming the installed
    schemes and, for an adapter that ships in the eventbus repository, how to
    install it from there.
    """
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
    directory = REPOSITORY_ADAPTERS.get(scheme)
    if directory:
        hint = (
            f"install the {directory} adapter from the eventbus repository: "
            f"pip install ./adapters/{directory} (in a checkout), or "
            f'pip install "eventbus-{directory} @ git+<eventbus repository URL>'
            f'#subdirectory=adapters/{directory}"'
        )
    else:
        hint = (
            f"no adapter for {scheme!r} ships with eventbus (the repository has: "
            f"{', '.join(sorted(REPOSITORY_ADAPTERS))}); write one and register it under "
            f"the entry point group {ENTRY_POINT_GROUP!r} (docs/adapters/writing.md)"
        )
    raise UnknownSchemeError(
        f"no eventbus adapter is installed for scheme {scheme!r} (installed: "
        f"{', '.join(installed_schemes())}); {hint}"
    )


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
