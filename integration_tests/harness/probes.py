"""Protocol-level liveness checks: a broker counts as up only if its client can talk to it.

An open TCP port proves little (another program, a half-started broker), so
each probe performs a real, cheap operation with the official client. Probes
are synchronous and run their async clients on a private thread, so they work
whether or not the caller is inside an event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import parse_qs, urlsplit

PROBE_TIMEOUT = 5.0


def _run_async(factory: Callable[[], Coroutine[Any, Any, None]], timeout: float) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: asyncio.run(asyncio.wait_for(factory(), timeout))).result()


def _kafka(url: str, timeout: float) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    parts = urlsplit(url)

    async def check() -> None:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=f"{parts.hostname}:{parts.port or 9092}",
            request_timeout_ms=int(timeout * 1000),
        )
        await admin.start()
        try:
            # Metadata comes back with the advertised address; listing topics
            # then talks to that address, so this also proves it is reachable.
            await admin.list_topics()
        finally:
            await admin.close()

    _run_async(check, timeout)


def _rabbitmq(url: str, timeout: float) -> None:
    import aio_pika

    async def check() -> None:
        connection = await aio_pika.connect(url, timeout=timeout)
        await connection.close()

    _run_async(check, timeout)


def _redis(url: str, timeout: float) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        if not client.ping():
            raise RuntimeError("PING did not answer PONG")
    finally:
        client.close()


def _nats(url: str, timeout: float) -> None:
    import nats

    async def quiet(exc: Exception) -> None:
        # The default callback logs a traceback per failed attempt; the
        # failure is already reported by the exception we raise.
        return None

    async def check() -> None:
        nc = await nats.connect(
            url,
            connect_timeout=timeout,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            error_cb=quiet,
        )
        try:
            # JetStream must be enabled, not just core NATS.
            await nc.jetstream().account_info()
        finally:
            await nc.close()

    _run_async(check, timeout)


def sqs_settings(url: str) -> tuple[str, str]:
    """``(http endpoint, region)`` for an ``sqs://host:port?region=...`` test URL."""
    parts = urlsplit(url)
    region = parse_qs(parts.query).get("region", ["us-east-1"])[0]
    scheme = parse_qs(parts.query).get("scheme", ["http"])[0]
    return f"{scheme}://{parts.hostname}:{parts.port}", region


def aws_credentials() -> dict[str, str]:
    """Credentials for emulators; real ones from the environment win."""
    return {
        "aws_access_key_id": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        "aws_secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
    }


def _sqs(url: str, timeout: float, services: tuple[str, ...] = ("sqs", "sns")) -> None:
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    endpoint, region = sqs_settings(url)
    config = Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1})
    for service in services:
        client = boto3.client(
            service, endpoint_url=endpoint, region_name=region, config=config, **aws_credentials()
        )
        if service == "sqs":
            client.list_queues()
        else:
            client.list_topics()


PROBES: dict[str, Callable[[str, float], None]] = {
    "kafka": _kafka,
    "rabbitmq": _rabbitmq,
    "redis": _redis,
    "nats": _nats,
    "sqs": _sqs,
    # The SQS emulators besides moto (harness/sqs_emulators.py). ElasticMQ has no SNS;
    # goaws v0.4.5 answers SNS but not the JSON protocol botocore speaks to SQS.
    "elasticmq": lambda url, timeout: _sqs(url, timeout, ("sqs",)),
    "goaws": lambda url, timeout: _sqs(url, timeout, ("sns",)),
}


def probe(name: str, url: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Raise unless the ``name`` broker at ``url`` answers a real request."""
    PROBES[name](url, timeout)


def describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def wait_ready(
    name: str, url: str, timeout: float, alive: Callable[[], str | None] = lambda: None
) -> None:
    """Probe until the broker answers or ``timeout`` passes.

    ``alive`` returns a reason when the thing being waited on has died, so a
    crashed process fails at once instead of after the whole timeout.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        dead = alive()
        if dead:
            raise RuntimeError(dead)
        try:
            probe(name, url, min(PROBE_TIMEOUT, max(1.0, deadline - time.monotonic())))
            return
        except Exception as exc:
            last = exc
        if time.monotonic() >= deadline:
            detail = describe(last) if last else "no answer"
            raise TimeoutError(f"{name} at {url} not ready after {timeout:.0f}s ({detail})")
        time.sleep(0.2)
