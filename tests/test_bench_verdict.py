"""The benchmark's verdict logic (issue 24): median read, load guard, PASS/MISS, the table,
and the fair contenders' CloudEvents headers against what eventbus writes."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import fair
import runner
from verdict import MISS, NO_VERDICT, PASS, LoadGuard, Target, exit_status, judge, render

from eventbus import EventBus

QUIET = LoadGuard(0.4)


def target(ours: list[float], ref: list[float] | None, goal: float | None = 0.8) -> Target:
    return Target("kafka", "vs fair raw", ours, ref, goal)


def test_the_verdict_reads_the_median_not_the_best() -> None:
    # Best run 100 vs 100 (1.0x) but the medians are 70 vs 100 (0.7x): a miss at 0.8.
    verdict = judge(target([100.0, 70.0, 60.0], [100.0, 100.0, 90.0]), QUIET)
    assert verdict.status == MISS
    assert verdict.median_ratio == pytest.approx(0.7)
    assert verdict.best_ratio == pytest.approx(1.0)
    # One lucky slow reference run does not make a pass either way: median 90 / 100.
    passed = judge(target([90.0, 95.0, 20.0], [100.0, 40.0, 100.0]), QUIET)
    assert passed.status == PASS
    assert passed.median_ratio == pytest.approx(0.9)


def test_lower_is_better_for_latency() -> None:
    p99 = Target("kafka", "p99", [3.0, 2.5, 9.0], [1.5, 1.6, 1.4], 2.0, higher=False, unit="ms")
    verdict = judge(p99, QUIET)
    assert verdict.median_ratio == pytest.approx(2.0)  # 3.0 / 1.5
    assert verdict.status == PASS
    assert verdict.best_ratio == pytest.approx(2.5 / 1.4)
    worse = Target("kafka", "p99", [3.1, 3.2, 3.3], [1.5, 1.5, 1.5], 2.0, higher=False)
    assert judge(worse, QUIET).status == MISS


def test_no_verdict_above_the_load_limit_but_the_figures_are_kept() -> None:
    loaded = LoadGuard(1.6)
    verdict = judge(target([90.0, 90.0, 90.0], [100.0, 100.0, 100.0]), loaded)
    assert verdict.status == NO_VERDICT
    assert "load 1.60 > 1.5" in verdict.reason
    assert verdict.median_ratio == pytest.approx(0.9)
    # At the limit itself a verdict is given.
    assert judge(target([90.0] * 3, [100.0] * 3), LoadGuard(1.5)).status == PASS


def test_the_override_judges_and_says_so() -> None:
    overridden = LoadGuard(3.2, override=True)
    verdict = judge(target([90.0] * 3, [100.0] * 3), overridden)
    assert verdict.status == PASS
    assert verdict.reason == "load guard overridden"
    assert "OVERRIDDEN" in overridden.describe()
    assert "not for the issue" in overridden.describe()


def test_the_guard_reads_the_one_minute_load() -> None:
    guard = LoadGuard.read(getloadavg=lambda: (2.0, 0.1, 0.1))
    assert guard.load == 2.0
    assert not guard.allows
    assert LoadGuard.read(getloadavg=lambda: (0.5, 9.0, 9.0)).allows


def test_fewer_than_three_repeats_give_no_verdict() -> None:
    verdict = judge(target([90.0, 90.0], [100.0, 100.0]), QUIET)
    assert verdict.status == NO_VERDICT
    assert "2 repeat(s)" in verdict.reason


def test_a_missing_figure_or_no_goal() -> None:
    failed = judge(target([], [100.0] * 3), QUIET)
    assert failed.status == NO_VERDICT
    assert "no figure" in failed.reason
    measured = judge(target([1.2], None, None), LoadGuard(9.0))
    assert measured.status == "measured"


def test_exit_status_miss_before_no_verdict() -> None:
    miss = judge(target([10.0] * 3, [100.0] * 3), QUIET)
    none = judge(target([10.0], [100.0]), QUIET)
    ok = judge(target([100.0] * 3, [100.0] * 3), QUIET)
    assert exit_status([ok, none, miss]) == 1
    assert exit_status([ok, none]) == 2
    assert exit_status([ok]) == 0


def test_render_one_line_per_target_under_the_load_line() -> None:
    verdicts = [
        judge(target([90_000.0, 80_000.0, 85_000.0], [100_000.0] * 3), QUIET),
        judge(Target("sqs", "p99", [4.0], None, None, higher=False, unit="ms"), QUIET),
    ]
    lines = render(verdicts, QUIET).splitlines()
    assert lines[0].startswith("load average 0.40 (1 min, before the runs) <= 1.5")
    assert lines[1].split()[:2] == ["broker", "target"]
    row = lines[2]
    assert row.startswith("kafka ")
    for cell in ("85,000/s", "100,000/s", "0.85x", "0.90x", ">= 0.8x", "PASS"):
        assert cell in row
    assert lines[3].startswith("sqs ")
    assert "4.00 ms" in lines[3]
    assert lines[3].endswith("measured")
    # The columns line up: every verdict starts where the header's does.
    assert lines[2].index("PASS") == lines[1].index("verdict")


def _result(name: str, seconds: list[float], ours: bool = False) -> runner.Result:
    result = runner.Result(name, 1000, ours)
    result.seconds = seconds
    result.publish_seconds = seconds
    result.cpu_seconds = seconds
    return result


def test_runner_check_reads_the_median_and_the_guard(capsys: pytest.CaptureFixture[str]) -> None:
    # Best 1.0s vs 1.0s, medians 2.0s vs 1.0s: 0.5x on the median.
    results = [_result("eventbus", [1.0, 2.0, 3.0], ours=True), _result("raw", [1.0, 1.0, 1.0])]
    assert runner.check(results, [("raw", 0.8)], guard=QUIET) == 1
    assert "median 0.50x < 0.8x" in capsys.readouterr().out
    assert runner.check(results, [("raw", 0.5)], guard=QUIET) == 0
    assert runner.check(results, [("raw", 0.8)], guard=LoadGuard(2.0)) == 2
    assert "no verdict" in capsys.readouterr().out
    short = [_result("eventbus", [1.0], ours=True), _result("raw", [1.0])]
    assert runner.check(short, [("raw", 0.8)], guard=QUIET) == 2


def test_the_guard_judges_the_load_before_the_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bench's own work (a broker and this process on both cores) must not make a
    quiet machine look loaded: the load is read before the first run, not at the check."""
    loads = iter([(0.3, 0.3, 0.3)])
    monkeypatch.setattr(runner.os, "getloadavg", lambda: next(loads, (4.0, 4.0, 4.0)))
    monkeypatch.setattr(runner, "LOAD_BEFORE_RUNS", [])

    async def contender(events: object) -> runner.Timing:
        return runner.Timing(1.0, 0.5, 0.1)

    contenders = [runner.Contender("eventbus", contender, ours=True)]
    asyncio.run(runner.run(contenders, runner.make_events(3), repeat=3, warmup=False))
    asyncio.run(runner.run(contenders, runner.make_events(3), repeat=3, warmup=False))
    guard = runner.load_guard(argparse.Namespace(ignore_load=False))
    assert guard.load == 0.3
    assert guard.allows
    assert runner.load_guard(argparse.Namespace(ignore_load=True)).override


@pytest.mark.parametrize(
    ("binding", "encode"),
    [
        (fair.KAFKA, "kafka"),
        (fair.RABBITMQ, "rabbitmq"),
        (fair.NATS, "nats"),
        (fair.REDIS_STREAMS, "redis"),
    ],
)
def test_fair_headers_are_the_ones_eventbus_writes(binding: fair.Binding, encode: str) -> None:
    """The fair contender does the same wire work: the same header names as eventbus's
    binary mode on that broker, and it reads eventbus's own messages back."""
    event = runner.make_events(1)[0]
    envelope = EventBus("memory://bench-fair", source=fair.SOURCE).envelope_for(event)
    if encode == "kafka":
        from eventbus_kafka import codec as kafka_codec

        record = kafka_codec.encode(envelope)
        theirs, body = dict(record.headers), record.value
    elif encode == "rabbitmq":
        from eventbus_rabbitmq import codec as rabbit_codec

        message = rabbit_codec.encode(envelope)
        theirs, body = message.headers, message.body
    elif encode == "nats":
        from eventbus_nats import codec as nats_codec

        theirs, body = nats_codec.encode(envelope)
    else:
        from eventbus_redis import codec as redis_codec

        fields, _ = redis_codec.encode_fields(envelope)
        body = fields.pop("body")
        theirs = fields
    ours = fair.headers(binding)
    assert set(ours) == set(theirs)
    assert {k: v for k, v in ours.items() if not k.endswith(("id", "time"))} == {
        k: (v.decode() if isinstance(v, bytes) else v)
        for k, v in theirs.items()
        if not k.endswith(("id", "time"))
    }
    assert fair.read_binary(theirs.items(), body, binding) == event


def test_fair_structured_document_reads_like_eventbus() -> None:
    from eventbus.codec import decode_structured

    event = runner.make_events(1)[0]
    document = fair.structured(event)
    envelope = decode_structured(document)
    assert (envelope.type, envelope.source, envelope.datacontenttype) == (
        "bench.tick",
        "bench",
        "application/json",
    )
    assert envelope.correlationid == envelope.id
    assert fair.read_structured(document) == event
    with pytest.raises(ValueError, match=r"not a 'bench\.tick' CloudEvent"):
        fair.read_structured(document.replace(b"bench.tick", b"other.type"))
