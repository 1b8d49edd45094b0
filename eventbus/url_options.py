"""Parsing an adapter URL's ``?option=value`` query: one loop, one set of value parsers.

(Over 400 lines on purpose: the one parser every adapter's URL goes through, with the
shared vocabulary it checks.)

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
        {**shared("start_from", "client_name", "provision"), "partitions": integer(1)},
        name="Kafka",
        shown=masked_url,
        renamed={"create_topics": Renamed("provision")},
    )

The options every adapter shares have one name and one unit everywhere
(:data:`VOCABULARY`, picked with :func:`shared`): ``start_from``, ``tls_ca``/
``tls_cert``/``tls_key``/``tls_verify`` (checked by :func:`check_tls`),
``client_name``, ``provision``, ``delay_tiers`` and ``connect_timeout``; durations
are seconds. An option renamed into this vocabulary keeps working for one release
(:class:`Renamed`): parsed, converted, and named in one ``DeprecationWarning`` per URL.

Not part of the adapter contract, just a tool for writing adapters. (Over 400 lines
on purpose: the parsing loop, the value parsers and the shared vocabulary are one
tool; split, an adapter's settings would import its pieces from several modules.)
"""

from __future__ import annotations

import itertools
import re
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, unquote

from eventbus.errors import InvalidURLError

OptionParser = Callable[[str], Any]
"""Raw option text -> typed value; raises ``ValueError`` saying what is allowed."""

T = TypeVar("T")

REMOVED_IN = "eventbus 0.2"
"""The release in which the deprecated option names (:class:`Renamed`) stop working."""

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
    renamed: Mapping[str, Renamed] | None = None,
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

    ``renamed`` maps old option names to their new one (:class:`Renamed`): an old name
    is parsed (and converted) as its new option, counts as that option for "given
    twice", and all the old names of one URL are named in one ``DeprecationWarning``.
    """
    renamed = renamed or {}
    # "last": only the value that counts is parsed, so an overridden bad value passes.
    pairs = list(dict(pairs).items()) if repeated == "last" else list(pairs)
    if renamed and repeated == "last":
        # An old and a new name of one option: the later one counts, as for one name.
        latest = {renamed[o].new if o in renamed else o: (o, raw) for o, raw in pairs}
        pairs = list(latest.values())
    unknown = list(
        dict.fromkeys(
            option for option, _ in pairs if option not in parsers and option not in renamed
        )
    )
    if unknown:
        listed = ", ".join(repr(option) for option in unknown)
        hint = unknown_hint(unknown) if unknown_hint is not None else ""
        raise InvalidURLError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {listed} in {name} URL "
            f"{shown!r}; the {name} adapter accepts only: {', '.join(sorted(parsers))}{hint}"
        )
    values: dict[str, Any] = {}
    given: dict[str, str] = {}  # new name -> the name it was given under
    old: list[str] = []
    for option, raw in pairs:
        target, parse = option, parsers.get(option)
        if option in renamed:
            old.append(option)
            target = renamed[option].new
            parse = renamed[option].convert or parsers[target]
        if target in values and repeated == "error":
            twice = (
                repr(option)
                if given[target] == option
                else (f"{target!r} (as {given[target]!r} and {option!r})")
            )
            raise InvalidURLError(f"option {twice} is given twice in {name} URL {shown!r}")
        assert parse is not None
        try:
            values[target] = parse(raw)
        except ValueError as exc:
            value = "***" if option in secrets or target in secrets else repr(raw)
            raise InvalidURLError(
                f"option {option}={value} in {name} URL {shown!r} is invalid: {exc}"
            ) from exc
        given[target] = option
    if old:
        warn_renamed(old, renamed, name=name, shown=shown)
    return values


@dataclass(frozen=True, slots=True)
class Renamed:
    """An option's old name, still accepted for one release as option ``new``.

    ``convert`` parses the old name's raw text into the new option's value when the
    unit or form changed (``from_milliseconds(integer(1))`` for ``session_timeout_ms``
    becoming ``session_timeout`` in seconds); by default the new option's parser reads
    it. ``unit`` is said in the warning ("in seconds").
    """

    new: str
    convert: OptionParser | None = None
    unit: str = ""


def warn_renamed(
    old: Iterable[str], renamed: Mapping[str, Renamed], *, name: str, shown: str
) -> None:
    """One ``DeprecationWarning`` naming every old option of a URL and its new name."""
    old = list(dict.fromkeys(old))
    instead = ", ".join(
        f"{option} -> {renamed[option].new}"
        + (f" ({renamed[option].unit})" if renamed[option].unit else "")
        for option in old
    )
    plural = "s" if len(old) > 1 else ""
    warnings.warn(
        f"option{plural} {', '.join(map(repr, old))} in {name} URL {shown!r} "
        f"{'are' if plural else 'is'} deprecated and will stop working in {REMOVED_IN}; "
        f"use the new name{plural}: {instead}",
        DeprecationWarning,
        stacklevel=4,
    )


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
        int,
        lambda value: (low is None or value >= low) and (high is None or value <= high),
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


def from_milliseconds(parse: Callable[[str], int]) -> Callable[[str], float]:
    """A parser of an old ``*_ms`` option's text (read by ``parse``) as seconds, for a
    :class:`Renamed` whose new name takes seconds."""

    def convert(raw: str) -> float:
        return parse(raw) / 1000

    return convert


def delay_tiers(*, low: float = 0.0, most: int | None = None) -> Callable[[str], tuple[float, ...]]:
    """A parser of delay tiers: comma-separated seconds above ``low``, strictly ascending.

    An unsorted list or a repeated tier is refused, not sorted silently: the order is
    what the operator meant to write, and a list out of order is likely a typo. At
    most ``most`` tiers when given. Whole numbers come back as such (``1,10`` ->
    ``(1, 10)``), so names built from a tier read as before (``retry.10s``).
    """
    example = "e.g. 1,10,60"

    def parse(raw: str) -> tuple[float, ...]:
        try:
            tiers = tuple(_number(part) for part in raw.split(","))
        except ValueError:
            raise ValueError(f"use numbers of seconds separated by commas, {example}") from None
        if any(not tier > low or tier == float("inf") for tier in tiers):
            raise ValueError(
                f"every tier must be a finite number of seconds above {low:g}, {example}"
            )
        if any(a >= b for a, b in itertools.pairwise(tiers)):
            raise ValueError(f"list the tiers in ascending order without repeats, {example}")
        if most is not None and len(tiers) > most:
            raise ValueError(f"use at most {most} tiers, {example}")
        return tiers

    return parse


def _number(text_: str) -> float:
    value = float(text_)  # ValueError for anything not a number (and "" too)
    return int(value) if value.is_integer() else value


START_FROM: Callable[[str], str] = choice("earliest", "latest")

VOCABULARY: Mapping[str, OptionParser] = {
    # Where a new group starts when its subscription does not say (the core decides:
    # eventbus.adapter.Adapter.start_from).
    "start_from": START_FROM,
    # TLS: the CA file, the client certificate and its key, and whether to verify the
    # server's certificate; checked together by check_tls.
    "tls_ca": text,
    "tls_cert": text,
    "tls_key": text,
    "tls_verify": flag,
    # The name the broker shows for the connection (client.id, connection name...).
    "client_name": text,
    # Create topics/queues/streams/groups on first use (true) or refuse a missing one
    # with ProvisioningError (false).
    "provision": flag,
    # Seconds, ascending: how an adapter with delay queues/topics buckets nack(delay).
    "delay_tiers": delay_tiers(),
    # How long connect() may take before it fails.
    "connect_timeout": seconds(),
}
"""The shared option names and their parsers: one name and one unit on every adapter."""

TLS_OPTIONS = ("tls_ca", "tls_cert", "tls_key", "tls_verify")


def shared(*names: str, **overrides: OptionParser) -> dict[str, OptionParser]:
    """The :data:`VOCABULARY` parsers of ``names`` (and of ``overrides``' names, with
    the given parser: a tighter range, say), for an adapter's option table.

    ``shared("start_from", "connect_timeout", delay_tiers=delay_tiers(most=10))``
    """
    unknown = [n for n in (*names, *overrides) if n not in VOCABULARY]
    if unknown:
        raise ValueError(f"not shared options: {unknown}; the vocabulary is {list(VOCABULARY)}")
    return {**{name: VOCABULARY[name] for name in names}, **overrides}


def check_tls(values: Mapping[str, Any], *, tls: bool, name: str, shown: str, use: str) -> None:
    """Refuse TLS options a URL gives without selecting TLS, and half a client certificate.

    ``tls`` says whether the URL selects TLS (its scheme or an option); ``use`` says how
    to select it on this adapter ("use amqps://"). Raises :class:`InvalidURLError`.
    """
    given = [option for option in TLS_OPTIONS if option in values]
    if given and not tls:
        raise InvalidURLError(
            f"{', '.join(given)} in {name} URL {shown!r} {'need' if len(given) > 1 else 'needs'}"
            f" TLS, which the URL does not select (they would be ignored); {use}"
        )
    if ("tls_cert" in values) != ("tls_key" in values):
        raise InvalidURLError(
            f"tls_cert and tls_key must be given together in {name} URL {shown!r} (the "
            "client certificate and its private key)"
        )
