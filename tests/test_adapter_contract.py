"""The adapter base class: what it forces adapters to implement and the helpers it gives them."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from eventbus.adapter import Adapter, RawMessage, SubscribeOptions, Subscription
from eventbus.adapters_util import ExceptionMap, map_exceptions
from eventbus.envelope import Envelope
from eventbus.errors import (
    BrokerConnectionError,
    MessageTooLargeError,
    PublishError,
    UnsupportedOperationError,
)
from eventbus.memory import MemoryAdapter
from tests.bus_support import memory_url, run


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


class Recording(MemoryAdapter):
    """An adapter subclass written for the new form: it records what it was given."""

    async def publish_raw(self, topic: str, message: RawMessage) -> None:
        self.sent = (topic, message)


def deprecations(caught: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    return [w for w in caught if issubclass(w.category, DeprecationWarning)]


def test_the_old_publish_raw_call_form_warns_and_still_publishes() -> None:
    """``publish_raw(topic, payload, headers, key=...)`` (before RawMessage) still
    arrives for one release, as the same RawMessage, with a warning at the caller's line
    naming the new form; on the memory broker the bytes land on the topic."""
    adapter = Recording(memory_url())
    old_form: Any = adapter.publish_raw

    async def call() -> None:
        await old_form("t", b"body", {"h": b"1"}, key="k")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(call())
    assert adapter.sent == ("t", RawMessage(b"body", {"h": b"1"}, key="k"))
    (warning,) = deprecations(caught)
    assert "publish_raw(topic, RawMessage(payload, headers, key=key))" in str(warning.message)
    assert warning.filename == __file__

    async def scenario() -> None:
        memory = MemoryAdapter(memory_url())
        published: Any = memory.publish_raw
        with pytest.warns(DeprecationWarning, match="RawMessage"):
            await published("raw", b"\x00bytes")
        (record,) = await memory.read("raw")
        assert record.raw == b"\x00bytes"

    run(scenario)


def test_an_adapter_without_raw_publishing_refuses_both_call_forms_the_same_way() -> None:
    """The base ``publish_raw`` (an adapter that cannot publish raw bytes) answers the old
    call form with UnsupportedOperationError too, not a TypeError about its arguments."""
    adapter = MemoryAdapter(memory_url())
    base: Any = Adapter.publish_raw
    for call in (
        lambda: base(adapter, "t", RawMessage(b"body")),
        lambda: base(adapter, "t", b"body", {"h": b"1"}, key="k"),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            with pytest.raises(UnsupportedOperationError, match="cannot publish raw bytes"):
                asyncio.run(call())


def test_headers_or_a_key_beside_a_raw_message_are_refused() -> None:
    """Half of each form is a mistake, named, rather than one part silently dropped."""
    adapter: Any = Recording(memory_url())
    with pytest.raises(TypeError, match="inside the RawMessage"):
        asyncio.run(adapter.publish_raw("t", RawMessage(b"x"), key="k"))
    with pytest.raises(TypeError, match="takes a RawMessage, not str"):
        asyncio.run(adapter.publish_raw("t", "text"))


def test_an_adapter_still_written_for_the_old_form_is_warned_and_given_the_parts() -> None:
    """A third-party adapter whose ``publish_raw`` takes ``(topic, payload, headers,
    key=)`` keeps working for one release: warned once when its class is defined, and
    handed the RawMessage's parts by the contract's shim."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        class OldStyle(Recording):
            async def publish_raw(  # type: ignore[override]
                self,
                topic: str,
                payload: bytes,
                headers: Mapping[str, bytes] | None = None,
                *,
                key: str | None = None,
            ) -> None:
                self.parts = (topic, payload, headers, key)

    (warning,) = deprecations(caught)
    assert "OldStyle.publish_raw(topic, payload, headers" in str(warning.message)
    assert warning.filename == __file__
    adapter = OldStyle(memory_url())
    asyncio.run(adapter.publish_raw("t", RawMessage(b"x", {"h": b"2"}, key="k")))
    assert adapter.parts == ("t", b"x", {"h": b"2"}, "k")
