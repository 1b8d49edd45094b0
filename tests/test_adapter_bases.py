"""The toolkit's shared adapter pieces: the constructor every adapter has
(``ConfiguredAdapter``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

import pytest

from eventbus.adapter import HealthReport, StartFrom, SubscribeOptions, Subscription
from eventbus.adapters_util import ConfiguredAdapter
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
