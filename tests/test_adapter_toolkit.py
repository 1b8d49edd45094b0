"""The adapter toolkit: error mapping, the same-turn batcher, the tier picker, TLS
contexts, Decoded -> Delivery, stopping a task, and the names adapters import."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import ssl
from pathlib import Path
from typing import Any

import pytest

from eventbus.adapter import Capabilities, Decoded, Delivery
from eventbus.adapters_util import (
    ExceptionMap,
    TurnBatcher,
    map_exceptions,
    pick_tier,
    tls_context,
    translate,
)
from eventbus.envelope import Envelope
from eventbus.errors import (
    BrokerConnectionError,
    ConfigurationError,
    MessageTooLargeError,
    ProvisioningError,
    PublishError,
    TopicNotFoundError,
    is_permanent_refusal,
)
from eventbus.tasks import stop_task


class ClientError(Exception):
    def __init__(self, text: str, code: int = 0) -> None:
        super().__init__(text)
        self.code = code


class ClientTimeoutError(ClientError):
    pass


# -- map_exceptions / translate -------------------------------------------------------------


def test_a_mapping_entry_may_carry_its_own_hint() -> None:
    mapping: ExceptionMap = {
        ClientTimeoutError: (BrokerConnectionError, "publish again"),
        ClientError: (PublishError, "sending it again will not help"),
    }
    with (
        pytest.raises(BrokerConnectionError) as raised,
        map_exceptions(mapping, what="a record to 'orders' on kafka://h", hint="unused"),
    ):
        raise ClientTimeoutError("no answer")
    assert str(raised.value) == (
        "a record to 'orders' on kafka://h failed: ClientTimeoutError: no answer; publish again"
    )
    with pytest.raises(PublishError, match=r"will not help$"), map_exceptions(mapping, what="x"):
        raise ClientError("refused")


def test_a_classifier_maps_by_what_the_client_says_not_its_class() -> None:
    """Clients that say what happened in an error code: permanent refusals become the
    errors is_permanent_refusal knows, anything else a connection error."""
    codes = {10: MessageTooLargeError, 3: TopicNotFoundError, 29: ProvisioningError}

    def classify(exc: Exception) -> type[Any] | None:
        code = getattr(exc, "code", None)
        return codes.get(code, BrokerConnectionError) if code is not None else None

    for code, expected in [*codes.items(), (7, BrokerConnectionError)]:
        with pytest.raises(expected) as raised, map_exceptions(classify, what="publish"):
            raise ClientError("said no", code)
        assert is_permanent_refusal(raised.value) == (expected is not BrokerConnectionError)
    with pytest.raises(KeyError), map_exceptions(classify, what="publish"):
        raise KeyError("not the client's")  # the classifier said None: unchanged


def test_on_error_sees_every_client_error_first_and_scrub_hides_secrets() -> None:
    seen: list[Exception] = []
    with (
        pytest.raises(BrokerConnectionError) as raised,
        map_exceptions(
            {ClientError: BrokerConnectionError},
            what="connect to amqp://app:***@h",
            scrub=lambda text: text.replace("s3cret", "***"),
            on_error=seen.append,
        ),
    ):
        raise ClientError("login refused for app:s3cret")
    assert "s3cret" not in str(raised.value) and "app:***" in str(raised.value)
    assert len(seen) == 1 and raised.value.__cause__ is seen[0]


def test_a_cut_chain_keeps_the_clients_exception_and_its_secrets_out_of_the_traceback() -> None:
    with (
        pytest.raises(BrokerConnectionError) as raised,
        map_exceptions({ClientError: BrokerConnectionError}, what="connect", chain=False),
    ):
        raise ClientError("cannot reach amqp://app:s3cret@h (URL as the client built it)")
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    mapped = translate(ClientError("x"), {ClientError: PublishError}, what="p", chain=False)
    assert mapped.__cause__ is None and mapped.__suppress_context__


def test_translate_returns_ours_and_unmapped_errors_as_they_are() -> None:
    ours = ConfigurationError("already said")
    assert translate(ours, {ClientError: PublishError}, what="x") is ours
    other = ValueError("not mapped")
    assert translate(other, {ClientError: PublishError}, what="x") is other
    mapped = translate(ClientError(""), {ClientError: PublishError}, what="publish")
    assert str(mapped) == "publish failed: ClientError" and isinstance(mapped, PublishError)


def test_cancellation_is_never_mapped() -> None:
    with (
        pytest.raises(asyncio.CancelledError),
        map_exceptions({BaseException: BrokerConnectionError}, what="x"),
    ):
        raise asyncio.CancelledError


# -- the delay-tier picker --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delay", "tier"), [(0, 1), (1, 1), (1.5, 10), (10, 10), (11, 60), (5000, 60), (0.05, 1)]
)
def test_the_tier_of_a_delay_is_the_shortest_at_least_as_long(delay: float, tier: float) -> None:
    assert pick_tier(delay, (1, 10, 60)) == tier


def test_fractional_tiers_are_picked_the_same_way() -> None:
    assert pick_tier(0.1, (0.05, 0.2, 1)) == 0.2


# -- TLS -------------------------------------------------------------------------------------


def test_a_tls_context_verifies_unless_told_not_to() -> None:
    assert tls_context().verify_mode == ssl.CERT_REQUIRED
    loose = tls_context(verify=False)
    assert loose.verify_mode == ssl.CERT_NONE and not loose.check_hostname


def test_a_missing_ca_file_is_an_error_naming_it(tmp_path: Any) -> None:
    with pytest.raises(FileNotFoundError):
        tls_context(ca=str(tmp_path / "nope.pem"))


# -- the same-turn batcher --------------------------------------------------------------------


def test_calls_of_one_loop_turn_share_requests_of_at_most_max_items() -> None:
    requests: list[list[int]] = []

    async def send(items: list[int]) -> list[int | BaseException]:
        requests.append(items)
        return [i * 10 if i != 3 else ValueError(f"item {i} refused") for i in items]

    async def scenario() -> list[Any]:
        batcher: TurnBatcher[int, int] = TurnBatcher(send, max_items=4)
        return await asyncio.gather(
            *(batcher.one(i) for i in range(6)), batcher.submit([7, 8]), return_exceptions=True
        )

    outcomes = asyncio.run(scenario())
    assert requests == [[0, 1, 2, 3], [4, 5, 7, 8]]
    assert outcomes[:3] == [0, 10, 20] and outcomes[4:6] == [40, 50]
    assert isinstance(outcomes[3], ValueError) and outcomes[6] == [70, 80]


def test_a_callers_items_are_never_split_and_a_failed_request_fails_each_caller() -> None:
    requests: list[list[str]] = []

    async def send(items: list[str]) -> list[str | BaseException]:
        requests.append(items)
        if "boom" in items:
            raise OSError("connection reset")
        return list(items)

    async def scenario() -> tuple[list[str | BaseException], list[Any]]:
        batcher: TurnBatcher[str, str] = TurnBatcher(
            send, max_items=2, fail=lambda exc: BrokerConnectionError(f"settle failed: {exc}")
        )
        big = await batcher.submit(["a", "b", "c"])
        failed = list(
            await asyncio.gather(batcher.one("boom"), batcher.one("x"), return_exceptions=True)
        )
        await batcher.drain()
        return big, failed

    big, failed = asyncio.run(scenario())
    assert big == ["a", "b", "c"] and requests[0] == ["a", "b", "c"]
    assert all(
        isinstance(e, BrokerConnectionError) and "connection reset" in str(e) for e in failed
    )


# -- Decoded -> Delivery ----------------------------------------------------------------------


class _Delivery(Delivery):
    async def _ack(self) -> None: ...
    async def _nack(self, delay: float) -> None: ...
    async def _reject(self) -> None: ...


def test_a_delivery_built_from_decoded_keeps_raw_bytes_only_for_what_did_not_decode() -> None:
    envelope = Envelope.create(type="t", source="s")
    good = _Delivery(
        Decoded(envelope, raw=b"{}", raw_headers={"h": b"1"}, attempt=3),
        topic="t",
        group="g",
        message_id="t/1",
    )
    assert (good.envelope, good.raw, good.raw_headers, good.attempt) == (envelope, None, None, 3)
    bad = _Delivery(
        Decoded(None, "DecodeError: junk", b"\x00", {"h": b"1"}), topic="t", group="g", attempt=2
    )
    assert (bad.envelope, bad.decode_error, bad.raw, bad.raw_headers, bad.attempt) == (
        None,
        "DecodeError: junk",
        b"\x00",
        {"h": b"1"},
        2,
    )
    old_style = _Delivery(topic="t", group="g", envelope=envelope)
    assert old_style.attempt == 1 and old_style.raw is None


# -- Capabilities -----------------------------------------------------------------------------


def test_browse_group_route_and_raw_publish_are_claimed_by_declaring_them() -> None:
    caps = Capabilities(
        persistent=True,
        consumer_groups=True,
        fanout=True,
        ordering="none",
        redelivery=True,
        native_delay=False,
        native_dead_letter=False,
        replay=False,
        headers=True,
        max_message_bytes=1024,
    )
    assert (caps.browse, caps.group_route, caps.raw_publish) == (False, False, False)


def test_the_capability_table_in_the_docs_is_what_every_adapter_declares() -> None:
    """docs/semantics.md's table (``make docs`` writes it) against each adapter's claims,
    read as the script reads them: a claim changed by a base set (``Capabilities.DURABLE``,
    ``EPHEMERAL``) or a difference an adapter no longer declares shows here."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "gen_docs.py"
    spec = importlib.util.spec_from_file_location("gen_docs_under_test", script)
    assert spec is not None and spec.loader is not None
    gen_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_docs)
    text = (script.parent.parent / "docs" / "semantics.md").read_text(encoding="utf-8")
    documented = text[text.index(gen_docs.BEGIN) + len(gen_docs.BEGIN) : text.index(gen_docs.END)]
    assert documented.strip() == gen_docs.capability_table().strip()


# -- stop_task --------------------------------------------------------------------------------


def test_stop_task_cancels_and_waits_and_swallows_what_the_task_raised() -> None:
    async def scenario() -> None:
        async def fails() -> None:
            raise RuntimeError("died earlier, and was logged then")

        dead = asyncio.create_task(fails())
        await asyncio.sleep(0)
        assert await stop_task(dead) is True
        forever = asyncio.create_task(asyncio.sleep(3600))
        assert await stop_task(forever) is True and forever.cancelled()
        assert await stop_task(None) is True

    asyncio.run(scenario())


def test_stop_task_gives_grace_first_and_gives_up_after_the_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        finished = asyncio.Event()

        async def finishing() -> None:
            await asyncio.sleep(0.05)
            finished.set()

        task = asyncio.create_task(finishing())
        assert await stop_task(task, grace=2.0) is True
        assert finished.is_set() and not task.cancelled()  # it ended by itself

        release = asyncio.Event()

        async def stubborn() -> None:
            while not release.is_set():
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    continue  # a client that swallows the cancel

        hung = asyncio.create_task(stubborn())
        await asyncio.sleep(0)
        logger = logging.getLogger("test.stop")
        assert await stop_task(hung, timeout=0.05, what="relay 'x'", log=logger) is False
        release.set()
        await hung

    with caplog.at_level(logging.WARNING):
        asyncio.run(scenario())
    assert "relay 'x': still finishing a call 0.1s after stop()" in caplog.text


# -- the contract's names ---------------------------------------------------------------------


def test_the_names_adapters_need_come_from_the_contract_and_dead_letters_reexport_them() -> None:
    from eventbus import adapter, adapter_names, deadletters

    assert adapter.dlq_topic("orders", "billing") == "orders.billing.dlq"
    assert deadletters.dlq_topic is adapter.dlq_topic is adapter_names.dlq_topic
    assert deadletters.REPLAY_GROUP == adapter.REPLAY_GROUP == "eventbus-dlq-replay"
    assert adapter.broker_dedupe_id is adapter_names.broker_dedupe_id


def test_a_partial_batch_failure_says_how_many_which_and_where() -> None:
    from eventbus.errors import BatchPublishError

    failures: dict[int, Exception] = {2: PublishError("nacked"), 0: PublishError("nacked")}
    error = BatchPublishError.partial(failures, 3, "Kafka topic 'orders'")
    assert str(error) == (
        "2 of 3 messages to Kafka topic 'orders' were not confirmed "
        "(indexes [0, 2]); see .failures, and republish those as they are"
    )
    assert error.succeeded == [1] and error.failures is failures
