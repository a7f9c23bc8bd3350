"""The dispatcher: tails the change log and delivers ordered goal-state messages to every node.

A producer task places batches and publishes them; a committer task commits them in order once
confirmed (`max_inflight` batches may be in flight; 1 by default, see Settings). Per batch:

    read changes after the last placed rev (a few ms of linger, bounded by changes and ops)
    → place() each into per-node ops, compressed per resource
    → one message per node {v, node_id, kind, prev_rev, rev, ops}; nodes owed a snapshot get one
      instead (a few per batch, so a thousand restarting agents never stall the others' deltas)
    → publish all, confirms pipelined; retry what the broker did not confirm
    → ONE transaction: watermark = rev, each node's sent_rev, the topology rows that changed.

A crash anywhere before that transaction replays the same changes from W with the node's old
prev_rev: agents drop what they already applied (docs/architecture.md, "Revisions"). With batches in flight, a later
batch's prev_rev assumes the earlier one arrives; if it does not, the agent sees a gap and asks
for a snapshot, and the commit marks the node as owed one anyway. The topology is persisted with the
watermark (table sb_model) because placement needs the model *at W*, not the newer one in the
resources table. Agent feedback (hello, resync, status) arrives on the controller queue.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import structlog

from alcor.config import Config
from alcor.db.changelog import Change
from alcor.db.store import Migration, Store, StoreConfig
from alcor.southbound.goalstate import WIRE_TYPE, Topology, goal_entries, node_digest
from alcor.southbound.placement import Op, place
from alcor.transport import Address, Delivery, MqConfig, Transport
from alcor.wire import CONTROLLER_QUEUE, WIRE_VERSION

log = structlog.get_logger("alcor.southbound")

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
]


class Deposed(Exception):
    """Another controller leads now (a higher epoch is recorded): this one must stop dispatching."""
PORT_STATES = ("ACTIVE", "ERROR", "DOWN")


# Filled in from [mq] and [store] by `Settings.from_config`: not keys of [southbound].
_NOT_A_KEY = {"config": False}


@dataclass
class Settings:
    """[southbound]: how goal-state messages reach the nodes, and the dispatcher's tuning."""

    SECTION: ClassVar[str] = "southbound"
    # "inprocess" (the dev run) or "rabbitmq" (add "rabbitmq" to [kernel] plugins)
    transport: Literal["inprocess", "rabbitmq"] = "inprocess"
    max_changes: int = 2000  # change-log rows per batch
    max_ops: int = 200_000  # node-ops per batch (bounds message sizes and memory)
    linger: float = 0.003  # seconds to wait for more changes before sending a small batch
    publish_timeout: float = 5.0
    retry_deadline: float = 15.0  # after this, a node whose publishes fail is owed a snapshot
    # Batches published and awaiting confirms at once. 1 is best when batches fan out to most
    # nodes (each batch costs a message per node: fewer, larger batches win); more helps when
    # batches touch disjoint nodes and confirm latency, not broker throughput, is the limit.
    max_inflight: int = 1
    snapshots_per_batch: int = 16
    snapshot_ops_per_batch: int = 200_000
    # Seconds of snapshot building per batch (at least one snapshot): every node's deltas in the
    # batch wait for it, so a restart storm of big VPCs is spread over more batches.
    snapshot_budget: float = 0.05
    repair_interval: float = 30.0  # at most one digest-repair snapshot per node per interval
    # While changes keep coming, a node's expected digest (it moves with every batch) is
    # recomputed at most this often, and digest checks take at most verify_budget seconds per
    # batch; once the dispatcher has caught up, every pending report is checked.
    verify_interval: float = 1.0
    verify_budget: float = 0.005
    compact_interval: float = 60.0
    retention: int = field(default=10_000, metadata=_NOT_A_KEY)  # [store] retention
    stale_node_seconds: float = 3600.0
    status_flush: float = 0.2  # seconds between status write-backs
    status_flush_reports: int = 1000  # ...or sooner, once this many reports wait for it
    feedback_prefetch: int = 4096  # agent reports in flight to the controller, per broker
    controller_queue: str = CONTROLLER_QUEUE
    compress_over: int = 8192  # bytes; larger message bodies travel zlib-compressed (wire.md)
    # Several controllers on PostgreSQL: seconds a stalled leader keeps the lead before
    # PostgreSQL ends its quiet session and another controller takes over (election.py).
    leader_timeout: float = 5.0
    # [mq]: where the controller listens for agents' reports by default
    mq_url: str = field(default=MqConfig.url, metadata=_NOT_A_KEY)
    mq_vhost: str = field(default=MqConfig.vhost, metadata=_NOT_A_KEY)
    mq_exchange: str = field(default=MqConfig.exchange, metadata=_NOT_A_KEY)

    @classmethod
    def from_config(cls, config: Config) -> Settings:
        mq = config.get(MqConfig)
        return dataclasses.replace(
            config.get(cls),
            mq_url=mq.url,
            mq_vhost=mq.vhost,
            mq_exchange=mq.exchange,
            retention=config.get(StoreConfig).retention,
        )


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
    boot_id: str | None = None
    last_report: float | None = None
    digest_match: bool | None = None
    expected: tuple[int, str] | None = None  # (sent_rev, digest) cache
    verified_at: float = 0.0  # monotonic time `expected` was last computed
    last_repair: float = 0.0


@dataclass
class Batch:
    """One batch between placement and commit (several may be in flight)."""

    rev: int
    messages: list[tuple[str, str, bytes]]  # (node, kind, body)
    model_rows: list[tuple[str, str, str | None]]
    first_ts: list[float]
    changes: int
    ops: int
    new_brokers: list[Address]
    task: asyncio.Future[set[str]] = field(default_factory=lambda: asyncio.Future())
    published_at: float = 0.0
    confirmed_at: float = 0.0


@dataclass
class Metrics:
    batches: int = 0
    changes: int = 0
    messages: int = 0
    ops: int = 0
    snapshots: int = 0
    publish_failures: int = 0
    agent_messages: int = 0
    agent_rejected: int = 0
    digest_mismatches: int = 0
    # (commit → broker-confirmed) seconds of recent changes, for the benchmark and operators.
    latencies: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=100_000)
    )


class Dispatcher:
    def __init__(
        self,
        store: Store,
        transport: Transport,
        settings: Settings | None = None,
        set_statuses: Callable[[dict[str, tuple[str, str]]], Awaitable[None]] | None = None,
        epoch: int = 0,
        fence: Callable[[], bool] | None = None,
    ) -> None:
        """`epoch`: the leader epoch this dispatcher was elected with (on every message, checked
        at every commit); `fence()`: may it still publish (election.py). Defaults: a sole leader."""
        self.store = store
        self.epoch = epoch
        self.fence = fence or (lambda: True)
        self.deposed = False
        self.transport = transport
        self.settings = settings or Settings()
        self.set_statuses = set_statuses
        self.topology = Topology()
        self.watermark = 0  # last rev whose batch is confirmed and committed
        self.placed = 0  # last rev placed into the topology (ahead of W while batches fly)
        self.nodes: dict[str, NodeState] = {}
        self.metrics = Metrics()
        self._buffer: list[Change] = []
        self._kick = asyncio.Event()
        self._verify: set[str] = set()
        # port → (status, name of the reporting node), the latest report winning, until written.
        self._port_updates: dict[str, tuple[str, str]] = {}
        # Status reports not acknowledged yet: an agent reports a port's state once (wire.md), so
        # its message is acked only after the statuses it carried are committed; a crash before
        # that hands it back to the broker.
        self._held: list[Delivery] = []
        self._flush_now = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._last_compact = time.monotonic()
        self._pipeline: asyncio.Queue[Batch] = asyncio.Queue()
        self._slots = asyncio.Semaphore(self.settings.max_inflight)
        self._subscribed: set[tuple[str, str, str]] = set()
        self._reports_written: dict[str, tuple[Any, ...]] = {}
        self._subs: list[Any] = []

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Apply this module's migrations and load the state at the watermark."""
        await self.store.migrate("southbound", MIGRATIONS)
        await self._load()

    async def _load(self) -> None:
        row = await self.store.fetchone("SELECT value FROM sb_state WHERE key = 'watermark'")
        self.topology = Topology()
        self._buffer = []
        if row is None:
            if self.store.changes.horizon > 0:
                await self._rebuild("first start on a compacted change log")
                return
            self.watermark = 0
        else:
            self.watermark = int(row[0])
            rows = await self.store.fetchall("SELECT type, id, body FROM sb_model")
            self.topology.load((t, i, json.loads(b)) for t, i, b in rows)
        self.nodes = {}
        for node_id, sent_rev, need in await self.store.fetchall(
            "SELECT node_id, sent_rev, need_snapshot FROM sb_nodes"
        ):
            self.nodes[node_id] = NodeState(
                sent_rev=sent_rev,
                next_prev=sent_rev,
                need_snapshot=bool(need),
                persisted_need=bool(need),
                snapshot_reason="restart" if need else "",
            )
        self.placed = self.watermark
        log.info("dispatch.loaded", watermark=self.watermark, nodes=len(self.nodes))

    async def _rebuild(self, reason: str) -> None:
        """Start over from the resources table (the change log no longer reaches back to W):
        the model at the current rev, and a snapshot owed to every node."""
        async with self.store.transaction() as tx:
            # Inside the write transaction no other writer can move last_rev.
            rows = await tx.fetchall(
                "SELECT type, id, body FROM resources WHERE type IN (%s)"
                % ",".join("?" * len(WIRE_TYPE)),
                list(WIRE_TYPE),
            )
            rev = self.store.changes.last_rev
            await tx.execute("DELETE FROM sb_model")
            await tx.executemany(
                "INSERT INTO sb_model(type, id, body) VALUES (?, ?, ?)", [tuple(r) for r in rows]
            )
            await tx.execute("UPDATE sb_nodes SET need_snapshot = 1")
            await self._set_watermark(tx, rev)
        self.topology = Topology()
        self.topology.load((t, i, json.loads(b)) for t, i, b in rows)
        self.watermark = self.placed = rev
        self._buffer = []
        for n in set(self.topology.res["node"]) | set(self.nodes):
            st = self.nodes.setdefault(n, NodeState())
            st.need_snapshot = True
            st.persisted_need = n in self.nodes
            st.snapshot_reason = "rebuild"
        log.warning("dispatch.rebuilt", reason=reason, rev=rev, nodes=len(self.nodes))

    async def _set_watermark(self, tx: Any, rev: int) -> None:
        """The watermark, with the epoch it was written under; fails (Deposed) when a newer
        leader was elected: its row lock orders this commit before or after the takeover."""
        if self.epoch:
            row = await tx.fetchone(
                "SELECT epoch FROM sb_leader WHERE id = 1" + self.store.dialect.lock_row)
            if row is None or int(row[0]) != self.epoch:
                self.deposed = True
                raise Deposed(f"epoch {self.epoch} is over (now {row[0] if row else None})")
        await tx.executemany(
            "INSERT INTO sb_state(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [("watermark", str(rev)), ("epoch", str(self.epoch))],
        )

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self.run(), name="southbound.dispatcher")
        self._flusher = loop.create_task(self._flush_statuses(), name="southbound.statuses")

    async def stop(self) -> None:
        for sub in self._subs:
            try:
                await sub.cancel()
            except Exception:
                log.exception("dispatch.unsubscribe_failed")
        self._subs.clear()
        self._subscribed.clear()
        for task in (self._task, self._flusher):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._task = self._flusher = None

    async def run(self) -> None:
        """Supervise the two halves of the pipeline; on any failure, start again from W."""
        await self._listen_all()
        while True:
            tasks = (
                asyncio.ensure_future(self._produce()),
                asyncio.ensure_future(self._commit_loop()),
            )
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for t in done:
                    t.result()
            except asyncio.CancelledError:
                await self._halt(tasks)
                raise
            except Deposed as e:
                log.warning("dispatch.deposed", epoch=self.epoch, error=str(e))
                await self._halt(tasks)
                return
            except Exception:
                # The in-memory model is ahead of W: stop both halves, drop what is in flight,
                # reload from the database and replay (agents drop the duplicates).
                log.exception("dispatch.failed", watermark=self.watermark, placed=self.placed)
                await self._halt(tasks)
                await asyncio.sleep(1.0)
                await self._load()

    async def _halt(self, tasks: tuple[asyncio.Future[None], ...]) -> None:
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        for batch in self._drain_pipeline():
            batch.task.cancel()

    def _drain_pipeline(self) -> list[Batch]:
        out = []
        while not self._pipeline.empty():
            out.append(self._pipeline.get_nowait())
        self._slots = asyncio.Semaphore(self.settings.max_inflight)
        return out

    async def _produce(self) -> None:
        while True:
            await self._wait_for_work()
            await self._slots.acquire()
            batch = await self.prepare()
            if batch is None:
                self._slots.release()
                continue
            batch.published_at = time.time()
            batch.task = asyncio.ensure_future(self._publish(batch.messages))
            self._pipeline.put_nowait(batch)

    async def _commit_loop(self) -> None:
        while True:
            batch = await self._pipeline.get()
            confirmed = await batch.task
            batch.confirmed_at = time.time()
            await self._commit(batch, confirmed)
            self._slots.release()
            if self._between_batches():
                self._verify_digests()
                await self._maybe_compact()

    def _between_batches(self) -> bool:
        """Nothing in flight and nothing placed beyond W: the topology is the model at W, every
        node's goal at its sent_rev, so digests can be compared."""
        return self._pipeline.empty() and self.placed == self.watermark

    async def cycle(self) -> None:
        """One whole batch, without pipelining (tests and tools): prepare, publish, commit."""
        batch = await self.prepare()
        if batch is None:
            return
        batch.published_at = time.time()
        confirmed = await self._publish(batch.messages)
        batch.confirmed_at = time.time()
        await self._commit(batch, confirmed)
        self._verify_digests()
        await self._maybe_compact()

    async def _wait_for_work(self) -> None:
        if self._buffer or self.store.changes.last_rev > self.placed or self._owed():
            return
        waiter = asyncio.ensure_future(self.store.changes.wait(self.placed, timeout=1.0))
        kicked = asyncio.ensure_future(self._kick.wait())
        try:
            await asyncio.wait({waiter, kicked}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            kicked.cancel()
            self._kick.clear()

    def _owed(self) -> bool:
        return any(
            s.need_snapshot and n in self.topology.res["node"] for n, s in self.nodes.items()
        )

    # -- one batch -----------------------------------------------------------------------------

    def address(self, node_id: str) -> Address | None:
        body = self.topology.res["node"].get(node_id)
        if body is None:
            return None
        s = self.settings
        return Address(
            body.get("mq_url") or s.mq_url,
            body.get("mq_vhost") or s.mq_vhost,
            body.get("mq_exchange") or s.mq_exchange,
            body.get("mq_queue") or f"alcor.node.{node_id}",
        )

    async def _read(self) -> list[Change]:
        s = self.settings
        if self.placed < self.store.changes.horizon:
            if self.placed != self.watermark:
                raise RuntimeError("compacted past changes in flight")
            await self._rebuild(f"watermark {self.watermark} is below the compaction horizon")
        if not self._buffer:
            last = self.store.changes.last_rev
            if 0 < last - self.placed < s.max_changes and s.linger > 0:
                await asyncio.sleep(s.linger)
            self._buffer = await self.store.changes.read(self.placed, s.max_changes)
        return self._buffer

    async def prepare(self) -> Batch | None:
        """Read and place the next changes, build one message per node; None if nothing to send.

        Everything after the read is synchronous: no other task sees the topology half-placed.
        """
        s = self.settings
        t_read = time.perf_counter()
        changes = await self._read()
        t_place = time.perf_counter()
        per_node: dict[str, dict[tuple[str, str], Op]] = {}
        touched: dict[tuple[str, str], None] = {}
        n_ops = 0
        used = 0
        rev = self.placed
        first_ts: list[float] = []
        for c in changes:
            if c.type in WIRE_TYPE:
                for node, ops in place(self.topology, c).items():
                    bucket = per_node.setdefault(node, {})
                    for op in ops:
                        # Only the last state of a resource matters within one message.
                        bucket[(op["type"], op["id"])] = op
                    n_ops += len(ops)
                touched[(c.type, c.id)] = None
            used += 1
            rev = c.rev
            first_ts.append(c.ts)
            if n_ops >= s.max_ops:
                break
        del self._buffer[:used]

        messages: list[tuple[str, str, bytes]] = []  # (node, kind, body)
        cache: dict[int, bytes] = {}
        for node, bucket in per_node.items():
            if node not in self.topology.res["node"]:
                continue  # deleted in this batch: nobody left to tell
            ns = self.nodes.setdefault(node, NodeState())
            if ns.need_snapshot:
                # Owed a snapshot: deltas would be dropped anyway; the snapshot covers them.
                continue
            raw = _encode(node, "delta", ns.next_prev, rev, bucket.values(), cache, self.topology,
                          self.epoch)
            messages.append((node, "delta", _pack(raw, s.compress_over)))
            ns.next_prev = rev
        # Snapshots owed, a few per batch (count and ops), so deltas to others never wait long.
        snap_ops = 0
        snap_start = time.perf_counter()
        snap = [
            n for n, ns in self.nodes.items() if ns.need_snapshot and n in self.topology.res["node"]
        ][: s.snapshots_per_batch]
        for node in snap:
            if snap_ops >= s.snapshot_ops_per_batch or (
                snap_ops and time.perf_counter() - snap_start > s.snapshot_budget
            ):
                break
            t0 = time.perf_counter()
            st = self.nodes[node]
            raw, n = encode_snapshot(self.topology, node, st.next_prev, rev, self.epoch)
            snap_ops += n
            messages.append((node, "snapshot", _pack(raw, s.compress_over)))
            # Deltas of the following batches build on this snapshot; if it is not confirmed,
            # the commit puts the node back among those owed one.
            st.need_snapshot = False
            st.next_prev = rev
            log.info(
                "snapshot.built",
                node=node,
                rev=rev,
                ops=n,
                reason=st.snapshot_reason,
                ms=round((time.perf_counter() - t0) * 1000, 1),
            )
        if not used and not messages:
            return None
        self.placed = rev
        # The model rows as of this batch's rev, for sb_model (later batches move the topology on).
        model_rows = []
        for t, i in touched:
            body = self.topology.get(t, i)
            model_rows.append((t, i, None if body is None else json.dumps(body)))
        new_brokers = [a for t, i in touched if t == "node" and (a := self.address(i)) is not None]
        log.debug(
            "batch.prepared",
            rev=rev,
            changes=used,
            messages=len(messages),
            ops=n_ops,
            read_ms=round((t_place - t_read) * 1000, 1),
            place_ms=round((time.perf_counter() - t_place) * 1000, 1),
        )
        return Batch(rev, messages, model_rows, first_ts, used, n_ops, new_brokers)

    async def _publish(self, messages: list[tuple[str, str, bytes]]) -> set[str]:
        """Publish; retry what was not confirmed until the deadline. Returns the confirmed nodes."""
        s = self.settings
        pending: list[tuple[str, str, Address, bytes]] = []
        for node, kind, body in messages:
            addr = self.address(node)
            if addr is not None:
                pending.append((node, kind, addr, body))
        confirmed: set[str] = set()
        deadline = time.monotonic() + s.retry_deadline
        delay = 0.1
        while pending:
            await self._fenced()
            ok = await self.transport.publish([(a, b) for _, _, a, b in pending], s.publish_timeout)
            failed = []
            for item, good in zip(pending, ok, strict=True):
                if good:
                    confirmed.add(item[0])
                else:
                    failed.append(item)
            if not failed:
                break
            self.metrics.publish_failures += len(failed)
            if time.monotonic() >= deadline:
                for node, kind, _, _ in failed:
                    log.warning("delta.undeliverable", node=node, kind=kind)
                break
            log.warning("publish.retry", failed=len(failed), of=len(pending), delay=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            pending = failed
        return confirmed

    async def _fenced(self) -> None:
        """Wait while this controller may not act as leader (its lease is in doubt); a deposed
        one is stopped meanwhile by its election."""
        while not self.fence():
            if self.deposed:
                raise Deposed(f"epoch {self.epoch} is over")
            await asyncio.sleep(0.05)

    async def _commit(self, batch: Batch, confirmed: set[str]) -> None:
        """Record a confirmed batch: watermark, nodes' sent_rev, the model rows. One transaction."""
        rev, messages = batch.rev, batch.messages
        sent: dict[str, int] = {}  # node → need_snapshot after this batch
        for node, kind, _ in messages:
            st = self.nodes.setdefault(node, NodeState())
            if node in confirmed:
                sent[node] = int(st.need_snapshot and st.persisted_need and kind != "snapshot")
            else:
                # The chain to this node is broken (a message may be lost): snapshot later.
                st.need_snapshot = True
                st.snapshot_reason = st.snapshot_reason or "undeliverable"
        owed = [n for n, st in self.nodes.items() if st.need_snapshot and not st.persisted_need]
        model_rows = batch.model_rows
        async with self.store.transaction() as tx:
            await self._set_watermark(tx, rev)
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
                    [(n, self.nodes[n].sent_rev) for n in owed],
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
        self.watermark = rev
        for n in owed:
            self.nodes[n].persisted_need = True
        for node, need in sent.items():
            st = self.nodes[node]
            st.sent_rev = rev
            if not need:
                st.persisted_need = False
            # The agent's last report may now be comparable.
            if st.applied_rev is not None:
                self._verify.add(node)
        for node, kind, _ in messages:
            if kind == "snapshot" and node in confirmed:
                self.nodes[node].snapshot_reason = ""
                self.metrics.snapshots += 1
                log.info("snapshot.published", node=node, rev=rev)
        for ts in batch.first_ts:
            self.metrics.latencies.append(batch.confirmed_at - ts)
        m = self.metrics
        m.batches += 1
        m.changes += batch.changes
        m.messages += len(confirmed)
        m.ops += batch.ops
        log.debug(
            "batch.committed",
            rev=rev,
            changes=batch.changes,
            messages=len(messages),
            confirmed=len(confirmed),
            ops=batch.ops,
            publish_ms=round((batch.confirmed_at - batch.published_at) * 1000, 1),
            commit_ms=round((time.time() - batch.confirmed_at) * 1000, 1),
        )
        for addr in batch.new_brokers:
            await self.listen(addr)

    # -- agent feedback ------------------------------------------------------------------------

    async def listen(self, address: Address) -> None:
        """Consume the controller queue on this node's broker (once per broker and exchange)."""
        key = (address.url, address.vhost, address.exchange)
        if key in self._subscribed:
            return
        self._subscribed.add(key)
        q = address.with_queue(self.settings.controller_queue)
        try:
            self._subs.append(
                await self.transport.consume(q, self.on_agent_message, self.settings.feedback_prefetch)
            )
        except Exception:
            self._subscribed.discard(key)
            log.exception("feedback.listen_failed", url=_safe(address.url), vhost=address.vhost)

    async def _listen_all(self) -> None:
        default = Address(
            self.settings.mq_url, self.settings.mq_vhost, self.settings.mq_exchange, ""
        )
        await self.listen(default)
        for node in list(self.topology.res["node"]):
            addr = self.address(node)
            if addr is not None:
                await self.listen(addr)

    async def on_agent_message(self, delivery: Delivery) -> None:
        self.metrics.agent_messages += 1
        try:
            msg = json.loads(delivery.body)
            if not isinstance(msg, dict) or msg.get("v") != WIRE_VERSION:
                raise ValueError("not a v1 object")
            kind = msg.get("kind")
            node = msg.get("node_id")
            if not isinstance(node, str) or node not in self.topology.res["node"]:
                raise ValueError(f"unknown node {node!r}")
            if kind == "hello":
                st = self.nodes.setdefault(node, NodeState())
                st.boot_id = str(msg.get("boot_id"))
                st.last_report = time.time()
                log.info(
                    "agent.hello", node=node, boot_id=st.boot_id, applied_rev=msg.get("applied_rev")
                )
                self.request_snapshot(node, "hello")
            elif kind == "resync":
                log.info("agent.resync", node=node, applied_rev=msg.get("applied_rev"))
                self.request_snapshot(node, "gap")
            elif kind == "status":
                self._on_status(node, msg)
                if self.set_statuses is not None:
                    self._held.append(delivery)
                    if len(self._held) >= self.settings.status_flush_reports:
                        self._flush_now.set()
                    return  # acked by _flush_statuses once written
            else:
                raise ValueError(f"unknown kind {kind!r}")
        except (ValueError, TypeError) as e:
            self.metrics.agent_rejected += 1
            log.warning("feedback.rejected", error=str(e))
            await delivery.reject()
            return
        await delivery.ack()

    def _on_status(self, node: str, msg: dict[str, Any]) -> None:
        applied = msg.get("applied_rev")
        dig = msg.get("digest")
        ports = msg.get("ports") or {}
        if not isinstance(applied, int) or not isinstance(dig, str) or not isinstance(ports, dict):
            raise ValueError("status needs applied_rev, digest and ports")
        st = self.nodes.setdefault(node, NodeState())
        if st.applied_rev is not None and applied < st.applied_rev:
            # An older report than one already heard: it waited at a controller that was
            # deposed and handed it back to the queue. An agent's applied rev never goes back
            # (a restarted one gets a snapshot at the newest rev), so keep the newer one; the
            # port states it carries are still taken below.
            log.info("feedback.stale_report", node=node, applied_rev=applied, held=st.applied_rev)
        else:
            st.applied_rev, st.digest = applied, dig
        st.last_report = time.time()
        self._verify.add(node)
        if self._between_batches():
            self._verify_digests()
        # Whether the node hosts the port is checked where it is written, against the store: this
        # topology can be behind the agent (a controller that restarted replays the change log),
        # and a report, said once, must not be dropped for that.
        name = str(self.topology.res["node"][node].get("node_name") or "")
        for pid, status in ports.items():
            if status in PORT_STATES and isinstance(pid, str):
                self._port_updates[pid] = (status, name)
        self._kick.set()

    def request_snapshot(self, node: str, reason: str) -> None:
        st = self.nodes.setdefault(node, NodeState())
        if not st.need_snapshot:
            st.need_snapshot = True
            st.snapshot_reason = reason
        self._kick.set()

    async def _flush_statuses(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._flush_now.wait(), self.settings.status_flush)
            except TimeoutError:
                pass
            self._flush_now.clear()
            if self._verify and self._between_batches():
                self._verify_digests()  # reports deferred while busy
            if not self.fence():
                continue  # not leading (for now): reports stay unacknowledged
            held, self._held = self._held, []
            batch, self._port_updates = self._port_updates, {}
            if batch and self.set_statuses is not None:
                try:
                    await self.set_statuses(batch)
                except Exception:
                    log.exception("ports.status_failed", count=len(batch))
                    # Keep the reports (unacked) and retry at the next flush; a newer report
                    # received meanwhile wins.
                    for pid, report in batch.items():
                        self._port_updates.setdefault(pid, report)
                    self._held[:0] = held
                    continue
                log.debug("ports.status_set", count=len(batch), reports=len(held))
            for d in held:
                await d.ack()
            if self.store.shared:
                try:
                    await self._write_reports()
                except Exception:
                    log.exception("dispatch.reports_failed")

    async def _write_reports(self) -> None:
        """On a shared store, each node's last agent report as this leader saw it, for the
        other controllers' views (GET /v2.0/alcor/nodes/{id} on any of them)."""
        rows = []
        for node, st in self.nodes.items():
            report = (st.applied_rev, st.digest_match, st.last_report)
            if st.last_report is not None and self._reports_written.get(node) != report:
                rows.append((node, st.applied_rev, None if st.digest_match is None
                             else int(st.digest_match), st.last_report))
                self._reports_written[node] = report
        if rows:
            async with self.store.transaction() as tx:
                await tx.executemany(
                    "INSERT INTO sb_reports(node_id, applied_rev, digest_match, last_report) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT(node_id) DO UPDATE SET "
                    "applied_rev = excluded.applied_rev, digest_match = excluded.digest_match, "
                    "last_report = excluded.last_report", rows)

    async def read_view(self) -> None:
        """A standby's view of the leader's state (not dispatching): watermark, each node's
        stream and its agent's last report, as the leader recorded them."""
        row = await self.store.fetchone("SELECT value FROM sb_state WHERE key = 'watermark'")
        self.watermark = self.placed = int(row[0]) if row else 0
        nodes: dict[str, NodeState] = {}
        for node_id, sent_rev, need in await self.store.fetchall(
            "SELECT node_id, sent_rev, need_snapshot FROM sb_nodes"
        ):
            nodes[node_id] = NodeState(sent_rev=sent_rev, next_prev=sent_rev,
                                       need_snapshot=bool(need), persisted_need=bool(need))
        for node_id, applied, match, last in await self.store.fetchall(
            "SELECT node_id, applied_rev, digest_match, last_report FROM sb_reports"
        ):
            st = nodes.setdefault(node_id, NodeState())
            st.applied_rev, st.last_report = applied, last
            st.digest_match = None if match is None else bool(match)
        self.nodes = nodes

    def _verify_digests(self) -> None:
        """Compare agents' digests with the goal state (only between batches: the topology is then
        the model at W, which is every node's goal at its sent_rev)."""
        s = self.settings
        now = time.monotonic()
        busy = self.store.changes.last_rev > self.watermark
        later = []
        while self._verify:
            node = self._verify.pop()
            st = self.nodes.get(node)
            if st is None or st.applied_rev is None or st.digest is None or st.need_snapshot:
                continue
            if not (st.sent_rev <= st.applied_rev <= self.watermark):
                continue  # behind (more is on its way) or not comparable
            if st.expected is None or st.expected[0] != st.sent_rev:
                if busy and (
                    now - st.verified_at < s.verify_interval
                    or time.monotonic() - now > s.verify_budget
                ):
                    later.append(node)
                    continue
                st.expected = (st.sent_rev, node_digest(self.topology, node))
                st.verified_at = now
            match = st.expected[1] == st.digest
            if match != st.digest_match:
                log.info("node.sync", node=node, in_sync=match, applied_rev=st.applied_rev)
            st.digest_match = match
            if not match:
                self.metrics.digest_mismatches += 1
                now = time.monotonic()
                if now - st.last_repair >= s.repair_interval:
                    st.last_repair = now
                    log.warning("node.digest_mismatch", node=node, applied_rev=st.applied_rev)
                    self.request_snapshot(node, "digest")
        self._verify.update(later)

    async def _maybe_compact(self) -> None:
        s = self.settings
        if time.monotonic() - self._last_compact < s.compact_interval:
            return
        self._last_compact = time.monotonic()
        floor = self.watermark
        cutoff = time.time() - s.stale_node_seconds
        for st in self.nodes.values():
            if st.applied_rev is not None and (st.last_report or 0) >= cutoff:
                floor = min(floor, st.applied_rev)
        below = floor - s.retention + 1
        if below > self.store.changes.horizon + 1:
            n = await self.store.changes.compact(below)
            log.info("changes.compacted", below=below, rows=n)

    # -- visibility ----------------------------------------------------------------------------

    def node_sync(self, node_id: str) -> dict[str, Any]:
        """What GET /v2.0/alcor/nodes/{id} shows of this node's southbound sync."""
        st = self.nodes.get(node_id) or NodeState()
        last = st.last_report
        return {
            "goal_rev": st.sent_rev,
            "applied_rev": st.applied_rev,
            "in_sync": bool(st.digest_match)
            and st.applied_rev == st.sent_rev
            and not st.need_snapshot,
            "digest_match": st.digest_match,
            "snapshot_pending": st.need_snapshot,
            "last_report_at": None
            if last is None
            else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last)),
        }


def _json_str(v: str) -> bytes:
    # UUIDs need no escaping; anything else goes through the encoder.
    if v.isascii() and '"' not in v and "\\" not in v and v.isprintable():
        return b'"' + v.encode() + b'"'
    return json.dumps(v).encode()


def _op_json(rev: int, wtype: str, id: str, verb: str, rn: int, body: bytes) -> bytes:
    return b'{"rev":%d,"type":"%s","id":%s,"op":"%s","revision_number":%d,"body":%s}' % (
        rev,
        wtype.encode(),
        _json_str(id),
        verb.encode(),
        rn,
        body,
    )


def _encode(
    node: str,
    kind: str,
    prev: int,
    rev: int,
    ops: Any,
    cache: dict[int, bytes],
    t: Topology | None = None,
    epoch: int = 0,
) -> bytes:
    """Serialise a message; an op shared by many nodes' messages is encoded once, and a port's
    body JSON comes from the topology's cache."""
    parts = []
    for op in ops:
        b = cache.get(id(op))
        if b is None:
            body = op["body"]
            if t is not None and op["type"] == "port" and body is not None:
                b = _op_json(
                    op["rev"],
                    "port",
                    op["id"],
                    op["op"],
                    op["revision_number"],
                    t.port_json(op["id"], body),
                )
            else:
                b = json.dumps(op, separators=(",", ":")).encode()
            cache[id(op)] = b
        parts.append(b)
    head = json.dumps(
        {"v": WIRE_VERSION, "epoch": epoch, "node_id": node, "kind": kind, "prev_rev": prev,
         "rev": rev},
        separators=(",", ":"),
    ).encode()
    return head[:-1] + b',"ops":[' + b",".join(parts) + b"]}"


def encode_snapshot(t: Topology, node: str, prev: int, rev: int, epoch: int = 0
                    ) -> tuple[bytes, int]:
    """A node's whole goal state as one snapshot message; returns (body, number of ops).

    Port bodies (nearly all of a big snapshot) come from the topology's JSON cache, so a
    snapshot of 10,000 neighbours is mostly string joining.
    """
    parts = []
    for wtype, id, body, rn in goal_entries(t, node):
        if wtype == "port":
            bj = t.port_json(id, body)
        else:
            bj = json.dumps(body, separators=(",", ":")).encode()
        parts.append(_op_json(rev, wtype, id, "upsert", rn, bj))
    head = json.dumps(
        {"v": WIRE_VERSION, "epoch": epoch, "node_id": node, "kind": "snapshot",
         "prev_rev": prev, "rev": rev},
        separators=(",", ":"),
    ).encode()
    return head[:-1] + b',"ops":[' + b",".join(parts) + b"]}", len(parts)


def _pack(raw: bytes, over: int) -> bytes:
    """Compress a large message (zlib, RFC 1950: it starts with 0x78, JSON never does); a
    neighbour-heavy message shrinks 4-10x, which is what the broker's disk and network see."""
    if 0 < over < len(raw):
        return zlib.compress(raw, 1)
    return raw


def _safe(url: str) -> str:
    """A broker URL without its password, for logs."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
