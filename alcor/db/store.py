"""The store: one SQLite file in WAL mode, one writer, versioned migrations, and the change log.

Every mutation runs in `store.transaction()`: it holds the only write lock, so revs handed out with
`tx.record(...)` are strictly increasing and gap-free, and the resource rows and their change-log rows
commit together or not at all.

The writer runs on the event loop's own thread, on purpose: a write transaction is tens of microseconds
of SQLite work, while every statement sent to a worker thread (aiosqlite) costs ~100 µs of hand-offs,
and writes are serialised anyway. Reads, which can be large (lists, change-log pages), go through
aiosqlite on a second connection and never block the loop or wait for the writer (WAL).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from alcor.api.errors import Conflict
from alcor.db.changelog import Change, ChangeLog

log = structlog.get_logger("alcor.store")

# Each owner's migrations, applied in order; the version applied is kept per owner.
CORE_MIGRATIONS: list[str] = [
    # 1: resources, allocations, change log
    """
    CREATE TABLE resources (
        type TEXT NOT NULL, id TEXT NOT NULL, project_id TEXT, parent_id TEXT,
        body TEXT NOT NULL, PRIMARY KEY (type, id)) WITHOUT ROWID;
    CREATE INDEX ix_resources_project ON resources(type, project_id);
    CREATE INDEX ix_resources_parent ON resources(type, parent_id);
    CREATE INDEX ix_resources_name ON resources(type, json_extract(body, '$.name'));
    CREATE INDEX ix_resources_device ON resources(type, json_extract(body, '$.device_id'));
    CREATE TABLE ip_allocations (
        subnet_id TEXT NOT NULL, ip_address TEXT NOT NULL, port_id TEXT NOT NULL,
        PRIMARY KEY (subnet_id, ip_address)) WITHOUT ROWID;
    CREATE INDEX ix_ip_port ON ip_allocations(port_id);
    CREATE TABLE mac_allocations (
        network_id TEXT NOT NULL, mac_address TEXT NOT NULL, port_id TEXT NOT NULL,
        PRIMARY KEY (network_id, mac_address)) WITHOUT ROWID;
    CREATE TABLE vni_allocations (vni INTEGER PRIMARY KEY, network_id TEXT NOT NULL UNIQUE);
    CREATE TABLE changes (
        rev INTEGER PRIMARY KEY, ts REAL NOT NULL, type TEXT NOT NULL, id TEXT NOT NULL,
        op TEXT NOT NULL, project_id TEXT, vpc_id TEXT, revision_number INTEGER, body TEXT);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
]


class StoreError(Exception):
    """The database could not be used (I/O error, locked, corrupt): the API answers 503."""


@dataclass
class Tx:
    """One write transaction. Statements run on the writer connection; changes are appended at commit."""

    conn: sqlite3.Connection
    first_rev: int
    changes: list[Change] = field(default_factory=list)
    _after_commit: list[Callable[[], None]] = field(default_factory=list)
    _after_rollback: list[Callable[[], None]] = field(default_factory=list)

    # Async so that callers read the same whether or not a statement ever waits.
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.conn.execute(sql, params).rowcount

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(sql, params).fetchone()

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self.conn.execute(sql, params).fetchall()

    def record(
        self,
        type: str,
        id: str,
        op: str,
        body: dict[str, Any] | None,
        *,
        project_id: str | None = None,
        vpc_id: str | None = None,
        revision_number: int | None = None,
        text: str | None = None,
    ) -> int:
        """Append a change-log row to this transaction and return its rev (`text`: body as JSON)."""
        rev = self.first_rev + len(self.changes)
        self.changes.append(
            Change(rev, time.time(), type, id, op, project_id, vpc_id, revision_number, body, text)
        )
        return rev

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run fn once the transaction is durable (update in-memory indexes)."""
        self._after_commit.append(fn)

    def after_rollback(self, fn: Callable[[], None]) -> None:
        """Run fn if the transaction is abandoned (release in-memory reservations)."""
        self._after_rollback.append(fn)


class Store:
    """Owns the database file: the writer, the reader and the change log."""

    def __init__(self, path: str | Path, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self._writer: sqlite3.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self.changes = ChangeLog(self)

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._writer = sqlite3.connect(self.path, isolation_level=None)
            self._writer.execute("PRAGMA journal_mode=WAL")
            self._writer.execute(f"PRAGMA synchronous={self.synchronous}")
            self._writer.execute("PRAGMA foreign_keys=ON")
            self._writer.execute("PRAGMA busy_timeout=5000")
            await self.migrate("store", CORE_MIGRATIONS)
            self._reader = await aiosqlite.connect(self.path, isolation_level=None)
            await self._reader.execute("PRAGMA busy_timeout=5000")
            await self._reader.execute("PRAGMA query_only=ON")
        except Exception as e:  # sqlite3 errors and OSError alike: the operator needs one line
            await self.close()
            raise StoreError(f"cannot open the database at {self.path}: {e}") from e
        await self.changes.load()
        log.info("store.opened", path=str(self.path), last_rev=self.changes.last_rev)

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.close()
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def migrate(self, owner: str, migrations: list[str]) -> None:
        """Apply the owner's migrations that are not yet applied, each in its own transaction."""
        w = self._w
        w.execute(
            "CREATE TABLE IF NOT EXISTS schema_versions (owner TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )
        row = w.execute("SELECT version FROM schema_versions WHERE owner = ?", (owner,)).fetchone()
        current = row[0] if row else 0
        if current > len(migrations):
            raise StoreError(
                f"the database's {owner} schema is version {current}, newer than this program's {len(migrations)}"
            )
        async with self._lock:
            for version, script in enumerate(migrations[current:], start=current + 1):
                w.execute("BEGIN IMMEDIATE")
                try:
                    for stmt in _statements(script):
                        w.execute(stmt)
                    w.execute(
                        "INSERT INTO schema_versions(owner, version) VALUES (?, ?) "
                        "ON CONFLICT(owner) DO UPDATE SET version = excluded.version",
                        (owner, version),
                    )
                    w.execute("COMMIT")
                except BaseException:
                    w.execute("ROLLBACK")
                    raise
                log.info("store.migrated", owner=owner, version=version)

    @property
    def _w(self) -> sqlite3.Connection:
        if self._writer is None:
            raise StoreError("the store is not open")
        return self._writer

    @property
    def _r(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreError("the store is not open")
        return self._reader

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """The only way to write. Commits on success; on any exception rolls back and re-raises."""
        async with self._lock:
            w = self._w
            tx = Tx(w, self.changes.last_rev + 1)
            try:
                w.execute("BEGIN IMMEDIATE")
                yield tx
                rows = [c.row() for c in tx.changes]
                if rows:
                    w.executemany(
                        "INSERT INTO changes(rev, ts, type, id, op, project_id, vpc_id, revision_number, body) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        rows,
                    )
                w.execute("COMMIT")
            except BaseException as e:
                try:
                    if w.in_transaction:
                        w.execute("ROLLBACK")
                finally:
                    for fn in tx._after_rollback:
                        fn()
                if isinstance(e, sqlite3.IntegrityError):
                    # The in-memory checks should have caught it; the schema's constraints are the
                    # backstop against two writers ever taking the same IP, MAC or VNI.
                    raise Conflict(f"The request conflicts with the stored state: {e}") from e
                if isinstance(e, sqlite3.Error):
                    raise StoreError(f"database error: {e}") from e
                raise
            for fn in tx._after_commit:
                fn()
            if rows:
                self.changes.committed(rows)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        async with self._r.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        async with self._r.execute(sql, params) as cur:
            return await cur.fetchone()

    async def writable(self) -> bool:
        """True when a write transaction can be opened (for readiness checks)."""
        try:
            async with self.transaction() as tx:
                await tx.execute("SELECT 1")
            return True
        except Exception:
            return False


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
