"""The URL-option parsing every adapter's settings share: values, errors, query splitting."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from eventbus import url_options
from eventbus.errors import InvalidURLError

URL = "demo://u:***@h?x=1"
PARSERS: dict[str, Callable[[str], Any]] = {
    "partitions": url_options.integer(1),
    "mode": url_options.choice("binary", "structured"),
    "password": url_options.text,
}


def refusal(parser: Callable[[str], Any], raw: str) -> str:
    """The text of the ValueError ``parser`` raises for ``raw`` (it must raise)."""
    with pytest.raises(ValueError) as raised:
        parser(raw)
    return str(raised.value)


def error_of(pairs: list[tuple[str, str]], **kwargs: Any) -> str:
    with pytest.raises(InvalidURLError) as raised:
        url_options.parse_options(pairs, PARSERS, name="Demo", shown=URL, **kwargs)
    message = str(raised.value)
    assert "\n" not in message, f"not one line: {message!r}"
    return message


# -- parse_options -------------------------------------------------------------------------


def test_options_are_parsed_to_typed_values() -> None:
    values = url_options.parse_options(
        [("partitions", "6"), ("mode", "structured")], PARSERS, name="Demo", shown=URL
    )
    assert values == {"partitions": 6, "mode": "structured"}


def test_a_bad_value_names_the_option_the_value_the_url_and_what_is_allowed() -> None:
    assert error_of([("partitions", "0")]) == (
        f"option partitions='0' in Demo URL {URL!r} is invalid: must be an integer >= 1"
    )
    assert error_of([("mode", "zip")]).endswith("is invalid: use binary or structured")


def test_a_secret_value_is_never_shown() -> None:
    message = error_of([("password", "")], secrets=("password",))
    assert "password=*** in Demo URL" in message


def test_unknown_options_are_all_named_with_the_accepted_ones() -> None:
    assert error_of([("partitons", "3")]) == (
        f"unknown option 'partitons' in Demo URL {URL!r}; the Demo adapter accepts only: "
        "mode, partitions, password"
    )
    several = error_of([("colour", "red"), ("mode", "binary"), ("size", "2"), ("colour", "x")])
    assert several.startswith("unknown options 'colour', 'size' in Demo URL")


def test_an_unknown_hint_is_appended() -> None:
    message = error_of([("maxlen", "5")], unknown_hint=lambda names: f"; {names} elsewhere")
    assert message.endswith("password; ['maxlen'] elsewhere")


def test_an_option_given_twice_is_an_error_by_default() -> None:
    assert error_of([("mode", "binary"), ("mode", "binary")]) == (
        f"option 'mode' is given twice in Demo URL {URL!r}"
    )


def test_repeated_last_keeps_the_last_value_and_never_parses_the_overridden_one() -> None:
    values = url_options.parse_options(
        [("partitions", "x"), ("partitions", "4")], PARSERS, name="Demo", shown=URL, repeated="last"
    )
    assert values == {"partitions": 4}
    assert "partitions='0'" in error_of([("partitions", "4"), ("partitions", "0")], repeated="last")


# -- query_pairs ---------------------------------------------------------------------------


def test_query_pairs_decode_and_keep_order() -> None:
    assert url_options.query_pairs("b=2&a=%2F&c=") == [("b", "2"), ("a", "/"), ("c", "")]
    assert url_options.query_pairs("") == []


def test_plus_is_a_space_unless_told_otherwise() -> None:
    assert url_options.query_pairs("p=a+b%2Bc") == [("p", "a b+c")]
    assert url_options.query_pairs("p=a+b%2Bc&&q", plus_is_space=False) == [
        ("p", "a+b+c"),
        ("q", ""),
    ]


def test_blank_values_can_be_dropped_like_parse_qs() -> None:
    for plus in (True, False):
        pairs = url_options.query_pairs("a=&b=1&c", keep_blank=False, plus_is_space=plus)
        assert pairs == [("b", "1")]


# -- servers and masking ------------------------------------------------------------------


def test_host_ports_default_the_port_and_keep_ipv6_bracketed() -> None:
    assert url_options.host_ports("a, b:1,[::1]:3,[::2]", default_port=9, name="X", shown="s") == (
        "a:9",
        "b:1",
        "[::1]:3",
        "[::2]:9",
    )
    assert url_options.host_ports(" , ", default_port=9, name="X", shown="s") == ()


@pytest.mark.parametrize(
    ("netloc", "words"),
    [
        (":9092", "has an empty host (server 1)"),
        ("a:1,h:port", "has an invalid port (server 2: not a number from 1 to 65535)"),
        ("h:0", "has an invalid port (server 1: not a number from 1 to 65535)"),
        ("h:65536", "has an invalid port (server 1: not a number from 1 to 65535)"),
    ],
)
def test_host_ports_refuse_empty_hosts_and_bad_ports(netloc: str, words: str) -> None:
    """The server text itself is never quoted: it may be a password's piece."""
    with pytest.raises(InvalidURLError) as raised:
        url_options.host_ports(netloc, default_port=9, name="Kafka", shown="kafka://x")
    assert str(raised.value).startswith(f"Kafka URL 'kafka://x' {words}")
    assert netloc.split(",")[-1] not in str(raised.value)


def test_mask_query_hides_only_the_named_options() -> None:
    url = "x://h?password=a&mypassword=b&token=c#f"
    assert url_options.mask_query(url, "password", "token") == (
        "x://h?password=***&mypassword=b&token=***#f"
    )


# -- value parsers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parser", "good", "bad", "words"),
    [
        (
            url_options.integer(1),
            {"1": 1, "+7": 7, " 8 ": 8},
            ["0", "-1", "x", "1.5", ""],
            "must be an integer >= 1",
        ),
        (
            url_options.integer(0, 20),
            {"0": 0, "20": 20},
            ["-1", "21", "x"],
            "must be an integer from 0 to 20",
        ),
        (url_options.integer(high=5), {"-9": -9, "5": 5}, ["6"], "must be an integer <= 5"),
        (url_options.integer(), {"-3": -3}, ["x"], "must be an integer"),
        (url_options.integer(-1, allowed="use -1"), {"-1": -1}, ["-2"], "use -1"),
    ],
)
def test_integer(
    parser: Callable[[str], int], good: dict[str, int], bad: list[str], words: str
) -> None:
    for raw, value in good.items():
        assert parser(raw) == value
    for raw in bad:
        assert refusal(parser, raw) == words


@pytest.mark.parametrize(
    ("parser", "good", "bad", "words"),
    [
        (
            url_options.seconds(),
            ["0.001", "5", "inf"],
            ["0", "-1", "nan", "x", ""],
            "must be a positive number of seconds",
        ),
        (
            url_options.seconds(inclusive=True),
            ["0", "2.5"],
            ["-0.5", "nan"],
            "must be zero or a positive number of seconds",
        ),
        (
            url_options.seconds(0.1, inclusive=True),
            ["0.1", "3"],
            ["0.09", "nan"],
            "must be a number of seconds >= 0.1",
        ),
        (url_options.seconds(1), ["1.5"], ["1", "0.5"], "must be a number of seconds > 1"),
    ],
)
def test_seconds(
    parser: Callable[[str], float], good: list[str], bad: list[str], words: str
) -> None:
    for raw in good:
        assert parser(raw) == float(raw)
    for raw in bad:
        assert refusal(parser, raw) == words
    assert not any(math.isnan(parser(raw)) for raw in good)


def test_flags() -> None:
    assert [url_options.flag(raw) for raw in ("1", "TRUE", "yes", "On")] == [True] * 4
    assert [url_options.flag(raw) for raw in ("0", "False", "NO", "off")] == [False] * 4
    assert (url_options.strict_flag("TRUE"), url_options.strict_flag("false")) == (True, False)
    assert refusal(url_options.flag, "maybe") == "use true or false"
    for raw in ("yes", "1", ""):
        assert refusal(url_options.strict_flag, raw) == "use 'true' or 'false'"


def test_choice_folds_and_says_what_is_allowed() -> None:
    assert url_options.choice("SSL", "SASL_SSL", fold=str.upper)("sasl_ssl") == "SASL_SSL"
    # Without fold the match is exact.
    assert refusal(url_options.choice("earliest", "latest"), "Latest") == "use earliest or latest"
    assert refusal(url_options.choice("a", "b", "c"), "d") == "use one of a, b, c"
    sns = url_options.choice("sns", "queue", words="use sns or a queue")
    assert refusal(sns, "mesh") == "use sns or a queue"


def test_text_and_pattern() -> None:
    assert url_options.text("x") == "x"
    assert refusal(url_options.text, "") == "must not be empty"
    letters = url_options.pattern(r"[a-z]{1,3}", "use 1-3 letters")
    assert letters("abc") == "abc"
    for raw in ("abcd", "ab1", "", "ab\n"):
        assert refusal(letters, raw) == "use 1-3 letters"


# -- the shared vocabulary and renamed options ---------------------------------------------

RENAMED = {
    "create_topics": url_options.Renamed("provision"),
    "session_timeout_ms": url_options.Renamed(
        "session_timeout", url_options.from_milliseconds(url_options.integer(1)), "seconds"
    ),
}
VOCAB: dict[str, Callable[[str], Any]] = {
    **url_options.shared("provision", "connect_timeout"),
    "session_timeout": url_options.seconds(),
}


def parse_vocab(pairs: list[tuple[str, str]], **kwargs: Any) -> dict[str, Any]:
    return url_options.parse_options(
        pairs, VOCAB, name="Demo", shown=URL, renamed=RENAMED, **kwargs
    )


def test_an_old_name_is_parsed_as_its_new_one_with_one_warning_per_url() -> None:
    with pytest.warns(DeprecationWarning) as warned:
        values = parse_vocab([("create_topics", "false"), ("session_timeout_ms", "3000")])
    assert values == {"provision": False, "session_timeout": 3.0}
    assert len(warned) == 1
    assert str(warned[0].message) == (
        f"options 'create_topics', 'session_timeout_ms' in Demo URL {URL!r} are deprecated "
        f"and will stop working in eventbus 0.2; use the new names: create_topics -> "
        "provision, session_timeout_ms -> session_timeout (seconds)"
    )


def test_new_names_warn_nothing(recwarn: pytest.WarningsRecorder) -> None:
    assert parse_vocab([("provision", "true"), ("session_timeout", "2.5")]) == {
        "provision": True,
        "session_timeout": 2.5,
    }
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]


def test_an_old_and_a_new_name_of_one_option_are_given_twice() -> None:
    with pytest.raises(
        InvalidURLError,
        match=(r"option 'provision' \(as 'provision' and 'create_topics'\) is given twice"),
    ):
        parse_vocab([("provision", "true"), ("create_topics", "false")])
    # Where a later value replaces an earlier one, the later name counts.
    with pytest.warns(DeprecationWarning):
        assert parse_vocab(
            [("provision", "true"), ("create_topics", "false")], repeated="last"
        ) == {"provision": False}


def test_a_bad_old_value_names_the_old_option() -> None:
    with pytest.raises(InvalidURLError, match=r"option session_timeout_ms='0' .* >= 1"):
        parse_vocab([("session_timeout_ms", "0")])


def test_the_accepted_list_names_only_the_new_names() -> None:
    with pytest.raises(InvalidURLError) as raised:
        parse_vocab([("colour", "red")])
    assert str(raised.value).endswith("accepts only: connect_timeout, provision, session_timeout")


def test_delay_tiers_are_ascending_seconds_refused_not_sorted() -> None:
    tiers = url_options.delay_tiers()
    assert tiers("1,10,60") == (1, 10, 60) and tiers("0.05,0.2,1") == (0.05, 0.2, 1)
    assert all(type(t) is int for t in tiers("1,10"))  # names built from tiers read "10s"
    assert refusal(tiers, "10,1") == (
        "list the tiers in ascending order without repeats, e.g. 1,10,60"
    )
    assert refusal(tiers, "1,1") == refusal(tiers, "10,1")
    assert refusal(tiers, "0,1") == (
        "every tier must be a finite number of seconds above 0, e.g. 1,10,60"
    )
    assert refusal(tiers, "1,inf") == refusal(tiers, "0,1")
    assert refusal(tiers, "1,,2").startswith("use numbers of seconds separated by commas")
    assert refusal(url_options.delay_tiers(most=2), "1,2,3") == "use at most 2 tiers, e.g. 1,10,60"


def test_shared_options_use_one_parser_each() -> None:
    assert url_options.shared("start_from")["start_from"]("earliest") == "earliest"
    assert refusal(url_options.VOCABULARY["start_from"], "first") == "use earliest or latest"
    assert url_options.VOCABULARY["tls_verify"]("false") is False
    with pytest.raises(ValueError, match="not shared options"):
        url_options.shared("partitions")


def test_tls_options_need_tls_selected_and_a_whole_client_certificate() -> None:
    url_options.check_tls({"tls_ca": "ca.pem"}, tls=True, name="Demo", shown=URL, use="x")
    with pytest.raises(InvalidURLError) as raised:
        url_options.check_tls(
            {"tls_ca": "ca.pem", "tls_verify": False},
            tls=False,
            name="Demo",
            shown=URL,
            use="use demos://",
        )
    assert str(raised.value) == (
        f"tls_ca, tls_verify in Demo URL {URL!r} need TLS, which the URL does not select "
        "(they would be ignored); use demos://"
    )
    with pytest.raises(InvalidURLError, match="tls_cert and tls_key must be given together"):
        url_options.check_tls({"tls_cert": "c.pem"}, tls=True, name="Demo", shown=URL, use="x")
