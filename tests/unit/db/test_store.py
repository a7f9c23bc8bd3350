"""Group commit: a durable store answers a transaction only after an fsync of the WAL that began
after its COMMIT, lets concurrent commits share one, and shows nothing to readers before."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from alcor.db.store import SqliteStore, Store, StoreError


async def _write(store: Store, i: int, hooks: list[int] | None = None) -> None:
    async with store.transaction() as tx:
        tx.record("node", f"n{i}", "create", {"id": f"n{i}"})
        if hooks is not None:
            tx.after_commit(lambda: hooks.append(i))


async def _durable_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, before_fsync: Callable[[int], object]
) -> SqliteStore:
    """An open FULL store whose every fsync first calls `before_fsync` (a delay, a gate)."""
    real = os.fsync

    def fsync(fd: int) -> None:
        before_fsync(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store = SqliteStore(tmp_path / "s.db", "FULL")
    await store.open()
    return store


async def test_concurrent_commits_share_wal_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def slow(fd: int) -> None:
        calls.append(fd)
        time.sleep(0.02)

    store = await _durable_store(tmp_path, monkeypatch, before_fsync=slow)
    try:
        await asyncio.gather(*(_write(store, i) for i in range(50)))
        assert store.changes.last_rev == 50
        assert 1 <= len(calls) <= 5, calls  # 50 commits, a handful of fsyncs
        assert [c.rev for c in await store.changes.read(0, 100)] == list(range(1, 51))
    finally:
        await store.close()


async def test_nothing_is_answered_or_shown_before_its_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    store = await _durable_store(tmp_path, monkeypatch, before_fsync=lambda fd: gate.wait(10))
    try:
        hooks: list[int] = []
        first = asyncio.ensure_future(_write(store, 1, hooks))
        await asyncio.sleep(0.1)
        # Committed in SQLite (in-memory indexes follow at once, the writer is free) ...
        assert hooks == [1]
        second = asyncio.ensure_future(_write(store, 2, hooks))
        await asyncio.sleep(0.1)
        assert hooks == [1, 2]
        # ... but not answered, and not visible to change-log readers, until the WAL is synced.
        assert not first.done() and not second.done()
        assert store.changes.last_rev == 0 and await store.changes.read(0) == []
        gate.set()
        await asyncio.gather(first, second)
        assert [c.id for c in await store.changes.read(0)] == ["n1", "n2"]
    finally:
        gate.set()
        await store.close()


async def test_a_failed_fsync_fails_the_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStore(tmp_path / "s.db", "FULL")
    await store.open()

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    try:
        monkeypatch.setattr(os, "fsync", broken)
        with pytest.raises(StoreError, match="durable"):
            await _write(store, 1)
        # The row is in SQLite all the same, so readers see the change log whole.
        assert store.changes.last_rev == 1
    finally:
        monkeypatch.undo()
        await store.close()


async def test_a_store_without_fsync_commits_inline(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db", "NORMAL")
    await store.open()
    try:
        await _write(store, 1)
        assert store.changes.last_rev == 1 and store._syncer is None
    finally:
        await store.close()
