"""Provisioning through replies botocore cannot read.

moto_server answers "500 Internal Server Error" as an HTML page when two of its threads
race in its SNS backend (``_find_subscription`` iterates the subscriptions while another
request adds one): seen once in a full CI run, failing ``bus.start()`` of one of ten
buses subscribing at once. botocore's own retries read the status from the parsed reply,
so a reply it cannot parse is never retried. The adapter runs its (idempotent)
provisioning again instead. A small HTTP proxy in front of the real moto_server answers
chosen SNS actions with that page.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from urllib.parse import urlsplit

import pytest
from aiohttp import ClientSession, web
from eventbus_sqs import SqsAdapter

from eventbus import EventBus
from eventbus.errors import BrokerConnectionError
from eventbus.testing.conformance import Collector, Ping, on_topic

PAGE = (
    "<!doctype html>\n<html lang=en>\n<title>500 Internal Server Error</title>\n"
    "<h1>Internal Server Error</h1>\n<p>The server encountered an internal error.</p>\n"
)
HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "content-encoding"}


class Garbler:
    """Forwards every request to ``upstream``, except that the first ``times`` SNS
    requests of ``action`` are answered with moto's HTML error page."""

    def __init__(self, upstream: str, action: str, times: int) -> None:
        self.upstream = upstream.rstrip("/")
        self.marker = f"Action={action}&".encode()
        self.left = times
        self.garbled = 0
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None

    async def start(self) -> None:
        self._session = ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self.left > 0 and self.marker in body + b"&":
            self.left -= 1
            self.garbled += 1
            return web.Response(status=500, text=PAGE, content_type="text/html")
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body
        ) as reply:
            content = await reply.read()
            out = {k: v for k, v in reply.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=reply.status, body=content, headers=out)


def _through(proxy: Garbler, sqs_url: str) -> str:
    """``sqs_url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(sqs_url)
    return f"sqs://{urlsplit(proxy.url).netloc}?{parts.query}"


def _upstream(sqs_url: str) -> str:
    return f"http://{urlsplit(sqs_url).netloc}"


def test_subscribe_provisions_through_unreadable_replies(
    sqs_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two Subscribe calls answered with an HTML 500: ``bus.start()`` still succeeds,
    saying so in a warning, and the subscription gets what is published."""
    suffix = uuid.uuid4().hex[:8]
    event_cls = on_topic(Ping, f"garbled-{suffix}")
    handled: Collector[int] = Collector("handled")

    async def body() -> None:
        proxy = Garbler(_upstream(sqs_url), "Subscribe", times=2)
        await proxy.start()
        bus = EventBus(SqsAdapter(_through(proxy, sqs_url)), source="sqs-garbled")

        @bus.subscribe(event_cls, group=f"g-{suffix}")
        async def handle(event: Ping) -> None:
            handled.add(event.seq)

        try:
            with caplog.at_level(logging.WARNING, logger="eventbus.sqs"):
                await bus.start()
            await bus.publish(event_cls(seq=1))
            await handled.wait_count(1)
        finally:
            await bus.stop()
            await proxy.stop()
        assert proxy.garbled == 2
        assert handled.items == [1]
        assert "the reply could not be read" in caplog.text

    asyncio.run(body())


def test_subscribe_gives_up_on_replies_that_stay_unreadable(sqs_url: str) -> None:
    """Every Subscribe answered with the page: ``bus.start()`` fails with
    ``BrokerConnectionError`` after three tries, within seconds."""
    suffix = uuid.uuid4().hex[:8]
    event_cls = on_topic(Ping, f"garbled-always-{suffix}")

    async def body() -> None:
        proxy = Garbler(_upstream(sqs_url), "Subscribe", times=1000)
        await proxy.start()
        bus = EventBus(SqsAdapter(_through(proxy, sqs_url)), source="sqs-garbled")

        @bus.subscribe(event_cls, group=f"g-{suffix}")
        async def handle(event: Ping) -> None:
            raise AssertionError("nothing can be delivered")

        started = time.monotonic()
        try:
            with pytest.raises(BrokerConnectionError, match="provisioning the queue"):
                await bus.start()
        finally:
            await bus.stop()
            await proxy.stop()
        assert time.monotonic() - started < 10.0
        assert proxy.garbled == 3

    asyncio.run(body())
