"""Idempotency over a store that answers without I/O (the memory store) is called by
the runner around the handler, with the chain fused (no coroutine per layer): each
outcome, the store's state after it and what is logged are the composed chain's."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ClassVar

import pytest

from eventbus import MemoryIdempotencyStore
from eventbus.context import Context
from eventbus.envelope import Envelope
from eventbus.middleware import Claim, Middleware, Next
from tests.bus_support import run
from tests.chain_support import BEHAVIOURS, Charge, outcome

TOPIC_GROUP = "test-declarations-charges:g"


def _fresh(store: MemoryIdempotencyStore, key: str) -> None:
    return None


def _done(store: MemoryIdempotencyStore, key: str) -> None:
    owner = store.claim_now(key, 60)
    assert isinstance(owner, str)
    store.complete_now(key, owner, 60)


def _held(store: MemoryIdempotencyStore, key: str) -> None:
    assert isinstance(store.claim_now(key, 60), str)  # another delivery runs it now


def _lease_over(store: MemoryIdempotencyStore, key: str) -> None:
    assert isinstance(store.claim_now(key, -1), str)  # a run that outlived its lease


STATES: dict[str, Callable[[MemoryIdempotencyStore, str], None]] = {
    "fresh": _fresh,
    "done": _done,
    "held": _held,
    "lease over": _lease_over,
}


class Failing(MemoryIdempotencyStore):
    """A memory store one of whose plain-call steps raises."""

    def __init__(self, step: str) -> None:
        super().__init__()
        self.step = step

    def claim_now(self, key: str, lease: float) -> Any:
        if self.step == "claim":
            raise RuntimeError("store down")
        return super().claim_now(key, lease)

    def complete_now(self, key: str, owner: str, ttl: float) -> bool:
        if self.step == "complete":
            raise RuntimeError("store down")
        return super().complete_now(key, owner, ttl)

    def release_now(self, key: str, owner: str) -> bool:
        if self.step == "release":
            raise RuntimeError("store down")
        return super().release_now(key, owner)


async def _after(store: MemoryIdempotencyStore, key: str) -> Claim:
    """What a delivery arriving next would find."""
    return (await store.claim(key, lease=60)).status


async def _both(
    state: str,
    name: str,
    attempt: int,
    *,
    dead_letter: bool = True,
    middleware: tuple[Middleware, ...] = (),
) -> list[tuple[Any, ...]]:
    """One delivery, guarded then composed, each on a store in ``state``: what it came
    to (see :func:`tests.chain_support.outcome`) and what the next delivery finds."""
    envelope = Envelope.create(type=Charge.event_type(), source="t", data=b'{"n": 1}')
    key = f"{TOPIC_GROUP}:{envelope.id}"
    outcomes = []
    for composed in (False, True):
        store = MemoryIdempotencyStore()
        STATES[state](store, key)
        came = await outcome(
            BEHAVIOURS[name],
            attempt,
            composed=composed,
            dead_letter=dead_letter,
            envelope=envelope,
            store=store,
            middleware=middleware,
        )
        outcomes.append((*came, await _after(store, key)))
    return outcomes


@pytest.mark.parametrize("state", list(STATES))
@pytest.mark.parametrize("name", list(BEHAVIOURS))
@pytest.mark.parametrize("attempt", [1, 3, 4])
@pytest.mark.parametrize("dead_letter", [True, False])
def test_the_guarded_path_settles_dead_letters_and_remembers_as_the_composed_chain(
    state: str, name: str, attempt: int, dead_letter: bool
) -> None:
    async def scenario() -> None:
        guarded, composed = await _both(state, name, attempt, dead_letter=dead_letter)
        assert guarded == composed

    run(scenario)


@pytest.mark.parametrize("step", ["claim", "complete", "release"])
@pytest.mark.parametrize("name", ["succeeds", "always fails"])
@pytest.mark.parametrize("dead_letter", [True, False])
@pytest.mark.parametrize("attempt", [3, 4])  # 4: the retry step refuses it (runs spent)
def test_a_failing_store_is_reported_on_the_guarded_path_as_on_the_composed_chain(
    step: str, name: str, dead_letter: bool, attempt: int, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        envelope = Envelope.create(type=Charge.event_type(), source="t", data=b'{"n": 1}')
        outcomes = []
        for composed in (False, True):
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                came = await outcome(
                    BEHAVIOURS[name],
                    attempt,
                    composed=composed,
                    dead_letter=dead_letter,
                    envelope=envelope,
                    store=Failing(step),
                )
            logged = [
                (record.levelname, record.getMessage())
                for record in caplog.records
                if record.name.startswith("eventbus")
            ]
            outcomes.append((*came, logged))
        assert outcomes[0] == outcomes[1]
        if attempt == 3:
            used = {"claim": True, "complete": name == "succeeds", "release": name != "succeeds"}
            reported = any("idempotency store" in message for _, message in outcomes[0][3])
            assert reported is used[step]  # a step that failed is reported

    run(scenario)


class Refuser:
    """A user's layer outside dead-letter that acts only on failure and refuses a
    message that ran twice before (to check the refusals outside the guard)."""

    acts_only_on_failure: ClassVar[bool] = True

    def refuse(self, ctx: Context) -> Exception | None:
        return ValueError("ran twice already") if ctx.previous_attempts >= 2 else None

    async def __call__(self, ctx: Context, call_next: Next) -> None:
        refused = self.refuse(ctx)
        if refused is not None:
            raise refused
        try:
            await call_next(ctx)
        except Exception as exc:
            await self.recover(ctx, call_next, exc)

    async def recover(self, ctx: Context, call_next: Next, exc: Exception) -> None:
        raise exc


@pytest.mark.parametrize("state", ["fresh", "done"])
@pytest.mark.parametrize("attempt", [1, 3])
def test_a_layer_outside_the_guard_refuses_before_it_claims(state: str, attempt: int) -> None:
    async def scenario() -> None:
        guarded, composed = await _both(state, "succeeds", attempt, middleware=(Refuser(),))
        assert guarded == composed
        if attempt == 3:  # refused outside the guard: never claimed, so still not done
            assert guarded[1] == [] and guarded[3] is {"fresh": Claim.CLAIMED}.get(
                state, Claim.DONE
            )

    run(scenario)
