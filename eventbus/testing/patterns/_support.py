"""What the store suites share: turning an async case into a pytest test, waiting,
and capturing a logger.

Like the conformance suite, each case runs in ``asyncio.run`` under a timeout, so
the suites need no async plugin and each case gets a fresh event loop (the store
or database under test is opened inside it).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from eventbus.testing.collector import PATIENCE

S = TypeVar("S")
CaseBody = Callable[..., Coroutine[Any, Any, None]]

WAIT = 10.0 * PATIENCE
"""Seconds to wait for something that should happen (``EVENTBUS_CONFORMANCE_PATIENCE``
multiplies it, as it does the conformance suite's)."""


def store_case(timeout: float = 60.0) -> Callable[[CaseBody], Callable[..., None]]:
    """Turn an async case method into a synchronous pytest test with the same
    parameters (the target fixture, and any ``parametrize`` argument), run in a
    fresh event loop and failed after ``timeout`` seconds (times the patience)."""

    def decorate(body: CaseBody) -> Callable[..., None]:
        @functools.wraps(body)
        def test(*args: Any, **kwargs: Any) -> None:
            asyncio.run(_bounded(body(*args, **kwargs), body.__name__, timeout * PATIENCE))

        # pytest reads the fixtures a test takes from its signature: the body's.
        del test.__wrapped__
        test.__signature__ = inspect.signature(body)  # type: ignore[attr-defined]
        return test

    return decorate


async def _bounded(case: Coroutine[Any, Any, None], name: str, timeout: float) -> None:
    try:
        await asyncio.wait_for(case, timeout)
    except TimeoutError as exc:
        raise AssertionError(f"{name} did not finish within {timeout:.0f}s") from exc


async def wait_until(check: Callable[[], bool], timeout: float = WAIT) -> None:
    """Return once ``check()`` holds (state kept by other tasks); fail after ``timeout``."""

    async def poll() -> None:
        while not check():  # noqa: ASYNC110 - the state lives in other tasks' counters
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


def memory_url() -> str:
    """A memory broker of its own for each case, so runs never see each other's messages."""
    return f"memory://{uuid.uuid4()}"


class Records(logging.Handler):
    """Keeps the log records of one logger while a case runs."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger(name)
        self._level = self.logger.level

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> Records:
        self.logger.addHandler(self)
        self._level = self.logger.level
        self.logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self._level)

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        """The messages logged at ``level`` or above."""
        return [r.getMessage() for r in self.records if r.levelno >= level]
