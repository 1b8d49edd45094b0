"""What happened to a message on its way through the chain: retries, a redelivery
asked for, a dead letter, each with its reason.

The retry and dead-letter steps write them down on the handling's
:class:`~eventbus.context.Context` as they act (only on failure: the success path
writes nothing); observers (:class:`~eventbus.middleware.base.Observer`: tracing
turns them into span events, metrics into counters) read them when the handling
ends::

    class Audit(Observer):
        def end(self, ctx, mark, failure):
            for incident in incidents(ctx):
                print(incident.kind, incident.attempt, incident.reason)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from eventbus.context import NO_RESULT, Context
from eventbus.middleware.base import RedeliveryRequested

IncidentKind = Literal["retry", "redelivery", "dead_letter"]
Outcome = Literal["success", "skipped", "redelivery", "dead_lettered", "error", "cancelled"]
"""How one handling of a message ended (see :func:`outcome`)."""

_KEY = "eventbus.incidents"  # in Context.items: a list, made at the first incident


@dataclass(frozen=True, slots=True)
class Incident:
    """One thing that happened to a message while it was handled.

    - ``kind``: ``"retry"`` (run ``attempt`` failed; it runs again in this process
      after ``delay`` seconds), ``"redelivery"`` (run ``attempt`` failed; the broker
      is asked to deliver it again after ``delay``), ``"dead_letter"`` (it failed for
      good after ``attempt`` runs and went to the dead-letter topic ``target``);
    - ``error_type`` and ``reason``: the failure's class name, and ``"Type: message"``;
    - ``at``: when, in nanoseconds since the epoch (``time.time_ns()``).
    """

    kind: IncidentKind
    error_type: str
    reason: str
    attempt: int
    at: int
    delay: float | None = None
    target: str | None = None


def note(
    ctx: Context,
    kind: IncidentKind,
    failure: BaseException,
    *,
    attempt: int,
    delay: float | None = None,
    target: str | None = None,
) -> None:
    """Write down that ``kind`` happened to ``ctx``'s message because of ``failure``."""
    incident = Incident(
        kind,
        type(failure).__name__,
        f"{type(failure).__name__}: {failure}",
        attempt,
        time.time_ns(),
        delay,
        target,
    )
    found = ctx.items.get(_KEY)
    if found is None:
        ctx.items[_KEY] = [incident]
    else:
        found.append(incident)


def incidents(ctx: Context) -> Sequence[Incident]:
    """What happened to ``ctx``'s message so far, oldest first (empty on the success path)."""
    found: list[Incident] | None = ctx.items.get(_KEY)
    return found if found is not None else ()


def dead_lettered(ctx: Context) -> Incident | None:
    """The dead-letter incident of ``ctx``'s message, if it was dead-lettered."""
    found: list[Incident] | None = ctx.items.get(_KEY)
    if found is not None:
        for incident in reversed(found):
            if incident.kind == "dead_letter":
                return incident
    return None


def outcome(ctx: Context, failure: BaseException | None) -> Outcome:
    """How the handling of ``ctx``'s message ended, given what escaped the chain:

    - ``success``: the handler returned; ``skipped``: no handler ran (a duplicate, or
      a type this group has no handler for), and the message is acked;
    - ``dead_lettered``: it failed for good and went to the dead-letter topic (acked);
    - ``redelivery``: it failed and the retry policy handed it back to the broker;
    - ``error``: the handling failed outside the handler (the idempotency store, the
      dead-letter publish) or for good with dead letters off: the broker redelivers
      it after a backoff;
    - ``cancelled``: cut short by shutdown; the broker delivers it again.
    """
    if failure is None:
        if dead_lettered(ctx) is not None:
            return "dead_lettered"
        return "skipped" if ctx.result is NO_RESULT else "success"
    if isinstance(failure, RedeliveryRequested):
        return "redelivery"
    if isinstance(failure, asyncio.CancelledError):
        return "cancelled"
    return "error"
