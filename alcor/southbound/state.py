"""The dispatcher's state: what it knows of every node's stream, and its tables (migrations).

In memory, `DispatchState` is the model placement works on (the topology), the watermark W (the
last rev whose messages were all confirmed and committed), the rev placed so far, and one
`NodeState` per node. In the database (table owner: southbound), `sb_state` (watermark, epoch),
`sb_nodes` (each node's `sent_rev`, `need_snapshot`), `sb_vpcs` (each multicast VPC chain's
`sent_rev`) and `sb_model` (the Neutron bodies *as of W*) are written in one transaction per batch (`commit`); `sb_leader`, `sb_controllers` and
`sb_reports` serve the election and the standbys' view. A restart loads them back (`load`); a
change log compacted past W makes the model be rebuilt from the resources table (`rebuild`).

The dispatcher's pipeline mutates this state; the agents' feedback (feedback.py) records their
reports in the same `NodeState`s.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from alcor.db.store import Migration, Store, Tx
from alcor.southbound.goalstate import WIRE_TYPE, Topology

MIGRATIONS: list[Migration] = [
    {
        "sqlite": """
    CREATE TABLE sb_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE sb_nodes (node_id TEXT PRIMARY KEY, sent_rev INTEGER NOT NULL,
                           need_snapshot INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE sb_model (type TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL,
                           PRIMARY KEY (type, id)) WITHOUT ROWID;
    """,
        "postgresql": """
    CREATE TABLE sb_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE sb_nodes (node_id TEXT PRIMARY KEY, sent_rev BIGINT NOT NULL,
                           need_snapshot INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE sb_model (type TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL,
                           PRIMARY KEY (type, id));
    """,
    },
    # 2: who leads (one row, its epoch rising at every takeover: alcor/southbound/election.py),
    # every controller, and each node's last agent report as the leader saw it (for the others).
    """
    CREATE TABLE sb_leader (id INTEGER PRIMARY KEY CHECK (id = 1), epoch BIGINT NOT NULL,
                            holder TEXT NOT NULL, since DOUBLE PRECISION NOT NULL);
    CREATE TABLE sb_controllers (id TEXT PRIMARY KEY, host TEXT NOT NULL, url TEXT NOT NULL,
                                 started_at DOUBLE PRECISION NOT NULL,
                                 seen_at DOUBLE PRECISION NOT NULL);
    CREATE TABLE sb_reports (node_id TEXT PRIMARY KEY, applied_rev BIGINT, digest_match INTEGER,
                             last_report DOUBLE PRECISION);
    """,
    # 3: the multicast VPC chains (wire v2): a row per VPC served on one, with the rev of its
    # last confirmed message (the chain's start when it has none yet).
    """
    CREATE TABLE sb_vpcs (vpc_id TEXT PRIMARY KEY, sent_rev BIGINT NOT NULL);
    """,
]


class Deposed(Exception):
    """Another controller leads now (a higher epoch is recorded): this one must stop dispatching."""


@dataclass
class NodeState:
    """What the dispatcher knows of one node's stream and of its agent."""

    sent_rev: int = 0  # rev of the last committed (confirmed) message to this node
    next_prev: int = 0  # prev_rev of its next message: sent_rev plus what is in flight
    need_snapshot: bool = False
    persisted_need: bool = False  # need_snapshot as the database has it
    snapshot_reason: str = ""
    applied_rev: int | None = None
    digest: str | None = None
    chains: dict[str, int] | None = None  # the VPC chains' revs, as its agent last reported
    boot_id: str | None = None
    last_report: float | None = None
    digest_match: bool | None = None
    # ((sent_rev, the followed VPC chains' sent_revs), digest) cache
    expected: tuple[Any, str] | None = None
    verified_at: float = 0.0  # monotonic time `expected` was last computed
    last_repair: float = 0.0
    # VPC chains its agent saw a gap on: owed that VPC's state (in memory: an agent repeats
    # its resync until answered, so a restarted controller hears it again)
    vpc_resync: set[str] = field(default_factory=set)


@dataclass
class VpcState:
    """A multicast VPC's chain, as the dispatcher knows it."""

    sent_rev: int = 0  # rev of its last committed (confirmed) message, or of its start
    next_prev: int = 0  # prev_rev of its next message


@dataclass
class DispatchState:
    """The dispatcher's in-memory state (see the module docstring)."""

    topology: Topology = field(default_factory=Topology)
    watermark: int = 0  # last rev whose batch is confirmed and committed
    placed: int = 0  # last rev placed into the topology (ahead of W while batches fly)
    nodes: dict[str, NodeState] = field(default_factory=dict)
    vpcs: dict[str, VpcState] = field(default_factory=dict)  # the multicast VPCs' chains

    def followed(self, node_id: str) -> dict[str, int]:
        """The VPC chains a node follows (it is a member of a multicast VPC) → their sent_rev."""
        vpcs_of = self.topology.vpcs_of.get(node_id, {})
        return {v: vs.sent_rev for v, vs in self.vpcs.items() if v in vpcs_of}

    def node(self, node_id: str) -> NodeState:
        st = self.nodes.get(node_id)
        if st is None:
            st = self.nodes[node_id] = NodeState()
        return st

    def request_snapshot(self, node_id: str, reason: str) -> None:
        st = self.node(node_id)
        if not st.need_snapshot:
            st.need_snapshot = True
            st.snapshot_reason = reason

    def owed(self) -> list[str]:
        """Nodes owed a snapshot that still exist."""
        known = self.topology.res["node"]
        return [n for n, s in self.nodes.items() if s.need_snapshot and n in known]


# -- the tables --------------------------------------------------------------------------------


async def load(store: Store) -> DispatchState | None:
    """The state at the watermark as the last leader committed it; None when there is no
    watermark yet but the change log was compacted (nothing to replay from: rebuild)."""
    row = await store.fetchone("SELECT value FROM sb_state WHERE key = 'watermark'")
    state = DispatchState()
    if row is None:
        if store.changes.horizon > 0:
            return None
    else:
        state.watermark = int(row[0])
        rows = await store.fetchall("SELECT type, id, body FROM sb_model")
        state.topology.load((t, i, json.loads(b)) for t, i, b in rows)
    for node_id, sent_rev, need in await store.fetchall(
        "SELECT node_id, sent_rev, need_snapshot FROM sb_nodes"
    ):
        state.nodes[node_id] = NodeState(
            sent_rev=sent_rev,
            next_prev=sent_rev,
            need_snapshot=bool(need),
            persisted_need=bool(need),
            snapshot_reason="restart" if need else "",
        )
    for vpc_id, sent_rev in await store.fetchall("SELECT vpc_id, sent_rev FROM sb_vpcs"):
        state.vpcs[vpc_id] = VpcState(sent_rev, sent_rev)
    state.placed = state.watermark
    return state


async def rebuild(store: Store, epoch: int, nodes: dict[str, NodeState]) -> DispatchState:
    """Start over from the resources table (the change log no longer reaches back to W): the
    model at the current rev, and a snapshot owed to every node (`nodes`: those known so far)."""
    async with store.transaction() as tx:
        # Inside the write transaction no other writer can move last_rev.
        rows = await tx.fetchall(
            "SELECT type, id, body FROM resources WHERE type IN (%s)"
            % ",".join("?" * len(WIRE_TYPE)),
            list(WIRE_TYPE),
        )
        rev = store.changes.last_rev
        await tx.execute("DELETE FROM sb_model")
        await tx.executemany(
            "INSERT INTO sb_model(type, id, body) VALUES (?, ?, ?)", [tuple(r) for r in rows]
        )
        await tx.execute("UPDATE sb_nodes SET need_snapshot = 1")
        # Every chain starts over as unicast: the snapshots owed carry all.
        await tx.execute("DELETE FROM sb_vpcs")
        await set_watermark(tx, store, rev, epoch)
    state = DispatchState(watermark=rev, placed=rev, nodes=nodes)
    state.topology.load((t, i, json.loads(b)) for t, i, b in rows)
    for n in set(state.topology.res["node"]) | set(nodes):
        st = state.node(n)
        st.need_snapshot = True
        st.persisted_need = n in nodes
        st.snapshot_reason = "rebuild"
    return state


async def set_watermark(tx: Tx, store: Store, rev: int, epoch: int) -> None:
    """The watermark, with the epoch it was written under; fails (Deposed) when a newer
    leader was elected: its row lock orders this commit before or after the takeover."""
    if epoch:
        row = await tx.fetchone("SELECT epoch FROM sb_leader WHERE id = 1" + store.dialect.lock_row)
        if row is None or int(row[0]) != epoch:
            raise Deposed(f"epoch {epoch} is over (now {row[0] if row else None})")
    await tx.executemany(
        "INSERT INTO sb_state(key, value) VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [("watermark", str(rev)), ("epoch", str(epoch))],
    )


async def commit(
    store: Store,
    epoch: int,
    rev: int,
    sent: dict[str, int],
    owed: list[tuple[str, int]],
    model_rows: list[tuple[str, str, str | None]],
    vpcs: Mapping[str, int | None] | None = None,
) -> None:
    """One batch, in one transaction: W = rev; `sent` nodes' sent_rev = rev (value: their
    need_snapshot); `owed` (node, sent_rev) now owed a snapshot; the topology rows it changed
    (body None: deleted); `vpcs`: the multicast chains' sent_rev (None: back to unicast).
    Dispatcher state only (no change row): beside the API's writers, not behind the counter
    row."""
    if store.shared:
        await _commit_statement(store, epoch, rev, sent, owed, model_rows, vpcs or {})
        return
    async with store.state_transaction() as tx:
        await set_watermark(tx, store, rev, epoch)
        if vpcs:
            await tx.executemany(
                "DELETE FROM sb_vpcs WHERE vpc_id = ?", [(v,) for v, r in vpcs.items() if r is None]
            )
            await tx.executemany(
                "INSERT INTO sb_vpcs(vpc_id, sent_rev) VALUES (?, ?) "
                "ON CONFLICT(vpc_id) DO UPDATE SET sent_rev = excluded.sent_rev",
                [(v, r) for v, r in vpcs.items() if r is not None],
            )
        if sent:
            await tx.executemany(
                "INSERT INTO sb_nodes(node_id, sent_rev, need_snapshot) VALUES (?, ?, ?) "
                "ON CONFLICT(node_id) DO UPDATE SET sent_rev = excluded.sent_rev, "
                "need_snapshot = excluded.need_snapshot",
                [(n, rev, need) for n, need in sent.items()],
            )
        if owed:
            await tx.executemany(
                "INSERT INTO sb_nodes(node_id, sent_rev, need_snapshot) VALUES (?, ?, 1) "
                "ON CONFLICT(node_id) DO UPDATE SET need_snapshot = 1",
                owed,
            )
        if model_rows:
            await tx.executemany(
                "DELETE FROM sb_model WHERE type = ? AND id = ?",
                [(t, i) for t, i, b in model_rows if b is None],
            )
            await tx.executemany(
                "INSERT INTO sb_model(type, id, body) VALUES (?, ?, ?) "
                "ON CONFLICT(type, id) DO UPDATE SET body = excluded.body",
                [r for r in model_rows if r[2] is not None],
            )


# `commit` on PostgreSQL, as one statement: a statement is a transaction of its own, so the
# batch's state costs one round trip instead of eight (BEGIN, the leader row, each table's
# upsert, COMMIT, the pool's reset), and the leader is on one of them for every batch. The leader
# row is locked first (`ok` reads it FOR UPDATE), as in set_watermark, so the commit is ordered
# before or after a takeover; with another epoch recorded, every write is joined with an empty
# `ok` and nothing is written. No two parts touch the same row (PostgreSQL would apply only one
# of them): `sent` and `owed` nodes are disjoint, as are deleted and upserted VPCs and models.
COMMIT_STATEMENT = """
WITH leader AS (SELECT epoch FROM sb_leader WHERE id = 1 FOR UPDATE),
ok AS (SELECT 1 FROM (SELECT 1) one
       WHERE ?::bigint = 0 OR EXISTS (SELECT 1 FROM leader WHERE epoch = ?::bigint)),
st AS (INSERT INTO sb_state(key, value) SELECT s.key, s.value
       FROM (VALUES ('watermark', ?::text), ('epoch', ?::text)) AS s(key, value), ok
       ON CONFLICT(key) DO UPDATE SET value = excluded.value),
vd AS (DELETE FROM sb_vpcs WHERE vpc_id = ANY(?::text[]) AND EXISTS (SELECT 1 FROM ok)),
vu AS (INSERT INTO sb_vpcs(vpc_id, sent_rev) SELECT v.id, v.rev
       FROM unnest(?::text[], ?::bigint[]) AS v(id, rev), ok
       ON CONFLICT(vpc_id) DO UPDATE SET sent_rev = excluded.sent_rev),
ns AS (INSERT INTO sb_nodes(node_id, sent_rev, need_snapshot) SELECT n.id, ?::bigint, n.need
       FROM unnest(?::text[], ?::int[]) AS n(id, need), ok
       ON CONFLICT(node_id) DO UPDATE SET sent_rev = excluded.sent_rev,
       need_snapshot = excluded.need_snapshot),
no AS (INSERT INTO sb_nodes(node_id, sent_rev, need_snapshot) SELECT n.id, n.rev, 1
       FROM unnest(?::text[], ?::bigint[]) AS n(id, rev), ok
       ON CONFLICT(node_id) DO UPDATE SET need_snapshot = 1),
md AS (DELETE FROM sb_model WHERE (type, id) IN (SELECT * FROM unnest(?::text[], ?::text[]))
       AND EXISTS (SELECT 1 FROM ok)),
mu AS (INSERT INTO sb_model(type, id, body) SELECT m.type, m.id, m.body
       FROM unnest(?::text[], ?::text[], ?::text[]) AS m(type, id, body), ok
       ON CONFLICT(type, id) DO UPDATE SET body = excluded.body)
SELECT EXISTS (SELECT 1 FROM ok), (SELECT epoch FROM leader)
"""


async def _commit_statement(store: Store, epoch: int, rev: int, sent: dict[str, int],
                            owed: list[tuple[str, int]],
                            model_rows: list[tuple[str, str, str | None]],
                            vpcs: Mapping[str, int | None]) -> None:
    sent = dict(sent)
    owed_only = []
    for n, r in owed:
        if n in sent:
            sent[n] = 1  # sent this batch and owed a snapshot all the same
        else:
            owed_only.append((n, r))
    dropped = [v for v, r in vpcs.items() if r is None]
    kept = [(v, r) for v, r in vpcs.items() if r is not None]
    gone = [(t, i) for t, i, b in model_rows if b is None]
    bodies = [r for r in model_rows if r[2] is not None]
    ok, now = await store.statement(COMMIT_STATEMENT, (
        epoch, epoch, str(rev), str(epoch), dropped,
        [v for v, _ in kept], [r for _, r in kept],
        rev, list(sent), list(sent.values()),
        [n for n, _ in owed_only], [r for _, r in owed_only],
        [t for t, _ in gone], [i for _, i in gone],
        [t for t, _, _ in bodies], [i for _, i, _ in bodies], [b for _, _, b in bodies]))
    if not ok:
        raise Deposed(f"epoch {epoch} is over (now {now})")


async def write_reports(store: Store, rows: list[tuple[str, Any, Any, Any]]) -> None:
    """Nodes' last agent reports (node, applied_rev, digest_match, last_report), for the
    standbys' view."""
    async with store.state_transaction() as tx:
        await tx.executemany(
            "INSERT INTO sb_reports(node_id, applied_rev, digest_match, last_report) "
            "VALUES (?, ?, ?, ?) ON CONFLICT(node_id) DO UPDATE SET "
            "applied_rev = excluded.applied_rev, digest_match = excluded.digest_match, "
            "last_report = excluded.last_report", rows)


async def read_view(store: Store) -> tuple[int, dict[str, NodeState]]:
    """A standby's view of the leader's state: the watermark, each node's stream and its agent's
    last report, as the leader recorded them."""
    row = await store.fetchone("SELECT value FROM sb_state WHERE key = 'watermark'")
    watermark = int(row[0]) if row else 0
    nodes: dict[str, NodeState] = {}
    for node_id, sent_rev, need in await store.fetchall(
        "SELECT node_id, sent_rev, need_snapshot FROM sb_nodes"
    ):
        nodes[node_id] = NodeState(sent_rev=sent_rev, next_prev=sent_rev,
                                   need_snapshot=bool(need), persisted_need=bool(need))
    for node_id, applied, match, last in await store.fetchall(
        "SELECT node_id, applied_rev, digest_match, last_report FROM sb_reports"
    ):
        st = nodes.setdefault(node_id, NodeState())
        st.applied_rev, st.last_report = applied, last
        st.digest_match = None if match is None else bool(match)
    return watermark, nodes
