"""SQS adapter pieces that need no broker: URL settings, resource names, the body codec."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from eventbus_sqs import SqsAdapter
from eventbus_sqs.codec import body_for_bytes, decode
from eventbus_sqs.provision import MAX_QUEUE_NAME, physical_name
from eventbus_sqs.settings import SqsSettings

from eventbus.errors import BrokerConnectionError, InvalidURLError


def test_harness_url_is_plain_http_to_the_emulator() -> None:
    s = SqsSettings.from_url("sqs://127.0.0.1:5000?region=us-east-1")
    assert (s.endpoint_url, s.region) == ("http://127.0.0.1:5000", "us-east-1")


def test_remote_endpoint_defaults_to_https_and_aws_needs_a_region() -> None:
    assert SqsSettings.from_url("sqs://sqs.example.com?region=eu-west-1").endpoint_url == (
        "https://sqs.example.com"
    )
    assert SqsSettings.from_url("sqs://?region=eu-west-1").endpoint_url is None
    with pytest.raises(InvalidURLError, match="names no region"):
        SqsSettings.from_url("sqs://")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("sqs://h:1?region=us-east-1&nosuch=1", "unknown option 'nosuch'"),
        ("sqs://h:1?region=us-east-1&wait_seconds=21", "wait_seconds='21'"),
        ("sqs://h:1?region=us-east-1&fifo=maybe", "use true or false"),
        ("sqs://h:1?region=Mars", "AWS region name"),
        ("sqs://?region=us-east-1&endpoint_scheme=http", "no host"),
        ("sqs://h:1?region=us-east-1&endpoint_scheme=ftp", "use http or https"),
        ("sqs://h:1?region=us-east-1&topology=mesh", "use sns"),
        ("sqs://h:1?region=us-east-1&max_message_bytes=300000", "max_message_bytes"),
        ("sqs://h:1?region=us-east-1&wait_seconds=20&read_timeout=10", "above wait_seconds"),
        ("sqs://h:1?region=us-east-1&fifo=true&fifo=false", "given twice"),
    ],
)
def test_bad_options_are_one_line_errors_naming_them(url: str, words: str) -> None:
    with pytest.raises(InvalidURLError) as info:
        SqsSettings.from_url(url)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_credentials_in_the_url_are_refused_without_showing_them() -> None:
    with pytest.raises(InvalidURLError, match="standard AWS chain") as info:
        SqsSettings.from_url("sqs://AKIAXXX:s3cr3t@127.0.0.1:5000?region=us-east-1")
    assert "s3cr3t" not in str(info.value) and "AKIAXXX" not in str(info.value)


def test_names_aws_refuses_map_to_distinct_allowed_names() -> None:
    a, b = (
        physical_name("orders.g1.dlq", MAX_QUEUE_NAME, False),
        physical_name("orders_g1_dlq", MAX_QUEUE_NAME, False),
    )
    assert a != b and "." not in a
    long = physical_name("x" * 200, MAX_QUEUE_NAME, True)
    assert len(long) <= MAX_QUEUE_NAME and long.endswith(".fifo")
    assert physical_name("plain-name", MAX_QUEUE_NAME, False) == "plain-name"


def test_bytes_sqs_refuses_travel_base64_and_come_back_exact() -> None:
    raw = b"\x00\xffnot a CloudEvent{"
    body, attributes = body_for_bytes(raw)
    decoded = decode({"Body": body, "MessageAttributes": attributes})
    assert decoded.envelope is None and decoded.raw == raw and decoded.error
    assert body_for_bytes(b'{"a": 1}') == ('{"a": 1}', {})


def test_connect_fails_fast_naming_the_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    url = "sqs://127.0.0.1:1?region=us-east-1&connect_timeout=1&max_attempts=1"
    started = time.monotonic()
    with pytest.raises(BrokerConnectionError, match=r"127\.0\.0\.1:1"):
        asyncio.run(SqsAdapter(url).connect())
    assert time.monotonic() - started < 5.0


def test_an_event_wrapped_by_sns_without_raw_delivery_is_not_poison() -> None:
    from eventbus_sqs.codec import encode

    from eventbus.envelope import Envelope

    sent = Envelope.create(type="t.wrapped", source="tests", data=b'{"a":1}')
    wrapped = json.dumps(
        {
            "Type": "Notification",
            "MessageId": "m1",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:t",
            "Message": encode(sent),
        }
    )
    decoded = decode({"Body": wrapped})
    assert decoded.error is None and decoded.envelope is not None
    assert decoded.envelope.id == sent.id


def test_endpoint_scheme_is_an_option_like_the_others() -> None:
    s = SqsSettings.from_url("sqs://sqs.internal:8443?region=eu-west-1&endpoint_scheme=http")
    assert s.endpoint_url == "http://sqs.internal:8443"
    with pytest.raises(InvalidURLError, match="'endpoint_scheme' is given twice"):
        SqsSettings.from_url("sqs://h?endpoint_scheme=http&endpoint_scheme=https")
