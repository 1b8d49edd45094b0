"""Helpers for writing adapters: what every adapter needs and should not rewrite.

Not part of the adapter contract itself (:mod:`eventbus.adapter`), just tools:

- :func:`map_exceptions` / :func:`translate`: a broker client's exceptions become
  eventbus errors saying what failed, to what, and what to do;
- :class:`TurnBatcher`: single calls made in one event-loop turn gathered into one
  batch request (settles, pipelined commands);
- :func:`pick_tier`: the delay tier a ``nack(delay)`` goes to;
- :func:`tls_context`: an ``ssl.SSLContext`` from the shared ``tls_*`` URL options;
- :func:`open_once`: a connection (producer, channel) opened on first use, once;
- :func:`settings_from`: an adapter's settings from ``XAdapter(url)`` or
  ``XAdapter(settings=...)``, with the one error for neither or both;
- :class:`ConfiguredAdapter`: the base whose constructor every adapter shares,
  ``XAdapter(url)`` or ``XAdapter(settings=..., client=...)``, built on it;
- :class:`AtMostOnceDelivery` and :class:`Redeliveries`: the delivery of a broker that
  keeps nothing once it sent a message, and the nacked ones it hands out again itself.

The URL options themselves are parsed with :mod:`eventbus.url_options`; tasks are
stopped with :func:`eventbus.tasks.stop_task`.

Over 400 lines on purpose: the toolkit an adapter author reads is this one module,
and each piece in it is short and stands alone.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Generic, Protocol, Self, TypeVar

from eventbus.adapter import Adapter, Decoded, Delivery, StartFrom, SubscribeOptions
from eventbus.errors import EventBusError

Mapped = type[EventBusError] | tuple[type[EventBusError], str]
"""An eventbus error class, or the class and the hint saying what to do about it."""

ExceptionMap = Mapping[type[BaseException] | tuple[type[BaseException], ...], Mapped]
"""Client exception class (or classes) -> eventbus error class, most specific first."""

Classifier = Callable[[Exception], Mapped | None]
"""A function choosing the eventbus error for a client exception (``None``: unmapped),
for clients that say what happened in an error code or a flag rather than a class."""

T = TypeVar("T")
R = TypeVar("R")


class FromURL(Protocol):
    """Adapter settings: a frozen dataclass that parses its adapter's URL."""

    @classmethod
    def from_url(cls, url: str) -> Self: ...


S = TypeVar("S", bound=FromURL)


class AdapterSettings(FromURL, Protocol):
    """What :class:`ConfiguredAdapter` reads of an adapter's settings."""

    @property
    def url(self) -> str: ...
    @property
    def masked_url(self) -> str: ...
    @property
    def start_from(self) -> StartFrom | None: ...


A = TypeVar("A", bound=AdapterSettings)
C = TypeVar("C")


class Owner(Protocol):
    """The subscription an :class:`AtMostOnceDelivery` came from."""

    topic: str
    options: SubscribeOptions

    def release(self) -> None:
        """One delivery handed out is settled: its prefetch slot is free."""


Sub = TypeVar("Sub", bound=Owner)


async def open_once(
    lock: asyncio.Lock, current: Callable[[], T | None], open_: Callable[[], Awaitable[T]]
) -> T:
    """What ``current()`` holds, else what ``open_()`` opens (and stores, so that
    ``current()`` returns it from then on): opened once, concurrent callers waiting on
    ``lock`` for the first one; when it fails nothing is held and the next call tries
    again. Costs no await once it is open."""
    held = current()
    if held is not None:
        return held
    async with lock:
        held = current()
        return held if held is not None else await open_()


def settings_from(url: str | None, settings: S | None, settings_type: type[S], adapter: str) -> S:
    """The settings an adapter runs with: ``settings`` made in code, or parsed from
    ``url``; exactly one of them (a URL next to settings would be silently ignored).

    Every adapter's constructor starts with it, so ``XAdapter()`` and
    ``XAdapter(url, settings=...)`` fail alike: ``TypeError("<adapter> takes a URL or
    settings=<Settings>(...) (one of them)")``.
    """
    if (url is None) == (settings is None):
        raise TypeError(
            f"{adapter} takes a URL or settings={settings_type.__name__}(...) (one of them)"
        )
    return settings if settings is not None else settings_type.from_url(url or "")


class ConfiguredAdapter(Adapter, Generic[A, C]):
    """The constructor every adapter shares: ``XAdapter(url)``, or
    ``XAdapter(settings=XSettings(...), client=...)`` with settings made in code and,
    optionally, a client the application configured (used as it is, never closed by
    the adapter).

    A subclass names its settings class in ``settings_type`` and builds the rest in
    :meth:`_setup`, which runs once ``settings`` and ``start_from`` are set (an adapter
    whose settings may not fit it, a Streams URL given to the Pub/Sub adapter, refuses
    them there). Neither URL nor settings, or both, is the :func:`settings_from` error.

    ::

        class KafkaAdapter(ConfiguredAdapter[KafkaSettings, AIOKafkaProducer]):
            settings_type = KafkaSettings

            def _setup(self, client: AIOKafkaProducer | None) -> None:
                self.capabilities = replace(Capabilities.DURABLE, native_delay=False, ...)
                self._producer = client
    """

    settings_type: type[A]
    settings: A

    def __init__(
        self, url: str | None = None, *, settings: A | None = None, client: C | None = None
    ) -> None:
        s = settings_from(url, settings, self.settings_type, type(self).__name__)
        super().__init__(s.url or s.masked_url)
        self.settings = s
        self.start_from = s.start_from
        self._setup(client)

    @abc.abstractmethod
    def _setup(self, client: C | None) -> None:
        """Build what the adapter needs from ``self.settings`` and the given ``client``."""


class AtMostOnceDelivery(Delivery, Generic[Sub]):
    """A message of a broker that forgets it once sent (core NATS, Redis Pub/Sub).

    Acking or rejecting it only frees its prefetch slot in the subscription it came
    from (``owner.release()``). The bus does not nack on such a broker (its
    ``capabilities.redelivery`` is false: it retries in process and dead-letters), but
    a nack that still comes (a duplicate held back by the idempotency store) frees the
    slot and hands the message out again from this process after the delay
    (:meth:`_again`, through the subscription's :class:`Redeliveries`): kept in
    memory, lost if the process ends.
    """

    __slots__ = ("_owner",)

    def __init__(self, owner: Sub, decoded: Decoded, *, attempt: int, message_id: str) -> None:
        super().__init__(
            decoded,
            topic=owner.topic,
            group=owner.options.group,
            attempt=attempt,
            message_id=message_id,
        )
        self._owner = owner

    async def _ack(self) -> None:
        self._owner.release()

    async def _nack(self, delay: float) -> None:
        self._owner.release()
        self._again(delay)

    async def _reject(self) -> None:
        self._owner.release()

    @abc.abstractmethod
    def _again(self, delay: float) -> None:
        """Hand this message out again, as its next attempt, after ``delay`` seconds."""


class Redeliveries:
    """The nacked messages an at-most-once subscription hands out again itself (the
    broker keeps nothing to redeliver): each waits in memory for its delay; at close
    :meth:`drop` forgets them, and any nacked after it.

    ::

        self._again = Redeliveries()
        self._again.later(delay, lambda: self._ready.append(message))  # on nack
        dropped = self._again.drop()  # on close: how many were still waiting
    """

    def __init__(self) -> None:
        self._waiting: set[asyncio.TimerHandle] = set()
        self._dropped = False

    def __len__(self) -> int:
        """How many are waiting."""
        return len(self._waiting)

    def later(self, delay: float, due: Callable[[], object]) -> None:
        """Call ``due()`` (which hands the message out again) after ``delay`` seconds,
        unless :meth:`drop` comes first."""
        if self._dropped:
            return

        def fire() -> None:
            self._waiting.discard(handle)
            due()

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self._waiting.add(handle)

    def drop(self) -> int:
        """Forget every waiting message, and any asked for from now on; how many
        were waiting."""
        self._dropped = True
        for handle in self._waiting:
            handle.cancel()
        dropped = len(self._waiting)
        self._waiting.clear()
        return dropped


def translate(
    exc: Exception,
    mapping: ExceptionMap | Classifier,
    *,
    what: str,
    hint: str = "",
    scrub: Callable[[str], str] | None = None,
    chain: bool = True,
) -> Exception:
    """The eventbus error for the client exception ``exc`` (``exc`` itself when it is an
    eventbus error already, or when ``mapping`` does not name it).

    The message is ``"<what> failed: <ClientError>: <text>; <hint>"``, where the hint
    is the one the mapping gave with the class, else ``hint``; ``scrub`` filters the
    client's text (a password it may quote), put on one line first. The client's
    exception is the new error's ``__cause__``, unless ``chain`` is false (a client
    whose exceptions quote the URL it was given, password included): then the chain
    is cut, as ``raise ... from None`` does. Every mapped class must take a single
    message argument.
    """
    if isinstance(exc, EventBusError):
        return exc
    chosen = _choose(exc, mapping)
    if chosen is None:
        return exc
    ours = error_class(chosen)
    own_hint = chosen[1] if isinstance(chosen, tuple) else hint
    said = " ".join(str(exc).split())  # one line, whatever the client wrote
    if scrub is not None:
        said = scrub(said)
    message = (
        f"{what} failed: {type(exc).__name__}: {said}"
        if said
        else (f"{what} failed: {type(exc).__name__}")
    )
    error = ours(f"{message}; {own_hint}" if own_hint else message)
    if chain:
        error.__cause__ = exc
    else:
        error.__suppress_context__ = True
    return error


def error_class(mapped: Mapped) -> type[EventBusError]:
    """The eventbus error class of a mapping's value (a class, or a class and a hint)."""
    return mapped[0] if isinstance(mapped, tuple) else mapped


def _choose(exc: Exception, mapping: ExceptionMap | Classifier) -> Mapped | None:
    if callable(mapping) and not isinstance(mapping, Mapping):
        return mapping(exc)
    for client_error, ours in mapping.items():
        if isinstance(exc, client_error):
            return ours
    return None


@contextlib.contextmanager
def map_exceptions(
    mapping: ExceptionMap | Classifier,
    *,
    what: str,
    hint: str = "",
    scrub: Callable[[str], str] | None = None,
    on_error: Callable[[Exception], object] | None = None,
    chain: bool = True,
) -> Iterator[None]:
    """Re-raise a broker client's exceptions as eventbus errors saying what failed.

    ``mapping`` is a table (the first entry, in order, whose class matches wins, so
    list specific classes before their bases) or a :data:`Classifier` function; a
    table value may carry its own hint: ``{KafkaTimeoutError: (BrokerConnectionError,
    "publish again")}``. ``what`` names the operation and its target (topic, group,
    masked URL). ``on_error(exc)`` runs first for every client exception (forget a
    cached topic that is gone, say). ``scrub`` and ``chain`` keep secrets out of the
    message and the traceback (:func:`translate`). Eventbus errors, exceptions the mapping does not
    name and anything not an ``Exception`` (``CancelledError``, ``KeyboardInterrupt``)
    pass through unchanged. See :func:`translate` for the message.

    ::

        with map_exceptions(
            {KafkaConnectionError: BrokerConnectionError, KafkaError: PublishError},
            what=f"publish to topic {topic!r} on {masked_url}",
            hint="check that the broker is reachable",
        ):
            await producer.send_and_wait(topic, value)
    """
    try:
        yield
    except EventBusError:
        raise
    except Exception as exc:
        if on_error is not None:
            on_error(exc)
        error = translate(exc, mapping, what=what, hint=hint, scrub=scrub, chain=chain)
        if error is exc:
            raise
        raise error from (exc if chain else None)


def pick_tier(delay: float, tiers: Sequence[float]) -> float:
    """The shortest of the ascending ``tiers`` at least ``delay`` long (the longest one
    if none is): a delay is never shortened by its tier; one past the last tier is
    parked there and, when released early, parked again for the rest.

    The one rule behind ``delay_tiers`` (Kafka's retry topics, RabbitMQ's TTL queues).
    """
    for tier in tiers:
        if delay <= tier:
            return tier
    return tiers[-1]


def tls_context(
    ca: str | None = None, cert: str | None = None, key: str | None = None, verify: bool = True
) -> ssl.SSLContext:
    """A client ``SSLContext`` from the shared ``tls_ca``/``tls_cert``/``tls_key``/
    ``tls_verify`` options: the system's CAs (or ``ca``), a client certificate when
    given, and no verification of the server only when ``verify`` is false."""
    context = ssl.create_default_context(cafile=ca)
    if cert is not None:
        context.load_cert_chain(cert, key)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class TurnBatcher(Generic[T, R]):
    """Gathers the calls of one event-loop turn into batch requests.

    Concurrent callers each :meth:`submit` their items (one or several, such as one
    settle, or the commands of one publish); the first call of a loop turn schedules a
    flush (``call_soon``), which sends everything submitted by then through ``send``
    in chunks of at most ``max_items``. A caller's items are never split (one request
    carries them in order): a caller submitting more than ``max_items`` alone gets a
    request of its own that size. ``send(items)`` returns one outcome per item,
    an exception in place of a failed item's result; an error of ``send`` itself is
    every item's outcome, passed through ``fail`` first when given (it turns a client
    error into the error callers expect). Several chunks may be in flight at once, so
    one slow round trip does not hold back the next turn.

    ::

        deletes = TurnBatcher(delete_batch, max_items=10)   # SQS: 10 entries a request
        await deletes.one({"ReceiptHandle": receipt})        # raises the entry's error
    """

    def __init__(
        self,
        send: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]],
        *,
        max_items: int,
        fail: Callable[[Exception], BaseException] | None = None,
    ) -> None:
        self._send = send
        self.max_items = max_items
        self._fail = fail
        self._queued: list[tuple[list[T], asyncio.Future[list[R | BaseException]]]] = []
        self._scheduled = False
        self._flushes: set[asyncio.Task[None]] = set()

    async def submit(self, items: list[T]) -> list[R | BaseException]:
        """Send ``items`` with the others of this loop turn; their outcomes, in order,
        a failed item's exception in its place. An error of the request itself raises."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[R | BaseException]] = loop.create_future()
        self._queued.append((items, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush_turn)
        return await future

    async def one(self, item: T) -> R:
        """Send one ``item``; its result, or its own error raised."""
        outcome = (await self.submit([item]))[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _flush_turn(self) -> None:
        self._scheduled = False
        while self._queued:
            taken: list[tuple[list[T], asyncio.Future[list[R | BaseException]]]] = []
            size = 0
            while self._queued and (not taken or size + len(self._queued[0][0]) <= self.max_items):
                item = self._queued.pop(0)
                taken.append(item)
                size += len(item[0])
            task = asyncio.ensure_future(self._flush(taken))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _flush(
        self, taken: list[tuple[list[T], asyncio.Future[list[R | BaseException]]]]
    ) -> None:
        items = [item for group, _ in taken for item in group]
        try:
            outcomes = await self._send(items)
        except BaseException as exc:
            error = (
                self._fail(exc) if self._fail is not None and isinstance(exc, Exception) else exc
            )
            for _, future in taken:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        start = 0
        for group, future in taken:
            if not future.done():
                future.set_result(list(outcomes[start : start + len(group)]))
            start += len(group)

    async def drain(self) -> None:
        """Wait for every request in flight (call it before closing the client)."""
        while self._flushes:
            await asyncio.gather(*list(self._flushes), return_exceptions=True)
