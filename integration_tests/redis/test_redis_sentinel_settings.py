"""Sentinel URLs and the WAIT options: parsed, checked, refused in one line."""

from __future__ import annotations

import pytest
from eventbus_redis import RedisSettings

from eventbus.errors import InvalidURLError


def test_a_sentinel_url_names_the_sentinels_and_the_primary() -> None:
    s = RedisSettings.from_url("redis+streams://u:p%2Cw@s1:26380,s2,[::1]:26381/2?sentinel=orders")
    assert s.sentinel == "orders"
    assert s.sentinels == ("s1:26380", "s2:26379", "[::1]:26381")
    assert (s.db, s.username, s.password) == (2, "u", "p,w")
    assert s.server == "orders via Sentinel s1:26380,s2:26379,[::1]:26381/2"
    assert "p,w" not in s.masked_url


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("redis+streams://a:1,b:2/0", "without sentinel=<primary name>"),
        ("redis+streams://a:1,b:x/0?sentinel=m", "invalid port (server 2"),
        ("redis+streams://a:1/0?sentinel=", None),  # blank: no option, one host
        ("redis+streams://a:1/0?wait_replicas=-1", "wait_replicas"),
        ("redis+streams://a:1/0?wait_timeout=inf", "wait_timeout"),
        ("redis://a:1/0?wait_replicas=1", "only apply to Streams"),
    ],
)
def test_bad_sentinel_or_wait_options_are_refused(url: str, words: str | None) -> None:
    if words is None:
        assert RedisSettings.from_url(url).sentinel is None
        return
    with pytest.raises(InvalidURLError, match=words.replace("(", r"\(").replace("[", r"\[")):
        RedisSettings.from_url(url)


def test_settings_made_in_code_need_the_sentinels() -> None:
    with pytest.raises(InvalidURLError, match="names no Sentinel"):
        RedisSettings(sentinel="orders")
    settings = RedisSettings(sentinel="orders", sentinels=("s1:26379",), wait_replicas=1)
    assert settings.wait_replicas == 1
