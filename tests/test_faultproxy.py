"""FaultProxy against a tiny local echo server: no brokers, no network beyond loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from eventbus.testing.faultproxy import FaultProxy
from eventbus.testing.ports import ephemeral_range
from eventbus.testing.target import FaultInjector


class EchoServer:
    """A blocking echo server in a thread, so it outlives each test's event loop."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._closing = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closing:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self._closing = True
        self._sock.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", echo.port) as p:
        yield p


async def roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes
) -> bytes:
    writer.write(payload)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(payload)), 5)


async def wait_until_closed(reader: asyncio.StreamReader) -> None:
    """A dropped connection shows up as EOF or a reset, within the timeout."""
    try:
        data = await asyncio.wait_for(reader.read(1), 5)
    except (ConnectionError, OSError):
        return
    assert data == b""


async def wait_for(predicate: object, timeout: float = 5) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def forwards_again(proxy: FaultProxy, timeout: float, failure: str) -> None:
    """Connect until the proxy listens again (``failure`` after ``timeout`` s), then
    check that it forwards."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            break
        except OSError:
            assert time.monotonic() < deadline, failure
            await asyncio.sleep(0.05)
    assert await roundtrip(reader, writer, b"back") == b"back"
    writer.close()


def test_implements_fault_injector(proxy: FaultProxy) -> None:
    assert isinstance(proxy, FaultInjector)
    assert proxy.port > 0


def test_forwards_both_ways(proxy: FaultProxy) -> None:
    async def case() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await roundtrip(reader, writer, b"hello") == b"hello"
        big = bytes(range(256)) * 2048  # 512 KiB: several chunks each way
        assert await roundtrip(reader, writer, big) == big
        writer.close()

    asyncio.run(case())


def test_survives_event_loops_of_callers(proxy: FaultProxy) -> None:
    # Each asyncio.run is a new loop, as in the conformance cases.
    for n in range(3):

        async def case(n: int = n) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            assert await roundtrip(reader, writer, b"x%d" % n) == b"x%d" % n
            await proxy.set_latency(0)
            writer.close()

        asyncio.run(case())


def test_drop_closes_client_connections_and_accepts_new_ones(proxy: FaultProxy) -> None:
    async def case() -> None:
        conns = [await asyncio.open_connection("127.0.0.1", proxy.port) for _ in range(3)]
        for reader, writer in conns:
            assert await roundtrip(reader, writer, b"ping") == b"ping"
        assert proxy.open_connections == 3

        await proxy.drop_connections()

        for reader, _ in conns:
            await wait_until_closed(reader)
        assert proxy.open_connections == 0
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await roundtrip(reader, writer, b"again") == b"again"
        writer.close()

    asyncio.run(case())


def test_refuse_rejects_during_window_then_accepts(proxy: FaultProxy) -> None:
    async def case() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await roundtrip(reader, writer, b"before") == b"before"

        started = time.monotonic()
        await proxy.refuse_connections(1.0)
        assert time.monotonic() - started < 0.5, "refuse_connections must not block"

        await wait_until_closed(reader)
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", proxy.port)

        deadline = time.monotonic() + 5
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
                break
            except OSError:
                assert time.monotonic() < deadline, "proxy never accepted again"
                await asyncio.sleep(0.05)
        assert time.monotonic() - started >= 0.9
        assert await roundtrip(reader, writer, b"after") == b"after"
        writer.close()

    asyncio.run(case())


def test_latency_delays_forwarding(proxy: FaultProxy) -> None:
    async def case() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        await proxy.set_latency(0.2)
        started = time.monotonic()
        assert await roundtrip(reader, writer, b"slow") == b"slow"
        # Delayed once on the way in and once on the way out.
        assert time.monotonic() - started >= 0.35
        await proxy.set_latency(0)
        writer.close()

    asyncio.run(case())


def test_sync_twins_and_stop(echo: EchoServer) -> None:
    proxy = FaultProxy("127.0.0.1", echo.port).start()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b"hi")
        assert s.recv(2) == b"hi"
        proxy.drop_connections_sync()
        s.settimeout(5)
        with contextlib.suppress(ConnectionResetError):  # RST is as good as EOF here
            assert s.recv(1) == b""
    proxy.set_latency_sync(0.01)
    proxy.refuse_connections_sync(0.01)
    proxy.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()
    proxy.stop()  # idempotent


def test_unreachable_target_resets_client() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    with FaultProxy("127.0.0.1", dead_port) as proxy:

        async def case() -> None:
            reader, _ = await asyncio.open_connection("127.0.0.1", proxy.port)
            await wait_until_closed(reader)

        asyncio.run(case())


def test_freeze_holds_everything_back_without_closing_and_thaw_lets_it_through(
    proxy: FaultProxy,
) -> None:
    """A frozen path is half-open: the open connection stays open and silent, a new one
    is accepted and never answered; after thaw both carry what was held back."""

    async def case() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await roundtrip(reader, writer, b"before") == b"before"
        await proxy.freeze()
        assert proxy.frozen
        writer.write(b"held")
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readexactly(4), 0.5)
        assert proxy.open_connections >= 1  # not closed
        late_reader, late_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        late_writer.write(b"late")
        await late_writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(late_reader.readexactly(4), 0.5)
        await proxy.thaw()
        assert not proxy.frozen
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"held"
        assert await asyncio.wait_for(late_reader.readexactly(4), 5) == b"late"
        for w in (writer, late_writer):
            w.close()

    asyncio.run(case())


def test_a_timed_freeze_thaws_by_itself(proxy: FaultProxy) -> None:
    async def case() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        await proxy.freeze(0.3)
        started = time.monotonic()
        assert await roundtrip(reader, writer, b"x") == b"x"
        assert time.monotonic() - started >= 0.25
        writer.close()

    asyncio.run(case())


def test_dropping_a_frozen_proxy_closes_its_silent_connections(proxy: FaultProxy) -> None:
    async def case() -> None:
        await proxy.freeze()
        reader, _ = await asyncio.open_connection("127.0.0.1", proxy.port)
        await wait_for(lambda: proxy.open_connections == 1)
        await proxy.drop_connections()
        await wait_until_closed(reader)
        await proxy.thaw()

    asyncio.run(case())


def test_listens_below_the_ephemeral_range(proxy: FaultProxy) -> None:
    # Outgoing connections take their local ports from the ephemeral range; a
    # proxy port there can be taken while a refusal has the listener closed.
    low, _ = ephemeral_range()
    assert proxy.port < low


def test_reopens_once_a_port_taken_during_a_refusal_is_free_again(proxy: FaultProxy) -> None:
    # While refusing, something else binds the proxy's port (on loopback a
    # client retrying connect() can even get it as its own source port) and
    # holds it for longer than a few seconds. The proxy must come back when the
    # port is free rather than give up and refuse for the rest of the run.
    proxy.refuse_connections_sync(0.2)
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", proxy.port))
    time.sleep(6.5)
    squatter.close()

    async def main() -> None:
        await forwards_again(proxy, 5, "the proxy never listened again")

    asyncio.run(main())


def test_a_refusal_ends_even_when_its_caller_is_cancelled_half_way(
    proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A handler that refuses connections is itself cut off by the refusal, and its
    # cancellation used to cancel the refusal on the proxy's loop after the
    # listener closed and before its reopening was scheduled: the proxy refused
    # for good, failing every later test of that broker.
    real_drop = proxy._drop

    async def slow_drop() -> None:
        await real_drop()
        await asyncio.sleep(0.5)

    monkeypatch.setattr(proxy, "_drop", slow_drop)

    async def main() -> None:
        caller = asyncio.create_task(proxy.refuse_connections(0.3))
        await asyncio.sleep(0.2)  # the proxy is inside the refusal, dropping links
        caller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await caller
        await forwards_again(proxy, 5, "the refusal never ended")

    asyncio.run(main())


def test_a_refusal_whose_reopening_went_missing_still_ends(proxy: FaultProxy) -> None:
    # Whatever path may lose a refusal's scheduled end, the proxy listens again once
    # the refusal is over (CI saw the RabbitMQ proxy refuse for minutes after one).
    proxy.refuse_connections_sync(0.2)

    async def lose_the_reopening() -> None:
        handle = proxy._reopen_handle
        assert handle is not None
        handle.cancel()
        proxy._reopen_handle = None

    proxy._call_sync(lose_the_reopening())

    async def main() -> None:
        await forwards_again(proxy, 3, "the refusal never ended")

    asyncio.run(main())


def test_heal_ends_a_refusal_a_freeze_and_latency_at_once(proxy: FaultProxy) -> None:
    """What a case that failed mid-fault leaves behind is gone after heal(): the proxy
    listens again within a moment (not after the refusal's 60 s), forwards what a
    freeze held back, and adds no latency."""

    async def case() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        await proxy.set_latency(0.5)
        await proxy.freeze()
        writer.write(b"held")
        await writer.drain()
        await proxy.heal()
        assert not proxy.frozen
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"held"
        writer.close()

        await proxy.refuse_connections(60.0)
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", proxy.port)
        await proxy.heal()
        await forwards_again(proxy, 0.3, "heal() left the refusal in force")
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        started = time.monotonic()
        assert await roundtrip(reader, writer, b"quick") == b"quick"
        assert time.monotonic() - started < 0.4, "heal() left the latency in force"
        writer.close()

    asyncio.run(case())


def test_heal_all_heals_every_running_proxy_and_skips_stopped_ones(echo: EchoServer) -> None:
    """What the integration tests' autouse fixture calls after each test."""
    from eventbus.testing.faultproxy import heal_all

    first = FaultProxy("127.0.0.1", echo.port).start()
    second = FaultProxy("127.0.0.1", echo.port).start()
    gone = FaultProxy("127.0.0.1", echo.port).start()
    try:
        first.freeze_sync()
        second.refuse_connections_sync(60.0)
        gone.stop()
        heal_all()
        assert not first.frozen

        async def reachable() -> None:
            await forwards_again(second, 0.3, "heal_all() left a refusal in force")

        asyncio.run(reachable())
    finally:
        first.stop()
        second.stop()


def test_stopping_while_it_tries_to_listen_again_leaves_no_task_pending(echo: EchoServer) -> None:
    """Stopped while a refusal's end keeps trying to listen again (its port held by
    another socket), the proxy ends that attempt with it: no task of its loop is left
    pending (each would be reported as "Task was destroyed but it is pending!")."""
    proxy = FaultProxy("127.0.0.1", echo.port).start()
    squatter = socket.socket()
    try:
        proxy.refuse_connections_sync(0.2)
        squatter.bind(("127.0.0.1", proxy.port))
        time.sleep(0.6)  # the refusal is over: the proxy tries to listen, and cannot
        assert proxy._background, "no attempt to listen again is running"
        proxy.stop()
    finally:
        squatter.close()
    loop = proxy._loop
    assert loop is not None and loop.is_closed()
    assert not [t for t in asyncio.all_tasks(loop) if not t.done()]
