"""One name per meaning: each old spelling still works for one release, warning with the
name to use instead, and is the very same object (``except OldName`` still catches)."""

from __future__ import annotations

import importlib

import pytest

from eventbus import RetryPolicy
from eventbus.testing import Collector, without_delays

RENAMED = [
    # (module, old name, new object's module, new name, words the warning must contain)
    ("eventbus.testing", "Inbox", "eventbus.testing", "Collector", "eventbus.testing.Collector"),
    (
        "eventbus.testing.conformance",
        "Inbox",
        "eventbus.testing",
        "Collector",
        "eventbus.testing.Collector",
    ),
]
_SAGAS, _ORDERING = "eventbus.patterns.sagas", "eventbus.patterns.ordering"
for _module, _old, _new_module, _new in [
    (_SAGAS, "SqlSagaStore", _SAGAS, "SQLSagaStore"),
    (_SAGAS, "SagaNotFound", _SAGAS, "SagaNotFoundError"),
    (_SAGAS, "SagaAlreadyExists", _SAGAS, "SagaAlreadyExistsError"),
    (_SAGAS, "StepFailed", _SAGAS, "StepFailedError"),
    (_SAGAS, "SqlSequenceStore", _ORDERING, "SQLSequenceStore"),
    (f"{_SAGAS}.state", "SqlSagaStore", _SAGAS, "SQLSagaStore"),
    (f"{_SAGAS}.state", "SagaNotFound", _SAGAS, "SagaNotFoundError"),
    (f"{_SAGAS}.state", "SagaAlreadyExists", _SAGAS, "SagaAlreadyExistsError"),
    (f"{_SAGAS}.choreography", "StepFailed", _SAGAS, "StepFailedError"),
    (_ORDERING, "SqlSequenceStore", _ORDERING, "SQLSequenceStore"),
    (_ORDERING, "EarlyEvent", _ORDERING, "EarlyEventError"),
    (f"{_ORDERING}.stores", "SqlSequenceStore", _ORDERING, "SQLSequenceStore"),
    (f"{_ORDERING}.guard", "EarlyEvent", _ORDERING, "EarlyEventError"),
    ("eventbus.patterns", "SqlSagaStore", _SAGAS, "SQLSagaStore"),
    ("eventbus.patterns", "SagaNotFound", _SAGAS, "SagaNotFoundError"),
    ("eventbus.patterns", "StepFailed", _SAGAS, "StepFailedError"),
    ("eventbus.patterns", "SqlSequenceStore", _ORDERING, "SQLSequenceStore"),
    ("eventbus.patterns", "EarlyEvent", _ORDERING, "EarlyEventError"),
    ("eventbus.patterns.sql", "UniqueViolation", "eventbus.patterns.sql", "UniqueViolationError"),
]:
    RENAMED.append((_module, _old, _new_module, _new, f"{_new_module}.{_new}"))


def test_a_renamed_exception_is_still_caught_by_its_old_name() -> None:
    from eventbus.patterns.sagas import SagaNotFoundError

    with pytest.warns(DeprecationWarning):
        from eventbus.patterns.sagas import SagaNotFound
    with pytest.raises(SagaNotFound):
        raise SagaNotFoundError("saga 1")


@pytest.mark.parametrize(("module", "old", "new_module", "new", "hint"), RENAMED)
def test_an_old_name_warns_naming_the_new_one_and_is_the_same_object(
    module: str, old: str, new_module: str, new: str, hint: str
) -> None:
    with pytest.warns(DeprecationWarning, match=rf"{module}\.{old} is deprecated") as caught:
        value = getattr(importlib.import_module(module), old)
    assert hint in str(caught[0].message)
    assert value is getattr(importlib.import_module(new_module), new)


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        importlib.import_module("eventbus.testing").Nothing  # noqa: B018


def test_the_old_no_delay_retry_helpers_equal_without_delays() -> None:
    with pytest.warns(DeprecationWarning, match=r"use eventbus\.testing\.without_delays"):
        from eventbus.testing.direct import NO_DELAY_RETRY, immediate_retry
    with pytest.warns(DeprecationWarning, match=r"without_delays\(RetryPolicy"):
        from eventbus.testing import NO_DELAY_RETRY as NO_DELAY_RETRY_AGAIN
    assert (
        NO_DELAY_RETRY
        == NO_DELAY_RETRY_AGAIN
        == without_delays(RetryPolicy(max_attempts=3, in_process_attempts=3))
    )
    assert immediate_retry(4, in_process_attempts=2) == without_delays(
        RetryPolicy(max_attempts=4, in_process_attempts=2)
    )


def test_without_delays_keeps_attempts_and_filters_and_drops_every_wait() -> None:
    policy = RetryPolicy(
        max_attempts=4, in_process_attempts=2, initial_delay=3.0, give_up_on=(ValueError,)
    )
    fast = without_delays(policy)
    assert (fast.max_attempts, fast.in_process_attempts, fast.give_up_on) == (4, 2, (ValueError,))
    assert [fast.delay(n) for n in (1, 2, 3)] == [0.0, 0.0, 0.0]
    default = without_delays()
    assert default.max_attempts == RetryPolicy().max_attempts and default.delay(1) == 0.0


def test_the_collector_is_not_the_transactional_inbox() -> None:
    from eventbus.patterns import Inbox

    assert Collector is not Inbox
