"""``sqs://`` URL -> :class:`SqsSettings`, with one-line errors for anything wrong.

Shape::

    sqs://[HOST[:PORT]][?region=eu-west-1&option=value...]

With no host the adapter talks to AWS itself (the regional SQS and SNS endpoints,
over HTTPS). A host names an endpoint override: an emulator (moto, LocalStack,
ElasticMQ) or a VPC endpoint. Loopback hosts default to plain HTTP (the emulators
speak it), any other host to HTTPS; ``endpoint_scheme`` says it explicitly.

Credentials come only from the standard AWS chain (environment, shared config,
SSO, container or instance role): the URL carries none, so none can be logged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from eventbus.adapter import StartFrom
from eventbus.errors import InvalidURLError, mask_url
from eventbus.url_options import (
    TLS_OPTIONS,
    OptionParser,
    check_tls,
    choice,
    flag,
    integer,
    parse_options,
    pattern,
    query_pairs,
    seconds,
    shared,
)

Topology = Literal["sns", "queue"]

MAX_SQS_MESSAGE_BYTES = 256 * 1024
MAX_VISIBILITY_SECONDS = 12 * 60 * 60
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "0.0.0.0")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_USERINFO = re.compile(r"^([^:/?#@]*://).*@", re.DOTALL)


@dataclass(frozen=True, slots=True)
class SqsSettings:
    """Everything the SQS adapter reads from its URL (durations in seconds).

    Example::

        SqsSettings.from_url("sqs://?region=eu-west-1&fifo=true")
        SqsSettings.from_url("sqs://127.0.0.1:5000?region=us-east-1")  # moto
        SqsSettings(region="eu-west-1", client_name="billing")  # in code
    """

    url: str = field(default="", repr=False)
    region: str | None = None
    endpoint_url: str | None = None
    topology: Topology = "sns"
    fifo: bool = False
    provision: bool = True
    prefix: str = ""
    visibility_timeout: int = 30
    wait_seconds: int = 5
    receivers: int = 1
    max_receive_count: int = 0
    max_message_bytes: int = MAX_SQS_MESSAGE_BYTES
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_attempts: int = 3
    # Added to the HTTP user agent of every request (CloudTrail shows it).
    client_name: str = "eventbus"
    # HTTPS: the CA bundle and the client certificate (an endpoint that asks for one),
    # and whether to verify the endpoint's certificate (a dev shortcut only).
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_verify: bool = True
    # Where a new group starts when its subscription does not say; SQS keeps no
    # history, so "earliest" is refused when a group subscribes.
    start_from: StartFrom | None = None

    @property
    def masked_url(self) -> str:
        """The URL safe to show (a valid one holds no secret: credentials come from the
        AWS chain; masked all the same, as every adapter's is). For settings made in
        code: ``sqs://`` with the endpoint's host and the region."""
        if self.url:
            return masked(self.url)
        host = (self.endpoint_url or "").partition("://")[2]
        return f"sqs://{host}?region={self.region}"

    @property
    def tls(self) -> bool:
        """Whether requests go over HTTPS (AWS itself, or an https endpoint)."""
        return self.endpoint_url is None or self.endpoint_url.startswith("https://")

    @classmethod
    def from_url(cls, url: str) -> SqsSettings:
        """Parse ``url``; raise :class:`InvalidURLError` naming what is wrong.

        No error shows the URL as given: one that carries a secret (user info, an
        unknown option such as ``aws_secret_access_key=``) is refused masked.
        """
        shown = masked(url)
        # Credentials first, on the raw text: a secret holding "/", "#" or "?" ends the
        # authority for urlsplit, which would then read part of it as a host or port.
        if "@" in url.partition("://")[2]:
            raise InvalidURLError(
                f"SQS URL {shown!r} carries credentials; the SQS adapter takes them only "
                "from the standard AWS chain (AWS_ACCESS_KEY_ID/AWS_PROFILE, instance or "
                "container roles): remove them from the URL"
            )
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            # The parser's own text quotes the part it could not read: never shown.
            raise InvalidURLError(
                f"cannot parse SQS URL {shown!r}: the host or port is malformed; use "
                "sqs://[host:port]?region=REGION"
            ) from None
        if parts.scheme != "sqs":
            raise InvalidURLError(
                f"the SQS adapter got {shown!r}; use sqs://[host:port]?region=REGION"
            )
        values: dict[str, Any] = {"url": url}
        values.update(parse_options(query_pairs(parts.query), _OPTIONS, name="SQS", shown=shown))
        scheme: str | None = values.pop("endpoint_scheme", None)
        host = parts.hostname
        if host:
            if scheme is None:
                scheme = "http" if host in _LOOPBACK else "https"
            literal = f"[{host}]" if ":" in host else host
            values["endpoint_url"] = f"{scheme}://{literal}" + (f":{port}" if port else "")
        elif scheme is not None:
            raise InvalidURLError(
                f"endpoint_scheme is set in SQS URL {shown!r} but no host names an endpoint; "
                "give sqs://host:port or drop endpoint_scheme"
            )
        if not values.get("region"):
            if host is None:
                raise InvalidURLError(
                    f"SQS URL {shown!r} names no region; add ?region=REGION (e.g. eu-west-1)"
                )
            values["region"] = "us-east-1"
        check_tls(
            values,
            tls=str(values.get("endpoint_url", "https://")).startswith("https"),
            name="SQS",
            shown=shown,
            use="talk to AWS itself (no host) or set endpoint_scheme=https",
        )
        settings = cls(**values)
        if settings.max_message_bytes > MAX_SQS_MESSAGE_BYTES:
            raise InvalidURLError(
                f"max_message_bytes={settings.max_message_bytes} in SQS URL {shown!r} is over "
                f"SQS's limit of {MAX_SQS_MESSAGE_BYTES} bytes; use at most that"
            )
        if settings.read_timeout <= settings.wait_seconds:
            raise InvalidURLError(
                f"read_timeout={settings.read_timeout:g} in SQS URL {shown!r} must be above "
                f"wait_seconds={settings.wait_seconds}, or every long poll would time out"
            )
        return settings


def masked(url: str) -> str:
    """``url`` safe to show: user info and secret-named query values as ``***``, and the
    value of every option the adapter does not know (it may be a key pasted by mistake)."""
    # The whole user info, the access key id too (it names the account's key).
    shown = mask_url(_USERINFO.sub(r"\1***@", url, count=1))
    head, mark, query = shown.partition("?")
    if not mark:
        return shown
    query, hash_, _ = query.partition("#")
    items = []
    for item in query.split("&"):
        name, eq, value = item.partition("=")
        items.append(f"{name}={value}" if name in _OPTIONS or not eq else f"{name}=***")
    return f"{head}?{'&'.join(items)}" + ("#***" if hash_ else "")


def _region(raw: str) -> str:
    if not _REGION.match(raw):
        raise ValueError("use an AWS region name such as us-east-1 or eu-west-1")
    return raw


_OPTIONS: dict[str, OptionParser] = {
    **shared("start_from", "client_name", "provision", "connect_timeout", *TLS_OPTIONS),
    "region": _region,
    "endpoint_scheme": choice("http", "https"),
    "topology": choice(
        "sns",
        "queue",
        words="use sns (topic fan-out to a queue per group) or queue (one queue per topic)",
    ),
    "fifo": flag,
    "prefix": pattern(
        r"[A-Za-z0-9_-]{0,40}", "use up to 40 letters, digits, hyphens or underscores"
    ),
    "visibility_timeout": integer(3, MAX_VISIBILITY_SECONDS),
    "wait_seconds": integer(0, 20),
    "receivers": integer(1, 32),
    "max_receive_count": integer(0, 1000),
    "max_message_bytes": integer(1024, MAX_SQS_MESSAGE_BYTES),
    "read_timeout": seconds(),
    "max_attempts": integer(1, 20),
}
