"""Generate docs/reliability.md from a chaos run (integration_tests/chaos).

Reads ``.reports/chaos/<profile>.jsonl`` (what the scenarios measured: one JSON line
per scenario and broker; ``docs/reliability/<profile>.jsonl``, the committed copy,
when the run is not on this machine), keeps a copy beside the page
(``docs/reliability/``, so the published figures have their source in the
repository), and writes the page: per scenario and broker the faults injected,
events, lost, duplicates and recovery time; the soak's resident memory as an SVG
chart; what is declared rather than promised.

Several profiles merge: each (scenario, broker) row comes from the last profile
named that has it, so a long run of the clusters alone keeps the short run's
single-node rows (and a full long run replaces them).

Usage: python scripts/gen_reliability.py [short|long ...]
(default: ``short long``, those of them that exist)
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / ".reports" / "chaos"
PAGE = ROOT / "docs" / "reliability.md"
DATA = ROOT / "docs" / "reliability"

# What each scenario does and asserts, in the order the page shows them.
SCENARIOS: dict[str, tuple[str, str]] = {
    "crash-restart": (
        "Crash-restart",
        "N events; the consumer process (`eventbus run`) SIGKILLed at random points K "
        "times and started again. Asserted: every confirmed event handled at least once. "
        "Duplicates: handler runs to the end beyond the first. Rows `<broker>-cluster`: "
        "the same on the three-member clusters of the long profile (1,000 events, 3 "
        "kills, the cluster untouched).",
    ),
    "crash-restart+idempotency": (
        "Crash-restart with the idempotency middleware",
        "The same, with the idempotency middleware on a Redis store shared by every "
        "process. Duplicates here are *effects* that ran twice; asserted: at most one per "
        "kill (the handler that was between its effect and the store's done mark).",
    ),
    "duplicate-rate": (
        "Duplicate rate after a crash",
        "Handlers that do nothing, the process SIGKILLed mid-stream: what a kill re-runs. "
        "On Kafka, whose adapter controls it through its commit cadence, twice: with the "
        "defaults (the handling rate times the commit latency, asserted at most 30%: "
        "the broker's 5 ms coordinator linger puts 5% out of reach at full speed) and "
        "with `max_uncommitted=40` (asserted: at most 5% of the events). The short "
        "profile runs it on Kafka only; the long one on every broker (3,000 events, 3 "
        "kills).",
    ),
    "scale-out": (
        "Scale-out",
        "Three consumer processes in one group share the stream; the busiest is "
        "SIGKILLed. Asserted: every member had a share, nothing lost, the killed "
        "member's unfinished events handled by another within the broker's lease "
        "(+10 s); per-key order across the hand-over on Kafka, SQLite and PostgreSQL. "
        "Recovery: the kill to the last of those events handled.",
    ),
    "broker-restart": (
        "Broker restart",
        "A private broker (never the shared one) stopped and started on its data while "
        "a consumer works and a publisher keeps publishing. Asserted: every confirmed "
        "publish handled. Recovery: broker back to the first event published after it "
        "handled.",
    ),
    "cuts-and-freezes": (
        "Connection cuts and freezes",
        "Every connection of the consumer and the publisher cut, then the path frozen "
        "(half-open, 2 s), through the fault proxy, under load. Asserted: every "
        "confirmed publish handled. Recovery: each fault's end to the next event "
        "handled.",
    ),
    "poison-mix": (
        "Poison mix",
        "1% undecodable, 1% invalid, 1% handler-always-fails and 0.1% handler-kills-"
        "the-process events among good ones; a supervisor restarts the killed process. "
        "Asserted: every poison event in the group's DLQ with its reason, every good one "
        "handled (or dead-lettered with a killing event, below), no stall.",
    ),
    "graceful-shutdown": (
        "Graceful shutdown under load",
        "SIGTERM during a burst (4 handlers at a time, 50 ms each). Asserted: no handler "
        "starts after the signal, none is cut off, exit 0 within the shutdown timeout, "
        "nothing lost. Recovery: SIGTERM to exit.",
    ),
    "cluster-node-failure": (
        "Node failure on a cluster",
        "Three-member clusters on loopback (long profile only): NATS JetStream with "
        "`replicas=3`, Redis primary + replica + three Sentinels, RabbitMQ with quorum "
        "queues, Apache Kafka (KRaft, replication factor 3, `min.insync.replicas=2`, "
        "`acks=all` with idempotence). A consumer process and a publisher reach "
        "every member through the "
        "adapter's multi-address URL; the member leading the topic's data (RabbitMQ: "
        "the queue leader, then the node the consumer is connected to) is SIGKILLed "
        "mid-stream and started again on its data, twice. Asserted: every confirmed "
        "publish handled. Recovery: the kill to the first event published after it "
        "handled. RabbitMQ 3.10 leaves a channel that first routed to a quorum queue "
        "while its leader's node was dying nacking that queue's publishes until the "
        "node is back; the adapter publishes on a new channel after a nack "
        "(`publishes_not_confirmed`: those nacked or cut off meanwhile, not counted as "
        "confirmed).",
    ),
    "failover-window": (
        "Redis: what a failover loses",
        "Redis replicates asynchronously. Pipelined `XADD`s to the primary of the "
        "Sentinel cluster, the primary SIGKILLed mid-stream, counted on the promoted "
        "replica, three failovers each: `plain` counts a write acknowledged when its "
        "`XADD` answered (measured, declared); `wait` only once `WAIT 1 1000` said the "
        "replica has it (asserted: nothing lost). Recovery: the kill to the Sentinels "
        "naming the new primary.",
    ),
    "soak": (
        "Soak",
        "Events through the default chain; the consumer's RSS and open descriptors "
        "sampled. Asserted: flat once warm (RSS growth at most 25 MiB, descriptors at "
        "most 4), throughput steady (second half at least half the first).",
    ),
}

# Not run, and why: a scenario that does not apply to a broker is declared, not skipped
# (and one that runs and fails, "FAILS ...", is said so until it is fixed).
NOT_RUN = {
    ("broker-restart", "sqs"): "moto_server keeps queues in memory only, so a restart "
    "forgets them (SQS stores messages durably; a declared moto limit in the "
    "conformance suite too)",
    ("broker-restart", "sqlite"): "SQLite has no server process: the log is the file, "
    "a commit is on disk when it returns, and the crash scenarios kill its only "
    "processes",
}

DECLARED = """\
## Declared, not promised

Measured by the scenarios above; each is a limit of the broker or of at-least-once
delivery, said here (and in [semantics](semantics.md)) rather than hidden:

- **Duplicates after a crash** are at-least-once delivery: a killed process's
  unsettled messages run again. RabbitMQ, NATS JetStream, Redis Streams, SQS and the
  SQL brokers settle each message on its own, so a kill re-runs what was running or
  fetched (0-15 in the figures). Kafka keeps one committed offset per partition: a kill
  re-runs what was settled since the last finished commit, the handling rate times
  the commit latency. With handlers doing nothing that is 10-25% of a 1,000-event
  stream per kill with the defaults (commits pipelined, at about 4% more CPU per
  event; what is left is the round trip, on Kafka 4.x mostly the broker's 5 ms
  linger);
  `max_uncommitted=40` (with `commit_every=20`) keeps it under 5% at about half the
  throughput ([Kafka, Commits](adapters/kafka.md#commits): the trade-off, measured).
  Handlers that do real work re-run up to `commit_every` (32) plus their rate times
  the round trip (crash-restart, 2 ms handlers: 20-29 per kill, 28 since #25's
  pipelining). The
  idempotency middleware turns re-runs into one effect each, except the one handler
  per kill that was between its effect and the store's done mark.
- **Good events dead-lettered with a killing one** (poison mix,
  `good_dead_lettered`): the events a process had fetched when a handler killed it
  count a run each, as the broker's delivery count (or Kafka's run count) does for
  every message in flight at a crash; after `max_attempts` such crashes they are
  dead-lettered with `RunsExhaustedError` beside the killing event. They are in the
  DLQ, not lost, and can be replayed. At most the prefetch (8) per killing event,
  except on SQLite and PostgreSQL, whose acks become durable a moment after the
  handler (deleted with the next claim or after 20 ms): a kill loses the last ones,
  so good events handled in a burst just before each kill of a crash loop come back
  each time. Measured in two of eight short-profile runs on PostgreSQL: 154 and 111
  of 300 good events dead-lettered beside one killing event (7 in the others). Not
  fixed yet.
- **Dead letters of a log broker can come twice** (poison mix on Kafka,
  `dead_letter_copies`): a process killed after dead-lettering a record and before
  its commit reads the record again and dead-letters it again; the DLQ is
  at-least-once like the topic (the letters carry the event id).
- **Redis with Sentinel can lose acknowledged writes on failover** (failover
  window): replication is asynchronous, so what the primary acknowledged and the
  replica did not yet have is gone when the replica is promoted. On loopback no
  kill fell in that window (0 lost either way), but a failover during the replica's
  first full sync lost all 3,000 acknowledged writes in one run. `wait_replicas=1`
  (`WAIT` after each round trip) closes it: a publish is confirmed only once the
  replica has it ([Redis, Sentinel](adapters/redis.md#sentinel-failover)).
- **Per-key order across a hand-over** (scale-out, `order_inversions`) holds on
  Kafka (whole partitions move from the last commit) and the SQL brokers (a key's
  next message waits for the one before); RabbitMQ, NATS, Redis Streams and SQS
  redeliver a dead member's unsettled messages after those the survivors took.
"""

CONTAINERS = """\
## The clusters with a container engine

The figures above come from clusters of local processes (the machine's Debian
packages; Apache Kafka's jars from Maven Central on the JDK). When a container engine
answers and `docker compose` is installed, the harness runs the same clusters from
the `cluster` profile of `docker-compose.yml` instead, falling back to local
processes (with a warning saying why) if they do not start. The profile's images
carry the versions the process path runs and its settings (three Kafka brokers, each
a KRaft controller, replication factor 3, `min.insync.replicas=2`; three RabbitMQ
nodes clustered by classic-config peer discovery; three NATS JetStream servers
routed to each other; a Redis primary, its replica and three Sentinels);
`tests/test_compose_clusters.py` checks the file against the harness. A node
failure is `docker compose kill -s SIGKILL` on the member's container, the restart
`docker compose start` (the same container, on its data). Not yet measured this way:
the machine these figures come from has no container engine.

```sh
pytest integration_tests/chaos --chaos-long -m cluster   # containers if an engine answers
EVENTBUS_TEST_METHODS=process pytest integration_tests/chaos --chaos-long -m cluster
EVENTBUS_TEST_METHODS=container pytest integration_tests/chaos --chaos-long -m cluster
```

The last one fails, naming why, instead of falling back. The harness's compose
project is `eventbus-clusters`: each cluster is created blank when its scenarios
start and removed with its volumes when they end, one at a time, since the ports
are fixed. `docker compose up` alone still starts only the single brokers. To run
a cluster by hand (under each, an eventbus URL naming every member; the harness adds
its short timeouts to these):

```sh
docker compose --profile cluster up -d --wait kafka-1 kafka-2 kafka-3
#   kafka://127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094?replication=3
docker compose --profile cluster up -d --wait rabbitmq-1 rabbitmq-2 rabbitmq-3
#   amqp://guest:guest@127.0.0.1:5673,127.0.0.1:5674,127.0.0.1:5675/?queue_type=quorum
docker compose --profile cluster up -d --wait nats-1 nats-2 nats-3
#   nats://127.0.0.1:4223,127.0.0.1:4224,127.0.0.1:4225?replicas=3
docker compose --profile cluster up -d --wait redis-net redis-r1 redis-r2 \\
    redis-sentinel-1 redis-sentinel-2 redis-sentinel-3
#   redis+streams://127.0.0.1:26380,127.0.0.1:26381,127.0.0.1:26382/0?sentinel=mymaster
docker compose --profile cluster kill -s SIGKILL kafka-2   # a node failure,
docker compose --profile cluster start kafka-2             # and its restart
docker compose --profile cluster down -v
```

Sentinels hand clients the address they know a node by, so the Redis services share
one network namespace (`redis-net`'s, which publishes the ports): `127.0.0.1:6380`
is the primary inside it and on the host alike. Every port is published and
advertised on 127.0.0.1, so the engine must run on the machine of the tests.
"""


def load(profile: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    path = REPORTS / f"{profile}.jsonl"
    if not path.exists():
        path = DATA / f"{profile}.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    header = lines[0]["header"] if lines and "header" in lines[0] else {}
    results = [line for line in lines if "scenario" in line]
    return header, results


def _recovery(values: list[float]) -> str:
    if not values:
        return "-"
    low, high = min(values), max(values)
    span = f"{low:.2f}" if low == high else f"{low:.2f}-{high:.2f}"
    return span if len(values) == 1 else f"{span} ({len(values)} faults)"


def _extra(result: dict[str, Any]) -> str:
    extra = {k: v for k, v in result.get("extra", {}).items() if k != "samples"}
    return ", ".join(f"{k}: {v}" for k, v in extra.items())


def table(results: list[dict[str, Any]], scenario: str) -> str:
    rows = [
        "| broker | faults | events | lost | duplicates | recovery (s) | seconds | also |",
        "|---|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in results:
        rows.append(
            f"| {r['broker']} | {r['fault_count']} | {r['events']:,} | {r['lost']} | "
            f"{r['duplicates']} | {_recovery(r['recovery_s'])} | {r['seconds']} | "
            f"{_extra(r)} |"
        )
    for (name, broker), why in NOT_RUN.items():
        if name == scenario:
            shown = why if why.startswith("FAILS") else f"not run: {why}"
            rows.append(f"| {broker} | - | - | - | - | - | - | {shown} |")
    return "\n".join(rows)


def rss_chart(result: dict[str, Any], width: int = 480, height: int = 160) -> str:
    """The soak's RSS over events handled, as a small SVG line chart."""
    samples = result["extra"].get("samples", [])
    points = [(s[1], s[2]) for s in samples]
    if len(points) < 2:
        return ""
    max_x = max(p[0] for p in points) or 1
    low, high = min(p[1] for p in points), max(p[1] for p in points)
    span = max(1.0, high - low)
    pad = 30
    coords = " ".join(
        f"{pad + (x / max_x) * (width - 2 * pad):.1f},"
        f"{height - pad - ((y - low) / span) * (height - 2 * pad):.1f}"
        for x, y in points
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="10">\n'
        f'<rect width="{width}" height="{height}" fill="white"/>\n'
        f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{coords}"/>\n'
        f'<text x="{pad}" y="{pad - 10}">RSS MiB ({low:.0f}-{high:.0f}) of the consumer, '
        f"{result['broker']}</text>\n"
        f'<text x="{width - pad}" y="{height - 8}" text-anchor="end">'
        f"{max_x:,} events handled</text>\n</svg>\n"
    )


def merge(runs: list[tuple[str, dict[str, Any], list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """The rows of ``runs``: per (scenario, broker) those of the last run that has any."""
    rows: list[dict[str, Any]] = []
    for profile, _, results in runs:
        keys = {(r["scenario"], r["broker"]) for r in results}
        rows = [r for r in rows if (r["scenario"], r["broker"]) not in keys]
        rows += [{**r, "profile": profile} for r in results]
    return rows


def render(runs: list[tuple[str, dict[str, Any], list[dict[str, Any]]]]) -> str:
    results = merge(runs)
    used = {r["profile"] for r in results}
    sources = ", ".join(f"docs/reliability/{p}.jsonl" for p, _, _ in runs if p in used)
    shown = [
        f"the **{p} profile** run {h.get('started', '?')} on {h.get('machine', '?')}, "
        f"Python {h.get('python', '?')}" + ("" if len(used) == 1 else f" ({_rows_of(results, p)})")
        for p, h, _ in runs
        if p in used
    ]
    out = [
        "# Reliability under faults",
        "",
        f"<!-- generated by scripts/gen_reliability.py from {sources}; do not edit -->",
        "",
        "What the chaos scenarios (`integration_tests/chaos`, marker `chaos`) measured "
        f"in {' and '.join(shown)}. The short "
        "profile runs with the test command (`make test`, CI) on every single-node "
        "broker the harness has, with small event counts; the long one "
        "(`pytest integration_tests/chaos --chaos-long` or `EVENTBUS_CHAOS=long`) runs "
        "ten times the events, more faults, the soak of 1,000,000 events on memory, "
        "Kafka and NATS, and the three-member clusters (marker `cluster`: NATS, Redis "
        "with Sentinel, RabbitMQ and Apache Kafka).",
        "",
        "Every process is a real `eventbus run` of `integration_tests/chaos/app.py`, "
        "whose handlers append one line per start and end to a journal (one `O_APPEND` "
        "write, which a SIGKILL cannot tear): *lost* is a confirmed event with no end "
        "in the journal (0 everywhere the broker promises it, which is every row), "
        "*duplicates* the ends beyond the first, summed.",
        "",
    ]
    by_scenario: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_scenario.setdefault(r["scenario"], []).append(r)
    for scenario, (title, what) in SCENARIOS.items():
        found = by_scenario.pop(scenario, [])
        if not found:
            continue
        out += [f"## {title}", "", what, "", table(found, scenario), ""]
        if scenario == "soak":
            for r in found:
                svg = rss_chart(r)
                if svg:
                    name = f"soak-rss-{r['profile']}-{r['broker']}.svg"
                    (DATA / name).write_text(svg)
                    out += [f"![RSS during the soak on {r['broker']}](reliability/{name})", ""]
    for scenario, found in by_scenario.items():  # a scenario this script does not know
        out += [f"## {scenario}", "", table(found, scenario), ""]
    out += [DECLARED, CONTAINERS]
    return "\n".join(out)


def _rows_of(results: list[dict[str, Any]], profile: str) -> str:
    scenarios = sorted({r["scenario"] for r in results if r["profile"] == profile})
    return "rows of " + ", ".join(scenarios)


def main(argv: list[str]) -> int:
    profiles = argv or [
        p
        for p in ("short", "long")
        if (REPORTS / f"{p}.jsonl").exists() or (DATA / f"{p}.jsonl").exists()
    ]
    DATA.mkdir(parents=True, exist_ok=True)
    runs = []
    for profile in profiles:
        if (REPORTS / f"{profile}.jsonl").exists():
            shutil.copyfile(REPORTS / f"{profile}.jsonl", DATA / f"{profile}.jsonl")
        runs.append((profile, *load(profile)))
    PAGE.write_text(render(runs))
    count = len(merge(runs))
    print(
        f"wrote {PAGE.relative_to(ROOT)} from the {' and '.join(profiles)} "
        f"profile(s) ({count} rows)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
