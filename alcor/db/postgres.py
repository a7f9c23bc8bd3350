"""The store on PostgreSQL (asyncpg): the same tables, migrations and transactions as SQLite, for
several controllers on one database.

Revs. One row, `rev_counter`, holds the last rev handed out. Every write transaction locks it first
(`SELECT … FOR UPDATE`) and sets it at the end, in the same transaction as the resource rows and
their change-log rows. So writers on every controller are serialised as SQLite's one writer is, and
revs are strictly increasing, gap-free and in commit order: a reader that sees rev N+1 committed
sees N too (a sequence would give neither: its values are handed out before commit, and lost on
rollback).

Several controllers. A controller's in-memory indexes (IP and MAC allocators, VNIs, networks, nodes
by name) follow the change log of all of them: once a transaction holds the counter row, the rows
other controllers committed since this controller last looked are read and applied (`follow`)
before the transaction's own checks run, so no check ever runs against stale state; a follower
task does the same as soon as a NOTIFY says a rev moved (LISTEN/NOTIFY is only the wake-up; the
table is the truth, and it is polled every second should a notification be lost). The schema's
constraints (one IP per subnet, one MAC per network, one VNI) are the backstop.

Durability: group commit, as in the SQLite store. A synchronous COMMIT would hold the counter
row, and so every controller's writers, through its WAL flush (0.1 ms on an idle disk here,
2-3 ms on a busy one). The writer commits with `synchronous_commit = off`, which frees the row at
once, and one task per controller runs a small synchronous commit of its own (FLUSH) for every
commit made since its last one: the WAL is written in order, so that flush makes them all
durable. A transaction is answered, and its change-log rows reach readers, only after such a
flush; the flush's NOTIFY tells the other controllers the rev that is now durable, and they hand
rows to their readers only up to it. In-memory indexes follow commits at once (a transaction
must check against them), and are rebuilt from the tables whenever the server may have lost
unflushed commits (a lost connection).

Failures. A lost connection (PostgreSQL restarted or failed over) fails the request with
StoreError (the API answers 503); the next transaction connects again, and since a commit cut off
mid-way may or may not have happened, the in-memory indexes are rebuilt from the tables first.
Commits still waiting for their flush when the server went down may be gone with it (they were
written with synchronous_commit off): a flush that runs on a restarted (or failed-over) server
does not vouch for them (the flush reads pg_postmaster_start_time() and each commit remembers
its own), so they fail with StoreError, as unacknowledged, instead of being answered.
A controller that stalls inside a transaction would hold the counter row, and with it everyone's
writes: its writer session ends after IDLE_IN_TRANSACTION_MS idle in a transaction.

Round trips. A batch of requests sharing a transaction costs OPEN (BEGIN, the counter locked),
MOVED when another controller committed since (with the counter row held, so everyone waits
through it), the last statement, COMMIT, and the flush beside. The next batch's BEGIN goes with
the COMMIT, and a batch that comes within BEGUN_FOR starts with one statement that locks the
counter and reads the rows since (OPEN_LOCKED); a transaction begun so and left unused is
rolled back after BEGUN_FOR, before the server would end the session.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn

import asyncpg
import structlog

from alcor.db.changelog import Change, ChangeLog
from alcor.db.dialect import POSTGRESQL, Dialect, numbered
from alcor.db.store import CORE_MIGRATIONS, Migration, Store, StoreError, Tx, script_for
from alcor.errors import Conflict

log = structlog.get_logger("alcor.store")

CHANNEL = "alcor_changes"
# pg_advisory_xact_lock key that serialises migrations between controllers starting together.
MIGRATION_LOCK = 0x616C636F72  # "alcor"
CATCH_UP_ROWS = 5000
# A writer that stops in the middle of a transaction (its process stalled, SIGSTOP, a frozen VM)
# holds the counter row and so every other controller's writes: PostgreSQL ends such a session
# after this long (ms). Our transactions are never idle for more than a few milliseconds.
IDLE_IN_TRANSACTION_MS = 3000
CHANGE_COLUMNS = "rev, ts, type, id, op, project_id, vpc_id, revision_number, body"
# One round trip at the end of a write: the inserts still pending, the change rows, the counter.
FINISH = (
    "ins AS (INSERT INTO changes(" + CHANGE_COLUMNS + ") "
    "SELECT * FROM unnest($1::bigint[], $2::float8[], $3::text[], $4::text[], $5::text[], "
    "$6::text[], $7::text[], $8::bigint[], $9::text[])), "
    "up AS (UPDATE rev_counter SET rev = $10 WHERE id = 1) "
    "SELECT 1"
)
# The group commit's flush: a commit of its own, synchronous, which makes every commit before it
# durable too (the WAL is written in order); then the rev it read is announced to every
# controller (the NOTIFY leaves after that commit).
# (It writes a row, its controller's own: PostgreSQL commits a transaction that wrote no WAL
# asynchronously even with synchronous_commit on, which would make nothing durable.)
FLUSH = ("WITH f AS (INSERT INTO store_flushes(controller, n) VALUES ($1, 1) "
         "ON CONFLICT (controller) DO UPDATE SET n = store_flushes.n + 1 RETURNING n) "
         "SELECT rev, pg_notify('" + CHANNEL + "', rev::text), (SELECT n FROM f), "
         "pg_postmaster_start_time() FROM rev_counter WHERE id = 1")
FINISH_PARAMS = 10
# A write transaction's start, one round trip (a simple query, several statements): BEGIN, the
# counter row locked, then whether it still holds the rev the indexes follow (%d): its status is
# "SELECT 1" when no other controller committed since, and only then is the rev not read back.
# Each statement has a snapshot of its own (READ COMMITTED), so the last one, taken once the
# lock is held, sees every commit before it.
OPEN = ("BEGIN; SELECT 1 FROM rev_counter WHERE id = 1 FOR UPDATE; "
        "SELECT 1 FROM rev_counter WHERE id = 1 AND rev = %d")
# The same start when a transaction is open already (BEGIN went with the last COMMIT, see
# PgStore._commit): the counter locked and, whether it moved or not, where it is and the first
# page of the rows since the indexes' rev, in one round trip (store migration 3). It saves the
# MOVED round trip below, made with the counter row held, so the other controllers wait
# through it too.
OPEN_LOCKED = "SELECT * FROM alcor_open($1, $2)"
# A transaction begun that way and not used within this long (s) is ended: the server ends a
# session idle in a transaction after IDLE_IN_TRANSACTION_MS, and a lost writer means the
# indexes are rebuilt.
BEGUN_FOR = 1.0
# After OPEN said the counter moved: where it is, and the first page of the rows since the
# indexes' rev (the counter is locked, so it cannot move meanwhile).
MOVED = (f"SELECT c.rev, x.* FROM rev_counter c LEFT JOIN LATERAL (SELECT {CHANGE_COLUMNS} "
         f"FROM changes WHERE rev > $1 AND rev <= c.rev ORDER BY rev LIMIT {CATCH_UP_ROWS}) x "
         f"ON true WHERE c.id = 1 ORDER BY x.rev")
# Pending inserts are sent on their own once they hold this many parameters (the protocol
# allows 32,767 per statement).
MAX_PENDING_PARAMS = 20_000
# Rows kept for readers at most while they wait to be durable (PgStore._ahead).
AHEAD_ROWS = 100_000
# Requests sharing one PostgreSQL transaction at most (PgStore.transaction).
MAX_BATCH = 64
# Errors that mean the connection is gone (server restarted, failed over, network cut).
_LOST = (OSError, asyncio.TimeoutError, asyncpg.InterfaceError, asyncpg.InternalClientError,
         asyncpg.exceptions.PostgresConnectionError,
         asyncpg.exceptions.OperatorInterventionError)


@functools.lru_cache(maxsize=4096)
def _sql(text: str) -> str:
    return numbered(text)


def safe_url(url: str) -> str:
    """A database URL without its password, for logs and errors."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def _rowcount(status: str) -> int:
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


@dataclass
class PgTx(Tx):
    """A write transaction on the controller's writer connection (`?` placeholders, as in SQLite).

    Inserts (`insert`) wait and go with the next statement, as data-modifying CTEs: every
    round trip to the server costs more than the statement (on loopback, most of it is the
    sender's own share of TCP), and the counter row is held meanwhile."""

    _pending: list[tuple[str, list[tuple[Any, ...]]]] = field(default_factory=list)
    _pending_params: int = 0
    _batch: _Batch | None = None
    # A savepoint taken before this request's first write, when earlier requests share the
    # transaction: its failure then rolls back its own statements only.
    _savepoint: bool = False
    _wrote: bool = False

    async def _before(self, writes: bool) -> None:
        batch = self._batch
        if batch is not None and batch.pending:
            # The earlier requests' inserts, so that this one's statements see them.
            await _send_inserts(self.conn, batch.pending)
            batch.pending = []
        if (writes or self._pending) and not self._wrote:
            if batch is not None and batch.members and not self._savepoint:
                await self.conn.execute("SAVEPOINT alcor_request")
                self._savepoint = True
            self._wrote = True

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        await self._before(True)
        await self._flush()
        return _rowcount(await self.conn.execute(_sql(sql), *params))

    async def executemany(self, sql: str, rows: Any) -> None:
        await self._before(True)
        await self._flush()
        rows = [tuple(r) for r in rows]
        if rows:
            await self.conn.executemany(_sql(sql), rows)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        await self._before(False)
        await self._flush()
        return await self.conn.fetchrow(_sql(sql), *params)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        await self._before(False)
        await self._flush()
        return list(await self.conn.fetch(_sql(sql), *params))

    async def insert(self, into: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        if self._pending_params > MAX_PENDING_PARAMS:
            await self._before(True)
            await self._flush()
        self._pending.append((into, [tuple(r) for r in rows]))
        self._pending_params += sum(len(r) for r in rows)

    async def _flush(self) -> None:
        if self._pending:
            await _send_inserts(self.conn, self._pending)
            self._pending = []
            self._pending_params = 0


def _inserts(pending: list[tuple[str, list[tuple[Any, ...]]]], first: int
             ) -> tuple[list[str], list[Any]]:
    """Inserts as CTEs numbering their parameters from `first` + 1."""
    params: list[Any] = []
    for _, rows in pending:
        for r in rows:
            params.extend(r)
    shape = tuple((into, tuple(len(r) for r in rows)) for into, rows in pending)
    return list(_insert_text(shape, first)), params


@functools.lru_cache(maxsize=1024)
def _insert_text(shape: tuple[tuple[str, tuple[int, ...]], ...], first: int) -> tuple[str, ...]:
    """The CTEs' text for inserts of this shape (table, and each row's width): a batch of N
    port creates always has the same one, so it is built once, not once per batch (building
    the placeholders was ~5 % of a controller's CPU)."""
    parts: list[str] = []
    n = first
    for i, (into, widths) in enumerate(shape):
        values = []
        for width in widths:
            values.append("(" + ",".join(f"${n + k + 1}" for k in range(width)) + ")")
            n += width
        parts.append(f"w{i} AS (INSERT INTO {into} VALUES {','.join(values)})")
    return tuple(parts)


async def _send_inserts(conn: Any, pending: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
    """Send inserts in statements of at most MAX_PENDING_PARAMS parameters or so."""
    chunk: list[tuple[str, list[tuple[Any, ...]]]] = []
    size = 0
    for item in pending:
        chunk.append(item)
        size += sum(len(r) for r in item[1])
        if size > MAX_PENDING_PARAMS:
            parts, params = _inserts(chunk, 0)
            await conn.execute("WITH " + ", ".join(parts) + " SELECT 1", *params)
            chunk, size = [], 0
    if chunk:
        parts, params = _inserts(chunk, 0)
        await conn.execute("WITH " + ", ".join(parts) + " SELECT 1", *params)


@dataclass
class _Batch:
    """One PostgreSQL transaction shared by the API requests that queued for the writer while
    it was open (see PgStore.transaction): the counter row is locked once for all of them."""

    conn: Any
    next_rev: int
    # Committed requests' inserts and change rows, sent with the batch's last statement.
    pending: list[tuple[str, list[tuple[Any, ...]]]] = field(default_factory=list)
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    # Each committed request's change rows and its waiter (answered once the batch is durable).
    members: list[tuple[list[tuple[Any, ...]], asyncio.Future[None]]] = field(default_factory=list)
    committer: bool = False  # a task is queued to commit the batch after the current waiters
    start: Any = None  # pg_postmaster_start_time() of the server it runs on
    pending_params: int = 0


class PgStore(Store):
    """One controller's connections to the shared database: a writer, a read pool, a listener."""

    dialect: Dialect = POSTGRESQL
    shared = True

    def __init__(self, url: str, *, pool_size: int = 4, connect_timeout: float = 5.0) -> None:
        self.url = url
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.changes = ChangeLog(self)
        self._lock = asyncio.Lock()
        self._writer: asyncpg.Connection | None = None
        self._pool: asyncpg.Pool | None = None
        self._followers: list[Callable[[Change], None]] = []
        self._reloads: list[Callable[[], Awaitable[None]]] = []
        self._stale = False  # the writer was lost: indexes must be rebuilt before the next write
        self._wake = asyncio.Event()
        self._notified = 0  # the highest rev a NOTIFY announced (durable)
        self._follower: asyncio.Task[None] | None = None
        # Rev up to which the in-memory indexes follow the tables: ahead of changes.last_rev
        # (what readers see) while commits wait for their flush.
        self._index_rev = 0
        # Rows the indexes have applied but readers have not been handed yet (other
        # controllers' rows read by a write transaction, this one's own once committed), by
        # rev, each with the start time of the server it was read from or committed on: once a
        # flush or a NOTIFY from that same server says they are durable, they go to readers
        # from here instead of being read back (see _deliver).
        self._ahead: dict[int, tuple[tuple[Any, ...], Any]] = {}
        self._listener_start: Any = None  # pg_postmaster_start_time() of the listener's server
        self._listening = asyncio.Event()  # the listener has listened once
        self._opened_rev = 0  # the rev at open, before any manager loaded (see follow)
        # Group commit: committed transactions waiting for a flush, in commit order.
        # Each with the start time of the server it was committed on (see _sync_loop).
        self._unsynced: collections.deque[
            tuple[list[tuple[Any, ...]], asyncio.Future[None], Any]] = collections.deque()
        self._writer_start: Any = None  # pg_postmaster_start_time() of the writer's server
        self._flushed_start: Any = None  # ...and of the server the last flush ran on
        self._sync_due = asyncio.Event()
        self._syncer: asyncio.Task[None] | None = None
        self._sync_conn: asyncpg.Connection | None = None
        self._flush_lock = asyncio.Lock()
        self._flusher_id = uuid.uuid4().hex  # this controller's row in store_flushes
        # Requests sharing the writer's open transaction, and how many wait for the writer.
        self._batch: _Batch | None = None
        self._queued = 0
        # The writer's transaction begun with the last COMMIT, for the next batch (its
        # connection and loop time), and the timer that ends it if no batch comes.
        self._begun: tuple[asyncpg.Connection, float] | None = None
        self._begun_timer: asyncio.TimerHandle | None = None
        self._ending: asyncio.Task[None] | None = None
        self._locked_opens = 0  # batches started that way (the tests look)

    # -- lifecycle -----------------------------------------------------------------------------

    async def _connect(self, role: str) -> asyncpg.Connection:
        settings = {"application_name": f"alcor-{role}"}
        if role == "writer":
            settings["idle_in_transaction_session_timeout"] = str(IDLE_IN_TRANSACTION_MS)
            # Group commit: COMMIT returns before its WAL is flushed (the counter row is free
            # at once); the transaction is answered only after a flush that covers it.
            settings["synchronous_commit"] = "off"
        elif role == "sync":
            # The flush that answers clients: explicit, whatever the database's default says
            # (with a synchronous standby, `on` also waits for the standby to have the WAL).
            settings["synchronous_commit"] = "on"
        conn = await asyncpg.connect(self.url, timeout=self.connect_timeout,
                                     server_settings=settings)
        if role == "writer":
            try:
                self._writer_start = await conn.fetchval("SELECT pg_postmaster_start_time()")
            except BaseException:
                conn.terminate()
                raise
        return conn

    async def open(self) -> None:
        try:
            self._writer = await self._connect("writer")
            self._pool = await asyncpg.create_pool(
                self.url, min_size=1, max_size=self.pool_size, timeout=self.connect_timeout,
                # A connection going back to the pool has its transaction rolled back, if any,
                # and nothing else: nothing here leaves session state (LISTEN, advisory locks,
                # cursors, SET) on a pool connection, and the default reset is a round trip
                # (four statements) after every read and every dispatcher commit.
                reset=_keep_session,
                # State transactions run here too (the dispatcher's, which lock sb_leader): a
                # stalled process must not hold them either.
                server_settings={"application_name": "alcor-reader",
                                 "idle_in_transaction_session_timeout":
                                     str(IDLE_IN_TRANSACTION_MS)})
            await self.migrate("store", CORE_MIGRATIONS)
        except StoreError:
            await self.close()
            raise
        except Exception as e:  # unreachable, refused, no such database, bad credentials
            await self.close()
            raise StoreError(f"cannot open the database at {safe_url(self.url)}: {e}") from e
        try:
            await self._flush_wal()  # what the table holds is durable before anyone reads it
        except Exception as e:
            await self.close()
            raise StoreError(f"cannot open the database at {safe_url(self.url)}: {e}") from e
        await self.changes.load()
        self._index_rev = self._opened_rev = self.changes.last_rev
        loop = asyncio.get_running_loop()
        self._follower = loop.create_task(self._follow(), name="store.follow")
        self._syncer = loop.create_task(self._sync_loop(), name="store.sync")
        # Commits of others from here on are heard at once (the poll would find them, later).
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self._listening.wait()
        except TimeoutError:
            log.warning("store.not_listening", url=safe_url(self.url))
        log.info("store.opened", url=safe_url(self.url), last_rev=self.changes.last_rev)

    async def close(self) -> None:
        if self._batch is not None:
            try:
                async with asyncio.timeout(5):
                    async with self._lock:
                        await self._settle()
            except TimeoutError:
                pass
        self._begun = None  # the writer closes below, and its transaction with it
        if self._begun_timer is not None:
            self._begun_timer.cancel()
        if self._syncer is not None:
            if self._unsynced:
                # The last commits' flush: their clients are still waiting for it.
                last = self._unsynced[-1][1]
                self._sync_due.set()
                await asyncio.wait({last}, timeout=5)
            self._syncer.cancel()
            await asyncio.wait({self._syncer}, timeout=5)
            self._syncer = None
        for fut in [f for _, f, _ in self._unsynced if not f.done()]:
            fut.set_exception(StoreError("the store closed before the write was durable"))
        self._unsynced.clear()
        if self._sync_conn is not None:
            self._sync_conn.terminate()
            self._sync_conn = None
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.wait({self._follower}, timeout=5)
            self._follower = None
        if self._writer is not None:
            try:
                await asyncio.wait_for(self._writer.close(), 2)
            except Exception:
                self._writer.terminate()
            self._writer = None
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), 2)
            except Exception:
                self._pool.terminate()
            self._pool = None

    async def migrate(self, owner: str, migrations: list[Migration]) -> None:
        """Apply the owner's pending migrations, each in its own transaction. Controllers starting
        together take turns on an advisory lock, so each version is applied once."""
        if self._pool is not None:
            # Already there (a standby taking the lead migrates its module again): no need to
            # stop this controller's writers for it.
            try:
                async with self._read() as rc:
                    current = await rc.fetchval(
                        "SELECT version FROM schema_versions WHERE owner = $1", owner)
                if current == len(migrations):
                    return
            except asyncpg.UndefinedTableError:
                pass
        async with self._lock:
            await self._settle()
            conn = await self._writer_conn()
            await self._end_begun(conn)  # conn.transaction() below begins its own
            for version in range(1, len(migrations) + 1):
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
                    await conn.execute(
                        "CREATE TABLE IF NOT EXISTS schema_versions "
                        "(owner TEXT PRIMARY KEY, version INTEGER NOT NULL)")
                    current = await conn.fetchval(
                        "SELECT version FROM schema_versions WHERE owner = $1", owner) or 0
                    if current > len(migrations):
                        raise StoreError(
                            f"the database's {owner} schema is version {current}, newer than "
                            f"this program's {len(migrations)}")
                    if current >= version:
                        continue
                    await conn.execute(script_for(migrations[version - 1], "postgresql"))
                    await conn.execute(
                        "INSERT INTO schema_versions(owner, version) VALUES ($1, $2) "
                        "ON CONFLICT(owner) DO UPDATE SET version = excluded.version",
                        owner, version)
                log.info("store.migrated", owner=owner, version=version)

    # -- following the other controllers -------------------------------------------------------

    def follow(self, fn: Callable[[Change], None]) -> None:
        """fn(change) for every change another controller commits, from now on.

        Each manager loads its indexes from the tables, then calls this; meanwhile the
        follower task may have applied newer rows to the managers registered before it, and
        moved on. So every registration sends the indexes back to the rev the store opened at
        (before any manager loaded): the next catch-up applies everything since to everyone
        (applying a change the tables already showed is harmless, as in _reload), and no
        commit falls between a manager's load and its first followed change (seen as two
        controllers handing out one IP after a controller restarted under load)."""
        self._followers.append(fn)
        self._index_rev = min(self._index_rev, self._opened_rev)

    def on_reload(self, fn: Callable[[], Awaitable[None]]) -> None:
        self._reloads.append(fn)

    def _keep_ahead(self, rows: list[tuple[Any, ...]], start: Any) -> None:
        """Rows applied to the indexes, committed on the server that started at `start`, that
        readers will need once they are durable."""
        if start is None:
            return
        if len(self._ahead) > AHEAD_ROWS:
            self._ahead.clear()  # readers far behind (never expected): they read the table
        last = self.changes.last_rev
        for r in rows:
            if r[0] > last:
                self._ahead[r[0]] = (r, start)

    def _deliver(self, upto: int, start: Any) -> None:
        """Hand readers the rows kept ahead, in rev order from their last rev, up to `upto`,
        which a flush or NOTIFY from the server that started at `start` said are durable. Rows
        kept from another server (one that restarted since, maybe without them) are not
        handed over: the table is read instead."""
        ahead = self._ahead
        last = self.changes.last_rev
        while ahead:
            first = next(iter(ahead))
            if first > last:
                break
            del ahead[first]
        rows = []
        rev = last + 1
        while rev <= upto:
            kept = ahead.get(rev)
            if kept is None or kept[1] != start:
                break
            rows.append(kept[0])
            del ahead[rev]
            rev += 1
        if rows:
            self.changes.committed(rows)

    async def _catch_up(self, conn: Any, upto: int, durable: bool,
                        first: list[tuple[Any, ...]] | None = None, start: Any = None) -> None:
        """Read the rows up to `upto` (committed by others) and apply those the indexes have not
        seen; when they are `durable`, readers of the change log get them too. Call with the
        lock held, so they interleave with this controller's own commits in rev order.
        `first`: the first page, already read (see _open_batch). `start`: the start time of
        the server `conn` is on, when known: rows read not yet durable are kept for readers
        (see _deliver); when durable, those kept already are handed over without a read."""
        if durable:
            self._deliver(upto, start)
        while self._index_rev < upto or (durable and self.changes.last_rev < upto):
            since = min(self._index_rev, self.changes.last_rev) if durable else self._index_rev
            if first is not None:
                rows, first = first, None
            else:
                rows = await conn.fetch(
                    f"SELECT {CHANGE_COLUMNS} FROM changes WHERE rev > $1 AND rev <= $2 "
                    f"ORDER BY rev LIMIT {CATCH_UP_ROWS}", since, upto)
            if not rows or rows[0][0] != since + 1:
                # Compacted away (this controller was behind the horizon): start from the tables.
                log.warning("store.behind_horizon", last_rev=since, upto=upto)
                await self._reload(conn)
                return
            rows = [tuple(r) for r in rows]
            for r in rows:
                if r[0] > self._index_rev:
                    change = Change.from_row(r)
                    for fn in self._followers:
                        fn(change)
            self._index_rev = max(self._index_rev, rows[-1][0])
            if durable:
                self.changes.committed(rows)
            else:
                self._keep_ahead(rows, start)

    async def catch_up(self) -> bool:
        """Apply to the indexes what other controllers committed up to now (one read of the
        counter; the rows only when it moved). A client that wrote through another controller
        and then asks this one must find its resource (read-your-writes). True also when the
        follower moved them meanwhile (the caller looked before)."""
        before = self._index_rev
        try:
            async with self._read() as conn:
                rev = await conn.fetchval("SELECT rev FROM rev_counter WHERE id = 1")
                if rev <= self._index_rev:
                    return self._index_rev > before
                async with self._lock:
                    if rev > self._index_rev and not self._stale:
                        await self._catch_up(conn, rev, durable=False)
        except BaseException as e:
            _raise(e, None)
        return True

    async def _reload(self, conn: Any) -> None:
        """Rebuild every in-memory index from the tables, then replay from the rev read before
        (applying a change the tables already show is harmless: each sets the state it names)."""
        durable = await self._flush_wal()
        rev = await conn.fetchval("SELECT rev FROM rev_counter WHERE id = 1")
        await self.changes.load()
        self.changes.reset(durable)
        self._ahead.clear()
        self._index_rev = rev
        for fn in self._reloads:
            await fn()
        self._stale = False
        log.info("store.reloaded", rev=rev)

    # -- group commit --------------------------------------------------------------------------

    async def _flush_wal(self) -> int:
        """Make every commit so far durable; returns the rev they reach (and announces it)."""
        async with self._flush_lock:  # one statement at a time on the connection
            if self._sync_conn is None or self._sync_conn.is_closed():
                self._sync_conn = await self._connect("sync")
            row = await self._sync_conn.fetchrow(FLUSH, self._flusher_id)
            self._flushed_start = row[3]
            return int(row[0])

    async def _sync_loop(self) -> None:
        while True:
            await self._sync_due.wait()
            self._sync_due.clear()
            n = len(self._unsynced)  # everything committed before this flush starts
            if not n:
                continue
            error: BaseException | None = None
            flushed = 0
            try:
                flushed = await self._flush_wal()
            except Exception as e:
                log.error("store.flush_failed", error=str(e))
                if self._sync_conn is not None:
                    self._sync_conn.terminate()
                error = StoreError(f"database write not confirmed durable: {e}")
                self._stale = True  # the server may have lost them: rebuild from the tables
            entries = [self._unsynced.popleft() for _ in range(n)]
            if error is None and all(start == self._flushed_start for _, _, start in entries):
                # Every row up to the flushed rev is durable, other controllers' rows before
                # ours included: in rev order, from memory, so the readers' tail stays whole.
                self._deliver(flushed, self._flushed_start)
            for rows, durable, start in entries:
                failed = error
                if failed is None and start != self._flushed_start:
                    # Committed on a server that has restarted since (crashed, failed over):
                    # this flush, on its successor, proves nothing about them. They may be
                    # lost (written with synchronous_commit off): not acknowledged, and the
                    # indexes are rebuilt from what the tables now hold.
                    failed = StoreError("the database restarted before the write was durable")
                    self._stale = True
                    log.error("store.restarted_before_flush", rev=rows[-1][0] if rows else None)
                if failed is None and rows:
                    self.changes.committed(rows)
                if not durable.done():
                    if failed is None:
                        durable.set_result(None)
                    else:
                        durable.set_exception(failed)

    async def _follow(self) -> None:
        """Wake on NOTIFY (or every second), and apply what the other controllers committed."""
        while True:
            listener: asyncpg.Connection | None = None
            try:
                listener = await self._connect("listener")
                self._listener_start = None
                await listener.add_listener(CHANNEL, self._heard)
                self._listening.set()
                # The server its NOTIFYs vouch for (until known, rows kept are read instead).
                self._listener_start = await listener.fetchval("SELECT pg_postmaster_start_time()")
                while not listener.is_closed():
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                    # cancellation that lands as it times out, and close() would wait forever.
                    try:
                        async with asyncio.timeout(1.0):
                            await self._wake.wait()
                        polled = False
                    except TimeoutError:
                        polled = True
                    self._wake.clear()
                    if not polled:
                        # The payload is the rev committed: rows up to it can be read at once.
                        # Our own commits are heard too, and are already applied once we hold
                        # the lock (the transaction holds it until then): nothing to ask.
                        # Our own flush announces its rev before it has returned here: once it
                        # has, its commits are handed to readers without being read back.
                        async with self._flush_lock:
                            pass
                        if self._notified <= self.changes.last_rev:
                            continue
                        async with self._lock:
                            if self._notified > self.changes.last_rev and not self._stale:
                                await self._catch_up(listener, self._notified, durable=True,
                                                     start=self._listener_start)
                        continue
                    rev, horizon = await listener.fetchrow(
                        "SELECT rev, (SELECT value FROM meta WHERE key = 'changes.horizon') "
                        "FROM rev_counter WHERE id = 1")
                    # Another controller may have compacted the log.
                    self.changes.horizon = max(self.changes.horizon, int(horizon or 0))
                    if rev > self.changes.last_rev and not self._stale:
                        # A notification may have been lost: flush, and follow up to there.
                        durable = await self._flush_wal()
                        async with self._lock:
                            await self._catch_up(listener, durable, durable=True,
                                                 start=self._flushed_start)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("store.follow_failed", error=str(e))
                await asyncio.sleep(1.0)
            finally:
                if listener is not None:
                    listener.terminate()

    # -- writes --------------------------------------------------------------------------------

    def _heard(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            rev = int(payload)
        except ValueError:
            rev = 0
        if rev > self._notified:
            self._notified = rev
        if rev > self.changes.last_rev:
            self._wake.set()

    async def _writer_conn(self) -> asyncpg.Connection:
        if self._writer is None or self._writer.is_closed():
            try:
                self._writer = await self._connect("writer")
            except Exception as e:
                raise StoreError(f"database unavailable: {e}") from e
            # The server may have restarted and lost commits not yet flushed: start over from
            # the tables.
            self._stale = True
        return self._writer

    async def _begin(self) -> tuple[asyncpg.Connection, bool, list[Any] | None]:
        """The writer connection with a transaction open on it and the counter row locked, in
        one round trip (OPEN, or OPEN_LOCKED when the last COMMIT began it); whether the
        counter has moved past the indexes' rev (another controller committed since this one
        last looked); and, from OPEN_LOCKED, the first page of MOVED already.

        A connection that died while idle (the server restarted, an operator ended the session)
        may not look closed until it is used: nothing of this transaction has run yet, so one
        fresh connection is tried before anyone is failed.
        """
        for attempt in (1, 2):
            conn = await self._writer_conn()
            begun, self._begun = self._begun, None
            try:
                if begun is not None and begun[0] is conn:
                    if asyncio.get_running_loop().time() - begun[1] < BEGUN_FOR:
                        page = await conn.fetch(OPEN_LOCKED, int(self._index_rev),
                                                CATCH_UP_ROWS)
                        self._locked_opens += 1
                        return conn, page[0][0] > self._index_rev, page
                    # Begun too long ago (its end is on its way): start afresh.
                    status = await conn.execute("ROLLBACK; " + OPEN % int(self._index_rev))
                else:
                    status = await conn.execute(OPEN % int(self._index_rev))
                return conn, _rowcount(status) == 0, None
            except BaseException as e:
                if attempt == 2 or not isinstance(e, _LOST):
                    # Cancelled while waiting for the row (its client went away), or failed
                    # inside the transaction: end it (or the session).
                    await self._fail_batch(_Batch(conn, 0), e)
                    _raise(e, conn)
                conn.terminate()
                self._writer = None
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """One request's write transaction; requests share a PostgreSQL transaction (a batch).

        The counter row serialises every controller's writers, so what limits writes is how long
        it is held, and that is mostly round trips (BEGIN, the lock, catching up with the other
        controllers, the statements, COMMIT), each a wait for the server and then for this
        process to be scheduled again. So while one request runs, those that queue behind it
        join its PostgreSQL transaction: each runs alone (in-process lock), on indexes that
        follow the ones before it, and its inserts and change rows go with the batch's last
        statement; the batch commits once no one is queued (or after MAX_BATCH requests). A
        request that fails takes back only its own part: nothing it did was sent yet, or a
        savepoint taken before its first write is rolled back. A failed batch commit fails
        every request in it (none was answered yet) and the indexes are rebuilt from the tables.
        Requests are answered only once the batch's commit is durable (group commit, below).
        """
        self._queued += 1
        try:
            await self._lock.acquire()
        finally:
            self._queued -= 1
        durable: asyncio.Future[None] | None = None
        try:
            batch = self._batch
            if batch is None:
                batch = self._batch = await self._open_batch()
            conn = batch.conn
            tx = PgTx(conn, batch.next_rev, _batch=batch)
            try:
                yield tx
            except BaseException as e:
                await self._abandon(batch, tx, e)
                _raise(e, conn)
            rows = [c.row() for c in tx.changes]
            # Committed, as far as this process goes: later requests check against it.
            batch.pending.extend(tx._pending)
            batch.pending_params += tx._pending_params
            batch.rows.extend(rows)
            batch.next_rev += len(rows)
            if rows:
                self._index_rev = rows[-1][0]
            for fn in tx._after_commit:
                fn()
            durable = asyncio.get_running_loop().create_future()
            # A waiter cancelled meanwhile (client gone) must not leave an unretrieved error.
            durable.add_done_callback(lambda f: f.cancelled() or f.exception())
            batch.members.append((rows, durable))
            if batch.pending_params > MAX_PENDING_PARAMS:
                pending, batch.pending, batch.pending_params = batch.pending, [], 0
                try:
                    await _send_inserts(conn, pending)
                except BaseException as e:
                    await self._fail_batch(batch, e)
                    _raise(e, conn)
            if self._queued and len(batch.members) < MAX_BATCH:
                if not batch.committer:
                    # Behind those queued now (the lock is fair): it commits after them, unless
                    # the last of them finds no one queued and commits first.
                    batch.committer = True
                    asyncio.get_running_loop().create_task(self._commit_later(batch),
                                                           name="store.batch")
            else:
                # A client that goes away must not cut the commit of the others, nor let the
                # next request on the connection before the commit is done.
                commit = asyncio.ensure_future(self._commit(batch))
                try:
                    await asyncio.shield(commit)
                except asyncio.CancelledError:
                    await asyncio.wait({commit})
                    raise
        finally:
            self._lock.release()
        assert durable is not None
        # Outside the lock: the next batch runs while this one commits and flushes.
        await asyncio.shield(durable)

    async def _open_batch(self) -> _Batch:
        conn, moved, page = await self._begin()
        rev = self._index_rev
        try:
            if self._stale:
                rev = await conn.fetchval("SELECT rev FROM rev_counter WHERE id = 1")
                await self._reload(conn)
            elif moved:
                # Committed by others, maybe not flushed yet: the indexes need them now,
                # readers only once they are durable (the follower hands them over). The
                # counter and the first page of rows in one round trip (or none: OPEN_LOCKED
                # read them already).
                if page is None:
                    page = await conn.fetch(MOVED, self._index_rev)
                rev = page[0][0]
                rows = [tuple(r)[1:] for r in page if r[1] is not None]
                await self._catch_up(conn, rev, durable=False, first=rows,
                                     start=self._writer_start)
        except BaseException as e:
            await self._fail_batch(_Batch(conn, 0), e)
            _raise(e, conn)
        return _Batch(conn, rev + 1, start=self._writer_start)

    async def _abandon(self, batch: _Batch, tx: PgTx, e: BaseException) -> None:
        """A request failed inside the batch: take back its part only, when that can be done."""
        for fn in tx._after_rollback:
            fn()
        conn = batch.conn
        alone = not batch.members
        server_side = isinstance(e, asyncpg.PostgresError) or isinstance(e, _LOST)
        if isinstance(e, asyncio.CancelledError) or conn.is_closed() or alone or (
                server_side and not tx._savepoint):
            # Cancelled mid-statement (the client went away), the connection lost, the
            # transaction aborted with nothing to roll back to, or nothing else in it: the
            # whole batch goes.
            await self._fail_batch(batch, e)
            return
        if tx._savepoint:
            try:
                await conn.execute("ROLLBACK TO SAVEPOINT alcor_request")
            except BaseException as e2:
                await self._fail_batch(batch, e2)
        # else: nothing of this request reached the server.

    async def _fail_batch(self, batch: _Batch, e: BaseException) -> None:
        """Roll the batch back; every request in it fails (none was answered)."""
        conn = batch.conn
        if self._batch is batch:
            self._batch = None
        self._begun = None  # the ROLLBACK below ends any transaction on the writer
        if isinstance(e, asyncio.CancelledError) and not conn.is_closed():
            # Cancelled mid-statement (the client went away): the connection may still be busy
            # with it, and a ROLLBACK would queue behind it; ending the session rolls back.
            conn.terminate()
        if not conn.is_closed():
            try:
                await conn.execute("ROLLBACK")
            except BaseException:
                conn.terminate()
        if conn.is_closed() or batch.members:
            # Maybe committed, maybe not; or requests in it already changed the indexes:
            # rebuild them from the tables first.
            self._stale = True
        if batch.members:
            error = _mapped(e, None) if isinstance(e, Exception) else StoreError(
                "the transaction was abandoned")
            if not isinstance(error, (StoreError, Conflict)):
                error = StoreError(f"database error: {e}")
            for _, fut in batch.members:
                if not fut.done():
                    fut.set_exception(error)

    async def _commit_later(self, batch: _Batch) -> None:
        async with self._lock:
            if self._batch is batch:
                await self._commit(batch)

    async def _commit(self, batch: _Batch) -> None:
        """The batch's last statement (its inserts, change rows and the counter) and COMMIT;
        its requests then wait for the flush that makes it durable. Call with the lock held."""
        conn = batch.conn
        self._batch = None
        rows = batch.rows
        try:
            if rows:
                cols = list(zip(*rows, strict=True))
                parts, params = _inserts(batch.pending, FINISH_PARAMS)
                await conn.fetchval("WITH " + ", ".join([*parts, FINISH]),
                                    *cols, rows[-1][0], *params)
            elif batch.pending:
                await _send_inserts(conn, batch.pending)
            # The next batch's BEGIN goes with this COMMIT: its start is then one round trip
            # (OPEN_LOCKED). A transaction that has run no statement holds no lock, no
            # snapshot and no xid; unused, it is rolled back after BEGUN_FOR.
            await conn.execute("COMMIT; BEGIN")
            self._begun_since(conn)
        except BaseException as e:
            self._batch = batch  # so that _fail_batch sees it as the open one
            await self._fail_batch(batch, e)
            return
        for member_rows, fut in batch.members:
            if member_rows:
                self._keep_ahead(member_rows, batch.start)
                self._unsynced.append((member_rows, fut, batch.start))
            elif not fut.done():
                fut.set_result(None)  # nothing for readers: answered at COMMIT, as before
        if self._unsynced:
            self._sync_due.set()

    def _begun_since(self, conn: asyncpg.Connection) -> None:
        loop = asyncio.get_running_loop()
        stamp = loop.time()
        self._begun = (conn, stamp)
        if self._begun_timer is not None:
            self._begun_timer.cancel()
        self._begun_timer = loop.call_later(BEGUN_FOR, self._begun_unused, stamp)

    def _begun_unused(self, stamp: float) -> None:
        """The transaction begun at `stamp` is still unused (the requests that waited went
        away, or joined another batch): end it, once the writer is free."""
        if self._begun is None or self._begun[1] != stamp:
            return

        async def end() -> None:
            async with self._lock:
                if self._begun is not None and self._begun[1] == stamp and self._batch is None:
                    await self._end_begun(self._begun[0])
        self._ending = asyncio.get_running_loop().create_task(end(), name="store.end_begun")

    async def _end_begun(self, conn: asyncpg.Connection) -> None:
        """End the transaction the last COMMIT began, if any (call with the lock held)."""
        if self._begun is None:
            return
        begun, self._begun = self._begun[0], None
        if begun is conn and not conn.is_closed():
            try:
                await conn.execute("ROLLBACK")
            except Exception:
                conn.terminate()  # the next write reconnects and rebuilds the indexes

    async def _settle(self) -> None:
        """Commit the open batch, if any (with the lock held: before migrations, at close)."""
        if self._batch is not None:
            await self._commit(self._batch)

    @asynccontextmanager
    async def state_transaction(self) -> AsyncIterator[Tx]:
        """On a connection of the read pool, committed synchronously: no counter row, no rev."""
        if self._pool is None:
            raise StoreError("the store is not open")
        try:
            async with self._pool.acquire() as conn:
                async with conn.transaction():
                    tx = PgTx(conn, 0)
                    yield tx
                    if tx.changes:
                        raise RuntimeError("a state transaction cannot record changes")
                    await tx._flush()
        except BaseException as e:
            _raise(e, None)

    async def statement(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """On a connection of the read pool, outside any transaction block: the statement is its
        own transaction, committed synchronously (the pool's sessions keep the server's
        synchronous_commit)."""
        try:
            async with self._read() as conn:
                return await conn.fetchrow(_sql(sql), *params)
        except BaseException as e:
            _raise(e, None)

    # -- reads ---------------------------------------------------------------------------------

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            async with self._read() as conn:
                return list(await conn.fetch(_sql(sql), *params))
        except BaseException as e:
            _raise(e, None)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        try:
            async with self._read() as conn:
                return await conn.fetchrow(_sql(sql), *params)
        except BaseException as e:
            _raise(e, None)

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[asyncpg.Connection]:
        if self._pool is None:
            raise StoreError("the store is not open")
        async with self._pool.acquire() as conn:
            yield conn


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The read pool's reset (asyncpg has rolled back any open transaction before it)."""


def _raise(e: BaseException, conn: Any) -> NoReturn:
    mapped = _mapped(e, conn)
    if mapped is e:
        raise e
    raise mapped from e


def _mapped(e: BaseException, conn: Any) -> BaseException:
    """PostgreSQL's errors as the API's: a constraint is a 409, anything else a 503."""
    if isinstance(e, (StoreError, Conflict)) or not isinstance(e, Exception):
        return e
    if isinstance(e, asyncpg.IntegrityConstraintViolationError):
        # The in-memory checks should have caught it; the schema's constraints are the backstop
        # against two controllers ever taking the same IP, MAC or VNI.
        return Conflict(f"The request conflicts with the stored state: {e}")
    if isinstance(e, _LOST):
        if conn is not None and not conn.is_closed():
            conn.terminate()
        return StoreError(f"database unavailable: {e}")
    if isinstance(e, asyncpg.PostgresError):
        return StoreError(f"database error: {e}")
    return e
