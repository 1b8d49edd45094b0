"""mask_url: no password, token or secret of a broker URL ever reaches a log or an error."""

from __future__ import annotations

import pytest

from eventbus.errors import EventBusError, InvalidURLError, mask_url
from eventbus.registry_adapters import adapter_from_url


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        # Passwords with characters that end the authority for a URL parser.
        ("amqp://app:s3cr#t@rabbit:5672/", "amqp://app:***@rabbit:5672/"),
        ("amqp://app:pa/ss@rabbit/", "amqp://app:***@rabbit/"),
        ("redis://:p?ss@cache:6379", "redis://:***@cache:6379"),
        ("amqp://app:p@ss@rabbit/vhost", "amqp://app:***@rabbit/vhost"),
        ("amqps://user:pa:ss@host", "amqps://user:***@host"),
        (
            "amqp://app:a#b/c?d@e@rabbit:5672/v?heartbeat=5",
            "amqp://app:***@rabbit:5672/v?heartbeat=5",
        ),
        ("amqp://app:pä ss\n@rabbit/", "amqp://app:***@rabbit/"),
        ("amqp://guest:guest@rabbit:5672/vhost", "amqp://guest:***@rabbit:5672/vhost"),
        ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("sqs://id:p%40ss@host?region=eu", "sqs://id:***@host?region=eu"),
        ("kafka://u:pw@h1:9092,h2:9092?acks=all", "kafka://u:***@h1:9092,h2:9092?acks=all"),
        ("://app:hunter2@rabbit", "://app:***@rabbit"),
        ("http://[::1", "<unparseable url>"),
        # Nothing secret: unchanged.
        ("kafka://broker:9092", "kafka://broker:9092"),
        ("nats://user@host", "nats://user@host"),
        ("memory://", "memory://"),
        ("memory://name?max_message_bytes=10", "memory://name?max_message_bytes=10"),
        # Secrets in the query string.
        (
            "sqs://host?aws_secret_access_key=SECRET&region=eu",
            "sqs://host?aws_secret_access_key=***&region=eu",
        ),
        ("kafka://h:9092?sasl_password=a+b#c", "kafka://h:9092?sasl_password=***"),
        ("redis://h?password=x&db=1&token=y", "redis://h?password=***&db=1&token=***"),
    ],
)
def test_mask_url_hides_passwords_wherever_they_are(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp//app:hunter2@rabbit", "amqp//app:***@rabbit"),
        ("app:hunter2@rabbit:5672", "app:***@rabbit:5672"),
        ("amqp:/app:hunter2@h", "amqp:***@h"),
        ("127.0.0.1:5672", "127.0.0.1:5672"),
        ("localhost:6379/0", "localhost:6379/0"),
        ("nats:/x", "nats:/x"),
        ("localhost", "localhost"),
        ("broker:5672?password=hunter2", "broker:5672?password=***"),
    ],
)
def test_mask_url_of_a_string_that_is_not_a_url_hides_only_the_credentials(
    url: str, masked: str
) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize("text", ["hunter2", "s3cr&t!", "pass word"])
def test_mask_url_of_text_that_is_no_address_at_all_hides_it(text: str) -> None:
    # A password pasted where the URL goes has no host shape: nothing of it is shown.
    masked = mask_url(text)
    assert masked.endswith("***") and text not in masked and len(masked) <= 3 + len(text) // 4


def test_mask_url_of_nothing_is_nothing() -> None:
    assert mask_url("") == ""


@pytest.mark.parametrize(
    "url", ["amqp//app:hunter2@rabbit", "nats9://app:hunter2@host:99999999/", "app:hunter2@h"]
)
def test_bad_broker_urls_never_echo_the_password(url: str) -> None:
    with pytest.raises(EventBusError) as info:
        adapter_from_url(url)
    assert "hunter2" not in str(info.value)
    if "://" not in url:
        assert isinstance(info.value, InvalidURLError)
