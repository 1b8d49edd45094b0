"""Delay tiers: one retry topic per delay bucket, so a long delay never blocks a short one.

``nack(delay)`` re-publishes the record to the retry topic of the smallest tier at
least as long as the delay (``<topic>.<group>.retry.<tier>s``), with its not-before
time in a header. A consumer reads each tier in order and holds a record until it is
due, pausing that partition meanwhile; but it never holds a record longer than the
tier's delay after it was written. Every record of a tier is therefore released at
most ``tier`` seconds after it arrived, so one ``nack(3600)`` cannot hold up a
``nack(1)`` (different tier), and within a tier a record waits at most its tier's
delay behind earlier ones. A delay longer than the longest tier is written to that
tier and, when released early, forwarded again (same attempt) until it is due.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DEFAULT_TIERS: tuple[int, ...] = (1, 10, 60, 600, 3600)

# A record released by its tier less than this before its not-before time is handed
# out rather than forwarded again (clock granularity between producer and consumer).
FORWARD_SLACK_MS = 1000


def retry_topic(topic: str, group: str, tier: int) -> str:
    """The retry topic of ``topic`` for ``group`` and the delay tier ``tier`` (seconds)."""
    return f"{topic}.{group}.retry.{tier}s"


def retry_topics(topic: str, group: str, tiers: Sequence[int]) -> dict[str, int]:
    """Every retry topic of (topic, group), mapped to its tier in seconds."""
    return {retry_topic(topic, group, tier): tier for tier in tiers}


def tier_for(delay: float, tiers: Sequence[int]) -> int:
    """The shortest tier at least ``delay`` seconds long (the longest one if none is)."""
    for tier in tiers:
        if delay <= tier:
            return tier
    return tiers[-1]


def release_at(record: Any, not_before_ms: int, tier: int, now_ms: int) -> int:
    """When a record read from a ``tier`` retry topic is released (epoch ms).

    Its not-before time, but no later than ``tier`` seconds after it was written
    (the record's timestamp; the time it was read if the broker gave none).
    """
    written = getattr(record, "timestamp", None)
    start = written if isinstance(written, int) and 0 < written <= now_ms else now_ms
    return min(not_before_ms, start + tier * 1000)


def not_before(record: Any, header: str) -> int:
    """The not-before time (epoch ms) a retry record carries in ``header`` (0 if none)."""
    for name, value in record.headers or ():
        if name == header:
            try:
                return int(value)
            except (TypeError, ValueError):
                return 0
    return 0
