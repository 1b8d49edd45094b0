"""A saga's persisted state, and the stores that keep it (memory, SQLite, PostgreSQL).

(Over 400 lines on purpose: the saga state and its three stores (memory, SQLite,
PostgreSQL) that must agree statement by statement.)

Every change to a saga goes through a *session* of its store: load, insert or
update inside one unit of work. ``update`` is optimistic: it names the version it
read and fails with :class:`SagaConcurrencyError` when another orchestrator moved
the saga on in between, so two instances can never both advance one saga.
``insert`` fails with :class:`SagaAlreadyExistsError` when another instance created
the same id first (a unique constraint on the database).
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from eventbus._deprecation import Renamed, renamed
from eventbus.errors import EventBusError
from eventbus.patterns.outbox.store import Outbox
from eventbus.patterns.schema import KINDS, ready
from eventbus.patterns.sql import Database, Transaction, UniqueViolationError, real_type

SagaStatus = Literal["running", "completed", "compensating", "compensated", "parked"]
TERMINAL: tuple[SagaStatus, ...] = ("completed", "compensated")


class SagaError(EventBusError):
    """Base of the saga errors."""


class SagaAlreadyExistsError(SagaError):
    """A saga with this id was created by another instance first."""


class SagaConcurrencyError(SagaError):
    """The saga changed since it was loaded (another orchestrator advanced it)."""


class SagaNotFoundError(SagaError):
    """No saga has this id."""


class SagaPublishError(SagaError):
    """A saga change was saved, but publishing its messages failed: they are kept with
    the saga and sent again before its next change, or by the orchestrator's tick."""


@dataclass
class SagaState:
    """One saga instance: where it is, its data, and what was compensated.

    ``step`` is the index of the step running (or, once all ran, ``len(steps)``);
    ``deadline`` is when the running step's answer is due (epoch seconds), kept in
    the store so a restarted orchestrator still times it out. ``to_compensate`` is
    the queue of step names still to undo, in order; ``compensated`` the ones done.
    ``outgoing`` holds the messages a committed change published but that have not
    reached the broker yet (``{"topic", "id", "envelope"}``, the envelope encoded):
    they are sent, with the same ids, before the saga's next change.
    """

    saga_id: str
    saga_type: str
    data: dict[str, Any] = field(default_factory=dict)
    status: SagaStatus = "running"
    step: int = 0
    deadline: float | None = None
    to_compensate: list[str] = field(default_factory=list)
    compensated: list[str] = field(default_factory=list)
    attempts: int = 0
    retry_at: float | None = None
    reason: str | None = None
    version: int = 0
    outgoing: list[dict[str, str]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        """Completed or fully compensated: nothing more will happen to it."""
        return self.status in TERMINAL


class SagaSession(Protocol):
    """The saga statements of one unit of work (see :meth:`SagaStore.unit_of_work`)."""

    tx: Transaction | None
    """The database transaction (SQL stores), for a step's own writes; ``None`` in memory."""

    async def load(self, saga_id: str) -> SagaState | None:
        """The saga, or ``None``."""

    async def insert(self, state: SagaState) -> None:
        """Create the saga at version 1; :class:`SagaAlreadyExistsError` if the id is taken."""

    async def update(self, state: SagaState) -> None:
        """Save ``state`` if nobody saved since ``state.version`` was read, then bump it;
        else :class:`SagaConcurrencyError`."""


class SagaStore(Protocol):
    """Where saga state lives."""

    async def setup(self) -> None:
        """Create what the store needs (tables), idempotently."""

    def unit_of_work(self) -> AbstractAsyncContextManager[SagaSession]:
        """One atomic change: every statement in it commits or none does."""

    async def get(self, saga_id: str) -> SagaState | None:
        """The saga as stored now, or ``None``."""

    async def overdue(
        self, now: float, limit: int = 100, *, saga_type: str | None = None
    ) -> list[str]:
        """Ids of running sagas (of ``saga_type``, when given) whose step deadline is at
        or before ``now``. Several saga types may share one store: an orchestrator
        passes its own type, so it never drives another type's sagas."""

    async def retry_due(
        self, now: float, limit: int = 100, *, saga_type: str | None = None
    ) -> list[str]:
        """Ids of sagas (of ``saga_type``, when given) compensating, or holding
        messages a committed change could not send yet, whose next attempt is due."""

    async def by_status(
        self, status: SagaStatus, limit: int = 100, *, saga_type: str | None = None
    ) -> list[SagaState]:
        """Sagas in ``status`` (of ``saga_type``, when given); ``"parked"`` lists the
        ones that need a person."""


# -- memory ------------------------------------------------------------------------


class _MemorySession:
    tx: Transaction | None = None

    def __init__(self, rows: dict[str, SagaState]) -> None:
        self._rows = rows
        self._writes: dict[str, SagaState] = {}

    async def load(self, saga_id: str) -> SagaState | None:
        row = self._writes.get(saga_id) or self._rows.get(saga_id)
        return copy.deepcopy(row) if row is not None else None

    async def insert(self, state: SagaState) -> None:
        if state.saga_id in self._rows or state.saga_id in self._writes:
            raise SagaAlreadyExistsError(f"saga {state.saga_id!r} already exists")
        state.version = 1
        self._writes[state.saga_id] = copy.deepcopy(state)

    async def update(self, state: SagaState) -> None:
        current = self._writes.get(state.saga_id) or self._rows.get(state.saga_id)
        if current is None or current.version != state.version:
            raise SagaConcurrencyError(
                f"saga {state.saga_id!r} changed since version {state.version} was read"
            )
        state.version += 1
        self._writes[state.saga_id] = copy.deepcopy(state)


class MemorySagaStore:
    """Saga state in this process (tests, demos): lost when the process ends."""

    outbox: Outbox | None = None  # no transaction an outbox could share

    def __init__(self) -> None:
        self._rows: dict[str, SagaState] = {}
        self._lock = asyncio.Lock()

    async def setup(self) -> None:
        """Nothing to create."""

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[SagaSession]:
        """Writes become visible together when the block ends without an error."""
        async with self._lock:  # one writer at a time, like SQLite
            session = _MemorySession(self._rows)
            yield session
            for saga_id, state in session._writes.items():
                current = self._rows.get(saga_id)
                if current is not None and current.version >= state.version:
                    raise SagaConcurrencyError(f"saga {saga_id!r} changed concurrently")
                self._rows[saga_id] = state

    async def get(self, saga_id: str) -> SagaState | None:
        """The saga, or ``None``."""
        row = self._rows.get(saga_id)
        return copy.deepcopy(row) if row is not None else None

    async def overdue(
        self, now: float, limit: int = 100, *, saga_type: str | None = None
    ) -> list[str]:
        """Running sagas (of ``saga_type``) past their step deadline."""
        return [
            s.saga_id
            for s in self._of(saga_type)
            if s.status == "running" and s.deadline is not None and s.deadline <= now
        ][:limit]

    async def retry_due(
        self, now: float, limit: int = 100, *, saga_type: str | None = None
    ) -> list[str]:
        """Sagas (of ``saga_type``) compensating or with messages still to send, whose
        next attempt is due."""
        return [
            s.saga_id
            for s in self._of(saga_type)
            if (s.status == "compensating" or s.outgoing)
            and (s.retry_at is None or s.retry_at <= now)
        ][:limit]

    async def by_status(
        self, status: SagaStatus, limit: int = 100, *, saga_type: str | None = None
    ) -> list[SagaState]:
        """Sagas in ``status`` (of ``saga_type``)."""
        return [copy.deepcopy(s) for s in self._of(saga_type) if s.status == status][:limit]

    def _of(self, saga_type: str | None) -> list[SagaState]:
        return [s for s in self._rows.values() if saga_type is None or s.saga_type == saga_type]


# -- SQL (SQLite and PostgreSQL) ---------------------------------------------------

_COLUMNS = (
    "saga_id, saga_type, status, step, data, deadline, to_compensate, "
    "compensated, attempts, retry_at, reason, version, outgoing"
)


def _table_sql(table: str, dialect: str) -> list[str]:
    real = real_type(dialect)
    return [
        f"""CREATE TABLE IF NOT EXISTS {table} (
            saga_id TEXT PRIMARY KEY,
            saga_type TEXT NOT NULL,
            status TEXT NOT NULL,
            step INTEGER NOT NULL,
            data TEXT NOT NULL,
            deadline {real},
            to_compensate TEXT NOT NULL,
            compensated TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            retry_at {real},
            reason TEXT,
            version INTEGER NOT NULL,
            outgoing TEXT)"""
    ]


def _index_sql(table: str) -> list[str]:
    return [
        f"CREATE INDEX IF NOT EXISTS {table}_status ON {table} (status, deadline)",
        # What an orchestrator's tick asks: its own type's overdue or due sagas, and
        # those with messages still to send.
        f"CREATE INDEX IF NOT EXISTS {table}_type_status ON {table} (saga_type, status, deadline)",
        f"CREATE INDEX IF NOT EXISTS {table}_outgoing ON {table} (saga_type) "
        "WHERE outgoing IS NOT NULL",
    ]


def _row(state: SagaState) -> tuple[Any, ...]:
    return (
        state.saga_id,
        state.saga_type,
        state.status,
        state.step,
        json.dumps(state.data),
        state.deadline,
        json.dumps(state.to_compensate),
        json.dumps(state.compensated),
        state.attempts,
        state.retry_at,
        state.reason,
        state.version,
        json.dumps(state.outgoing) if state.outgoing else None,
    )


def _state(row: tuple[Any, ...]) -> SagaState:
    return SagaState(
        saga_id=row[0],
        saga_type=row[1],
        status=row[2],
        step=row[3],
        data=json.loads(row[4]),
        deadline=row[5],
        to_compensate=json.loads(row[6]),
        compensated=json.loads(row[7]),
        attempts=row[8],
        retry_at=row[9],
        reason=row[10],
        version=row[11],
        outgoing=json.loads(row[12]) if row[12] else [],
    )


class _SqlSession:
    def __init__(self, tx: Transaction, table: str) -> None:
        self.tx: Transaction | None = tx
        self._tx = tx
        self._table = table

    async def load(self, saga_id: str) -> SagaState | None:
        row = await self._tx.fetchrow(
            f"SELECT {_COLUMNS} FROM {self._table} WHERE saga_id = $1", saga_id
        )
        return _state(row) if row is not None else None

    async def insert(self, state: SagaState) -> None:
        state.version = 1
        try:
            await self._tx.execute(
                f"INSERT INTO {self._table} ({_COLUMNS}) VALUES "
                "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                *_row(state),
            )
        except UniqueViolationError as exc:
            raise SagaAlreadyExistsError(f"saga {state.saga_id!r} already exists") from exc

    async def update(self, state: SagaState) -> None:
        values = _row(state)
        changed = await self._tx.execute(
            f"UPDATE {self._table} SET status = $2, step = $3, data = $4, deadline = $5, "
            "to_compensate = $6, compensated = $7, attempts = $8, retry_at = $9, reason = $10, "
            "outgoing = $12, version = version + 1 WHERE saga_id = $1 AND version = $11",
            state.saga_id,
            *values[2:11],
            state.version,
            values[12],
        )
        if changed != 1:
            raise SagaConcurrencyError(
                f"saga {state.saga_id!r} changed since version {state.version} was read "
                "(another orchestrator advanced it); reload and decide again"
            )
        state.version += 1


UnitOfWork = Callable[[], AbstractAsyncContextManager[Transaction]]


class SQLSagaStore:
    """Saga state in a table of ``db`` (SQLite or PostgreSQL).

    ``unit_of_work`` opens the transaction every saga change runs in; it defaults
    to ``db.transaction``. Pass a transactional outbox's ``unit_of_work`` so the
    commands and events a step publishes are written in the same transaction as
    the saga's new state. ``outbox`` names that outbox when ``unit_of_work`` is a
    function of your own that routes publishes into it (``outbox.within(tx)``);
    with ``outbox.unit_of_work`` itself it is found without being named.
    """

    def __init__(
        self,
        db: Database,
        *,
        table: str = "eventbus_sagas",
        unit_of_work: UnitOfWork | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self.db = db
        self.table = table
        self._unit_of_work: UnitOfWork = unit_of_work or db.transaction
        owner = getattr(unit_of_work, "__self__", None)
        self.outbox: Outbox | None = outbox or (owner if isinstance(owner, Outbox) else None)
        """The outbox this store's units of work write publishes into, if any."""

    async def setup(self) -> None:
        """Create the saga table and its indexes if they are missing; refuse a table of
        another schema version (:class:`~eventbus.patterns.schema.SchemaVersionError`:
        run ``eventbus db migrate``)."""
        async with self.db.transaction() as tx:
            # Also the lock that keeps two setups at once from racing on CREATE.
            await ready(tx, KINDS["saga store"], self.table, self.db.url)
            for statement in _table_sql(self.table, self.db.dialect):
                await tx.execute(statement)
            for statement in _index_sql(self.table):
                await tx.execute(statement)

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[SagaSession]:
        """One database transaction (through the outbox's, when given)."""
        try:
            async with self._unit_of_work() as tx:
                yield _SqlSession(tx, self.table)
        except UniqueViolationError as exc:  # raised at commit time by some databases
            raise SagaAlreadyExistsError(str(exc)) from exc

    async def get(self, saga_id: str) -> SagaState | None:
        """The saga as committed now."""
        async with self.db.transaction() as tx:
            return await _SqlSession(tx, self.table).load(saga_id)

    async def overdue(
        self, now: float, limit: int = 100, *, saga_type: str | None = None
    ) -> list[str]:
        """Running sagas (of ``saga_type``) past their step deadline."""
        return await self._ids("status = 'running' AND deadline <= $1", now, limit, saga_type)

    async def retry_due(
        self, now: float, limit: int = 100, *, saga_type: str | None = None
    ) -> list[str]:
        """Sagas (of ``saga_type``) compensating or with messages still to send, whose
        next attempt is due."""
        return await self._ids(
            "(status = 'compensating' OR outgoing IS NOT NULL) "
            "AND (retry_at IS NULL OR retry_at <= $1)",
            now,
            limit,
            saga_type,
        )

    async def by_status(
        self, status: SagaStatus, limit: int = 100, *, saga_type: str | None = None
    ) -> list[SagaState]:
        """Sagas in ``status`` (of ``saga_type``)."""
        of_type, args = _of_type(saga_type)
        async with self.db.transaction() as tx:
            rows = await tx.fetch(
                f"SELECT {_COLUMNS} FROM {self.table} WHERE status = $1"
                f"{of_type} ORDER BY saga_id LIMIT $2",
                status,
                limit,
                *args,
            )
        return [_state(row) for row in rows]

    async def _ids(self, where: str, now: float, limit: int, saga_type: str | None) -> list[str]:
        of_type, args = _of_type(saga_type)
        async with self.db.transaction() as tx:
            rows = await tx.fetch(
                f"SELECT saga_id FROM {self.table} WHERE {where}{of_type} "
                "ORDER BY saga_id LIMIT $2",
                now,
                limit,
                *args,
            )
        return [row[0] for row in rows]


def _of_type(saga_type: str | None) -> tuple[str, tuple[str, ...]]:
    """The clause (parameter ``$3``) that keeps one saga type, or none for all types."""
    return ("", ()) if saga_type is None else (" AND saga_type = $3", (saga_type,))


# Renamed for one vocabulary (exceptions end in Error, SQL in capitals); the old
# spelling warns for one release.
_RENAMED: Renamed = {
    "SqlSagaStore": ("eventbus.patterns.sagas.SQLSagaStore", lambda: SQLSagaStore),
    "SagaNotFound": ("eventbus.patterns.sagas.SagaNotFoundError", lambda: SagaNotFoundError),
    "SagaAlreadyExists": (
        "eventbus.patterns.sagas.SagaAlreadyExistsError",
        lambda: SagaAlreadyExistsError,
    ),
}


def __getattr__(name: str) -> Any:
    return renamed(__name__, name, _RENAMED)
