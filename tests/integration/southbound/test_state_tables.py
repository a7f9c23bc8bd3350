"""The dispatcher's tables (alcor/southbound/state.py) on both stores: a batch's commit leaves the
same rows whichever engine holds them (PostgreSQL writes it as one statement, SQLite in a
transaction), and a commit under an epoch that is over writes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from alcor.db.backends import open_store
from alcor.db.store import Store, StoreConfig
from alcor.southbound import state as tables
from tests.support.stores import BACKENDS, store_settings


@pytest.fixture(params=BACKENDS)
async def store(request, tmp_path):
    async with store_settings(request.param, tmp_path) as settings:
        s = open_store(StoreConfig(**settings))
        await s.open()
        await s.migrate("southbound", tables.MIGRATIONS)
        try:
            yield s
        finally:
            await s.close()


async def _rows(store: Store) -> dict[str, Any]:
    return {
        "state": sorted(tuple(r) for r in await store.fetchall("SELECT key, value FROM sb_state")),
        "nodes": sorted(tuple(r) for r in await store.fetchall(
            "SELECT node_id, sent_rev, need_snapshot FROM sb_nodes")),
        "vpcs": sorted(tuple(r) for r in await store.fetchall(
            "SELECT vpc_id, sent_rev FROM sb_vpcs")),
        "model": sorted(tuple(r) for r in await store.fetchall(
            "SELECT type, id, body FROM sb_model")),
    }


async def _lead(store: Store, epoch: int) -> None:
    async with store.state_transaction() as tx:
        await tx.execute("INSERT INTO sb_leader(id, epoch, holder, since) VALUES (1, ?, 'me', 0) "
                         "ON CONFLICT(id) DO UPDATE SET epoch = excluded.epoch", (epoch,))


async def test_batches_leave_the_same_rows_on_both_stores(store: Store) -> None:
    await _lead(store, 7)
    await tables.commit(store, 7, 10, {"n1": 0, "n2": 0}, [("n3", 4)],
                        [("port", "p1", '{"id":"p1"}'), ("port", "p2", '{"id":"p2"}')],
                        {"v1": 10, "v2": 10})
    # n2 is sent to and owed a snapshot in the same batch; n3 is still owed (its sent_rev kept);
    # p1 changes, p2 goes, v2 goes back to unicast.
    await tables.commit(store, 7, 12, {"n1": 0, "n2": 0}, [("n2", 10), ("n4", 0)],
                        [("port", "p1", '{"id":"p1","x":1}'), ("port", "p2", None)],
                        {"v1": 12, "v2": None})
    assert await _rows(store) == {
        "state": [("epoch", "7"), ("watermark", "12")],
        "nodes": [("n1", 12, 0), ("n2", 12, 1), ("n3", 4, 1), ("n4", 0, 1)],
        "vpcs": [("v1", 12)],
        "model": [("port", "p1", '{"id":"p1","x":1}')],
    }


async def test_a_deposed_leaders_commit_writes_nothing(store: Store) -> None:
    await _lead(store, 7)
    await tables.commit(store, 7, 10, {"n1": 0}, [], [("port", "p1", "{}")], {"v1": 10})
    before = await _rows(store)
    await _lead(store, 8)  # another controller took over
    with pytest.raises(tables.Deposed):
        await tables.commit(store, 7, 11, {"n1": 0, "n2": 0}, [("n3", 0)],
                            [("port", "p1", None), ("port", "p9", "{}")], {"v1": None, "v2": 11})
    assert await _rows(store) == before
