"""Who dispatches: exactly one controller at a time, elected, with an epoch that rises at every
takeover.

On PostgreSQL every controller runs an `Election` on a session of its own. The leader is the one
holding a session-level advisory lock on it; the others try for the lock twice a second. Holding
it, a controller bumps `sb_leader.epoch` and dispatches with that epoch: every message carries it
(agents refuse a lower one than they have seen), and every dispatcher commit checks it against
`sb_leader` in the same transaction, so a deposed leader's late commits fail.

Death and stalls. A leader that dies (SIGKILL, host lost) loses its session, and with it the lock,
at once. A leader that stalls (SIGSTOP, a frozen VM, a network partition) keeps its TCP session,
so the session is opened with `idle_session_timeout = leader_timeout`: it pings every
`leader_timeout / 5`, and PostgreSQL ends a session that went quiet for longer, which frees the
lock. The stalled leader itself stops publishing once its last good ping is older than
`leader_timeout` minus a margin (`valid()`), before the server can have given the lock away; when it
resumes, its ping fails and it steps down.

On SQLite there is one controller: `SoleLeader` is elected at start, with the next epoch.
The table `sb_controllers` lists every controller (id, host, API URL, last ping) for operators.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from alcor.db.store import Store

log = structlog.get_logger("alcor.southbound.election")

LEADER_LOCK = 0x616C636F7264  # "alcord": the advisory lock whose holder dispatches
MARGIN = 1.0  # seconds: the leader stops publishing this long before the server may depose it

Elected = Callable[[int], Awaitable[None]]
Deposed = Callable[[], Awaitable[None]]


@dataclass
class ControllerInfo:
    """This controller, as `sb_controllers` and GET /v2.0/alcor/southbound show it."""

    id: str
    host: str
    url: str
    started_at: float

    @classmethod
    def here(cls, url: str) -> ControllerInfo:
        return cls(f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
                   socket.gethostname(), url, time.time())


def next_epoch(previous: int) -> int:
    """Above the last one recorded, and at least the wall clock in milliseconds: should the
    database lose its last commits (an asynchronous failover), epochs still never go back below
    what agents have seen."""
    return max(previous + 1, int(time.time() * 1000))


async def bump_epoch(tx: Any, holder: str) -> int:
    """Take the lead in this transaction: the next epoch, recorded with who and since when."""
    await tx.execute(
        "INSERT INTO sb_leader(id, epoch, holder, since) VALUES (1, 0, '', 0) "
        "ON CONFLICT(id) DO NOTHING")
    row = await tx.fetchone("SELECT epoch FROM sb_leader WHERE id = 1")
    epoch = next_epoch(int(row[0]))
    await tx.execute("UPDATE sb_leader SET epoch = ?, holder = ?, since = ? WHERE id = 1",
                     (epoch, holder, time.time()))
    return epoch


class SoleLeader:
    """SQLite: the only controller leads from its start."""

    def __init__(self, store: Store, me: ControllerInfo) -> None:
        self.store = store
        self.me = me
        self.epoch = 0
        self.leading = False
        self.leader_since: float | None = None

    def valid(self) -> bool:
        return self.leading

    async def elect(self) -> int:
        async with self.store.transaction() as tx:
            self.epoch = await bump_epoch(tx, self.me.id)
            await _register(tx, self.me)
        self.leading = True
        self.leader_since = time.time()
        log.info("leader.elected", controller=self.me.id, epoch=self.epoch)
        return self.epoch

    async def stop(self) -> None:
        self.leading = False


class Election:
    """PostgreSQL: an advisory lock held on a session of this controller's own."""

    def __init__(self, url: str, store: Store, me: ControllerInfo, timeout: float = 3.0,
                 retry: float = 0.25) -> None:
        self.url = url
        self.store = store
        self.me = me
        self.timeout = max(timeout, 2 * MARGIN + 0.5)
        self.retry = retry
        self.epoch = 0
        self.leading = False
        self.leader_since: float | None = None
        self._last_ping = 0.0  # monotonic time of the last ping PostgreSQL answered as leader
        self._conn: Any = None

    def valid(self) -> bool:
        """May this controller still act as leader (publish)? False well before the server could
        have ended its session and let another take over."""
        return self.leading and time.monotonic() - self._last_ping < self.timeout - MARGIN

    async def run(self, elected: Elected, deposed: Deposed) -> None:
        import asyncpg

        while True:
            conn = None
            try:
                conn = await asyncpg.connect(
                    self.url, timeout=self.timeout,
                    server_settings={"application_name": "alcor-election",
                                     "idle_session_timeout": str(int(self.timeout * 1000))})
                self._conn = conn
                await self._register(conn)
                while True:
                    if not self.leading:
                        async with asyncio.timeout(self.timeout - MARGIN):
                            got = await conn.fetchval(
                                "SELECT pg_try_advisory_lock($1)", LEADER_LOCK)
                        if got:
                            await self._take_lead(conn, elected)
                    t0 = time.monotonic()
                    # asyncio.timeout, not wait_for (which can swallow a cancellation on 3.11).
                    async with asyncio.timeout(self.timeout - MARGIN):
                        await conn.execute(
                            "UPDATE sb_controllers SET seen_at = $1, url = $3 WHERE id = $2",
                            time.time(), self.me.id, self.me.url)
                    if self.leading:
                        self._last_ping = t0
                    await asyncio.sleep(self.retry if not self.leading else self.timeout / 5)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("election.session_lost", controller=self.me.id, error=str(e),
                            leading=self.leading)
            finally:
                if conn is not None:
                    conn.terminate()  # with it goes the lock
            if self.leading:
                self.leading = False
                log.warning("leader.deposed", controller=self.me.id, epoch=self.epoch)
                await deposed()
            await asyncio.sleep(self.retry)

    async def _take_lead(self, conn: Any, elected: Elected) -> None:
        async with conn.transaction():
            row = await conn.fetchrow("SELECT epoch FROM sb_leader WHERE id = 1 FOR UPDATE")
            epoch = next_epoch(row[0] if row else 0)
            await conn.execute(
                "INSERT INTO sb_leader(id, epoch, holder, since) VALUES (1, $1, $2, $3) "
                "ON CONFLICT(id) DO UPDATE SET epoch = excluded.epoch, holder = excluded.holder, "
                "since = excluded.since", epoch, self.me.id, time.time())
        self.epoch = epoch
        self.leading = True
        self.leader_since = time.time()
        self._last_ping = time.monotonic()
        log.info("leader.elected", controller=self.me.id, epoch=epoch)
        await elected(epoch)

    async def _register(self, conn: Any) -> None:
        await conn.execute(
            "INSERT INTO sb_controllers(id, host, url, started_at, seen_at) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT(id) DO UPDATE SET seen_at = excluded.seen_at",
            self.me.id, self.me.host, self.me.url, self.me.started_at, time.time())

    def resign(self) -> None:
        """Give the lead up (this controller cannot dispatch): the session goes, with the lock."""
        if self._conn is not None:
            self._conn.terminate()

    async def stop(self) -> None:
        self.leading = False


async def _register(tx: Any, me: ControllerInfo) -> None:
    await tx.execute(
        "INSERT INTO sb_controllers(id, host, url, started_at, seen_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT(id) DO UPDATE SET seen_at = excluded.seen_at",
        (me.id, me.host, me.url, me.started_at, time.time()))
