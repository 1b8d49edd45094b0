"""What the event-sourcing benches share: their options, fresh databases for each
contender, the ``eventsourcing`` library's settings for them, and the result table.

Used by ``bench_eventstore.py`` and ``bench_projections.py`` (run as scripts from
the repository root, so this folder is on ``sys.path``).
"""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

BATCH = 10
"""Events per append (eventbus) or per save (both libraries)."""


def add_work_arguments(parser: argparse.ArgumentParser, *, streams: int, stores: str) -> None:
    """``--streams``, ``--per-stream``, ``--stores`` and ``--pg-url``."""
    parser.add_argument("--streams", type=int, default=streams)
    parser.add_argument("--per-stream", type=int, default=50, help="events per stream (x10)")
    parser.add_argument("--stores", default=stores)
    parser.add_argument(
        "--pg-url",
        default=os.environ.get(
            "EVENTBUS_TEST_POSTGRES_URL", "postgresql://postgres:postgres@127.0.0.1:5432/test"
        ),
    )


def total_events(streams: int, per_stream: int) -> int:
    """Events each contender handles: whole batches of :data:`BATCH` per stream."""
    return streams * (per_stream // BATCH) * BATCH


def rate(events: int, seconds: float) -> float:
    """Events per second (infinite for a clock too coarse to see the work)."""
    return events / seconds if seconds > 0 else float("inf")


@asynccontextmanager
async def fresh_postgres(server: str, prefix: str) -> AsyncIterator[str]:
    """A database of its own on ``server`` (named ``prefix_<random>``), dropped after."""
    import asyncpg

    admin = await asyncpg.connect(server, timeout=5)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def postgres_env(url: str) -> dict[str, str]:
    """The ``eventsourcing`` library's settings for the PostgreSQL database at ``url``."""
    parts = urlsplit(url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": parts.path.lstrip("/"),
        "POSTGRES_HOST": parts.hostname or "",
        "POSTGRES_PORT": str(parts.port or 5432),
        "POSTGRES_USER": parts.username or "",
        "POSTGRES_PASSWORD": parts.password or "",
    }


def sqlite_env(path: str) -> dict[str, str]:
    """The ``eventsourcing`` library's settings for an SQLite file at ``path``."""
    return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": path}


def print_table(header: Sequence[str], rows: Sequence[Sequence[str | float]]) -> None:
    """A Markdown table: text columns left-aligned, figures (events/s) right-aligned."""
    cells = [[f"{v:,.0f}" if isinstance(v, float) else v for v in row] for row in rows]
    widths = [max([len(title), *(len(row[i]) for row in cells)]) for i, title in enumerate(header)]
    numeric = [bool(rows) and isinstance(rows[0][i], float) for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(
                v.rjust(w) if n else v.ljust(w)
                for v, w, n in zip(values, widths, numeric, strict=True)
            )
            + " |"
        )

    print(line(header))
    print(
        "|"
        + "|".join(
            "-" * (w + 1) + ":" if n else "-" * (w + 2)
            for w, n in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    for row in cells:
        print(line(row))
