"""Stopping a background task: the one cancel-and-wait every loop owner uses.

A relay, a projection, a watchdog or an adapter's pump runs in a task that must end
when its owner stops, without hanging the shutdown on a call that never returns and
without leaving an "exception was never retrieved" behind. :func:`stop_task` is that
step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any


async def stop_task(
    task: asyncio.Future[Any] | None,
    *,
    timeout: float | None = None,
    grace: float = 0.0,
    what: str = "",
    log: logging.Logger | None = None,
) -> bool:
    """Cancel ``task`` and wait for it to end; True once it has ended.

    ``grace`` seconds are first left for it to end by itself (its owner asked it to
    stop, say by setting an event) before it is cancelled. After the cancel it is
    waited for at most ``timeout`` seconds (``None``: until it ends); one still running
    then is left to end by itself (a database or broker timeout bounds it), and ``log``
    (when given) warns so, naming it by ``what``. The task's own result or exception is
    consumed, never raised: a loop that died was reported when it died. Cancelling the
    caller while it waits cancels the wait, not the rest of the shutdown's state.
    """
    if task is None:
        return True
    if grace > 0 and not task.done():
        await asyncio.wait([task], timeout=grace)
    if not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=timeout)
    if not task.done():
        if log is not None:
            log.warning(
                "%s: still finishing a call %.1fs after stop(); left to end by "
                "itself (its database and broker timeouts bound it)",
                what or "a task",
                timeout or 0.0,
            )
        return False
    if not task.cancelled():
        task.exception()  # retrieved: it was reported where it happened
    return True


CLOSE_GRACE = 3.0
"""Seconds a subscription's background tasks have to end once cancelled at close."""


async def stop_tasks(
    tasks: Sequence[asyncio.Future[Any] | None],
    *,
    what: str,
    log: logging.Logger,
    timeout: float | None = None,
) -> None:
    """:func:`stop_task` for each of ``tasks`` at once, each named in the warning by its
    task name: an adapter's close, so that one task held inside a broker client past
    its cancellation is left behind, said so, and does not use up the close's time
    (its commit or hand-back of what was fetched comes next). ``timeout`` defaults to
    :data:`CLOSE_GRACE`, read when called."""
    bound = CLOSE_GRACE if timeout is None else timeout
    await asyncio.gather(
        *(
            stop_task(task, timeout=bound, what=f"{what}: {_name(task)}", log=log)
            for task in tasks
            if task is not None
        )
    )


def _name(task: asyncio.Future[Any]) -> str:
    return task.get_name() if isinstance(task, asyncio.Task) else repr(task)
