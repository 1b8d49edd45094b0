"""An aggregate with a state of every kind JSON alone changes (int keys, tuples, sets,
UUID, Decimal, datetimes with zones, enums, models, dataclasses), its events, and
``same()``: equality that also compares types (``{7: 1} != {"7": 1}`` is not
enough when ``1 == 1.0 == True``). Shared by the snapshot tests and the
interleaving property test."""

from __future__ import annotations

import dataclasses
import math
import uuid
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import Enum, IntEnum
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel

from eventbus import Event
from eventbus.patterns.eventsourcing import Aggregate, applies

PARIS = ZoneInfo("Europe/Paris")


class Kind(Enum):
    CREDIT = "credit"
    DEBIT = "debit"


class Priority(IntEnum):
    LOW = 1
    HIGH = 2


class Address(BaseModel):
    street: str
    number: int | None = None
    tags: tuple[str, ...] = ()
    scores: dict[int, float] = {}


@dataclasses.dataclass(frozen=True)
class Money:
    amount: Decimal
    currency: str


class Booked(Event, type="es-snap.booked", topic="es-snap.ledger"):
    key: int
    label: str
    amount: Decimal
    kind: Kind
    ref: uuid.UUID
    at: datetime
    ratio: float


class Moved(Event, type="es-snap.moved", topic="es-snap.ledger"):
    street: str
    number: int | None
    tags: list[str]


class Ledger(Aggregate):
    """Every booking changes state of many types at once."""

    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.by_key: dict[int, Decimal] = {}
        self.pairs: dict[tuple[int, str], int] = {}
        self.last: tuple[int, str] | None = None
        self.kinds: set[Kind] = set()
        self.seen_keys: frozenset[int] = frozenset()
        self.refs: list[uuid.UUID] = []
        self.first_at: datetime | None = None
        self.local_at: datetime | None = None  # a ZoneInfo time, folds included
        self.day: date | None = None
        self.span = timedelta(0)
        self.priority = Priority.LOW
        self.address: Address | None = None
        self.total: Money | None = None
        self.ratios: list[float] = []
        self.blob = b""
        self.count = 0

    @applies(Booked)
    def _booked(self, event: Booked) -> None:
        self.by_key[event.key] = self.by_key.get(event.key, Decimal(0)) + event.amount
        self.pairs[(event.key, event.label)] = self.pairs.get((event.key, event.label), 0) + 1
        self.last = (event.key, event.label)
        self.kinds.add(event.kind)
        self.seen_keys = self.seen_keys | {event.key}
        self.refs.append(event.ref)
        if self.first_at is None:
            self.first_at = event.at
        else:
            self.span = max(self.span, abs(event.at - self.first_at))
        self.local_at = event.at.astimezone(PARIS)
        self.day = event.at.date()
        self.priority = Priority.HIGH if event.kind is Kind.DEBIT else self.priority
        previous = self.total.amount if self.total else Decimal(0)
        self.total = Money(previous + event.amount, "EUR")
        self.ratios.append(event.ratio)
        self.blob += event.label.encode()[:2]
        self.count += 1

    @applies(Moved)
    def _moved(self, event: Moved) -> None:
        scores = dict(self.address.scores) if self.address else {}
        scores[len(scores)] = float(self.count)
        self.address = Address(
            street=event.street, number=event.number, tags=tuple(event.tags), scores=scores
        )


def state(aggregate: Aggregate) -> dict[str, Any]:
    """The aggregate's public attributes, as a snapshot keeps them."""
    return {k: v for k, v in vars(aggregate).items() if not k.startswith("_")}


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (dict keys included)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        keys = {k: k for k in b}
        return len(a) == len(b) and all(
            k in keys and same(k, keys[k]) and same(v, b[k]) for k, v in a.items()
        )
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, set | frozenset):
        return {(type(x), x) for x in a} == {(type(y), y) for y in b}
    if isinstance(a, BaseModel):
        return same(a.__dict__, b.__dict__)
    if dataclasses.is_dataclass(a):
        return same(a.__dict__, b.__dict__)
    if isinstance(a, datetime):
        return (
            a == b
            and a.utcoffset() == b.utcoffset()
            and a.fold == b.fold
            and str(a.tzinfo) == str(b.tzinfo)
        )
    if isinstance(a, Decimal):
        return str(a) == str(b)
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return bool(a == b)
