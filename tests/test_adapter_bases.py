"""The toolkit's shared adapter pieces: the constructor every adapter has
(``ConfiguredAdapter``) and the delivery of an at-most-once broker with its in-process
redelivery (``AtMostOnceDelivery``, ``Redeliveries``)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

import pytest

from eventbus.adapter import Decoded, HealthReport, StartFrom, SubscribeOptions, Subscription
from eventbus.adapters_util import AtMostOnceDelivery, ConfiguredAdapter, Redeliveries
from eventbus.envelope import Envelope

# -- ConfiguredAdapter ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    url: str = ""
    start_from: StartFrom | None = None

    @property
    def masked_url(self) -> str:
        return "x://***"

    @classmethod
    def from_url(cls, url: str) -> Self:
        return cls(url=url, start_from="earliest" if "earliest" in url else None)


class _Adapter(ConfiguredAdapter[_Settings, str]):
    settings_type = _Settings

    def _setup(self, client: str | None) -> None:
        # What a subclass builds sees the settings already in place.
        self.built_with = (self.settings.url, self.start_from, client)

    async def connect(self) -> None: ...
    async def close(self) -> None: ...
    async def publish(self, topic: str, envelopes: Sequence[Envelope]) -> None: ...
    async def subscribe(self, topic: str, options: SubscribeOptions) -> Subscription:
        raise NotImplementedError

    async def health(self) -> HealthReport:
        raise NotImplementedError


def test_an_adapter_is_made_from_a_url_or_from_settings_and_a_client() -> None:
    from_url = _Adapter("x://host?start_from=earliest")
    assert from_url.url == "x://host?start_from=earliest"
    assert from_url.built_with == ("x://host?start_from=earliest", "earliest", None)
    in_code = _Adapter(settings=_Settings(), client="theirs")
    assert in_code.url == "x://***"  # no URL: the masked one names it
    assert in_code.built_with == ("", None, "theirs")


@pytest.mark.parametrize("given", [{}, {"url": "x://host", "settings": _Settings()}])
def test_neither_or_both_of_url_and_settings_is_the_one_error(given: dict[str, object]) -> None:
    with pytest.raises(TypeError, match=r"_Adapter takes a URL or settings=_Settings\(\.\.\.\)"):
        _Adapter(**given)  # type: ignore[arg-type]


# -- AtMostOnceDelivery, Redeliveries ---------------------------------------------------------


class _Subscription:
    def __init__(self) -> None:
        self.topic = "t"
        self.options = SubscribeOptions(group="g")
        self.free = 0
        self.again: list[tuple[int, float]] = []

    def release(self) -> None:
        self.free += 1


class _Delivery(AtMostOnceDelivery[_Subscription]):
    def _again(self, delay: float) -> None:
        self._owner.again.append((self.attempt + 1, delay))


def _delivery(owner: _Subscription) -> _Delivery:
    decoded = Decoded(Envelope.create(type="t", source="s"))
    return _Delivery(owner, decoded, attempt=2, message_id="t/7")


def test_settling_an_at_most_once_delivery_frees_its_slot_and_a_nack_hands_it_out_again() -> None:
    async def scenario() -> None:
        owner = _Subscription()
        first, second, third = _delivery(owner), _delivery(owner), _delivery(owner)
        assert (first.topic, first.group, first.message_id) == ("t", "g", "t/7")
        await first.ack()
        await second.reject()
        assert (owner.free, owner.again) == (2, [])
        await third.nack(0.5)
        assert (owner.free, owner.again) == (3, [(3, 0.5)])

    asyncio.run(scenario())


def test_redeliveries_come_after_their_delay_and_close_drops_those_waiting() -> None:
    async def scenario() -> None:
        redeliveries = Redeliveries()
        due: list[str] = []
        redeliveries.later(0.01, lambda: due.append("soon"))
        redeliveries.later(5.0, lambda: due.append("late"))
        assert len(redeliveries) == 2
        await asyncio.sleep(0.05)
        assert (due, len(redeliveries)) == (["soon"], 1)
        assert redeliveries.drop() == 1  # the late one, never handed out
        redeliveries.later(0.0, lambda: due.append("after close"))
        await asyncio.sleep(0.02)
        assert (due, len(redeliveries)) == (["soon"], 0)

    asyncio.run(scenario())
