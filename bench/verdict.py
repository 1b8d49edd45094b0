"""Verdicts on issue 24's targets: read from the median, refused on a loaded machine.

Pure logic, no broker and no clock (the unit tests in ``tests/test_bench_verdict.py``
drive it): a :class:`Target` names two figures (eventbus's and a reference's,
each the list of its repeats) and the ratio they must reach; :func:`judge` gives
PASS, MISS or NO VERDICT with the median ratio that decided it and the best
ratio beside it; :func:`render` prints every target of every broker as one table.

A verdict needs at least :data:`MIN_REPEATS` interleaved repeats of both figures,
and a machine whose 1-minute load average is at most :data:`MAX_LOAD` (other
work on the cores skews the ratios: a single noisy run decided issue 7's
verdict). :class:`LoadGuard` reads the load once; ``override`` (the benches'
``--ignore-load``) judges anyway, and the table says so on every such line.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

MIN_REPEATS = 3
MAX_LOAD = 1.5
Status = Literal["PASS", "MISS", "NO VERDICT", "measured"]
PASS: Final = "PASS"
MISS: Final = "MISS"
NO_VERDICT: Final = "NO VERDICT"
MEASURED: Final = "measured"


@dataclass(frozen=True)
class LoadGuard:
    """The machine's 1-minute load average and whether verdicts may be given on it."""

    load: float
    limit: float = MAX_LOAD
    override: bool = False

    @classmethod
    def read(
        cls,
        *,
        override: bool = False,
        limit: float = MAX_LOAD,
        getloadavg: Callable[[], tuple[float, float, float]] = os.getloadavg,
    ) -> LoadGuard:
        return cls(getloadavg()[0], limit, override)

    @property
    def loaded(self) -> bool:
        return self.load > self.limit

    @property
    def allows(self) -> bool:
        return not self.loaded or self.override

    def describe(self) -> str:
        """One line for the table's header: the load and what it means for the verdicts."""
        if not self.loaded:
            return (
                f"load average {self.load:.2f} (1 min, before the runs) <= {self.limit:g}: "
                "verdicts given"
            )
        if self.override:
            return (
                f"load average {self.load:.2f} (1 min, before the runs) > {self.limit:g}, "
                "guard OVERRIDDEN "
                "(--ignore-load): verdicts below are for development, not for the issue"
            )
        return (
            f"load average {self.load:.2f} (1 min, before the runs) > {self.limit:g}: no "
            "verdicts on a loaded "
            "machine (figures shown; rerun when it is quiet, or --ignore-load to judge anyway)"
        )


@dataclass(frozen=True)
class Target:
    """``ours`` against ``reference``: the ratio ``ours / reference`` of their medians must be
    at least ``goal`` (``higher`` figures are better: events/s), or at most ``goal`` when
    lower is better (latency). ``goal`` ``None``: measured and shown, not judged."""

    broker: str
    label: str
    ours: Sequence[float]
    reference: Sequence[float] | None
    goal: float | None
    higher: bool = True
    unit: str = "/s"


@dataclass(frozen=True)
class Verdict:
    target: Target
    status: Status
    median_ratio: float | None
    best_ratio: float | None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        t = self.target
        return {
            "broker": t.broker,
            "target": t.label,
            "eventbus": list(t.ours),
            "reference": None if t.reference is None else list(t.reference),
            "goal": t.goal,
            "higher_is_better": t.higher,
            "unit": t.unit,
            "median_ratio": self.median_ratio,
            "best_ratio": self.best_ratio,
            "verdict": self.status,
            "reason": self.reason,
        }


def best(values: Sequence[float], higher: bool) -> float:
    return max(values) if higher else min(values)


def judge(target: Target, guard: LoadGuard, min_repeats: int = MIN_REPEATS) -> Verdict:
    """PASS/MISS on the median ratio, or NO VERDICT saying why (figures still given)."""
    ours, ref = target.ours, target.reference
    if not ours or (ref is not None and not ref):
        missing = "eventbus" if not ours else "the reference"
        return Verdict(target, NO_VERDICT, None, None, f"{missing} has no figure (did it fail?)")
    median_ratio = best_ratio = None
    if ref is not None:
        median_ratio = statistics.median(ours) / statistics.median(ref)
        best_ratio = best(ours, target.higher) / best(ref, target.higher)
    if target.goal is None or ref is None:
        return Verdict(target, MEASURED, median_ratio, best_ratio)
    repeats = min(len(ours), len(ref))
    if repeats < min_repeats:
        return Verdict(
            target,
            NO_VERDICT,
            median_ratio,
            best_ratio,
            f"{repeats} repeat(s), a verdict needs >= {min_repeats}",
        )
    if not guard.allows:
        return Verdict(
            target, NO_VERDICT, median_ratio, best_ratio, f"load {guard.load:.2f} > {guard.limit:g}"
        )
    assert median_ratio is not None
    met = median_ratio >= target.goal if target.higher else median_ratio <= target.goal
    reason = "load guard overridden" if guard.loaded else ""
    return Verdict(target, PASS if met else MISS, median_ratio, best_ratio, reason)


def exit_status(verdicts: Sequence[Verdict]) -> int:
    """1 if any target was missed, else 2 if any target got no verdict, else 0."""
    statuses = {v.status for v in verdicts}
    if MISS in statuses:
        return 1
    return 2 if NO_VERDICT in statuses else 0


def _figure(values: Sequence[float] | None, unit: str) -> str:
    if not values:
        return "-"
    median = statistics.median(values)
    return f"{median:,.0f}{unit}" if unit == "/s" else f"{median:.2f} {unit}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render(verdicts: Sequence[Verdict], guard: LoadGuard) -> str:
    """Every target of every broker, one line each, under the load guard's line."""
    header = (
        "broker",
        "target",
        "eventbus (median)",
        "reference (median)",
        "median",
        "best",
        "goal",
        "verdict",
    )
    rows = [header]
    for v in verdicts:
        t = v.target
        goal = "-" if t.goal is None else f"{'>=' if t.higher else '<='} {t.goal:g}x"
        status = v.status + (f" ({v.reason})" if v.reason else "")
        rows.append(
            (
                t.broker,
                t.label,
                _figure(t.ours, t.unit),
                _figure(t.reference, t.unit),
                _ratio(v.median_ratio),
                _ratio(v.best_ratio),
                goal,
                status,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = [guard.describe()]
    for row in rows:
        cells = [
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=False))
        ]
        lines.append("  ".join([*cells, row[-1]]))
    return "\n".join(lines)
