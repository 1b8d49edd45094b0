"""The attempt a stream entry is on: its delivery count, less what was given back unread.

Redis counts a delivery of an entry (``times_delivered`` in ``XPENDING``) at every
``XREADGROUP``, ``XCLAIM`` and ``XAUTOCLAIM`` of it, whether or not a handler then
ran. A subscription fetches ahead of the bus (up to its prefetch, in its buffer),
so one closed with entries it never handed out gives them back unread; and so does
one whose claim was cut short (closing, or Redis failing) after Redis had counted
it. Those are recorded per broker, stream and group, process-wide
(:mod:`eventbus.given_back`), and taken off the count: a bus made anew in the same
process, or several stopping at once and passing an entry around, do not spend its
crash-loop budget. In another process a give-back still counts as a run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from eventbus.given_back import given_back

from .settings import RedisSettings


class Attempts:
    """The attempts of the entries of one stream as one consumer group's."""

    def __init__(self, client: Any, settings: RedisSettings, topic: str, group: str) -> None:
        self._client = client
        self.topic = topic
        self.group = group
        self.unread = given_back(f"redis {settings.server} stream {topic} group {group}")

    def gave_back(self, entry_ids: Iterable[bytes]) -> None:
        """These entries were fetched (a delivery counted) and never handed out."""
        for entry_id in entry_ids:
            self.unread.add(entry_id.decode())

    async def of_claimed(self, ids: list[bytes]) -> dict[bytes, int]:
        """Each entry's delivery count from XPENDING, less its deliveries given back
        unread (the attempt it is on now; at least 1). The entries were just claimed:
        if this fails (or the subscription closes meanwhile) they will not be handed
        out, so they count as given back unread."""
        if not ids:
            return {}
        try:
            pipe = self._client.pipeline(transaction=False)
            for entry_id in ids:
                pipe.xpending_range(self.topic, self.group, entry_id, entry_id, 1)
            replies = await pipe.execute(raise_on_error=False)
        except BaseException:
            self.gave_back(ids)
            raise
        out = {}
        for entry_id, reply in zip(ids, replies, strict=True):
            if isinstance(reply, list) and reply:
                delivered = int(reply[0]["times_delivered"])
                out[entry_id] = max(1, delivered - self.unread.of(entry_id.decode()))
        return out
