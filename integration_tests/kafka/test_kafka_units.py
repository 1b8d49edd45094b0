"""Kafka adapter units that need no broker: URL settings, the record codec, capabilities."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
from eventbus_kafka import KafkaAdapter, KafkaSettings
from eventbus_kafka.codec import (
    ATTEMPT_HEADER,
    NOT_BEFORE_HEADER,
    ORIGIN_HEADER,
    decode,
    encode,
    retry_headers,
)
from eventbus_kafka.offsets import PartitionLog
from eventbus_kafka.provision import retry_topic

from eventbus.envelope import Envelope
from eventbus.errors import InvalidURLError
from eventbus.registry_adapters import adapter_from_url

# -- settings ---------------------------------------------------------------------------


def test_defaults() -> None:
    s = KafkaSettings.from_url("kafka://broker")
    assert s.bootstrap_servers == ("broker:9092",)
    assert (s.partitions, s.replication, s.max_message_bytes) == (3, 1, 1024 * 1024)
    assert s.security_protocol == "PLAINTEXT" and s.start_from is None
    assert s.provision is True and s.client_name == "eventbus"


def test_several_hosts_ipv6_and_every_option() -> None:
    s = KafkaSettings.from_url(
        "kafka://a:9093,b,[::1]:9094?partitions=6&replication=3&client_name=orders"
        "&security_protocol=sasl_ssl&sasl_mechanism=SCRAM-SHA-512&sasl_username=u"
        "&sasl_password=p&tls_ca=/ca.pem&linger=0&max_message_bytes=2048"
        "&start_from=earliest&connect_timeout=1.5&provision=false"
        "&session_timeout=6&heartbeat_interval=1&commit_interval=0.05"
    )
    assert s.bootstrap_servers == ("a:9093", "b:9092", "[::1]:9094")
    assert (s.partitions, s.replication, s.client_name) == (6, 3, "orders")
    assert (s.security_protocol, s.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (s.sasl_username, s.sasl_password, s.tls_ca) == ("u", "p", "/ca.pem")
    assert (s.linger, s.max_message_bytes, s.start_from) == (0, 2048, "earliest")
    assert (s.connect_timeout, s.provision, s.commit_interval) == (1.5, False, 0.05)
    assert "sasl_password=***" in s.masked_url and "sasl_password=p" not in repr(s)


def test_the_commit_cadence_is_set_by_the_url() -> None:
    """The commit cadence's trade-off (docs/adapters/kafka.md, "Commits") is a user's
    choice: defaults keep throughput, max_uncommitted bounds what a crash re-runs."""
    s = KafkaSettings.from_url("kafka://k")
    assert (s.commit_interval, s.commit_every, s.max_uncommitted) == (0.1, 32, 0)
    s = KafkaSettings.from_url("kafka://k?commit_every=20&max_uncommitted=40")
    assert (s.commit_every, s.max_uncommitted) == (20, 40)
    with pytest.raises(InvalidURLError, match="commit_every"):
        KafkaSettings.from_url("kafka://k?commit_every=0")


def test_the_names_of_0_1_still_work_with_a_deprecation_warning() -> None:
    with pytest.warns(DeprecationWarning, match="client_id -> client_name") as warned:
        s = KafkaSettings.from_url(
            "kafka://k?client_id=orders&create_topics=false&retry_tiers=5,30"
            "&session_timeout_ms=6000&heartbeat_interval_ms=1000&linger_ms=0"
            "&security_protocol=SSL&ssl_cafile=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem"
        )
    assert len(warned) == 1
    assert (s.client_name, s.provision, s.delay_tiers) == ("orders", False, (5, 30))
    assert (s.session_timeout, s.heartbeat_interval, s.linger) == (6.0, 1.0, 0.0)
    assert (s.tls_ca, s.tls_cert, s.tls_key) == ("/ca.pem", "/c.pem", "/k.pem")


def test_userinfo_is_the_sasl_login() -> None:
    s = KafkaSettings.from_url("kafka://svc:pa%40ss@k:9092?security_protocol=SASL_PLAINTEXT")
    assert (s.sasl_username, s.sasl_password) == ("svc", "pa@ss")
    assert "pa%40ss" not in s.masked_url and "***" in s.masked_url


def test_unknown_option_names_it_and_the_allowed_ones() -> None:
    with pytest.raises(InvalidURLError) as raised:
        KafkaSettings.from_url("kafka://u:topsecret@k:9092?partitons=3")
    message = str(raised.value)
    assert "'partitons'" in message and "partitions" in message and "linger" in message
    assert "topsecret" not in message


@pytest.mark.parametrize(
    "url",
    [
        "kafka://",
        "kafka://:9092",
        "kafka://u:topsecret@?partitions=1",
        "kafka://k:notaport",
        "kafka://k:9092?partitions=0",
        "kafka://k:9092?partitions=x",
        "kafka://k:9092?start_from=middle",
        "kafka://k:9092?security_protocol=TLS",
        "kafka://k:9092?sasl_mechanism=PLAIN",  # without a SASL security_protocol
        "kafka://k:9092?linger=1&linger=2",
        "kafka://k:9092?linger=1&linger_ms=2",
        "kafka://k:9092?session_timeout=1&heartbeat_interval=1",
        "kafka://k:9092?delay_tiers=10,1",
        "kafka://k:9092?delay_tiers=0,5",
        "kafka://k:9092?delay_tiers=1,x",
        "kafka://k:9092?delay_tiers=1,2,3,4,5,6,7,8,9,10,11",
        "kafka://k:9092?tls_ca=/ca.pem",  # without a TLS security_protocol
        "kafka://k:9092?security_protocol=SSL&tls_cert=/c.pem",  # without its key
        "amqp://k:9092",
    ],
)
def test_bad_urls_raise_invalid_url_error(url: str) -> None:
    with pytest.raises(InvalidURLError) as raised:
        KafkaSettings.from_url(url)
    assert "topsecret" not in str(raised.value)


def test_retry_delay_tiers() -> None:
    assert KafkaSettings.from_url("kafka://k").delay_tiers == (1, 10, 60, 600, 3600)
    assert KafkaSettings.from_url("kafka://k?delay_tiers=5,30").delay_tiers == (5, 30)
    tiers = KafkaSettings.from_url("kafka://k?delay_tiers=0.5,2").delay_tiers
    # Whole seconds name their retry topic as in 0.1; a fraction keeps its digits.
    assert [retry_topic("t", "g", tier) for tier in (*tiers, 10)] == [
        "t.g.retry.0.5s",
        "t.g.retry.2s",
        "t.g.retry.10s",
    ]


@pytest.mark.parametrize(
    "url",
    [
        "kafka://svc:topsecret@k:9092",  # credentials but no SASL protocol: sent nowhere
        "kafka://k:9092?sasl_username=svc&sasl_password=topsecret",
        "kafka://svc:topsecret@k:9092?security_protocol=SSL",
        "kafka://k:9092?security_protocol=SASL_SSL",  # SASL without a login
        "kafka://svc@k:9092?security_protocol=SASL_PLAINTEXT",  # no password
        "kafka://k:9092?security_protocol=SASL_SSL&sasl_password=topsecret",  # no user
    ],
)
def test_credentials_and_sasl_settings_must_agree(url: str) -> None:
    """Credentials that would be silently dropped, or a SASL protocol without them:
    a one-line error naming the options, never the password."""
    with pytest.raises(InvalidURLError) as raised:
        KafkaSettings.from_url(url)
    message = str(raised.value)
    assert "topsecret" not in message and "\n" not in message
    assert "security_protocol" in message or "sasl_" in message


def test_plus_in_a_query_password_is_kept() -> None:
    s = KafkaSettings.from_url(
        "kafka://k?security_protocol=SASL_SSL&sasl_username=u&sasl_password=a+b%2Bc"
    )
    assert s.sasl_password == "a+b+c"


def test_client_settings_are_validated() -> None:
    s = KafkaSettings.from_url(
        "kafka://k?compression_type=gzip&isolation_level=read_committed"
        "&group_instance_id=billing-1&max_poll_interval=600"
    )
    assert (s.compression_type, s.isolation_level) == ("gzip", "read_committed")
    assert (s.group_instance_id, s.max_poll_interval) == ("billing-1", 600)
    defaults = KafkaSettings.from_url("kafka://k")
    assert (defaults.compression_type, defaults.isolation_level) == (None, "read_uncommitted")
    for bad in (
        "compression_type=brotli",
        "isolation_level=dirty",
        "max_poll_interval=0",
        "group_instance_id=",
    ):
        with pytest.raises(InvalidURLError) as raised:
            KafkaSettings.from_url(f"kafka://k?{bad}")
        assert bad.split("=")[0] in str(raised.value) and "\n" not in str(raised.value)


def test_compression_without_its_library_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import aiokafka.codec

    monkeypatch.setattr(aiokafka.codec, "has_zstd", lambda: False)
    with pytest.raises(InvalidURLError) as raised:
        KafkaSettings.from_url("kafka://k?compression_type=zstd")
    assert "zstandard" in str(raised.value)


def test_a_failed_commit_is_a_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit the broker refused means duplicates after a restart: say so at WARNING."""
    import asyncio

    from aiokafka import TopicPartition
    from aiokafka.errors import CommitFailedError
    from eventbus_kafka.consumer import KafkaSubscription

    from eventbus.adapter import SubscribeOptions

    async def scenario() -> None:
        adapter = KafkaAdapter("kafka://127.0.0.1:1")
        subscription = KafkaSubscription(adapter, "orders", SubscribeOptions(group="billing"))
        tp = TopicPartition("orders", 0)

        async def refuse(*_: object) -> None:
            raise CommitFailedError("simulated: the group rebalanced")

        monkeypatch.setattr(subscription.consumer, "assignment", lambda: {tp})
        monkeypatch.setattr(subscription.consumer, "commit", refuse)
        log = PartitionLog()
        log.settle(log.add(0))
        subscription._logs[tp] = log  # a settled record waiting for its commit
        await subscription.commit()

    caplog.set_level(logging.DEBUG, "eventbus.kafka")
    asyncio.run(scenario())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "billing" in warnings[0].getMessage()


def test_bad_password_option_value_is_masked() -> None:
    with pytest.raises(InvalidURLError) as raised:
        KafkaSettings.from_url("kafka://k?sasl_password=")
    assert "sasl_password=***" in str(raised.value)


def test_adapter_is_found_by_scheme_with_honest_capabilities() -> None:
    adapter = adapter_from_url("kafka://localhost:9092?max_message_bytes=5000")
    assert isinstance(adapter, KafkaAdapter)
    caps = adapter.capabilities
    assert (caps.persistent, caps.consumer_groups, caps.fanout, caps.ordering) == (
        True,
        True,
        True,
        "per_key",
    )
    assert (caps.redelivery, caps.native_delay, caps.native_dead_letter) == (True, False, False)
    assert (caps.replay, caps.headers, caps.max_message_bytes) == (True, True, 5000)
    assert caps.dedupe_window is None and caps.reconnect is True


# -- codec ------------------------------------------------------------------------------


def full_envelope() -> Envelope:
    return Envelope.create(
        type="com.example.order.placed",
        source="https://example.com/orders",
        time=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
        data=b'{"a":1}',
        subject="order/A-1",
        dataschema="https://s/2",
        dataversion=2,
        correlationid="c",
        causationid="x",
        partitionkey="order-A-1",
        traceparent="00-ab-cd-01",
        extensions={"tenant": "acme"},
    )


def test_encode_is_cloudevents_kafka_binary_mode() -> None:
    env = full_envelope()
    record = encode(env)
    headers = dict(record.headers)
    assert record.key == b"order-A-1" and record.value == b'{"a":1}'
    assert headers["content-type"] == b"application/json"
    assert headers["ce_specversion"] == b"1.0" and headers["ce_id"] == env.id.encode()
    assert headers["ce_tenant"] == b"acme" and headers["ce_dataversion"] == b"2"
    # CloudEvents Kafka binding 3.1: the key carries it, the extension stays too.
    assert headers["ce_partitionkey"] == b"order-A-1"
    assert all(isinstance(v, bytes) for v in headers.values())
    assert record.size > len(record.value) + sum(len(k) + len(v) for k, v in headers.items())


def test_decode_round_trip_and_transport_headers() -> None:
    env = full_envelope()
    record = encode(env)
    decoded = decode(record.key, record.value, record.headers)
    assert decoded.envelope == env and decoded.error is None and decoded.attempt == 1
    again = retry_headers(
        [*record.headers, (ATTEMPT_HEADER, b"2")], attempt=3, not_before_ms=123, origin="orders"
    )
    names = [n for n, _ in again]
    assert names.count(ATTEMPT_HEADER) == 1
    retried = decode(record.key, record.value, again)
    assert retried.envelope == env
    assert (retried.attempt, retried.not_before_ms, retried.origin_topic) == (3, 123, "orders")
    assert {NOT_BEFORE_HEADER, ORIGIN_HEADER} <= set(names)


@pytest.mark.parametrize(
    ("key", "value", "headers"),
    [
        (None, b"\xff\xfe garbage", []),
        (None, b"{}", [("ce_specversion", b"1.0")]),  # no id/source/type
        (None, b"x", [("ce_specversion", b"\xff"), ("ce_id", b"1")]),  # not UTF-8
        (None, None, [("content-type", b"application/cloudevents+json")]),
    ],
)
def test_undecodable_records_never_raise(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
) -> None:
    decoded = decode(key, value, headers)
    assert decoded.envelope is None and decoded.error


MINIMAL = [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_source", b"s"), ("ce_type", b"t")]


@pytest.mark.parametrize("key", [(42).to_bytes(8, "big"), bytes.fromhex("ffd8" * 8)])
def test_a_binary_record_key_is_not_poison(key: bytes) -> None:
    """Java's LongSerializer or UUID bytes as the key: the CloudEvent is kept, with no
    partitionkey (the key is not text)."""
    decoded = decode(key, b"x", MINIMAL)
    assert decoded.envelope is not None, decoded.error
    assert decoded.envelope.partitionkey is None and decoded.envelope.id == "1"


def test_partitionkey_extension_wins_over_the_record_key() -> None:
    """Binding 3.1: the record key becomes partitionkey only when the extension is absent."""
    with_extension = decode(b"\x00\x01", b"x", [*MINIMAL, ("ce_partitionkey", b"tenant-7")])
    assert with_extension.envelope is not None, with_extension.error
    assert with_extension.envelope.partitionkey == "tenant-7"
    other_key = decode(b"some-key", b"x", [*MINIMAL, ("ce_partitionkey", b"tenant-7")])
    assert other_key.envelope is not None and other_key.envelope.partitionkey == "tenant-7"
    from_key = decode(b"some-key", b"x", MINIMAL)
    assert from_key.envelope is not None and from_key.envelope.partitionkey == "some-key"


def test_official_sdk_reads_ours_and_we_read_theirs() -> None:
    from cloudevents.v1 import kafka
    from cloudevents.v1.http import CloudEvent

    env = full_envelope()
    record = encode(env)
    message = kafka.KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value)
    event = kafka.from_binary(message, data_unmarshaller=lambda b: b)
    # The SDK hands the record key back as it got it (bytes).
    assert event["id"] == env.id and event["partitionkey"] in ("order-A-1", b"order-A-1")
    assert event["tenant"] == "acme" and event.data == b'{"a":1}'

    theirs = CloudEvent(
        {"type": "t", "source": "s", "partitionkey": "k1", "datacontenttype": "application/json"},
        {"b": 2},
    )
    out = kafka.to_binary(theirs)
    decoded = decode(out.key, out.value, list(out.headers.items()))
    assert decoded.envelope is not None, decoded.error
    assert decoded.envelope.partitionkey == "k1" and decoded.envelope.type == "t"


# -- offsets ----------------------------------------------------------------------------


def test_commit_point_is_the_settled_prefix() -> None:
    log = PartitionLog()
    entries = [log.add(offset) for offset in (10, 11, 13, 14)]  # a gap at 12
    log.settle(entries[2])
    log.settle(entries[3])
    assert log.to_commit() is None
    assert log.settle(entries[0]) and log.to_commit() == 11
    log.settle(entries[1])
    assert log.to_commit() == 15
    log.committed = 15
    assert log.to_commit() is None
    log.revoked = True
    late = log.add(15)
    assert not log.settle(late) and log.to_commit() is None


def test_a_bad_value_names_the_option_the_value_and_what_is_allowed() -> None:
    with pytest.raises(InvalidURLError) as raised:
        KafkaSettings.from_url("kafka://k?partitions=x")
    assert str(raised.value) == (
        "option partitions='x' in Kafka URL 'kafka://k?partitions=x' "
        "is invalid: must be an integer >= 1"
    )
    # Case-folded choices, as before: security_protocol upper, isolation_level lower.
    s = KafkaSettings.from_url("kafka://k?security_protocol=ssl&isolation_level=READ_COMMITTED")
    assert (s.security_protocol, s.isolation_level) == ("SSL", "read_committed")


# -- foreign headers (#18 defect 26) -----------------------------------------------------

TRACING = ("uber-trace-bin", bytes.fromhex("ff00fe80c3"))  # an interceptor's binary value


def test_a_foreign_binary_header_never_makes_a_cloudevent_poison() -> None:
    """Only ``ce_`` headers and ``content-type`` are read as text: a tracing
    interceptor's binary header beside them is not ours to decode. The event keeps
    everything, its partitionkey from the record key included, and the transport
    headers (attempt) are still read."""
    env = full_envelope()
    record = encode(env)
    decoded = decode(record.key, record.value, [*record.headers, TRACING])
    assert decoded.envelope == env, decoded.error
    keyed = decode(b"tenant-9", b"x", [TRACING, *MINIMAL, (ATTEMPT_HEADER, b"3")])
    assert keyed.envelope is not None, keyed.error
    assert keyed.envelope.partitionkey == "tenant-9" and keyed.attempt == 3


def test_a_structured_event_with_a_foreign_binary_header_is_read() -> None:
    env = full_envelope()
    record = encode(env, structured=True)
    decoded = decode(record.key, record.value, [TRACING, *record.headers])
    assert decoded.envelope is not None, decoded.error
    assert (decoded.envelope.id, decoded.envelope.extensions) == (env.id, env.extensions)


def test_a_non_utf8_cloudevents_header_is_still_poison() -> None:
    decoded = decode(None, b"x", [*MINIMAL[:-1], ("ce_type", b"\xff\xfe"), TRACING])
    assert decoded.envelope is None and "ce_type" in (decoded.error or "")


# -- shutdown steps ---------------------------------------------------------------------


def test_a_slow_or_cut_short_shutdown_step_says_which_and_how_long(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A close that stalls names the step: one that finished late is logged with its
    time, one cut short by the caller's cancellation too (and reported as cancelled);
    a quick one logs nothing."""
    import asyncio

    from eventbus_kafka import delivery

    monkeypatch.setattr(delivery, "SLOW_STEP", 0.05)

    async def main() -> bool:
        assert not await delivery.best_effort("quick step", asyncio.sleep(0))
        assert not await delivery.best_effort("slow step", asyncio.sleep(0.1))
        stuck = asyncio.ensure_future(delivery.best_effort("stuck step", asyncio.sleep(30)))
        try:
            return await asyncio.wait_for(stuck, 0.1)
        except TimeoutError:
            return True

    with caplog.at_level(logging.WARNING, logger="eventbus.kafka"):
        assert asyncio.run(main())
    said = [r.getMessage() for r in caplog.records]
    assert not any("quick step" in m for m in said), said
    assert any(m.startswith("slow step took 0.") for m in said), said
    assert any(m.startswith("stuck step: cut short after 0.") for m in said), said
