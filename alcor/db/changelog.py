"""The change log: every committed mutation, in rev order, readable since any rev and awaitable.

Rows are appended by `Store.transaction()` in the same transaction as the resource they describe
(on PostgreSQL, other controllers' rows also arrive through `committed`, in rev order);
this class is the reading side: page through rows after a rev, wait for the next rev without
polling, and compact below a watermark.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from alcor.db.store import Store


@dataclass(frozen=True, slots=True)
class Change:
    rev: int
    ts: float
    type: str
    id: str
    op: str  # "create" | "update" | "delete"
    project_id: str | None
    vpc_id: str | None
    revision_number: int | None
    body: dict[str, Any] | None
    # The body as JSON when the writer already serialised it for the resource row (saves a dump).
    text: str | None = field(default=None, compare=False, repr=False)

    def row(self) -> tuple[Any, ...]:
        body = self.text
        if body is None and self.body is not None:
            body = json.dumps(self.body, separators=(",", ":"))
        return (self.rev, self.ts, self.type, self.id, self.op, self.project_id, self.vpc_id,
                self.revision_number, body)

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Change:
        body = None if row[8] is None else json.loads(row[8])
        return cls(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], body)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rev": self.rev, "time": self.ts, "type": self.type, "id": self.id, "op": self.op,
            "project_id": self.project_id, "vpc_id": self.vpc_id,
            "revision_number": self.revision_number, "body": self.body,
        }


TAIL_ROWS = 20_000


class ChangeLog:
    def __init__(self, store: Store) -> None:
        self._store = store
        self.last_rev = 0
        # Rows below the horizon were compacted away; a reader behind it needs a full snapshot.
        self.horizon = 0
        # Set, then replaced, at every commit: waiters block on the current one without polling.
        self._new_rev = asyncio.Event()
        # The newest rows as committed (what the dispatcher tails): reading them back from SQLite
        # through the reader thread cost more than placing them. Rows, not Change objects, so
        # every reader decodes its own bodies and none can alter another's.
        self._tail: collections.deque[tuple[Any, ...]] = collections.deque(maxlen=TAIL_ROWS)

    async def load(self) -> None:
        row = await self._store.fetchone("SELECT MAX(rev) FROM changes")
        h = await self._store.fetchone("SELECT value FROM meta WHERE key = 'changes.horizon'")
        self.horizon = int(h[0]) if h else 0
        self.last_rev = max(row[0] or 0, self.horizon)

    def committed(self, rows: list[tuple[Any, ...]]) -> None:
        """A transaction's change rows (`Change.row()`) are durable (on a shared store, also the
        rows other controllers committed, as this one learns of them)."""
        if rows and rows[0][0] <= self.last_rev:
            rows = [r for r in rows if r[0] > self.last_rev]
            if not rows:
                return
        if self._tail and self._tail[-1][0] != rows[0][0] - 1:
            self._tail.clear()  # not contiguous (never expected): serve reads from SQLite
        self._tail.extend(rows)
        self.last_rev = rows[-1][0]
        self._new_rev.set()
        self._new_rev = asyncio.Event()

    def reset(self, rev: int) -> None:
        """The store rebuilt its state at `rev`: forget the tail, wake the waiters."""
        self._tail.clear()
        self.last_rev = max(rev, self.horizon)
        self._new_rev.set()
        self._new_rev = asyncio.Event()

    async def read(self, since: int, limit: int = 1000) -> list[Change]:
        """Changes with rev > since, oldest first, at most `limit`."""
        tail = self._tail
        if tail and tail[0][0] <= since + 1 and since >= self.horizon:
            start = since + 1 - tail[0][0]
            return [Change.from_row(r) for r in itertools.islice(tail, start, start + limit)]
        # Bounded by last_rev: rows committed but not yet durable (the store's group commit)
        # are in the file already and must not be seen before they are.
        rows = await self._store.fetchall(
            "SELECT rev, ts, type, id, op, project_id, vpc_id, revision_number, body "
            "FROM changes WHERE rev > ? AND rev <= ? ORDER BY rev LIMIT ?",
            (since, self.last_rev, limit),
        )
        return [Change.from_row(r) for r in rows]

    async def wait(self, after: int, timeout: float | None = None) -> int:
        """Return once last_rev > after (or on timeout); returns last_rev."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self.last_rev <= after:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                break
            try:
                await asyncio.wait_for(self._new_rev.wait(), remaining)
            except TimeoutError:
                break
        return self.last_rev

    async def compact(self, below: int) -> int:
        """Delete rows with rev < below (never the newest row). Returns how many went."""
        below = min(below, self.last_rev)
        if below <= self.horizon:
            return 0
        async with self._store.transaction() as tx:
            n = await tx.execute("DELETE FROM changes WHERE rev < ?", (below,))
            await tx.execute(
                "INSERT INTO meta(key, value) VALUES ('changes.horizon', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(below - 1),),
            )
        self.horizon = below - 1
        return n
