"""The process-wide record of messages adapters fetched ahead and gave back unread."""

from __future__ import annotations

import pytest

from eventbus import given_back as module
from eventbus.given_back import GivenBack, given_back


def test_counts_each_give_back_per_message() -> None:
    record = GivenBack()
    assert record.of("m1") == 0
    record.add("m1")
    record.add("m1")
    record.add("m2")
    assert (record.of("m1"), record.of("m2"), record.of("m3")) == (2, 1, 0)


def test_take_uses_up_one_give_back_at_a_time() -> None:
    record = GivenBack()
    record.add("m1")
    record.add("m1")
    assert record.take("m1") and record.of("m1") == 1
    assert record.take("m1") and record.of("m1") == 0
    assert not record.take("m1")
    assert not record.take("never")


def test_forget_drops_a_settled_message() -> None:
    record = GivenBack()
    record.add("m1")
    record.forget("m1")
    record.forget("never")
    assert record.of("m1") == 0


def test_forgets_the_ids_touched_longest_ago(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GivenBack, "LIMIT", 3)
    record = GivenBack()
    for message_id in ("a", "b", "c"):
        record.add(message_id)
    record.add("a")  # touched again: now the newest
    record.add("d")
    assert [record.of(m) for m in "abcd"] == [2, 0, 1, 1]


def test_one_record_per_scope_shared_by_every_caller() -> None:
    first = given_back("test-scope queue-1")
    first.add("m1")
    assert given_back("test-scope queue-1") is first  # an adapter made anew finds it
    assert given_back("test-scope queue-1").of("m1") == 1
    assert given_back("test-scope queue-2").of("m1") == 0


def test_keeps_a_bounded_number_of_scopes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "_MAX_SCOPES", 2)
    monkeypatch.setattr(module, "_scopes", type(module._scopes)())
    oldest = given_back("s1")
    given_back("s2")
    given_back("s1")  # used again: s2 is now the oldest
    given_back("s3")
    assert given_back("s1") is oldest
    assert set(module._scopes) == {"s1", "s3"}
