"""How a runner keeps its subscription alive: the supervision part of
:class:`~eventbus.runner.Runner`.

The fetch loop hands the subscription to the lanes and, when it fails, subscribes
again after a backoff; it dies for good on a configuration error or on repeated
failures that are not connection errors. The stall watch notices a subscription
that receives nothing while the broker holds messages for its group, and
subscribes again. The state of all this is the subscription's health.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Literal

from eventbus.adapter import Adapter, SubscribeOptions, Subscription, start_from_for
from eventbus.backoff import Backoff
from eventbus.errors import BrokerConnectionError, ConfigurationError, EventBusError
from eventbus.lanes import Lanes, Progress
from eventbus.spec import SubscriptionSpec
from eventbus.tasks import stop_task

log = logging.getLogger("eventbus.runner")

SubscriptionState = Literal["starting", "running", "stalled", "reconnecting", "dead", "stopped"]


@dataclass(frozen=True, slots=True)
class SubscriptionHealth:
    """The state of one (topic, group) subscription.

    ``running``: fetching; ``stalled``: it received nothing for ``stall_after``
    seconds while the broker holds ``backlog`` messages for its group (it subscribes
    again each time; ``error`` says what it saw) until it makes progress or the broker
    answers that nothing waits for the group; ``reconnecting``: its subscription
    failed and it is subscribing again with backoff (``error`` says why); ``dead``: it
    gave up for good (``error`` says why) and consumes nothing any more; ``stopped``:
    the bus stopped it. ``delivery`` is the guarantee it runs with (``at_least_once``
    or ``at_most_once``: the broker's strongest unless one was asked for);
    ``idle_for`` how long it has made no progress (received or finished nothing).
    ``prefetch`` is how many unsettled deliveries it asked the broker for at most, and
    ``held`` how many of them it holds now (waiting for a handler, collected into a
    batch, or being handled): the prefetch in use.
    """

    topic: str
    group: str
    state: SubscriptionState
    error: str | None = None
    delivery: str = ""
    backlog: int | None = None
    idle_for: float = 0.0
    prefetch: int = 0
    held: int = 0


_RECONNECT = Backoff(initial=0.05, max_delay=2.0)


@dataclass(eq=False, repr=False)
class Supervision:
    """Subscribes ``spec`` on ``adapter`` and keeps the subscription alive, handing its
    deliveries to ``lanes``.

    ``prefetch`` is per lane; ``reconnect`` the backoff between subscribes;
    ``max_failures`` how many failures in a row that are not connection errors (and
    got no delivery handled in between) make it dead for good, when ``on_dead`` is
    called; ``stall_after`` (``None``: off) the seconds without progress, while the
    broker holds messages for the group, that count as a stall.
    """

    adapter: Adapter
    spec: SubscriptionSpec
    progress: Progress
    lanes: Lanes
    _: KW_ONLY
    prefetch: int = 8
    reconnect: Backoff | None = None  # None: _RECONNECT (0.05 s, growing to 2 s)
    max_failures: int = 5
    on_dead: Callable[[], None] | None = None
    stall_after: float | None = 60.0
    state: SubscriptionState = field(default="starting", init=False)
    error: BaseException | None = field(default=None, init=False)
    _idle_since: float = field(default=0.0, init=False)
    _stalled_at: int = field(default=0, init=False)  # progress.ticks when it stalled
    _backlog: int | None = field(default=None, init=False)
    _window: int = field(default=0, init=False)  # the prefetch asked for
    _subscription: Subscription | None = field(default=None, init=False)
    _fetch_task: asyncio.Task[None] | None = field(default=None, init=False)
    _stall_task: asyncio.Task[None] | None = field(default=None, init=False)

    def _log(
        self, level: int, text: str, *args: object, exc_info: BaseException | None = None
    ) -> None:
        """Log ``text`` about this subscription: its topic and group fill the first two
        ``%s``, then ``args``; the record names the caller's line."""
        log.log(
            level, text, self.spec.topic, self.spec.group, *args, exc_info=exc_info, stacklevel=2
        )

    def health(self) -> SubscriptionHealth:
        """This subscription's state and, unless running, the last error."""
        state, failure = self.state, self.error
        if state == "stalled" and self.progress.ticks != self._stalled_at:
            # Deliveries came since the stall: reported running now (a read changes
            # nothing; the watch records and logs it at its next look, within 10 s).
            state, failure = "running", None
        error = None if failure is None else f"{type(failure).__name__}: {failure}"
        idle = 0.0 if not self._idle_since else time.monotonic() - self._idle_since
        return SubscriptionHealth(
            self.spec.topic,
            self.spec.group,
            state,
            error,
            self.spec.guarantee,
            self._backlog,
            round(idle, 3),
            self._window,
            self.lanes.held,
        )

    async def read_backlog(self, timeout: float) -> int | None:
        """The broker's backlog for this group now (see ``Subscription.backlog``), or
        ``None`` when there is no live subscription, the adapter cannot tell, or the
        broker did not answer within ``timeout`` seconds (never raises)."""
        subscription = self._subscription
        if subscription is None or self.state not in ("running", "stalled"):
            return None
        try:
            return await asyncio.wait_for(subscription.backlog(), timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._log(logging.DEBUG, "backlog of %s/%s not read: %s: %s", type(exc).__name__, exc)
            return None

    async def subscribe(self) -> None:
        """Subscribe now (failing fast if the broker refuses)."""
        self._subscription = await self._subscribe()

    def start(self) -> None:
        """Start fetching (and watching for stalls) on the subscription made."""
        self.state = "running"
        self._fetch_task = asyncio.create_task(self._fetch())
        if self.stall_after is not None:
            self._stall_task = asyncio.create_task(self._watch_stalls(self.stall_after))

    async def _subscribe(self) -> Subscription:
        lanes = max(1, self.spec.concurrency)
        prefetch = lanes * self.prefetch
        if self.spec.batch is not None:
            # Room for a full batch per lane plus the one being collected.
            prefetch = max(prefetch, self.spec.batch * (lanes + 1))
        self._window = prefetch
        options = SubscribeOptions(
            group=self.spec.group,
            prefetch=prefetch,
            start_from=start_from_for(self.spec.start_from, self.adapter),
            delivery=self.spec.delivery,
        )
        return await self.adapter.subscribe(self.spec.topic, options)

    async def _fetch(self) -> None:
        delays = iter(self.reconnect or _RECONNECT)
        failures = 0  # consecutive failures other than connection errors
        progress = self.progress
        while True:
            error: Exception
            try:
                if self._subscription is None:
                    self._subscription = await self._subscribe()
                if self.state != "stalled":  # a stall ends with progress (_watch_stalls)
                    self.state, self.error = "running", None
                await self.lanes.consume(self._subscription)
                if progress.stopping:
                    return
                error = EventBusError(
                    f"the subscription to {self.spec.topic!r} as group {self.spec.group!r} "
                    "ended by itself (its adapter's iterator returned while it was open)"
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = exc
            if progress.stopping:
                return
            if progress.progressed:
                # This subscription got work done before failing: a new series.
                failures, delays = 0, iter(self.reconnect or _RECONNECT)
            connection = isinstance(error, BrokerConnectionError)
            failures += 0 if connection else 1
            self._lost()
            await self._drop_subscription()
            if isinstance(error, ConfigurationError) or failures >= self.max_failures:
                self._die(error, failures)
                return
            delay = next(delays)
            self.state, self.error = "reconnecting", error
            self._log(
                logging.WARNING if connection else logging.ERROR,
                "subscription %s/%s failed (%s: %s); re-subscribing in %.2fs",
                type(error).__name__,
                error,
                delay,
                exc_info=None if connection else error,
            )
            await asyncio.sleep(delay)

    def _lost(self) -> None:
        """The subscription is lost: what it handed out is the broker's again."""
        self.lanes.forget_collected()
        self.progress.new_generation()

    async def _watch_stalls(self, stall_after: float) -> None:
        """Notice a subscription that sits idle while the broker holds its messages.

        A consumer whose broker resources were deleted underneath, or whose pulls go
        nowhere, looks exactly like a quiet one from inside its iterator; only the
        broker's backlog tells them apart. Looked up only after ``stall_after``
        seconds without progress, then once per look while it lasts.
        """
        look = min(max(stall_after / 3, 0.05), 10.0)
        progress = self.progress
        seen = progress.ticks
        self._idle_since = time.monotonic()
        while not progress.stopping:
            await asyncio.sleep(look)
            now = time.monotonic()
            if progress.ticks != seen or not self.lanes.idle():
                seen, self._idle_since, self._backlog = progress.ticks, now, None
                self._stall_over("it is making progress again")
                continue
            if now - self._idle_since < stall_after or self.state not in ("running", "stalled"):
                continue
            subscription = self._subscription
            if subscription is None:
                continue
            try:
                backlog = await asyncio.wait_for(subscription.backlog(), max(look, 5.0))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The broker can't say: the group's resources are gone, or the
                # connection does not answer. Either way nothing is being consumed.
                backlog, why = None, f"its backlog could not be read ({type(exc).__name__}: {exc})"
            else:
                self._backlog = backlog
                if not backlog:
                    # Nothing waits for the group: whatever the stall was (a backlog
                    # read that went unanswered during a freeze, say), it is over. An
                    # idle subscription makes no progress that could end it (#28).
                    self._stall_over(
                        "the broker answers and holds nothing for the group"
                        if backlog == 0
                        else "the broker answers (the adapter cannot count its backlog)"
                    )
                    continue
                why = f"the broker holds {backlog} message(s) for the group"
            if progress.ticks != seen or not self.lanes.idle() or progress.stopping:
                continue
            error = EventBusError(
                f"subscription {self.spec.topic!r}/{self.spec.group!r} received nothing for "
                f"{now - self._idle_since:.1f}s while {why}; subscribing again"
            )
            log.warning("%s", error)
            self.state, self.error, self._stalled_at = "stalled", error, progress.ticks
            await self._resubscribe()

    def _stall_over(self, why: str) -> None:
        """A stalled subscription is running again (``why`` says how that is known)."""
        if self.state == "stalled":
            self._log(logging.INFO, "subscription %s/%s is no longer stalled: %s", why)
            self.state, self.error = "running", None

    async def _resubscribe(self) -> None:
        """Start fetching over on a new subscription (the adapter provisions again)."""
        task = self._fetch_task
        if task is not None:
            await self._stop_fetching(task)
        if self.progress.stopping:
            return
        self.progress.new_generation()
        self.lanes.forget_collected()
        await self._drop_subscription()
        self._fetch_task = asyncio.create_task(self._fetch())

    def _die(self, error: Exception, failures: int) -> None:
        self.state, self.error = "dead", error
        self._log(
            logging.ERROR,
            "subscription %s/%s is dead for good after %d failure(s) in a row: %s: %s; "
            "nothing more is consumed until the service restarts",
            max(1, failures),
            type(error).__name__,
            error,
        )
        if self.on_dead is not None:
            self.on_dead()

    async def _drop_subscription(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is None:
            return
        try:
            await subscription.close()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._log(
                logging.WARNING,
                "closing the failed subscription %s/%s raised %s: %s",
                type(exc).__name__,
                exc,
            )

    async def _stop_fetching(self, task: asyncio.Task[None]) -> None:
        # A broker client may swallow a cancellation that lands in the middle of its
        # own work (aiokafka's getmany during a rebalance was seen doing so), which
        # would leave stop() waiting forever: cancel again, and as a last resort
        # close the subscription, which ends every adapter's iteration.
        for _ in range(4):
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if done:
                return
        self._log(
            logging.WARNING, "%s/%s: fetching did not stop when cancelled; closing the subscription"
        )
        await self._drop_subscription()
        await asyncio.gather(task, return_exceptions=True)

    async def stop_fetching(self, timeout: float) -> None:
        """Stop watching and fetching (``progress.stopping`` is set); an inline handler
        running in the fetch loop gets ``timeout`` to finish first."""
        if self._stall_task is not None:
            await stop_task(self._stall_task)
        if self._fetch_task is None:
            return
        if self.lanes.busy:
            # Inline: the fetch loop is running a handler; it returns once that is
            # done. Past the timeout, cancelling it cuts the handler short and its
            # message goes back to the broker, as a lane's would.
            _, pending = await asyncio.wait({self._fetch_task}, timeout=timeout)
            if pending:
                self._log(
                    logging.WARNING,
                    "%s/%s: the handler is still busy after %.1fs; its message "
                    "goes back to the broker",
                    timeout,
                )
        await self._stop_fetching(self._fetch_task)

    async def close(self) -> None:
        """Close the subscription; the state is ``stopped`` unless it died."""
        await self._drop_subscription()
        if self.state != "dead":
            self.state = "stopped"
