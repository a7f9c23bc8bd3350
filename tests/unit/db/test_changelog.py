"""The change log serves recent rows from memory exactly as the database has them (SQLite and
PostgreSQL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from alcor.db.backends import open_store
from alcor.db.store import Store, StoreConfig
from tests.support.stores import BACKENDS, store_settings


async def _commit(store: Store, n: int, fail: bool = False) -> None:
    async with store.transaction() as tx:
        for i in range(n):
            body = {"id": f"p{store.changes.last_rev + i}", "name": "ü\"x", "n": i}
            tx.record("port", body["id"], "create", body)
        if fail:
            raise ValueError("abandoned")


@pytest.mark.parametrize("backend", BACKENDS)
async def test_reads_from_memory_equal_reads_from_the_database(tmp_path: Path, backend: str) -> None:
    async with store_settings(backend, tmp_path) as settings:
        await _memory_and_database(settings)


async def _memory_and_database(settings: dict[str, Any]) -> None:
    store = open_store(StoreConfig(**settings))
    await store.open()
    try:
        await _commit(store, 3)
        with pytest.raises(ValueError):
            await _commit(store, 5, fail=True)  # rolled back: takes no rev
        for n in (1, 7, 40):
            await _commit(store, n)
        last = store.changes.last_rev
        assert last == 51
        memory = {
            (s, lim): await store.changes.read(s, lim)
            for s in (0, 2, 3, 30, 50, 51)
            for lim in (1, 10, 1000)
        }
        await store.changes.compact(10)
    finally:
        await store.close()

    again = open_store(StoreConfig(**settings))  # a fresh log: nothing in memory, all from the database
    await again.open()
    try:
        assert again.changes.last_rev == 51
        for (s, lim), got in memory.items():
            if s < 9:
                continue  # compacted away since
            assert got == await again.changes.read(s, lim), (s, lim)
            assert [c.rev for c in got] == list(range(s + 1, min(last, s + lim) + 1))
        # Readers get their own bodies: changing one does not change what the next reader sees.
        await _commit(again, 2)
        first = await again.changes.read(51, 10)
        first[0].body["name"] = "changed"  # type: ignore[index]
        assert (await again.changes.read(51, 10))[0].body["name"] == 'ü"x'  # type: ignore[index]
        assert again.changes.horizon == 9
        assert [c.rev for c in await again.changes.read(0, 3)] == [10, 11, 12]
    finally:
        await again.close()
