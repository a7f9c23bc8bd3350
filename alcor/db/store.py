"""The store: one SQLite file in WAL mode, one writer, versioned migrations, and the change log.

(This is the embedded default; alcor/db/postgres.py is the same store on PostgreSQL, for several
controllers on one database. `alcor.db.backends.open_store(settings)` picks one.)

Every mutation runs in `store.transaction()`: it holds the only write lock, so revs handed out with
`tx.record(...)` are strictly increasing and gap-free, and the resource rows and their change-log rows
commit together or not at all.

The writer runs on the event loop's own thread, on purpose: a write transaction is tens of microseconds
of SQLite work, while every statement sent to a worker thread (aiosqlite) costs ~100 µs of hand-offs,
and writes are serialised anyway. Reads, which can be large (lists, change-log pages), go through
aiosqlite on a second connection and never block the loop or wait for the writer (WAL).

Durability is group-committed. With `synchronous = FULL` SQLite would fsync the WAL inside every
COMMIT (~1 ms here, on the loop, once per API write). Instead the connection runs at NORMAL (a
COMMIT writes its WAL frames without syncing them) and one task fsyncs the WAL file on a thread for
every commit made since its last sync. A transaction returns, and its change-log rows reach
readers (the dispatcher, /changes), only once an fsync that began after its COMMIT has finished:
what a client was told, or an agent was sent, is on disk as with FULL, and commits that happen while
one fsync runs share the next. In-memory indexes (`after_commit`) still follow each COMMIT at once,
so later transactions see the same state as before, and API reads may see a write a millisecond
before its own request is answered. A failed fsync fails the waiting requests (503).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import aiosqlite
import structlog

from alcor.config import ConfigError
from alcor.db.changelog import Change, ChangeLog
from alcor.db.dialect import SQLITE, Dialect
from alcor.errors import Conflict


@dataclass(frozen=True)
class StoreConfig:
    """[store]"""

    SECTION: ClassVar[str] = "store"
    path: str = "var/alcor.db"
    # PostgreSQL instead of the SQLite file, e.g. "postgresql://alcor:secret@db:5432/alcor"
    url: str = ""
    # NORMAL survives any crash of the process; FULL also survives power loss
    synchronous: Literal["NORMAL", "FULL"] = "FULL"
    # change-log rows kept below the lowest rev every node has applied, for late readers
    retention: int = 10000

    def check(self) -> None:
        if self.url and not self.url.startswith(("postgresql://", "postgres://")):
            raise ConfigError(f"store.url must be a postgresql:// URL, got {self.url!r}")

log = structlog.get_logger("alcor.store")

# Each owner's migrations, applied in order; the version applied is kept per owner. A migration is
# one script for both engines, or {"sqlite": …, "postgresql": …} where their DDL differs.
Migration = str | dict[str, str]

CORE_MIGRATIONS: list[Migration] = [
    # 1: resources, allocations, change log
    {
        "sqlite": """
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
        # The same tables; `json` keeps a body's text as written (what the API returns), ids sort
        # in byte order as in SQLite, and the counter row hands out revs (alcor/db/postgres.py).
        "postgresql": """
    CREATE TABLE resources (
        type TEXT NOT NULL, id TEXT COLLATE "C" NOT NULL, project_id TEXT, parent_id TEXT,
        body JSON NOT NULL, PRIMARY KEY (type, id));
    CREATE INDEX ix_resources_project ON resources(type, project_id);
    CREATE INDEX ix_resources_parent ON resources(type, parent_id);
    CREATE INDEX ix_resources_name ON resources(type, ((body->>'name') COLLATE "C"));
    CREATE INDEX ix_resources_device ON resources(type, (body->>'device_id'));
    CREATE TABLE ip_allocations (
        subnet_id TEXT NOT NULL, ip_address TEXT NOT NULL, port_id TEXT NOT NULL,
        PRIMARY KEY (subnet_id, ip_address));
    CREATE INDEX ix_ip_port ON ip_allocations(port_id);
    CREATE TABLE mac_allocations (
        network_id TEXT NOT NULL, mac_address TEXT NOT NULL, port_id TEXT NOT NULL,
        PRIMARY KEY (network_id, mac_address));
    CREATE TABLE vni_allocations (vni BIGINT PRIMARY KEY, network_id TEXT NOT NULL UNIQUE);
    CREATE TABLE changes (
        rev BIGINT PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, type TEXT NOT NULL, id TEXT NOT NULL,
        op TEXT NOT NULL, project_id TEXT, vpc_id TEXT, revision_number BIGINT, body TEXT);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE rev_counter (id INTEGER PRIMARY KEY CHECK (id = 1), rev BIGINT NOT NULL);
    INSERT INTO rev_counter(id, rev) VALUES (1, 0);
    """,
    },
    # 2: PostgreSQL: the group commit's flush (alcor/db/postgres.py) writes a row of its own,
    # one per controller: a transaction that writes no WAL is committed without waiting for
    # the WAL to reach the disk, whatever synchronous_commit says, and so would vouch for
    # nothing. (SQLite: nothing.)
    {"sqlite": "", "postgresql": """
    CREATE TABLE store_flushes (controller TEXT PRIMARY KEY, n BIGINT NOT NULL);
    """},
    # 3: PostgreSQL: a write transaction's start in one statement (alcor/db/postgres.py,
    # OPEN_LOCKED): the counter row locked, then, in a statement of its own (a fresh snapshot
    # once the lock is held, as a VOLATILE function's statements each take), where the counter
    # is and the first page of the rows since `since`; one row of NULLs after the counter when
    # there are none. (SQLite: nothing.)
    {"sqlite": "", "postgresql": """
    CREATE FUNCTION alcor_open(since BIGINT, page INTEGER)
    RETURNS TABLE (counter BIGINT, rev BIGINT, ts DOUBLE PRECISION, type TEXT, id TEXT, op TEXT,
                   project_id TEXT, vpc_id TEXT, revision_number BIGINT, body TEXT)
    LANGUAGE plpgsql VOLATILE AS $$
    #variable_conflict use_column
    DECLARE
        c BIGINT;
    BEGIN
        SELECT r.rev INTO c FROM rev_counter r WHERE r.id = 1 FOR UPDATE;
        RETURN QUERY
            SELECT c, x.rev, x.ts, x.type, x.id, x.op, x.project_id, x.vpc_id,
                   x.revision_number, x.body
            FROM (SELECT 1) one LEFT JOIN LATERAL (
                SELECT * FROM changes ch WHERE ch.rev > since AND ch.rev <= c
                ORDER BY ch.rev LIMIT page) x ON true
            ORDER BY x.rev;
    END $$;
    """},
]


def script_for(migration: Migration, dialect: str) -> str:
    return migration if isinstance(migration, str) else migration[dialect]


class StoreError(Exception):
    """The database could not be used (I/O error, locked, corrupt): the API answers 503."""


@dataclass
class Tx:
    """One write transaction. Statements run on the writer connection; changes are appended at commit."""

    conn: Any
    first_rev: int
    changes: list[Change] = field(default_factory=list)
    _after_commit: list[Callable[[], None]] = field(default_factory=list)
    _after_rollback: list[Callable[[], None]] = field(default_factory=list)

    # Async so that callers read the same whether or not a statement ever waits.
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.conn.execute(sql, params).rowcount

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    async def insert(self, into: str, rows: Sequence[Sequence[Any]]) -> None:
        """INSERT rows INTO `into` ("table(col, …)"). Nothing is read back, so a store may send it
        with the transaction's next statement (PostgreSQL: one round trip less per insert)."""
        if rows:
            self.conn.executemany(f"INSERT INTO {into} VALUES ({','.join('?' * len(rows[0]))})",
                                  rows)

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
    """What the managers, the change log and the dispatcher use, whichever engine is behind it."""

    dialect: Dialect = SQLITE
    # Several controllers on one database (PostgreSQL): each must follow the others' changes.
    shared = False
    changes: ChangeLog

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def migrate(self, owner: str, migrations: list[Migration]) -> None:
        """Apply the owner's migrations that are not yet applied, each once."""
        raise NotImplementedError

    def transaction(self) -> AbstractAsyncContextManager[Tx]:
        """The only way to write. Commits on success; on any exception rolls back and re-raises."""
        raise NotImplementedError

    def state_transaction(self) -> AbstractAsyncContextManager[Tx]:
        """A write transaction that records no change (the dispatcher's own state: watermark,
        streams, reports). On a shared store it runs beside the writers, without the counter
        row, so it never holds up the API; here it is one more writer transaction."""
        return self.transaction()

    async def statement(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """One statement that writes state without a change row (as `state_transaction`),
        committed by itself, durably, in one round trip; returns its first row. A shared store
        only: on SQLite a state transaction costs no round trips to begin with."""
        raise NotImplementedError

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    def follow(self, fn: Callable[[Change], None]) -> None:
        """fn(change) for every change another controller commits (a shared store only)."""

    def on_reload(self, fn: Callable[[], Awaitable[None]]) -> None:
        """fn() rebuilds an owner's in-memory indexes from the tables (a shared store only)."""

    async def catch_up(self) -> bool:
        """Bring the in-memory indexes up to the last rev committed by any controller (a shared
        store; reads outside a transaction that use them, after a miss). True when they moved."""
        return False

    async def writable(self) -> bool:
        """True when a write transaction can be opened (for readiness checks)."""
        try:
            async with self.transaction() as tx:
                await tx.execute("SELECT 1")
            return True
        except Exception:
            return False


class SqliteStore(Store):
    """Owns the database file: the writer, the reader and the change log."""

    def __init__(self, path: str | Path, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self._writer: sqlite3.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self.changes = ChangeLog(self)
        self._next_rev = 1
        # Group commit (see the module's docstring): committed transactions waiting for the WAL
        # fsync, in commit order, with their change rows and their waiter.
        self._group = synchronous.upper() in ("FULL", "EXTRA", "2", "3")
        self._unsynced: collections.deque[tuple[list[tuple[Any, ...]], asyncio.Future[None]]] = (
            collections.deque()
        )
        self._sync_due = asyncio.Event()
        self._syncer: asyncio.Task[None] | None = None
        self._wal_fd: int | None = None
        self._fsync_thread: concurrent.futures.ThreadPoolExecutor | None = None

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._writer = sqlite3.connect(self.path, isolation_level=None)
            self._writer.execute("PRAGMA journal_mode=WAL")
            sync = "NORMAL" if self._group else self.synchronous
            self._writer.execute(f"PRAGMA synchronous={sync}")
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
        self._next_rev = self.changes.last_rev + 1
        if self._group:
            # The WAL exists while a connection is open (the migrations wrote to it); an fsync
            # of any descriptor of the file makes every frame written so far durable.
            self._wal_fd = os.open(f"{self.path}-wal", os.O_RDONLY)
            self._fsync_thread = concurrent.futures.ThreadPoolExecutor(1, "store-fsync")
            self._syncer = asyncio.get_running_loop().create_task(self._sync_loop())
        log.info("store.opened", path=str(self.path), last_rev=self.changes.last_rev)

    async def close(self) -> None:
        if self._syncer is not None:
            while self._unsynced and not self._syncer.done():
                self._sync_due.set()
                await asyncio.sleep(0.001)
            self._syncer.cancel()
            try:
                await self._syncer
            except asyncio.CancelledError:
                pass
            self._syncer = None
        if self._fsync_thread is not None:
            self._fsync_thread.shutdown(wait=True)
            self._fsync_thread = None
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None
        if self._reader is not None:
            await self._reader.close()
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def migrate(self, owner: str, migrations: list[Migration]) -> None:
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
                    for stmt in _statements(script_for(script, "sqlite")):
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
        async with self._lock:
            w = self._w
            tx = Tx(w, self._next_rev)
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
            self._next_rev += len(rows)
            for fn in tx._after_commit:
                fn()
            if not self._group:
                if rows:
                    self.changes.committed(rows)
                return
            durable: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            # A waiter cancelled meanwhile (client gone) must not leave an unretrieved error.
            durable.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._unsynced.append((rows, durable))
            self._sync_due.set()
        # Outside the lock: the next transactions commit while this one's fsync runs.
        await asyncio.shield(durable)

    async def _sync_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._sync_due.wait()
            self._sync_due.clear()
            n = len(self._unsynced)  # everything committed before this fsync starts
            if not n:
                continue
            error: BaseException | None = None
            fd = self._wal_fd
            assert fd is not None
            try:
                await loop.run_in_executor(self._fsync_thread, os.fsync, fd)
            except Exception as e:  # an I/O error, or no thread left to run it on
                log.critical("store.fsync_failed", error=str(e))
                error = StoreError(f"database write not confirmed durable: {e}")
            for _ in range(n):
                rows, durable = self._unsynced.popleft()
                # Committed in SQLite either way: readers must see the change log whole.
                if rows:
                    self.changes.committed(rows)
                if not durable.done():
                    if error is None:
                        durable.set_result(None)
                    else:
                        durable.set_exception(error)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        async with self._r.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        async with self._r.execute(sql, params) as cur:
            return await cur.fetchone()


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]

