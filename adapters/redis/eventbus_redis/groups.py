"""A Streams consumer group as Redis sees it: creating it, reading its state, and
telling that it (or its stream) is gone."""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError


async def ensure_group(client: Any, topic: str, group: str, start: str | bytes) -> None:
    """Create ``group`` on the stream ``topic`` (and the stream if missing) from entry
    ``start`` (``0``, ``$`` or an entry id); a group that exists keeps its position."""
    try:
        await client.xgroup_create(topic, group, id=start, mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def group_info(client: Any, topic: str, group: str) -> dict[str, Any] | None:
    """``XINFO GROUPS`` of ``topic`` for ``group`` (``last-delivered-id``, ``lag`` ...),
    ``None`` if the stream has no such group; a missing stream raises ResponseError."""
    for info in await client.xinfo_groups(topic):
        name = info.get("name")
        if (name.decode("utf-8", "replace") if isinstance(name, bytes) else name) == group:
            return dict(info)
    return None


def gone(exc: ResponseError) -> bool:
    """Whether Redis says the group or its stream no longer exists (NOGROUP; a blocked
    read ended by the stream's deletion: UNBLOCKED)."""
    text = str(exc)
    return text.startswith(("NOGROUP", "UNBLOCKED")) or "NOGROUP" in text
