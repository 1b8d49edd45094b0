"""The Redis idempotency store passes the same store scenarios as the memory and SQLite
stores (tests/test_idempotency.py, run here against Redis), and claims atomically
across stores."""

from __future__ import annotations

import asyncio
import importlib
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from eventbus_redis import RedisIdempotencyStore

from eventbus.middleware import Claim, IdempotencyStore

# The core store scenarios. Under the whole test command pytest has already imported
# tests/test_idempotency.py as the top-level module "test_idempotency"; importing it
# again as "tests.test_idempotency" would register its event classes twice.
core = sys.modules.get("test_idempotency") or importlib.import_module("tests.test_idempotency")

SCENARIOS: list[Callable[[str, Path], None]] = [
    core.test_store_claim_complete_release,
    core.test_a_run_whose_lease_expired_cannot_release_the_next_runs_claim,
    core.test_release_never_forgets_a_done_id,
    core.test_complete_after_the_lease_expired_marks_done_and_says_so,
]


@pytest.fixture
def on_redis(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    """Make the core scenarios open a Redis store (own key prefix per scenario)."""

    @asynccontextmanager
    async def open_store(kind: str, tmp_path: Path) -> AsyncIterator[IdempotencyStore]:
        store = RedisIdempotencyStore(redis_url, prefix=f"test:{uuid.uuid4().hex}:")
        try:
            yield store
        finally:
            await store.close()

    monkeypatch.setattr(core, "open_store", open_store)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__)
def test_redis_store_passes_the_core_store_scenarios(
    scenario: Callable[[str, Path], None], on_redis: None, tmp_path: Path
) -> None:
    scenario("redis", tmp_path)


def test_concurrent_claims_from_two_stores_claim_each_id_once(redis_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    keys = [f"group:{uuid.uuid4()}" for _ in range(100)]

    async def scenario() -> list[Claim]:
        stores = [RedisIdempotencyStore(redis_url, prefix=prefix) for _ in range(2)]
        try:
            results = await asyncio.gather(
                *(store.claim(key, 60) for key in keys for store in stores)
            )
            return [r.status for r in results]
        finally:
            for store in stores:
                await store.close()

    statuses = asyncio.run(scenario())
    for index in range(len(keys)):
        pair = sorted(s.value for s in statuses[2 * index : 2 * index + 2])
        assert pair == ["claimed", "in_progress"], keys[index]


def test_an_unreachable_store_raises_so_the_message_is_redelivered() -> None:
    async def scenario() -> None:
        store = RedisIdempotencyStore("redis://127.0.0.1:1/0?connect_timeout=0.5")
        try:
            with pytest.raises(Exception):  # noqa: B017 - the middleware wraps any error
                await asyncio.wait_for(store.claim("k", 60), 30)
        finally:
            await store.close()

    asyncio.run(scenario())


class _LoseTheClaimReply:
    """A TCP proxy to Redis that lets the first ``SET ... NX`` through and then drops
    the connection before Redis's reply gets back: the claim was stored, the store
    never heard so (redis-py then sends the SET again on a new connection)."""

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.cut = False
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.redis_port)
        cut_here = asyncio.Event()

        async def upstream() -> None:
            while chunk := await reader.read(65536):
                claim = not self.cut and b"SET" in chunk and b"NX" in chunk
                if claim:
                    self.cut = True
                    cut_here.set()  # nothing goes back from now on
                up_writer.write(chunk)
                await up_writer.drain()
                if claim:
                    await asyncio.sleep(0.2)  # Redis runs the SET; its reply is dropped
                    return

        async def downstream() -> None:
            while chunk := await up_reader.read(65536):
                if cut_here.is_set():
                    return
                writer.write(chunk)
                await writer.drain()

        try:
            await asyncio.wait(
                [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())],
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            writer.transport.abort()
            up_writer.transport.abort()


def test_a_claim_whose_reply_was_lost_is_still_ours(redis_url: str) -> None:
    """#18 defect 11: the retried SET NX finds the key taken by this very claim; the
    claim must see its own token and run the handler now, not bounce the message as
    "in progress" until the lease runs out."""
    from eventbus import EventBus
    from eventbus.middleware.idempotency import Idempotency
    from eventbus.testing.conformance import Ping, on_topic

    async def scenario() -> None:
        proxy = _LoseTheClaimReply(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
        await proxy.start()
        store = RedisIdempotencyStore(
            f"redis://127.0.0.1:{proxy.port}/0", prefix=f"test:{uuid.uuid4().hex}:"
        )
        lease = 8.0
        bus = EventBus(
            f"memory://lost-claim-{uuid.uuid4().hex[:8]}",
            source="tests",
            idempotency=Idempotency(store, lease=lease, retry_delay=0.5),
        )
        event = on_topic(Ping, f"test-redis-idem-{uuid.uuid4().hex[:8]}")
        started: list[float] = []
        handled = asyncio.Event()

        @bus.subscribe(event, group="g")
        async def work(ping: Ping) -> None:
            started.append(asyncio.get_running_loop().time())
            handled.set()

        try:
            async with bus:
                published = asyncio.get_running_loop().time()
                await bus.publish(event(seq=1))
                await asyncio.wait_for(handled.wait(), lease + 5)
            assert proxy.cut, "the claim's reply was never dropped"
            assert started[0] - published < 3.0, (
                f"handled {started[0] - published:.1f}s after publishing: the lost reply "
                "made the store see its own claim as another run's"
            )
            assert len(started) == 1
        finally:
            await store.close()
            await proxy.stop()

    asyncio.run(asyncio.wait_for(scenario(), 30))
