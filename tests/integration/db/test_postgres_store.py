"""The PostgreSQL store on the real server: what several controllers sharing one database rely on.

Each `PgStore` here stands for one controller (its own writer, readers and listener connections).
"""

from __future__ import annotations

import asyncio
import random

import asyncpg
import pytest

from alcor.db.changelog import Change
from alcor.db.postgres import BEGUN_FOR, MAX_BATCH, PgStore
from alcor.db.store import CORE_MIGRATIONS, StoreError
from alcor.errors import Conflict
from tests.support.postgres import temp_database


@pytest.fixture
async def url():
    async with temp_database() as u:
        yield u


async def _open(url: str, n: int = 1) -> list[PgStore]:
    stores = [PgStore(url) for _ in range(n)]
    await asyncio.gather(*(s.open() for s in stores))  # migrations race: each applies once
    return stores


async def _close(stores: list[PgStore]) -> None:
    for s in stores:
        await s.close()


async def _write(store: PgStore, tag: str, n: int = 1) -> None:
    async with store.transaction() as tx:
        for i in range(n):
            await tx.execute(
                "INSERT INTO resources(type, id, project_id, parent_id, body) VALUES (?, ?, ?, ?, ?)",
                ("node", f"{tag}-{i}", "p", None, '{"id": "%s-%d"}' % (tag, i)))
            tx.record("node", f"{tag}-{i}", "create", {"id": f"{tag}-{i}"})
        await asyncio.sleep(random.random() * 0.002)  # hold the transaction open a little


async def test_concurrent_writers_on_three_controllers_get_gap_free_revs_in_commit_order(url):
    stores = await _open(url, 3)
    followed: dict[int, list[int]] = {i: [] for i in range(3)}
    for i, s in enumerate(stores):
        s.follow(lambda c, i=i: followed[i].append(c.rev))
    try:
        await asyncio.gather(*(
            _write(s, f"c{i}-{k}", n=1 + k % 3) for k in range(30) for i, s in enumerate(stores)))
        total = sum(1 + k % 3 for k in range(30)) * 3
        conn = await asyncpg.connect(url)
        try:
            revs = [r[0] for r in await conn.fetch("SELECT rev FROM changes ORDER BY rev")]
            counter = await conn.fetchval("SELECT rev FROM rev_counter")
            versions = await conn.fetch("SELECT owner, version FROM schema_versions")
        finally:
            await conn.close()
        assert revs == list(range(1, total + 1)) and counter == total
        assert [tuple(v) for v in versions] == [("store", len(CORE_MIGRATIONS))]
        # A transaction's rows are contiguous: its writer held the counter row throughout.
        rows = await stores[0].changes.read(0, total)
        by_tx: dict[str, list[int]] = {}
        for c in rows:
            by_tx.setdefault(c.id.rsplit("-", 1)[0], []).append(c.rev)
        assert all(r == list(range(r[0], r[0] + len(r))) for r in by_tx.values())
        for s in stores:
            await asyncio.wait_for(s.changes.wait(total - 1, timeout=5), 6)
            assert s.changes.last_rev == total
            assert [c.rev for c in await s.changes.read(0, total)] == list(range(1, total + 1))
        # Each controller followed exactly the others' changes, in rev order.
        for i in range(3):
            assert followed[i] == sorted(followed[i])
            assert len(set(followed[i])) == len(followed[i])
        assert sorted(followed[0] + [c.rev for c in rows if c.id.startswith("c0-")]) == revs
    finally:
        await _close(stores)


async def test_a_listener_hears_another_controllers_commit_at_once(url):
    a, b = await _open(url, 2)
    try:
        seen: list[Change] = []
        b.follow(seen.append)
        waiter = asyncio.ensure_future(b.changes.wait(0, timeout=5))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await _write(a, "x")
        assert await waiter == 1
        assert loop.time() - t0 < 0.5  # NOTIFY, not the one-second poll
        assert [c.id for c in seen] == ["x-0"]
    finally:
        await _close([a, b])


async def test_a_constraint_is_a_conflict_and_nothing_is_half_written(url):
    (s,) = await _open(url)
    try:
        async with s.transaction() as tx:
            await tx.execute("INSERT INTO mac_allocations(network_id, mac_address, port_id) "
                             "VALUES (?, ?, ?)", ("n", "fa:16:3e:00:00:01", "p1"))
            tx.record("port", "p1", "create", {"id": "p1"})
        with pytest.raises(Conflict):
            async with s.transaction() as tx:
                await tx.execute("INSERT INTO ip_allocations(subnet_id, ip_address, port_id) "
                                 "VALUES (?, ?, ?)", ("s", "10.0.0.5", "p2"))
                tx.record("port", "p2", "create", {"id": "p2"})
                await tx.execute("INSERT INTO mac_allocations(network_id, mac_address, port_id) "
                                 "VALUES (?, ?, ?)", ("n", "fa:16:3e:00:00:01", "p2"))
        assert await s.fetchall("SELECT * FROM ip_allocations") == []
        await _write(s, "after")
        assert [c.rev for c in await s.changes.read(0)] == [1, 2]  # the failed one took no rev
    finally:
        await s.close()


async def _kill_writer(url: str) -> None:
    admin = await asyncpg.connect(url)
    try:
        q = ("FROM pg_stat_activity WHERE application_name = 'alcor-writer' "
             "AND datname = current_database()")
        await admin.execute(f"SELECT pg_terminate_backend(pid) {q}")
        for _ in range(500):  # the backend exits a moment after the signal
            if not await admin.fetchval(f"SELECT count(*) {q}"):
                break
            await asyncio.sleep(0.01)
    finally:
        await admin.close()


async def test_a_connection_lost_mid_transaction_is_a_503_then_the_store_rebuilds(url):
    (s,) = await _open(url)
    reloads: list[int] = []

    async def reload() -> None:
        reloads.append(s.changes.last_rev)

    s.on_reload(reload)
    try:
        await _write(s, "a")
        with pytest.raises(StoreError):
            async with s.transaction() as tx:
                tx.record("node", "b", "create", {"id": "b"})
                await _kill_writer(url)
                await tx.execute("SELECT 1")
        await _write(s, "c")
        # The outcome of a cut-off transaction is unknown: indexes are rebuilt from the tables.
        assert reloads == [1]
        assert [c.id for c in await s.changes.read(0)] == ["a-0", "c-0"]
        # A connection that died while idle is replaced without failing anyone.
        await _kill_writer(url)
        await _write(s, "d")
        assert [c.rev for c in await s.changes.read(0)] == [1, 2, 3]
    finally:
        await s.close()


async def test_an_unreachable_database_is_one_line(tmp_path):
    s = PgStore("postgresql://postgres:pw@127.0.0.1:1/nothing", connect_timeout=1)
    with pytest.raises(StoreError) as e:
        await s.open()
    assert "pw" not in str(e.value) and "127.0.0.1:1" in str(e.value)


async def test_a_writer_stalled_inside_a_transaction_does_not_hold_the_others(url):
    a, b = await _open(url, 2)
    try:
        stalled = asyncio.Event()

        async def stall() -> None:
            async with a.transaction() as tx:
                tx.record("node", "stalled", "create", {"id": "stalled"})
                stalled.set()
                await asyncio.sleep(5)  # as if its process were stopped: the counter row is held
                await tx.execute("SELECT 1")

        stalling = asyncio.ensure_future(stall())
        await stalled.wait()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await _write(b, "other")  # waits for the counter row until PostgreSQL ends a's session
        waited = loop.time() - t0
        assert 2 < waited < 4.5, waited
        with pytest.raises(StoreError):
            await stalling
        await _write(a, "after")  # a reconnects (and rebuilds its indexes)
        assert [c.id for c in await a.changes.read(0)] == ["other-0", "after-0"]
    finally:
        await _close([a, b])


async def test_concurrent_commits_share_flushes(url):
    (s,) = await _open(url)
    flushes = 0
    real = s._flush_wal

    async def counted() -> int:
        nonlocal flushes
        flushes += 1
        await asyncio.sleep(0.01)  # a slow disk: commits meanwhile wait for the next flush
        return await real()

    s._flush_wal = counted  # type: ignore[method-assign]
    try:
        writes = [asyncio.ensure_future(_write(s, f"g{i}")) for i in range(40)]
        seen: list[int] = []
        while not all(w.done() for w in writes):
            # What readers see only grows.
            seen.append(s.changes.last_rev)
            await asyncio.sleep(0.002)
        await asyncio.gather(*writes)
        assert s.changes.last_rev == 40 and seen == sorted(seen)
        assert flushes < 40, flushes  # commits shared flushes
        assert [c.rev for c in await s.changes.read(0, 100)] == list(range(1, 41))
    finally:
        await s.close()


async def test_a_request_cancelled_mid_statement_leaves_the_writer_usable(url):
    (s,) = await _open(url)
    try:
        async def slow() -> None:
            async with s.transaction() as tx:
                tx.record("node", "gone", "create", {"id": "gone"})
                await tx.execute("SELECT pg_sleep(2)")

        task = asyncio.ensure_future(slow())
        await asyncio.sleep(0.2)
        task.cancel()  # as aiohttp does when the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await task
        await _write(s, "next")
        assert [c.id for c in await s.changes.read(0)] == ["next-0"]
    finally:
        await s.close()


def _node_row(id: str) -> tuple[str, str, str, None, str]:
    return ("node", id, "p", None, '{"id": "%s"}' % id)


async def test_requests_queued_behind_a_writer_share_its_transaction_and_fail_alone(url):
    (s,) = await _open(url)
    xids: dict[int, int] = {}
    try:
        async def request(i: int) -> None:
            async with s.transaction() as tx:
                xids[i] = (await tx.fetchone("SELECT txid_current()"))[0]
                if i == 2:  # wrote, then failed: its savepoint is rolled back
                    await tx.execute("INSERT INTO resources(type, id, project_id, parent_id, "
                                     "body) VALUES (?, ?, ?, ?, ?)", _node_row("n2"))
                    raise Conflict("refused after writing")
                if i == 3:  # failed before writing anything
                    raise Conflict("refused")
                await tx.insert("resources(type, id, project_id, parent_id, body)",
                                [_node_row(f"n{i}")])
                tx.record("node", f"n{i}", "create", {"id": f"n{i}"})
                if i == 0:
                    await asyncio.sleep(0.05)  # the others queue meanwhile

        results = await asyncio.gather(*(request(i) for i in range(6)), return_exceptions=True)
        assert [type(r).__name__ for r in results] == [
            "NoneType", "NoneType", "Conflict", "Conflict", "NoneType", "NoneType"]
        assert len(set(xids.values())) == 1  # one PostgreSQL transaction for all six
        ids = [r[0] for r in await s.fetchall("SELECT id FROM resources ORDER BY id")]
        assert ids == ["n0", "n1", "n4", "n5"]
        assert [(c.rev, c.id) for c in await s.changes.read(0)] == [
            (1, "n0"), (2, "n1"), (3, "n4"), (4, "n5")]
        assert (await s.fetchone("SELECT rev FROM rev_counter"))[0] == 4
    finally:
        await s.close()


async def test_a_batch_whose_commit_fails_fails_every_request_in_it_and_writes_nothing(url):
    (s,) = await _open(url)
    reloads = 0

    async def reloaded() -> None:
        nonlocal reloads
        reloads += 1

    s.on_reload(reloaded)
    try:
        async def request(i: int) -> None:
            async with s.transaction() as tx:
                # Both take the same row (what the in-memory checks exist to prevent): the
                # schema's constraint refuses the batch's last statement.
                await tx.insert("resources(type, id, project_id, parent_id, body)",
                                [_node_row("same" if i < 2 else f"n{i}")])
                tx.record("node", f"n{i}", "create", {"id": f"n{i}"})
                if i == 0:
                    await asyncio.sleep(0.05)

        results = await asyncio.gather(*(request(i) for i in range(3)), return_exceptions=True)
        assert all(isinstance(r, Conflict) for r in results), results
        assert await s.fetchall("SELECT id FROM resources") == []
        assert await s.changes.read(0) == [] and s.changes.last_rev == 0
        await _write(s, "after")
        assert reloads == 1  # the indexes had followed the batch: rebuilt from the tables
        assert [(c.rev, c.id) for c in await s.changes.read(0)] == [(1, "after-0")]
    finally:
        await s.close()


async def test_a_follower_registered_late_still_gets_what_was_committed_since_open(url):
    # A controller starting: its store is open and following, its managers load one by one and
    # register afterwards. A commit that lands in between must still reach a manager that
    # registers after the store has moved past it.
    a, b = await _open(url, 2)
    try:
        await _write(b, "between")
        for _ in range(200):  # a's follower hears it (NOTIFY) with nobody registered yet
            if a._index_rev >= 1:
                break
            await asyncio.sleep(0.01)
        assert a._index_rev >= 1
        seen: list[str] = []
        a.follow(lambda c: seen.append(c.id))
        await _write(a, "mine")  # its catch-up hands the row over
        assert seen == ["between-0"]
    finally:
        await _close([a, b])


async def test_every_controllers_readers_get_all_rows_in_rev_order_and_nothing_is_kept_after(url):
    """Rows a controller's writer read from the others (for its indexes) reach its change-log
    readers once durable, in rev order with its own, and none stay kept in memory."""
    stores = await _open(url, 2)
    try:
        await asyncio.gather(*(
            _write(s, f"c{i}-{k}", n=1 + k % 2) for k in range(40) for i, s in enumerate(stores)))
        conn = await asyncpg.connect(url)
        try:
            table = [(r[0], r[1]) for r in await conn.fetch("SELECT rev, id FROM changes ORDER BY rev")]
        finally:
            await conn.close()
        for s in stores:
            for _ in range(200):  # the last NOTIFY may still be on its way
                if s.changes.last_rev == table[-1][0]:
                    break
                await asyncio.sleep(0.01)
            assert [(c.rev, c.id) for c in await s.changes.read(0, limit=1000)] == table
            assert s._ahead == {}
    finally:
        await _close(stores)


async def test_a_batch_begun_with_the_last_commit_reads_the_others_rows_under_the_lock(url):
    """Requests still waiting when a batch commits: the next transaction is begun with that
    COMMIT, and its start (counter locked, the other controllers' rows since) is one round
    trip; a commit of another controller that got the counter in between is applied first."""
    a, b = await _open(url, 2)
    seen: list[str] = []
    a.follow(lambda c: seen.append(c.id))
    try:
        held = asyncio.Event()

        async def request(i: int) -> None:
            async with a.transaction() as tx:
                await tx.insert("resources(type, id, project_id, parent_id, body)",
                                [_node_row(f"a{i}")])
                tx.record("node", f"a{i}", "create", {"id": f"a{i}"})
                if i == 0:
                    held.set()
                    await asyncio.sleep(0.1)  # the others queue meanwhile

        first = asyncio.ensure_future(request(0))
        await held.wait()
        # More than one batch holds: the first commits with requests still waiting. b's
        # write waits for the counter row meanwhile, and gets it before a's next batch.
        others = [asyncio.ensure_future(request(i)) for i in range(1, MAX_BATCH + 4)]
        await asyncio.sleep(0.02)
        await asyncio.gather(first, *others, _write(b, "b"))
        assert a._locked_opens >= 1
        total = MAX_BATCH + 5  # a0 to a(MAX_BATCH + 3), and b
        conn = await asyncpg.connect(url)
        try:
            table = [(r[0], r[1]) for r in await conn.fetch("SELECT rev, id FROM changes ORDER BY rev")]
        finally:
            await conn.close()
        assert [r for r, _ in table] == list(range(1, total + 1))
        assert seen == ["b-0"]  # applied once, before a's own rows that follow it
        for _ in range(200):
            if a.changes.last_rev == total:
                break
            await asyncio.sleep(0.01)
        assert [(c.rev, c.id) for c in await a.changes.read(0, limit=1000)] == table
    finally:
        await _close([a, b])


async def test_a_transaction_begun_for_a_batch_that_never_came_is_ended(url):
    """The server ends a session idle in a transaction after a few seconds (and a lost writer
    means rebuilding the indexes): an unused transaction begun with a COMMIT is rolled back
    well before, and one found too old is replaced."""
    (s,) = await _open(url)
    reloads = 0

    async def reloaded() -> None:
        nonlocal reloads
        reloads += 1

    s.on_reload(reloaded)
    q = "SELECT state FROM pg_stat_activity WHERE application_name = 'alcor-writer'"
    try:
        async with s._lock:
            conn = await s._writer_conn()
            await conn.execute("BEGIN")
            s._begun_since(conn)
        assert (await s.fetchone(q))[0] == "idle in transaction"
        await asyncio.sleep(BEGUN_FOR + 0.5)
        assert (await s.fetchone(q))[0] == "idle"
        # Found too old by the next batch (its end not yet run): rolled back, begun afresh.
        async with s._lock:
            await conn.execute("BEGIN")
            s._begun = (conn, asyncio.get_running_loop().time() - BEGUN_FOR - 1)
        await _write(s, "x")
        await asyncio.sleep(3.5)  # past the server's idle-in-transaction limit
        await _write(s, "y")
        assert reloads == 0 and s._locked_opens == 0
        assert [c.id for c in await s.changes.read(0)] == ["x-0", "y-0"]
    finally:
        await s.close()
