"""Parsing an adapter URL's ``?option=value`` query: one loop, one set of value parsers.

Every adapter's ``settings.py`` turns its URL's query into typed settings the same
way: look each option up in a table of parsers, refuse options it does not know,
refuse an option given twice, and say which value was wrong and what is allowed.
This module is that loop (:func:`parse_options`) plus the value parsers the
adapters share. A value parser takes the raw text and returns the typed value or
raises :class:`ValueError` whose text says what is allowed ("must be an integer
>= 1", "use true or false"); :func:`parse_options` turns that into an
:class:`~eventbus.errors.InvalidURLError` naming the option, the value and the URL::

    options = parse_options(
        query_pairs(parts.query),
        {"partitions": integer(1), "create_topics": flag, "mode": choice("binary", "structured")},
        name="Kafka",
        shown=masked_url,
    )

Not part of the adapter contract, just a tool for writing adapters.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, unquote

from eventbus.errors import InvalidURLError

OptionParser = Callable[[str], Any]
"""Raw option text -> typed value; raises ``ValueError`` saying what is allowed."""

T = TypeVar("T")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def query_pairs(
    query: str, *, plus_is_space: bool = True, keep_blank: bool = True
) -> list[tuple[str, str]]:
    """``name=value`` pairs of a URL query, percent-decoded, in order.

    ``plus_is_space=False`` keeps ``+`` a plus (a password such as ``a+b`` must not
    become ``a b``); ``keep_blank=False`` drops ``name=`` items with no value, as
    :func:`urllib.parse.parse_qs` does.
    """
    if plus_is_space:
        return parse_qsl(query, keep_blank_values=keep_blank)
    pairs: list[tuple[str, str]] = []
    for item in query.split("&"):
        name, _, value = item.partition("=")
        if item and (value or keep_blank):
            pairs.append((unquote(name), unquote(value)))
    return pairs


def parse_options(
    pairs: Iterable[tuple[str, str]],
    parsers: Mapping[str, OptionParser],
    *,
    name: str,
    shown: str,
    secrets: Collection[str] = (),
    repeated: Literal["error", "last"] = "error",
    unknown_hint: Callable[[list[str]], str] | None = None,
) -> dict[str, Any]:
    """Parse each ``(option, raw)`` pair with its parser; return ``{option: value}``.

    ``name`` is the adapter's name in messages ("Kafka": "... in Kafka URL ...; the
    Kafka adapter accepts only: ..."), ``shown`` the URL as it may be shown (masked).
    Values of the options in ``secrets`` show as ``***``. ``repeated="last"`` lets a
    later value of an option replace an earlier one (never parsed) instead of an
    option given twice being an error.
    ``unknown_hint(names)`` may add a sentence to the unknown-option error (such as
    "only apply to another mode"). Raises :class:`InvalidURLError`, one line each:
    unknown option(s) (all of them, with the accepted list), an option given twice,
    or a value its parser refused.
    """
    # "last": only the value that counts is parsed, so an overridden bad value passes.
    pairs = list(dict(pairs).items()) if repeated == "last" else list(pairs)
    unknown = list(dict.fromkeys(option for option, _ in pairs if option not in parsers))
    if unknown:
        listed = ", ".join(repr(option) for option in unknown)
        hint = unknown_hint(unknown) if unknown_hint is not None else ""
        raise InvalidURLError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {listed} in {name} URL "
            f"{shown!r}; the {name} adapter accepts only: {', '.join(sorted(parsers))}{hint}"
        )
    values: dict[str, Any] = {}
    for option, raw in pairs:
        if option in values and repeated == "error":
            raise InvalidURLError(f"option {option!r} is given twice in {name} URL {shown!r}")
        try:
            values[option] = parsers[option](raw)
        except ValueError as exc:
            value = "***" if option in secrets else repr(raw)
            raise InvalidURLError(
                f"option {option}={value} in {name} URL {shown!r} is invalid: {exc}"
            ) from exc
    return values


def host_ports(netloc: str, *, default_port: int, name: str, shown: str) -> tuple[str, ...]:
    """``host:port`` per comma-separated server of ``netloc`` (no user info).

    A missing port is ``default_port``; an IPv6 literal stays bracketed
    (``[::1]:9092``). An empty host or a bad port is an :class:`InvalidURLError`;
    no server at all is ``()`` (the adapter decides whether that means a default).
    """
    servers: list[str] = []
    # The server text is never quoted in an error: when a password holds "/", "?" or
    # "#" (which end a URL's authority), what a parser takes for host:port is the user
    # info, password included. Errors name the server by its place instead.
    for place, item in enumerate(netloc.split(","), 1):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):  # IPv6 literal: [::1]:9092
            host, _, rest = item[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
        if not host:
            raise InvalidURLError(f"{name} URL {shown!r} has an empty host (server {place})")
        port = default_port
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise InvalidURLError(
                    f"{name} URL {shown!r} has an invalid port (server {place}: not a number "
                    "from 1 to 65535); if its password holds '/', '?' or '#', percent-encode "
                    "them (%2F, %3F, %23)"
                )
            port = int(port_text)
        servers.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return tuple(servers)


def mask_query(url: str, *names: str) -> str:
    """``url`` with the values of the query options ``names`` replaced by ``***``."""
    alternatives = "|".join(re.escape(name) for name in names)
    return re.sub(rf"((?:^|[?&])(?:{alternatives})=)[^&#]*", r"\1***", url)


# -- value parsers ------------------------------------------------------------------------


def integer(
    low: int | None = None, high: int | None = None, *, allowed: str | None = None
) -> Callable[[str], int]:
    """A parser of whole numbers from ``low`` to ``high`` (each end optional, inclusive).

    The error says the range ("must be an integer from 0 to 20", "must be an
    integer >= 1") unless ``allowed`` gives the words.
    """
    if allowed is None:
        if low is not None and high is not None:
            allowed = f"must be an integer from {low} to {high}"
        elif low is not None:
            allowed = f"must be an integer >= {low}"
        elif high is not None:
            allowed = f"must be an integer <= {high}"
        else:
            allowed = "must be an integer"
    return _converted(
        int, lambda value: (low is None or value >= low) and (high is None or value <= high),
        allowed,
    )


def seconds(
    low: float = 0.0, *, inclusive: bool = False, allowed: str | None = None
) -> Callable[[str], float]:
    """A parser of a number of seconds above ``low`` (or at least ``low`` if ``inclusive``).

    Infinity passes (no limit); NaN never does.
    """
    if allowed is None:
        if low == 0 and not inclusive:
            allowed = "must be a positive number of seconds"
        elif low == 0:
            allowed = "must be zero or a positive number of seconds"
        else:
            allowed = f"must be a number of seconds {'>=' if inclusive else '>'} {low:g}"
    # Written so that NaN, which compares false with everything, fails.
    return _converted(float, lambda value: value > low or (inclusive and value == low), allowed)


def _converted(
    convert: Callable[[str], T], valid: Callable[[T], bool], allowed: str
) -> Callable[[str], T]:
    """A parser: ``convert`` the text, then check it is ``valid``; ``allowed`` if not."""

    def parse(raw: str) -> T:
        try:
            value = convert(raw)
        except ValueError:
            raise ValueError(allowed) from None
        if not valid(value):
            raise ValueError(allowed)
        return value

    return parse


def text(raw: str) -> str:
    """Any text but the empty one."""
    if not raw:
        raise ValueError("must not be empty")
    return raw


def flag(raw: str) -> bool:
    """``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``, in any case."""
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("use true or false")


def strict_flag(raw: str) -> bool:
    """``true`` or ``false`` only (in any case), for adapters that never took more."""
    lowered = raw.lower()
    if lowered not in ("true", "false"):
        raise ValueError("use 'true' or 'false'")
    return lowered == "true"


def choice(
    *allowed: str, fold: Callable[[str], str] | None = None, words: str | None = None
) -> Callable[[str], str]:
    """A parser accepting one of ``allowed`` (after ``fold``, e.g. ``str.lower``).

    The error is ``words`` or "use a or b" / "use one of a, b, c".
    """
    if words is None:
        if len(allowed) == 2:
            words = f"use {allowed[0]} or {allowed[1]}"
        else:
            words = f"use one of {', '.join(allowed)}"
    message = words

    def parse(raw: str) -> str:
        value = fold(raw) if fold is not None else raw
        if value not in allowed:
            raise ValueError(message)
        return value

    return parse


def pattern(regex: str, words: str) -> Callable[[str], str]:
    """A parser accepting text that matches ``regex`` as a whole; ``words`` says what."""
    compiled = re.compile(regex)

    def parse(raw: str) -> str:
        if not compiled.fullmatch(raw):
            raise ValueError(words)
        return raw

    return parse
