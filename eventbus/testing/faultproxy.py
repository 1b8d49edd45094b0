"""A TCP proxy that breaks the path to a broker on demand, for reconnect tests.

(Over 400 lines on purpose: one proxy whose faults share its listener and links.)

Clients connect to the proxy instead of the broker; the proxy forwards bytes
both ways and, when asked, drops every connection, refuses new ones for a
while, or delays every forwarded chunk. The broker itself is never touched.

The proxy runs its own event loop in a background thread, because tests
typically call ``asyncio.run`` once per case and a proxy bound to one of those
loops would die with it. Its async methods can be awaited from any loop::

    proxy = FaultProxy("127.0.0.1", 6379)
    proxy.start()                      # returns once listening
    url = f"redis://127.0.0.1:{proxy.port}/0"
    ...
    await proxy.drop_connections()     # clients see their sockets reset
    await proxy.refuse_connections(2)  # returns at once; refusal lasts 2 s
    await proxy.set_latency(0.05)      # 50 ms on every forwarded chunk
    await proxy.freeze()               # half-open: nothing forwarded, nothing closed
    await proxy.thaw()                 # what was held back flows again
    proxy.stop()

It implements :class:`eventbus.testing.target.FaultInjector`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

from eventbus.testing.ports import stable_port

__all__ = ["FaultProxy", "heal_all"]

_T = TypeVar("_T")
_log = logging.getLogger(__name__)

_CHUNK = 64 * 1024

# Every proxy of this process that is running (for heal_all).
_running: weakref.WeakSet[FaultProxy] = weakref.WeakSet()


def heal_all() -> None:
    """:meth:`FaultProxy.heal` every running proxy of this process: a test fixture's
    teardown, so a test that ends (or fails) while a fault is in force does not leave
    it to the tests after it. Blocking; not from a proxy's own thread."""
    for proxy in list(_running):
        loop = proxy._loop
        if not proxy._stopped and loop is not None and loop.is_running():
            proxy.heal_sync()


class _Link:
    """One client connection and its upstream connection to the broker."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        # abort() rather than close(): a dropped link must look like a network
        # failure (RST, unflushed data lost), not a polite shutdown.
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class FaultProxy:
    """A thread-backed TCP proxy in front of ``target_host:target_port``.

    ``listen_port=0`` picks a free port below the kernel's ephemeral range (see
    :mod:`eventbus.testing.ports`: a refusal closes the listener, and a port in
    that range could be taken meanwhile); read :attr:`port` after :meth:`start`.
    A stopped proxy cannot be started again.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self._listen_port = listen_port or stable_port(listen_host)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._latency = 0.0
        self._refuse_until = 0.0
        self._reopen_handle: asyncio.TimerHandle | None = None
        self._stopped = False
        self._background: set[asyncio.Task[None]] = set()
        # Set while forwarding; cleared by freeze(). Made on the proxy's loop.
        self._flowing: asyncio.Event | None = None
        self._thaw_handle: asyncio.TimerHandle | None = None
        self._keeper: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------

    @property
    def port(self) -> int:
        """The port clients connect to."""
        return self._listen_port

    @property
    def open_connections(self) -> int:
        """How many client connections are currently being forwarded."""
        return len(self._links)

    def start(self) -> FaultProxy:
        """Start the proxy thread; returns once the proxy is listening."""
        if self._thread is not None:
            raise RuntimeError("FaultProxy already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._listen())
            except BaseException as exc:  # reported to start()'s caller below
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            # Belt and braces: whatever path a refusal's end may miss, the listener is
            # back within half a second of it (a proxy refusing for good fails every
            # later test of its broker).
            self._keeper = loop.create_task(self._keep_listening())
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(
            target=run, name=f"FaultProxy->{self.target_host}:{self.target_port}", daemon=True
        )
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        _running.add(self)
        return self

    def stop(self) -> None:
        """Close the listener and every connection, then end the proxy thread."""
        _running.discard(self)
        if self._stopped or self._thread is None or self._loop is None:
            self._stopped = True
            return
        self._stopped = True
        loop = self._loop
        if loop.is_running():
            with contextlib.suppress(RuntimeError):
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- faults (awaitable from any event loop) -----------------------------

    async def drop_connections(self) -> None:
        """Reset every open client connection; new connections are still accepted."""
        await self._call(self._drop())

    async def refuse_connections(self, seconds: float) -> None:
        """Drop every connection and refuse new ones for ``seconds``.

        Returns as soon as the refusal has begun; it does not wait for the
        window to end. During the window the listening socket is closed, so
        connecting fails with "connection refused", as with a broker that is
        down. Overlapping calls extend the window to the latest end.
        """
        await self._call(self._refuse(seconds))

    async def set_latency(self, seconds: float) -> None:
        """Delay every forwarded chunk, in both directions, by ``seconds`` (0 to stop)."""
        await self._call(self._set_latency(seconds))

    async def freeze(self, seconds: float | None = None) -> None:
        """Stop forwarding in both directions without closing anything: a half-open path.

        Open connections stay open and silent (what a client sends is not read, so
        its socket buffers fill as over a dead path); new connections are accepted
        and never answered, like an endpoint that takes TCP and never speaks the
        protocol. Returns at once; ``seconds`` thaws it after that long, ``None``
        leaves it frozen until :meth:`thaw`.
        """
        await self._call(self._freeze(seconds))

    async def thaw(self) -> None:
        """Forward again, on the same connections, whatever a freeze held back."""
        await self._call(self._thaw())

    async def heal(self) -> None:
        """End every fault now: no refusal (listening again at once), no freeze (what it
        held back flows), no latency. Open connections stay open. The conformance suite
        calls it when a case ends, so a case that fails mid-fault leaves the next one a
        working path."""
        await self._call(self._heal())

    @property
    def frozen(self) -> bool:
        """Whether a :meth:`freeze` is in force."""
        return self._flowing is not None and not self._flowing.is_set()

    # Sync twins for code that has no event loop (fixtures, teardown).

    def drop_connections_sync(self) -> None:
        """Blocking form of :meth:`drop_connections`."""
        self._call_sync(self._drop())

    def refuse_connections_sync(self, seconds: float) -> None:
        """Blocking form of :meth:`refuse_connections` (also returns at once)."""
        self._call_sync(self._refuse(seconds))

    def set_latency_sync(self, seconds: float) -> None:
        """Blocking form of :meth:`set_latency`."""
        self._call_sync(self._set_latency(seconds))

    def freeze_sync(self, seconds: float | None = None) -> None:
        """Blocking form of :meth:`freeze` (also returns at once)."""
        self._call_sync(self._freeze(seconds))

    def thaw_sync(self) -> None:
        """Blocking form of :meth:`thaw`."""
        self._call_sync(self._thaw())

    def heal_sync(self) -> None:
        """Blocking form of :meth:`heal`."""
        self._call_sync(self._heal())

    # -- internals (run on the proxy's loop) ---------------------------------

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._stopped or not self._loop.is_running():
            raise RuntimeError("FaultProxy is not running; call start() first")
        return self._loop

    async def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        loop = self._require_loop()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return await coro
        # Shielded: a caller cancelled meanwhile (a handler whose connection the fault
        # just cut, say) must not cancel the fault half-way on the proxy's loop, e.g. a
        # refusal that closed the listener but never scheduled its reopening.
        return await asyncio.shield(
            asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))
        )

    def _call_sync(self, coro: Coroutine[Any, Any, _T]) -> _T:
        loop = self._require_loop()
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("sync FaultProxy methods cannot run on the proxy's own thread")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)

    async def _listen(self) -> None:
        if self._flowing is None:
            self._flowing = asyncio.Event()
            self._flowing.set()
        self._server = await asyncio.start_server(
            self._accept, self.listen_host, self._listen_port, reuse_address=True
        )
        if self._listen_port == 0:
            self._listen_port = int(self._server.sockets[0].getsockname()[1])

    async def _keep_listening(self) -> None:
        while not self._stopped:
            await asyncio.sleep(0.5)
            refusing = time.monotonic() < self._refuse_until
            serving = self._server is not None and self._server.is_serving()
            if self._stopped or refusing or serving:
                continue
            _log.warning(
                "FaultProxy on port %s was not listening after its refusal ended; listening again",
                self._listen_port,
            )
            self._server = None
            with contextlib.suppress(OSError):
                await self._listen()

    async def _shutdown(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
        if self._reopen_handle is not None:
            self._reopen_handle.cancel()
        # An attempt to listen again still running (its port held) ends here, not with
        # the loop closed under it ("Task was destroyed but it is pending!").
        attempts = list(self._background)
        for task in attempts:
            task.cancel()
        await asyncio.gather(*attempts, return_exceptions=True)
        await self._close_listener()
        await self._drop()

    async def _close_listener(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            # From Python 3.12 wait_closed() waits for every accepted connection to end:
            # end them first, or a refusal would block until this timeout.
            await self._drop()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 1)

    async def _drop(self) -> None:
        links = list(self._links)
        self._links.clear()
        for link in links:
            link.abort()
        # Let the cancelled pumps unwind so callers observe a settled state.
        tasks = [t for link in links for t in link.tasks]
        if tasks:
            await asyncio.wait(tasks, timeout=1)

    async def _refuse(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        until = max(self._refuse_until, time.monotonic() + max(0.0, seconds))
        self._refuse_until = until
        if self._reopen_handle is not None:
            self._reopen_handle.cancel()
        # The end of the refusal is scheduled before anything is awaited, so it
        # comes whatever happens to this call afterwards.
        self._reopen_handle = loop.call_later(until - time.monotonic(), self._schedule_reopen)
        await self._close_listener()
        await self._drop()

    def _schedule_reopen(self) -> None:
        task = asyncio.get_running_loop().create_task(self._reopen())
        # The loop holds tasks weakly; keep a reference until it is done.
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reopen(self) -> None:
        self._reopen_handle = None
        if self._stopped or self._server is not None:
            return
        early = self._refuse_until - time.monotonic()
        if early > 0:  # a longer refusal was asked for meanwhile
            self._reopen_handle = asyncio.get_running_loop().call_later(
                early, self._schedule_reopen
            )
            return
        # The port was ours a moment ago; if something holds it now, keep trying
        # (loudly) until it is free or the proxy stops: giving up would leave
        # the proxy refusing for good, failing every later test of its broker.
        started = time.monotonic()
        warned = False
        while not self._stopped and self._server is None:
            try:
                await self._listen()
                return
            except OSError as exc:
                if not warned and time.monotonic() - started > 5:
                    warned = True
                    _log.warning(
                        "FaultProxy cannot listen on %s:%s again (%s); still trying",
                        self.listen_host,
                        self._listen_port,
                        exc,
                    )
                await asyncio.sleep(0.1)

    async def _heal(self) -> None:
        self._latency = 0.0
        await self._thaw()
        self._refuse_until = 0.0
        if self._reopen_handle is not None:
            self._reopen_handle.cancel()
            self._reopen_handle = None
        if self._server is None and not self._stopped:
            await self._reopen()

    async def _set_latency(self, seconds: float) -> None:
        self._latency = max(0.0, seconds)

    async def _freeze(self, seconds: float | None) -> None:
        assert self._flowing is not None
        self._flowing.clear()
        if self._thaw_handle is not None:
            self._thaw_handle.cancel()
            self._thaw_handle = None
        if seconds is not None:
            self._thaw_handle = asyncio.get_running_loop().call_later(
                max(0.0, seconds), self._flowing.set
            )

    async def _thaw(self) -> None:
        assert self._flowing is not None
        if self._thaw_handle is not None:
            self._thaw_handle.cancel()
            self._thaw_handle = None
        self._flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None or self._stopped:
            writer.transport.abort()
            return
        link = _Link(writer)
        self._links.add(link)
        flowing = self._flowing
        if flowing is not None and not flowing.is_set():
            # Frozen: take the connection and say nothing (a silent endpoint) until
            # thawed; dropping or stopping the proxy meanwhile aborts it.
            waiter = asyncio.ensure_future(_until(flowing))
            link.tasks = [waiter]
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
            if link not in self._links or self._stopped:
                writer.transport.abort()
                return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            # Broker unreachable: the client sees its connection reset, just
            # as it would without the proxy.
            self._links.discard(link)
            writer.transport.abort()
            return
        if link not in self._links:  # dropped while connecting upstream
            up_writer.transport.abort()
            writer.transport.abort()
            return
        link.upstream = up_writer
        link.tasks = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        try:
            await asyncio.gather(*link.tasks, return_exceptions=True)
        finally:
            if link in self._links:
                self._links.discard(link)
                for w in (writer, up_writer):
                    w.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        flowing = self._flowing
        assert flowing is not None
        try:
            while True:
                if not flowing.is_set():
                    await flowing.wait()  # frozen: read nothing, forward nothing
                chunk = await src.read(_CHUNK)
                if not chunk:
                    break
                if not flowing.is_set():
                    await flowing.wait()  # frozen while this chunk was being read
                if self._latency > 0:
                    await asyncio.sleep(self._latency)
                dst.write(chunk)
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()
        except (ConnectionError, OSError):
            # Either peer went away; the other pump ends at its EOF or error.
            dst.transport.abort()


async def _until(event: asyncio.Event) -> None:
    await event.wait()
