"""The command bus: exactly one handler per command type.

In-process, :meth:`CommandBus.dispatch` calls the handler and returns its result (or
raises its error) to the caller. For a handler in another service, :meth:`send`
puts the command on the broker (``EventBus.send``: one handler group), and
:meth:`request` does the same and waits for the handler's reply
(``EventBus.request``). :meth:`serve` subscribes this bus's handlers on an
``EventBus``, so the same handlers answer local dispatches and remote requests::

    commands = CommandBus()

    @commands.handler(PlaceOrder)
    async def place(command: PlaceOrder) -> OrderPlaced:
        ...
        return OrderPlaced(order_id=command.order_id)

    placed = await commands.dispatch(PlaceOrder(order_id="1"))
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from eventbus.errors import ConfigurationError, DuplicateSubscriptionError, EventBusError
from eventbus.events import Command

if TYPE_CHECKING:
    from eventbus.bus import EventBus
    from eventbus.envelope import Envelope

__all__ = ["CommandBus", "DuplicateHandlerError", "NoHandlerError"]

C = TypeVar("C", bound=Command)
CommandHandler = Callable[[Any], Awaitable[Any]]
F = TypeVar("F", bound=CommandHandler)


class DuplicateHandlerError(DuplicateSubscriptionError):
    """A command type got a second handler; a command has exactly one."""


class NoHandlerError(EventBusError):
    """A command was dispatched in-process, but no handler is registered for its type."""


class CommandBus:
    """Routes each command type to its one handler (see the module docs)."""

    def __init__(self, bus: EventBus | None = None) -> None:
        self.bus = bus
        self._handlers: dict[str, tuple[type[Command], CommandHandler]] = {}

    def handler(self, command: type[C]) -> Callable[[F], F]:
        """Decorator: ``fn(command)`` handles ``command``; a second handler for the
        same type raises :class:`DuplicateHandlerError`."""
        if not (isinstance(command, type) and issubclass(command, Command)):
            raise ConfigurationError(
                f"handler() takes a Command class, not {command!r}; events go to "
                "EventBus.subscribe, where many handlers may listen"
            )

        def register(fn: F) -> F:
            name = command.event_type()
            if name in self._handlers:
                raise DuplicateHandlerError(
                    f"command {name!r} already has a handler "
                    f"({self._handlers[name][1].__qualname__}); {fn.__qualname__} cannot be "
                    "a second: a command has exactly one handler"
                )
            self._handlers[name] = (command, fn)
            return fn

        return register

    def handler_for(self, command: Command) -> CommandHandler:
        """The handler of ``command``'s type; :class:`NoHandlerError` when none."""
        found = self._handlers.get(command.event_type())
        if found is None:
            raise NoHandlerError(
                f"no handler for command {command.event_type()!r} in this process; "
                "register one with @commands.handler(...), or send() it to the service "
                "that handles it"
            )
        return found[1]

    async def dispatch(self, command: Command) -> Any:
        """Run ``command``'s handler here and return its result (its error propagates)."""
        return await self.handler_for(command)(command)

    def _bus(self, what: str) -> EventBus:
        if self.bus is None:
            raise ConfigurationError(f"{what} needs CommandBus(bus=EventBus(...))")
        return self.bus

    async def send(self, command: Command, **options: Any) -> Envelope:
        """Put ``command`` on the broker for its one remote handler group (fire and
        forget; ``EventBus.send``)."""
        return await self._bus("send()").send(command, **options)

    async def request(self, command: Command, *, timeout: float = 30.0, **options: Any) -> Any:
        """Send ``command`` over the broker and return its handler's reply
        (``EventBus.request``: raises its error or a timeout)."""
        return await self._bus("request()").request(command, timeout=timeout, **options)

    def serve(self, bus: EventBus | None = None, **options: Any) -> None:
        """Subscribe every handler on ``bus`` (default: this command bus's), before it
        starts, so remote ``send``/``request`` reach them; ``options`` go to
        ``subscribe``."""
        bus = bus or self._bus("serve()")
        for command, fn in self._handlers.values():
            bus.subscribe(command, **options)(fn)
