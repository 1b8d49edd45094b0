"""What every command shares: the broker URL, one-line errors with exit codes, loading the
user's bus."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import re
import sys
import sysconfig
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import typer

import eventbus
from eventbus.adapter import Adapter
from eventbus.bus import EventBus
from eventbus.errors import (
    BrokerConnectionError,
    ConfigurationError,
    EventBusError,
    SubscriptionFailedError,
    TopicNotFoundError,
    UnknownSchemeError,
)
from eventbus.events import Message
from eventbus.patterns.sql import DatabaseError
from eventbus.registry_adapters import adapter_from_url, missing_scheme_error

T = TypeVar("T")

# Exit codes, one per kind of expected failure (documented in docs/guide.md).
EXIT_SUBSCRIPTION_DIED = 1  # `run`: a subscription died for good; a supervisor restarts it
EXIT_USAGE = 2  # a wrong option or argument, or memory:// where it would go nowhere
EXIT_UNKNOWN_SCHEME = 3  # no adapter installed for the URL's scheme
EXIT_CONFIG = 4  # a malformed URL or incomplete settings (e.g. SASL)
EXIT_IMPORT = 5  # the user's module failed to import
EXIT_TARGET = 6  # module:attribute missing or not an EventBus
EXIT_CONNECTION = 7  # the broker (or database) could not be reached or refused the credentials
EXIT_NOT_FOUND = 8  # no such (dead-letter) topic, or no such database file
EXIT_ERROR = 9  # any other eventbus error

IN_PROCESS_SCHEMES = frozenset({"memory"})
"""Schemes whose broker lives inside the process: ``publish`` and ``dlq`` refuse them,
since each CLI process would get a broker of its own that vanishes when it exits."""

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        "-u",
        help="Broker URL; defaults to $EVENTBUS_URL, else memory://",
        show_default=False,
    ),
]

_HOST_PORT = re.compile(r"^[A-Za-z0-9_.-]+:\d+(/.*)?$")


def fail(message: str, code: int) -> NoReturn:
    """Print ``error: message`` (one line, no traceback) and exit with ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=code)


def exit_code(exc: EventBusError) -> int:
    """The exit code for an eventbus error."""
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return EXIT_ERROR


_CODES: tuple[tuple[type[EventBusError], int], ...] = (
    (SubscriptionFailedError, EXIT_SUBSCRIPTION_DIED),
    (UnknownSchemeError, EXIT_UNKNOWN_SCHEME),
    (ConfigurationError, EXIT_CONFIG),
    (BrokerConnectionError, EXIT_CONNECTION),
    (DatabaseError, EXIT_CONNECTION),
    (TopicNotFoundError, EXIT_NOT_FOUND),
)


def resolve_url(url: str | None) -> str:
    """``--url``, else ``$EVENTBUS_URL``, else ``memory://``; a bare host:port is refused."""
    resolved = url or os.environ.get("EVENTBUS_URL") or "memory://"
    if _HOST_PORT.match(resolved):
        fail(str(missing_scheme_error(resolved)), EXIT_CONFIG)
    return resolved


def refuse_in_process(url: str, command: str) -> None:
    """Exit with an explanation when ``url`` names a broker that lives in this process."""
    try:
        scheme = urlsplit(url).scheme
    except ValueError:
        return  # not a URL at all: building the adapter reports it
    if scheme not in IN_PROCESS_SCHEMES or "://" not in url:
        return
    fail(
        f"`eventbus {command}` cannot use {url}: the in-memory broker lives inside one "
        "process, so this command would get a broker of its own that vanishes when it exits "
        "(your service's broker never sees it). Point --url or $EVENTBUS_URL at a broker "
        "both processes reach: --url sqlite:///eventbus.db (a file every process on this "
        "machine opens, nothing to install), or a server, e.g. `docker compose up -d kafka` "
        "then --url kafka://localhost:9092",
        EXIT_USAGE,
    )


def run_async(
    make: Callable[[], Awaitable[T]],
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> T:
    """Run ``make()`` to completion; eventbus errors become one-line errors."""
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(_wrap(make))
    except EventBusError as exc:
        fail(str(exc), exit_code(exc))
    except KeyboardInterrupt:
        fail("interrupted", 130)


async def _wrap(make: Callable[[], Awaitable[T]]) -> T:
    return await make()


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[Adapter]:
    """The adapter for ``url``, connected, closed on the way out."""
    adapter = adapter_from_url(url)
    await adapter.connect()
    try:
        yield adapter
    finally:
        await adapter.close()


# -- loading the user's bus -------------------------------------------------------------


def load_bus(target: str, url: str | None = None) -> EventBus:
    """Import ``module:attribute``; the attribute is an EventBus or a function returning one.

    ``url`` (from ``--url``) becomes ``$EVENTBUS_URL`` first, so a bus made with
    ``EventBus.from_env()`` uses it. Every failure exits with a one-line error.
    """
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        fail(f"{target!r} is not module:attribute (e.g. app:bus)", EXIT_TARGET)
    if url is not None:
        os.environ["EVENTBUS_URL"] = resolve_url(url)
    elif os.environ.get("EVENTBUS_URL"):
        resolve_url(None)  # refuse a bare host:port before the user's module trips on it
    sys.path.insert(0, os.getcwd())
    module = _import(module_name)
    where = getattr(module, "__file__", None) or module_name
    if not hasattr(module, attribute):
        buses = sorted(name for name, value in vars(module).items() if isinstance(value, EventBus))
        found = f"; it has EventBus attribute(s): {', '.join(buses)}" if buses else ""
        fail(f"module {module_name!r} ({where}) has no attribute {attribute!r}{found}", EXIT_TARGET)
    obj: Any = getattr(module, attribute)
    if isinstance(obj, type):
        # Calling a class makes an instance of it (an event, raising a ValidationError
        # for its missing fields), never the service's bus.
        kind = f" (an {obj.__kind__})" if issubclass(obj, Message) else ""
        buses = sorted(name for name, value in vars(module).items() if isinstance(value, EventBus))
        found = f"; it has EventBus attribute(s): {', '.join(buses)}" if buses else ""
        fail(
            f"{target} is the class {obj.__name__}{kind}, not an EventBus nor a function "
            f"returning one{found}",
            EXIT_TARGET,
        )
    if callable(obj) and not isinstance(obj, EventBus):
        try:
            obj = obj()
        except TypeError as exc:
            fail(f"{target} is not an EventBus nor a function returning one ({exc})", EXIT_TARGET)
        except EventBusError as exc:
            fail(f"{exc} (raised at {_user_frame(exc)} by {target}())", exit_code(exc))
        except Exception as exc:
            fail(
                f"{target}() failed at {_user_frame(exc)}: {type(exc).__name__}: {exc}", EXIT_TARGET
            )
    if not isinstance(obj, EventBus):
        fail(f"{target} is a {type(obj).__name__}, not an EventBus", EXIT_TARGET)
    return obj


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except EventBusError as exc:
        fail(f"{exc} (raised at {_user_frame(exc)} while importing {module_name})", exit_code(exc))
    except SyntaxError as exc:
        fail(f"cannot import {module_name!r}: {exc.filename}:{exc.lineno}: {exc.msg}", EXIT_IMPORT)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            fail(
                f"cannot import {module_name!r}: no such module in {os.getcwd()} nor on "
                "sys.path; run from the directory that holds it or set PYTHONPATH",
                EXIT_IMPORT,
            )
        fail(f"cannot import {module_name!r}: {_user_frame(exc)}: {exc}", EXIT_IMPORT)
    except Exception as exc:
        fail(
            f"cannot import {module_name!r}: {_user_frame(exc)}: {type(exc).__name__}: {exc}",
            EXIT_IMPORT,
        )


_LIBRARY_DIRS = tuple(
    os.path.join(str(Path(p).resolve()), "")  # trailing separator: a prefix of dirs only
    for p in {
        *(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")),
        str(Path(eventbus.__file__).parent),
    }
    if p
)


def _user_frame(exc: BaseException) -> str:
    """``file:line`` of the innermost frame in the user's code (not eventbus, the
    standard library or installed packages), else of the innermost frame."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    # The CLI's own frames come first; they are eventbus's, so they never win.
    for frame in reversed(frames):
        path = str(Path(frame.filename).resolve())
        if not path.startswith(_LIBRARY_DIRS):
            return f"{frame.filename}:{frame.lineno}"
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
