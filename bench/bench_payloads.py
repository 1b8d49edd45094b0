"""What each payload format costs and saves: bytes per event, and CPU us per event to
encode and to decode, for the guide's events.

::

    python bench/bench_payloads.py                       # 20,000 events, 5 repeats
    python bench/bench_payloads.py --events 5000 --repeat 3 --only avro

The events (built before any timing):

- ``shop``: the guide's ``OrderPlaced`` (``order_id``, ``amount_cents``);
- ``saga``: the saga's ``OrderPlaced`` (two ids, three ``OrderLine`` models, a total);
- ``all types``: ``tests/payloads/events.py``'s ``AllTypes``, one field of every type
  the guide's events use (str, int, float, bool, Decimal, datetime, UUID, an enum,
  lists, dicts, optionals, nested models, a tuple and a set).

Encoding is what ``publish`` runs (``eventbus.payloads.encode_payload``; JSON is
pydantic's ``to_json``); decoding is what a handler's subscription runs
(``registry.decode`` of the envelope: dispatch by content type, the format's reader,
pydantic validation). Bytes are ``Envelope.data``'s. Each repeat times every case
once (interleaved, after one warm-up), in CPU time of this process, with the prepared
events frozen out of the garbage collector's walks (``gc.freeze``); the table gives
the median and the best.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' event classes and .proto files

from eventbus import Envelope, Event  # noqa: E402
from eventbus.events import Registry  # noqa: E402
from eventbus.payloads import PayloadFormat, encode_payload  # noqa: E402
from eventbus.payloads.protobuf import ProtobufFormat  # noqa: E402
from examples.order_saga.events import OrderLine  # noqa: E402
from tests.payloads.events import AllTypes, proto_module, sample  # noqa: E402

FORMATS = ("json", "msgpack", "avro", "protobuf")


class Shop(Event, type="bench.payloads.shop", register=False):
    order_id: str
    amount_cents: int


class Saga(Event, type="bench.payloads.saga", register=False):
    order_id: str
    customer_id: str
    lines: list[OrderLine]
    total_cents: int


class Every(AllTypes, type="bench.payloads.all", register=False):
    pass


def workloads(n: int) -> dict[str, tuple[list[Event], dict[str, str | PayloadFormat]]]:
    """Each event kind -> ``n`` distinct events and the spec of each format for it."""
    protos = proto_module()
    lines = [OrderLine(sku=f"sku-{i}", quantity=i + 1, unit_price_cents=250 * i) for i in range(3)]
    shop: list[Event] = [Shop(order_id=f"ord-{i:08d}", amount_cents=i % 10_000) for i in range(n)]
    saga: list[Event] = [
        Saga(order_id=f"ord-{i:08d}", customer_id=f"cust-{i % 977}", lines=lines, total_cents=i)
        for i in range(n)
    ]
    alls: list[Event] = [sample(Every, i % 1000) for i in range(n)]
    named: dict[str, str | PayloadFormat] = {"json": "json", "msgpack": "msgpack", "avro": "avro"}
    return {
        "shop": (shop, {**named, "protobuf": ProtobufFormat(protos.ShopOrderPlaced)}),
        "saga": (saga, {**named, "protobuf": ProtobufFormat(protos.SagaOrderPlaced)}),
        "all types": (alls, {**named, "protobuf": ProtobufFormat(protos.AllTypes)}),
    }


def cpu(fn: Callable[[], object]) -> float:
    gc.collect()  # the garbage of the case before is not this one's to pay
    start = time.process_time()
    fn()
    return time.process_time() - start


class Case:
    """One event kind in one format: its envelopes, built once, and its timings."""

    def __init__(self, events: list[Event], spec: str | PayloadFormat) -> None:
        self.events, self.spec = events, spec
        self.registry = Registry()
        self.registry.register(type(events[0]))
        self.envelopes = [self._envelope(event) for event in events]
        self.bytes = statistics.mean(len(e.data) for e in self.envelopes)
        self.encode_s: list[float] = []
        self.decode_s: list[float] = []

    def _envelope(self, event: Event) -> Envelope:
        data, content_type, schema = encode_payload(event, self.spec)
        return Envelope.create(
            type=event.event_type(),
            source="bench",
            data=data,
            datacontenttype=content_type,
            dataschema=schema,
        )

    def check(self) -> None:
        decode = self.registry.decode
        assert [decode(e) for e in self.envelopes[:50]] == self.events[:50], self.spec

    def run(self) -> None:
        """Encode every event, then decode every envelope, each result dropped at once
        (as a publisher and a handler do)."""
        events, spec, decode = self.events, self.spec, self.registry.decode

        def encode_all() -> None:
            if spec == "json":  # what publish runs for JSON: the model's own to_bytes
                for event in events:
                    event.to_bytes()
            else:
                for event in events:
                    encode_payload(event, spec)

        def decode_all() -> None:
            for envelope in self.envelopes:
                decode(envelope)

        self.encode_s.append(cpu(encode_all))
        self.decode_s.append(cpu(decode_all))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per run")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per case")
    parser.add_argument("--only", default="", help="only formats whose name contains this")
    args = parser.parse_args(argv)
    cases: dict[tuple[str, str], Case] = {}
    for kind, (events, specs) in workloads(args.events).items():
        for name in FORMATS:
            if args.only in name:
                cases[kind, name] = Case(events, specs[name])
    # The workloads are built: the collector need not walk them on every collection
    # (a service's heap is not twelve sets of 20,000 events).
    gc.freeze()
    for case in cases.values():
        case.check()
        case.run()  # warm-up
        case.encode_s.clear()
        case.decode_s.clear()
    for _ in range(args.repeat):
        for case in cases.values():
            case.run()
    print(
        f"\n{args.events} events per run, {args.repeat} interleaved repeats, CPU us per "
        f"event (median / best); python {sys.version.split()[0]}; "
        f"load average {os.getloadavg()[0]:.2f} at the end"
    )
    print(f"{'event':<10} {'format':<9} {'bytes':>6} {'encode us':>14} {'decode us':>14}")
    for (kind, name), case in cases.items():
        print(
            f"{kind:<10} {name:<9} {case.bytes:>6.0f} "
            f"{_us(case.encode_s, args.events):>14} {_us(case.decode_s, args.events):>14}"
        )
    return 0


def _us(seconds: list[float], events: int) -> str:
    per: Any = [s / events * 1e6 for s in seconds]
    return f"{statistics.median(per):.2f} / {min(per):.2f}"


if __name__ == "__main__":
    sys.exit(main())
