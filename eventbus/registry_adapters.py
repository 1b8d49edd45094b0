"""Find the adapter for a URL scheme through the ``eventbus.adapters`` entry point group."""

from __future__ import annotations

import difflib
import re
import sys
from importlib.metadata import entry_points
from typing import Any
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
    "amqp": "rabbitmq",
    "amqps": "rabbitmq",
    "redis": "redis",
    "rediss": "redis",
    "redis+streams": "redis",
    "rediss+streams": "redis",
    "nats": "nats",
    "nats+core": "nats",
    "sqs": "sqs",
}


# The scheme a broker's well-known port implies, for an address typed without one.
PORT_SCHEMES = {
    "5672": "amqp",
    "5671": "amqps",
    "6379": "redis+streams",
    "4222": "nats",
    "9092": "kafka",
}

# Names people reach for that are not our schemes (the broker's or the product's name,
# another separator), and the scheme they mean.
SCHEME_ALIASES = {
    "rabbitmq": "amqp",
    "rabbit": "amqp",
    "rabbitmqs": "amqps",
    "redis-streams": "redis+streams",
    "redis_streams": "redis+streams",
    "redisstreams": "redis+streams",
    "rediss-streams": "rediss+streams",
    "rediss_streams": "rediss+streams",
    "jetstream": "nats",
    "nats-core": "nats+core",
    "nats_core": "nats+core",
    "natscore": "nats+core",
    "aws-sqs": "sqs",
    "mem": "memory",
}


def installed_schemes() -> list[str]:
    """The URL schemes an adapter is installed for (``memory`` always is), as last
    scanned (a scheme looked up and not found scans again)."""
    return sorted({*_registered(), "memory"})


# The group's entry points by name as last scanned, with what the scan read: the
# entry_points function and sys.path (another of either scans again).
_scanned: tuple[object, tuple[str, ...], dict[str, Any]] | None = None


def _registered(*, again: bool = False) -> dict[str, Any]:
    """The adapters' entry points by scheme (the first of a name wins). Scanning the
    installed distributions reads hundreds of metadata files (~7 ms here, once per
    ``EventBus(url)``): the scan is kept, and made ``again`` when a scheme is not in
    it (a distribution installed since)."""
    global _scanned
    scanned = _scanned
    path = tuple(sys.path)
    if not again and scanned is not None and scanned[0] is entry_points and scanned[1] == path:
        return scanned[2]
    found: dict[str, Any] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, entry)
    _scanned = (entry_points, path, found)
    return found


def adapter_class(scheme: str, url: str | None = None) -> type[Adapter]:
    """The adapter class registered for ``scheme``.

    Raises :class:`~eventbus.errors.UnknownSchemeError` naming the installed
    schemes and, for an adapter that ships in the eventbus repository, how to
    install it from there; for a name that is not ours but close to one
    (``rabbitmq``, ``redis-streams``, ``kafak``) the scheme meant, shown on ``url``.
    """
    entry = _registered().get(scheme)
    if entry is None and scheme != "memory":
        entry = _registered(again=True).get(scheme)  # installed since the last scan?
    if entry is not None:
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
    meant = _known_scheme_like(scheme)
    if meant is not None and meant != scheme:
        rest = url.split("://", 1)[1] if url is not None and "://" in url else "..."
        why = (
            " eventbus names a broker by its protocol: amqp for RabbitMQ, "
            "redis+streams and nats+core for those modes."
            if scheme.lower() in SCHEME_ALIASES
            else ""
        )
        raise UnknownSchemeError(
            f"no eventbus adapter is installed for scheme {scheme!r} (installed: "
            f"{', '.join(installed_schemes())}): {_did_you_mean(meant + '://' + rest)}"
            f"{why} For another broker: {hint}"
        )
    raise UnknownSchemeError(
        f"no eventbus adapter is installed for scheme {scheme!r} (installed: "
        f"{', '.join(installed_schemes())}); {hint}"
    )


def _known_scheme_like(scheme: str) -> str | None:
    """The scheme ``scheme`` was probably meant to be: an alias, or a close spelling."""
    lowered = scheme.lower()
    if lowered in SCHEME_ALIASES:
        return SCHEME_ALIASES[lowered]
    known = sorted(set(installed_schemes()) | set(REPOSITORY_ADAPTERS))
    if lowered in known:
        return lowered
    close = difflib.get_close_matches(lowered, known, n=1, cutoff=0.75)
    return close[0] if close else None


def _did_you_mean(url: str) -> str:
    return f"did you mean {mask_url(url)}?"


_PORT = re.compile(r":(\d+)(?:[/?#]|$)")
# "scheme:" (maybe "scheme:/" or "scheme//") in front of the rest, without the "://"
_BROKEN_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+._-]*)(?::/?|//)(?P<rest>[^/].*)$")


def missing_scheme_error(url: str) -> InvalidURLError:
    """The error for ``url`` lacking ``scheme://``: what it probably meant, when we can tell."""
    shown = mask_url(url)
    broken = _BROKEN_SCHEME.match(url)
    if broken and re.match(r"\d+(?:[/?#]|$)", broken["rest"]):
        broken = None  # "kafka:9092" is a host named kafka (a compose service) and a port
    scheme = _known_scheme_like(broken["scheme"]) if broken else None
    if broken and scheme is not None:
        meant = f"{scheme}://{broken['rest']}"
        return InvalidURLError(
            f"broker URL {shown!r} lacks the '://' after its scheme: {_did_you_mean(meant)} "
            "A broker URL is scheme://[user:password@]host[:port][/...]"
        )
    port = _PORT.search(url.rpartition("@")[2])
    guess = PORT_SCHEMES.get(port[1]) if port else None
    hint = _did_you_mean(f"{guess}://{url.lstrip('/')}") + " " if guess else ""
    return InvalidURLError(
        f"broker URL {shown!r} has no scheme; {hint}Expected e.g. memory://, "
        "kafka://host:9092, amqp://user:pass@host/, redis+streams://host:6379, "
        "nats://host:4222"
    )


def adapter_from_url(url: str) -> Adapter:
    """Build (not connect) the adapter for ``url``."""
    try:
        scheme = urlsplit(url).scheme
    except ValueError as exc:
        raise InvalidURLError(f"cannot parse broker URL {mask_url(url)!r}: {exc}") from exc
    # "amqp//user:pass@host" parses as a path and "user:pass@host" as scheme "user":
    # without "://" it is no broker URL, whatever urlsplit makes of it.
    head = url.split("://", 1)[0]
    if not scheme and "://" in url and _known_scheme_like(head) is not None:
        scheme = head  # not a scheme to urlsplit ("redis_streams"), but we know what it means
    elif not scheme or "://" not in url:
        raise missing_scheme_error(url)
    return adapter_class(scheme, url)(url)
