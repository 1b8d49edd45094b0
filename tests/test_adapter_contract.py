"""The adapter base class: what it forces adapters to implement and the helpers it gives them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from eventbus.adapter import Adapter, SubscribeOptions, Subscription
from eventbus.adapters_util import ExceptionMap, map_exceptions
from eventbus.envelope import Envelope
from eventbus.errors import BrokerConnectionError, MessageTooLargeError, PublishError


class ClientError(Exception):
    """A broker client's base error."""


class ClientConnectionError(ClientError):
    """A broker client's connection error."""


MAPPING: ExceptionMap = {ClientConnectionError: BrokerConnectionError, ClientError: PublishError}


def test_health_must_be_implemented() -> None:
    """No free "ok": an adapter that does not look at its connection cannot be built."""

    class NoHealth(Adapter):
        async def connect(self) -> None: ...
        async def close(self) -> None: ...
        async def publish(self, topic: str, envelopes: Sequence[Envelope]) -> None: ...
        async def subscribe(self, topic: str, options: SubscribeOptions) -> Subscription:
            raise NotImplementedError

    with pytest.raises(TypeError, match="health"):
        NoHealth("none://")  # type: ignore[abstract]


def test_subscribe_options_have_no_auto_ack() -> None:
    """Nothing used it and adapters had to write the delivery's private state for it."""
    with pytest.raises(TypeError):
        SubscribeOptions(group="g", auto_ack=True)  # type: ignore[call-arg]


def test_map_exceptions_maps_the_first_matching_class_and_keeps_the_cause() -> None:
    original = ClientConnectionError("broker gone")
    with (
        pytest.raises(BrokerConnectionError) as raised,
        map_exceptions(MAPPING, what="publish to topic 'orders' on x://h", hint="check the broker"),
    ):
        raise original
    assert str(raised.value) == (
        "publish to topic 'orders' on x://h failed: ClientConnectionError: broker gone; "
        "check the broker"
    )
    assert raised.value.__cause__ is original


def test_map_exceptions_order_decides_for_subclasses() -> None:
    with pytest.raises(PublishError) as raised, map_exceptions(MAPPING, what="send"):
        raise ClientError("refused")
    assert not isinstance(raised.value, BrokerConnectionError)
    assert str(raised.value) == "send failed: ClientError: refused"


@pytest.mark.parametrize("error", [MessageTooLargeError("ours already"), KeyError("unmapped")])
def test_map_exceptions_passes_ours_and_unmapped_through(error: Exception) -> None:
    with pytest.raises(type(error)) as raised, map_exceptions(MAPPING, what="send"):
        raise error
    assert raised.value is error


def test_map_exceptions_never_turns_cancellation_into_an_error() -> None:
    """Even a mapping of BaseException leaves CancelledError alone, so cancelling a
    task inside an adapter call still cancels it."""

    async def scenario() -> None:
        with map_exceptions({BaseException: PublishError}, what="send"):
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(scenario())
