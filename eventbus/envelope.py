"""The immutable message envelope, CloudEvents 1.0 compatible.

(Over 400 lines on purpose: one immutable type, its constructors and the fast paths that
must equal them.)

Transport facts (topic, attempt, broker message id) never live here; they sit
beside the envelope on the :class:`~eventbus.adapter.Delivery`.

Constructors: the keyword ``Envelope(...)`` (and :meth:`Envelope.create`,
:meth:`Envelope.evolve`, :meth:`Envelope.from_attributes`, which go through it),
and, for the hot paths (publishing, decoding), the one private :func:`_assemble`
they all share. How large an envelope is on the wire is the codec's to say
(:func:`eventbus.codec.largest_size`, :func:`eventbus.codec.size_bound`).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from eventbus._timeids import format_time, new_id, new_ids, parse_time, utcnow
from eventbus.errors import InvalidExtensionNameError

__all__ = [
    "CORE_ATTRIBUTES",
    "EVENTBUS_EXTENSIONS",
    "JSON",
    "RESERVED_NAMES",
    "SPEC_VERSION",
    "Envelope",
    "format_time",
    "new_id",
    "new_ids",
    "parse_time",
    "utcnow",
    "validate_extension_name",
]

SPEC_VERSION = "1.0"
JSON = "application/json"

# Attributes the envelope models as fields. Anything else a CloudEvent carries is
# an extension and is kept, untouched, in ``Envelope.extensions``.
CORE_ATTRIBUTES = (
    "id",
    "source",
    "specversion",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
)
EVENTBUS_EXTENSIONS = (
    "dataversion",
    "correlationid",
    "causationid",
    "partitionkey",
    "traceparent",
    "tracestate",
)
_FIELDS = frozenset((*CORE_ATTRIBUTES, *EVENTBUS_EXTENSIONS))
# Names no extension may take: an extension called ``source`` would replace the real
# source in structured mode and travel as a second ``ce_source`` header in binary
# mode; ``data`` would replace the payload of a structured event.
RESERVED_NAMES = _FIELDS | {"data"}
_EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")


@dataclass(frozen=True, slots=True)
class Envelope:
    """One event or command as it travels: CloudEvents attributes plus our extensions.

    ``data`` is the encoded payload (bytes); ``datacontenttype`` says how to read it.
    Build one with :meth:`create`, which fills in the id and the time::

        env = Envelope.create(type="OrderPlaced", source="orders", data=b'{"id": 1}')
    """

    id: str
    type: str
    source: str
    time: datetime
    data: bytes = b""
    datacontenttype: str | None = JSON
    dataschema: str | None = None
    subject: str | None = None
    specversion: str = SPEC_VERSION
    dataversion: int = 1
    correlationid: str | None = None
    causationid: str | None = None
    partitionkey: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    extensions: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Cheap enough for the hot path, and the one place every construction passes
        # (create, evolve, decoding), so no extension can shadow an attribute.
        if self.extensions and not RESERVED_NAMES.isdisjoint(self.extensions):
            validate_extension_name(min(RESERVED_NAMES.intersection(self.extensions)))

    @classmethod
    def create(
        cls,
        *,
        type: str,
        source: str,
        data: bytes = b"",
        id: str | None = None,
        time: datetime | None = None,
        **attributes: Any,
    ) -> Envelope:
        """Build an envelope, generating ``id`` and ``time`` when they are absent."""
        extensions = dict(attributes.pop("extensions", None) or {})
        for name in list(attributes):
            if name not in Envelope.__dataclass_fields__:
                extensions[name] = _text(attributes.pop(name))
        for name in extensions:
            validate_extension_name(name)
        return cls(
            id=id or new_id(),
            type=type,
            source=source,
            time=time or utcnow(),
            data=data,
            extensions=extensions,
            **attributes,
        )

    def evolve(self, **changes: Any) -> Envelope:
        """A copy with ``changes`` applied (the envelope itself never changes)."""
        return replace(self, **changes)

    def attributes(self) -> dict[str, str]:
        """Every attribute except ``data`` as CloudEvents text values, absent ones left out."""
        out: dict[str, str] = {
            "specversion": self.specversion,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "time": format_time(self.time),
        }
        for name in ("datacontenttype", "dataschema", "subject"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out["dataversion"] = str(self.dataversion)
        for name in EVENTBUS_EXTENSIONS[1:]:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out.update(self.extensions)
        return out

    @classmethod
    def from_attributes(cls, attributes: Mapping[str, Any], data: bytes) -> Envelope:
        """Rebuild an envelope from CloudEvents attributes (text values) and data bytes.

        Raises :class:`KeyError` naming a missing required attribute and
        :class:`ValueError` for an unreadable one; codecs turn both into ``DecodeError``.
        """
        known: dict[str, Any] = {}
        extensions: dict[str, str] = {}
        for name, value in attributes.items():
            if value is None:
                continue
            if name in _FIELDS:
                known[name] = value
            else:
                extensions[name] = _text(value)
        for required in ("id", "source", "type"):
            if not known.get(required):
                raise KeyError(required)
        time_value = known.pop("time", None)
        if isinstance(time_value, datetime):
            known["time"] = time_value
        else:
            known["time"] = parse_time(str(time_value)) if time_value else utcnow()
        for name, value in known.items():
            if name != "time" and not isinstance(value, str):
                known[name] = str(value)
        known["dataversion"] = int(known.get("dataversion", 1))
        known.setdefault("datacontenttype", None)
        return cls(data=data, extensions=extensions, **known)

    @classmethod
    def from_text_attributes(cls, attributes: dict[str, str], data: bytes) -> Envelope:
        """:meth:`from_attributes` for text values in a dict the caller gives away
        (a codec's own): the same result and errors, without the generic conversions.

        The codecs call this once per received message, so it reads each field
        once and builds the envelope without keyword parsing.
        """
        pop = attributes.pop
        id_, source, type_ = pop("id", None), pop("source", None), pop("type", None)
        if not id_:
            raise KeyError("id")
        if not source:
            raise KeyError("source")
        if not type_:
            raise KeyError("type")
        time_text = pop("time", None)
        version = pop("dataversion", None)
        envelope = _assemble(
            id_,
            type_,
            source,
            parse_time(time_text) if time_text else utcnow(),
            data,
            pop("datacontenttype", None),
            pop("dataschema", None),
            pop("subject", None),
            pop("specversion", SPEC_VERSION),
            1 if version is None else int(version),
            pop("correlationid", None),
            pop("causationid", None),
            pop("partitionkey", None),
            pop("traceparent", None),
            pop("tracestate", None),
            attributes,
        )
        # What is left is extensions; of the reserved names only "data" can remain.
        if "data" in attributes:
            validate_extension_name("data")
        if cls is not Envelope:
            return cls(**{name: getattr(envelope, name) for name in _ALL_FIELDS})
        return envelope

    def size_hint(self, limit: int) -> int:
        """Deprecated: :func:`eventbus.codec.size_bound` (size estimation is the codec's)."""
        from eventbus import codec  # the codec imports this module

        warnings.warn(
            "Envelope.size_hint(limit) is deprecated: use "
            "eventbus.codec.size_bound(envelope, limit)",
            DeprecationWarning,
            stacklevel=2,
        )
        return codec.size_bound(self, limit)

    @property
    def size(self) -> int:
        """Deprecated: :func:`eventbus.codec.largest_size` (size estimation is the codec's)."""
        from eventbus import codec  # the codec imports this module

        warnings.warn(
            "Envelope.size is deprecated: use eventbus.codec.largest_size(envelope)",
            DeprecationWarning,
            stacklevel=2,
        )
        return codec.largest_size(self)


_ALL_FIELDS = tuple(Envelope.__dataclass_fields__)


class _Draft:
    """An envelope under construction: the same slots in the same order, without the
    frozen ``__setattr__``.

    The codecs and the publish path build two envelopes per message. A frozen
    dataclass sets each of its 16 slots through a descriptor call (~0.7 us per
    envelope); here the slots are set by plain attribute stores (specialised by
    the interpreter), then the object becomes an :class:`Envelope` by
    ``__class__`` assignment, which Python allows between classes of one slot
    layout (~4x cheaper in all). The result is an ordinary, frozen ``Envelope``.
    Only :func:`_assemble` does this; every other construction goes through
    ``__init__`` (and ``__post_init__``'s extension check), and the callers of
    :func:`_assemble` check extension names themselves.
    """

    __slots__ = Envelope.__slots__

    id: str
    type: str
    source: str
    time: datetime
    data: bytes
    datacontenttype: str | None
    dataschema: str | None
    subject: str | None
    specversion: str
    dataversion: int
    correlationid: str | None
    causationid: str | None
    partitionkey: str | None
    traceparent: str | None
    tracestate: str | None
    extensions: Mapping[str, str]


_new = object.__new__


def _text(value: Any) -> str:
    """CloudEvents canonical text of an attribute value read from JSON (``true``, not ``True``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def validate_extension_name(name: str) -> None:
    """Raise ``InvalidExtensionNameError`` unless ``name`` may name an extension.

    CloudEvents extension names are 1-20 lowercase letters or digits, and none may
    repeat an attribute name (``id``, ``source``, ``correlationid``, ``data``...).
    """
    if not _EXTENSION_NAME.match(name):
        raise InvalidExtensionNameError(
            f"extension attribute {name!r} is not a valid CloudEvents name: "
            "use 1-20 lowercase ASCII letters or digits"
        )
    if name in RESERVED_NAMES:
        raise InvalidExtensionNameError(
            f"extension attribute name {name!r} is reserved: it is a CloudEvents or "
            "eventbus attribute, and an extension with that name would replace or "
            "duplicate it on the wire; set the attribute itself (e.g. publish(key=..., "
            "correlation_id=..., subject=...)) or pick another extension name"
        )


def _assemble(
    id: str,
    type: str,
    source: str,
    time: datetime,
    data: bytes,
    datacontenttype: str | None,
    dataschema: str | None,
    subject: str | None,
    specversion: str,
    dataversion: int,
    correlationid: str | None,
    causationid: str | None,
    partitionkey: str | None,
    traceparent: str | None,
    tracestate: str | None,
    extensions: Mapping[str, str],
) -> Envelope:
    """Every field given, in declaration order, checked by the caller: an envelope
    without the keyword ``__init__``. The one constructor every fast path shares
    (publishing one or many, :meth:`Envelope.from_text_attributes`, the codec's
    decoding by header layout); ``tests/test_envelope.py`` checks that each of them
    builds what the general path builds."""
    envelope = _new(_Draft)
    envelope.id = id
    envelope.type = type
    envelope.source = source
    envelope.time = time
    envelope.data = data
    envelope.datacontenttype = datacontenttype
    envelope.dataschema = dataschema
    envelope.subject = subject
    envelope.specversion = specversion
    envelope.dataversion = dataversion
    envelope.correlationid = correlationid
    envelope.causationid = causationid
    envelope.partitionkey = partitionkey
    envelope.traceparent = traceparent
    envelope.tracestate = tracestate
    envelope.extensions = extensions
    envelope.__class__ = Envelope  # type: ignore[assignment]
    return envelope  # type: ignore[return-value]


# -- the publishing fast paths (also the former public fast constructors, deprecated) -------


def _build(
    id: str,
    type: str,
    source: str,
    time: datetime,
    data: bytes,
    dataversion: int,
    partitionkey: str | None,
    subject: str | None,
    correlationid: str | None,
    causationid: str | None,
    traceparent: str | None,
    tracestate: str | None,
    extensions: Mapping[str, str],
) -> Envelope:
    """A published message's envelope: JSON data, CloudEvents 1.0, no schema. The one
    :func:`_assemble` call of :func:`eventbus.publishing.build_envelope` and of
    :func:`_build_many`."""
    return _assemble(
        id,
        type,
        source,
        time,
        data,
        JSON,
        None,
        subject,
        SPEC_VERSION,
        dataversion,
        correlationid,
        causationid,
        partitionkey,
        traceparent,
        tracestate,
        extensions,
    )


def _build_many(
    ids: Sequence[str],
    types: Sequence[str],
    versions: Sequence[int],
    bodies: Sequence[bytes],
    source: str,
    time: datetime,
    partitionkey: str | None,
    subject: str | None,
    correlationid: str | None,
    causationid: str | None,
    traceparent: str | None,
    tracestate: str | None,
    extensions: Mapping[str, str] | None,
) -> list[Envelope]:
    """:func:`_build` for each message of a batch (``eventbus.publishing.build_envelopes``):
    each envelope gets its own copy of the extensions, and no correlation id makes each
    envelope its own flow (its id)."""
    return [
        _build(
            id,
            type,
            source,
            time,
            data,
            dataversion,
            partitionkey,
            subject,
            correlationid or id,
            causationid,
            traceparent,
            tracestate,
            dict(extensions) if extensions else {},
        )
        for id, type, dataversion, data in zip(ids, types, versions, bodies, strict=True)
    ]


_DEPRECATED: dict[str, tuple[Callable[..., Any], str]] = {
    "build": (_build, "eventbus.publishing.build_envelope (or Envelope.create)"),
    "build_many": (_build_many, "eventbus.publishing.build_envelopes (or Envelope.create)"),
    "assemble": (_assemble, "Envelope.from_text_attributes (or Envelope.create)"),
}


def __getattr__(name: str) -> Any:
    if name in _DEPRECATED:
        function, instead = _DEPRECATED[name]
        warnings.warn(
            f"eventbus.envelope.{name} is deprecated (one private constructor "
            f"serves the fast paths now): use {instead}",
            DeprecationWarning,
            stacklevel=2,
        )
        return function
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
