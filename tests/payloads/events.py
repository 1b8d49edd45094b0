"""One event with every field type the guide's events use, in each payload format.

The guide and ``examples/`` declare ``str``, ``int``, ``float``, ``bool``, ``list[str]``,
``dict[str, int]``, ``dict[str, str]``, ``str | None``, nested models (``list[OrderLine]``,
``tuple[OrderLine, ...]``) and ``set[str]``; ``Decimal``, ``datetime``, ``UUID`` and
enums are what events of a shop carry besides. ``AllTypes`` has each of them, and
``sample()`` values that would show a lossy encoding (an int past 32 bits, a float
with no short decimal form, microseconds, non-ASCII text, a decimal's digits past a
float's and its trailing zero).
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import importlib
import sys
import tempfile
import uuid
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

from eventbus import Event
from examples.order_saga.events import OrderLine

HERE = Path(__file__).parent


class Method(enum.StrEnum):
    card = "card"
    cash = "cash"
    bank_transfer = "bank_transfer"


class AllTypes(Event, register=False):
    """Every field type; subclasses pick the payload format."""

    order_id: str
    amount_cents: int
    ratio: float
    paid: bool
    total: Decimal
    placed_at: dt.datetime
    customer: uuid.UUID
    method: Method
    tags: list[str]
    counts: dict[str, int]
    labels: dict[str, str]
    note: str | None = None
    retries: int | None  # nullable but required: None must come back as None
    lines: list[OrderLine]
    more_lines: tuple[OrderLine, ...]
    flags: set[str]
    first: OrderLine
    gift: OrderLine | None = None


def sample(cls: type[AllTypes], n: int = 0, **changes: Any) -> AllTypes:
    values: dict[str, Any] = {
        "order_id": f"o-{n} Zoë €",
        "amount_cents": 2**40 + n,
        "ratio": 0.1 + n,
        "paid": n % 2 == 0,
        "total": Decimal("1234567890.123456789010"),
        "placed_at": dt.datetime(2026, 12, 6, 10, 11, 12, 345678 + n, tzinfo=dt.UTC),
        "customer": uuid.UUID(int=12345678901234567890 + n),
        "method": Method.bank_transfer,
        "tags": ["a", "b"],
        "counts": {"x": 1, "y": -2},
        "labels": {"tier": "gold", "région": "Île"},
        "note": "fragile",
        "retries": None,
        "lines": [OrderLine(sku="s-1", quantity=2, unit_price_cents=150)],
        "more_lines": (OrderLine(sku="s-2", quantity=1, unit_price_cents=99),),
        "flags": {"urgent", "gift"},
        "first": OrderLine(sku="s-0", quantity=1, unit_price_cents=1),
        "gift": None,
    }
    values.update(changes)
    return cls(**values)


@functools.cache
def proto_module() -> ModuleType:
    """``all_types_pb2``, generated now from all_types.proto by grpcio-tools' protoc."""
    from grpc_tools import protoc  # type: ignore[import-untyped]

    out = tempfile.mkdtemp(prefix="eventbus-proto-")
    include = str(Path(protoc.__file__).parent / "_proto")
    code = protoc.main(
        ["protoc", f"-I{HERE}", f"-I{include}", f"--python_out={out}", "all_types.proto"]
    )
    assert code == 0, f"protoc failed on {HERE / 'all_types.proto'}"
    sys.path.insert(0, out)
    try:
        return importlib.import_module("all_types_pb2")
    finally:
        sys.path.remove(out)


class JsonAll(AllTypes, type="payloads.all-json", topic="payloads-json"):
    pass


class MsgPackAll(AllTypes, type="payloads.all-msgpack", payload_format="msgpack"):
    pass


class AvroAll(AllTypes, type="payloads.all-avro", payload_format="avro"):
    pass


def _protobuf() -> Any:
    from eventbus.payloads.protobuf import ProtobufFormat

    return ProtobufFormat(proto_module().AllTypes)


class ProtobufAll(AllTypes, type="payloads.all-protobuf", payload_format=_protobuf()):
    pass


FORMATS: dict[str, type[AllTypes]] = {
    "json": JsonAll,
    "msgpack": MsgPackAll,
    "avro": AvroAll,
    "protobuf": ProtobufAll,
}
"""Each payload format -> the AllTypes class that uses it."""
