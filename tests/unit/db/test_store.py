"""The store's commit: durable stores fsync on a thread of their own, and a request cancelled
meanwhile neither loses nor half-applies its transaction."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from alcor.db.store import Store


async def test_a_transaction_cancelled_during_its_commit_still_lands_whole(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db", "FULL")
    await store.open()
    try:
        assert store._fsync is not None
        # Hold the commit thread so the COMMIT is still pending when the task is cancelled.
        store._fsync.submit(time.sleep, 0.3)
        hooks: list[str] = []
        entered = asyncio.Event()

        async def write() -> None:
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO meta(key, value) VALUES ('k', 'v')")
                tx.record("node", "n1", "create", {"id": "n1"})
                tx.after_commit(lambda: hooks.append("committed"))
                entered.set()

        task = asyncio.ensure_future(write())
        await entered.wait()
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert hooks == ["committed"] and store.changes.last_rev == 1
        assert await store.fetchone("SELECT value FROM meta WHERE key = 'k'") == ("v",)
        async with store.transaction() as tx:  # the writer is free and consistent
            tx.record("node", "n2", "create", {"id": "n2"})
        assert [c.id for c in await store.changes.read(0)] == ["n1", "n2"]
    finally:
        await store.close()


async def test_a_store_without_fsync_commits_inline(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db", "NORMAL")
    await store.open()
    try:
        assert store._fsync is None
        async with store.transaction() as tx:
            tx.record("node", "n1", "create", {"id": "n1"})
        assert store.changes.last_rev == 1
    finally:
        await store.close()
