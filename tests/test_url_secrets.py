"""No adapter shows a secret of its URL: not in its settings' repr, not in any URL error.

Error reporters capture locals (a settings object's repr) and crash output prints the
error of a mistyped URL, so each adapter is held to it with a URL that carries a
secret: a malformed one (the secret holds ``/``, ``#`` or ``?``, which end the
authority for a URL parser), a bad port, an unknown option, a bad option value, and
(for the adapters that take credentials at all) the repr of a valid one's settings.
"""

from __future__ import annotations

import re

import pytest

from eventbus.errors import EventBusError
from eventbus.registry_adapters import adapter_from_url

SECRET = "wJalrXUtnFEMI"
# The secret with each character that breaks URL parsing inside it.
MALFORMED = (f"{SECRET}/K7MDENGbPx", f"{SECRET}#K7MDENGbPx", f"{SECRET}?K7MDENGbPx")

# Per adapter: a valid URL with ``{s}`` where the secret goes, the same with a port
# that is no number, and a known option with a value its parser refuses.
ADAPTERS: dict[str, tuple[str, str, str]] = {
    "kafka": (
        "kafka://app:{s}@broker:9092?security_protocol=SASL_SSL&sasl_mechanism=PLAIN",
        "kafka://app:{s}@broker:ninety?security_protocol=SASL_SSL&sasl_mechanism=PLAIN",
        "partitions=many",
    ),
    "rabbitmq": (
        "amqp://app:{s}@rabbit:5672/prod",
        "amqp://app:{s}@rabbit:ninety/prod",
        "heartbeat=often",
    ),
    "nats": ("nats://app:{s}@nats:4222", "nats://app:{s}@nats:ninety", "ack_wait=long"),
    "redis": (
        "redis+streams://app:{s}@cache:6379/0",
        "redis+streams://app:{s}@cache:ninety/0",
        "connect_timeout=soon",
    ),
    # SQS takes credentials only from the AWS chain: a URL carrying them is refused,
    # and the refusal must not show them either.
    "sqs": (
        "sqs://AKIAIOSFODNN7EXAMPLE:{s}@sqs.eu-west-1.amazonaws.com?region=eu-west-1",
        "sqs://AKIAIOSFODNN7EXAMPLE:{s}@sqs.eu-west-1.amazonaws.com:ninety?region=eu-west-1",
        "wait_seconds=forever",
    ),
}

# Failing still: each mark is strict, so the suite says the moment one is fixed (then
# the mark goes). Redis's repr (#18 defect 12) and RabbitMQ's port error (defect 24)
# were fixed on their branches and pass here since merging main.
_AUTHORITY = (
    "{} shows the user info (password included) when a password holding / # ? "
    "ends the URL's authority; found by this test, outside the SQS branch's area, "
    "reported to the lead (#18 defect 24's class)"
)
ELSEWHERE: dict[tuple[str, str], str] = {}


def _with_query(url: str, option: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{option}"


def _cases() -> list[object]:
    cases: list[object] = []
    for name, (url, bad_port, bad_value) in ADAPTERS.items():
        plain = url.format(s=SECRET)
        urls = {
            "malformed": [url.format(s=secret) for secret in MALFORMED],
            "bad port": [bad_port.format(s=SECRET)],
            "unknown option": [
                _with_query(plain, "nosuch=1"),
                _with_query(url.format(s="x"), f"aws_secret_access_key={SECRET}"),
                _with_query(url.format(s="x"), f"password={SECRET}&nosuch=1"),
            ],
            "bad value": [_with_query(plain, bad_value)],
        }
        for kind, shown in urls.items():
            for i, one in enumerate(shown):
                marks = []
                if (name, kind) in ELSEWHERE:
                    marks.append(pytest.mark.xfail(strict=True, reason=ELSEWHERE[name, kind]))
                cases.append(pytest.param(one, id=f"{name}-{kind}-{i}", marks=marks))
    return cases


def _leaks(text: str) -> list[str]:
    """The pieces of any secret used here that ``text`` shows."""
    pieces = {SECRET} | {p for secret in MALFORMED for p in re.split(r"[/#?]", secret)}
    return sorted(p for p in pieces if len(p) >= 6 and p in text)


@pytest.mark.parametrize("url", _cases())
def test_url_errors_never_show_the_secret(url: str) -> None:
    with pytest.raises(EventBusError) as info:
        adapter_from_url(url)
    text = f"{info.value} {info.value.__cause__ or ''}"
    assert not _leaks(text), f"{_leaks(text)} shown in: {text}"
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            name,
            marks=[pytest.mark.xfail(strict=True, reason=ELSEWHERE[name, "repr"])]
            if (name, "repr") in ELSEWHERE
            else [],
        )
        for name in ADAPTERS
        if name != "sqs"
    ],
)
def test_settings_repr_never_shows_the_secret(name: str) -> None:
    adapter = adapter_from_url(ADAPTERS[name][0].format(s=SECRET))
    settings = adapter.settings  # type: ignore[attr-defined]
    for text in (repr(settings), str(settings), settings.masked_url):
        assert not _leaks(text), f"{name}: {_leaks(text)} shown in: {text}"


def test_sqs_settings_repr_holds_nothing_a_url_could_smuggle() -> None:
    # A valid SQS URL carries no credentials; what it does carry is shown as given.
    adapter = adapter_from_url("sqs://127.0.0.1:4566?region=us-east-1&prefix=dev")
    text = repr(adapter.settings)  # type: ignore[attr-defined]
    assert "region='us-east-1'" in text and "url='sqs://" not in text
