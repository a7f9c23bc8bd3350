"""The dispatcher: tails the change log and delivers ordered goal-state messages to every node.

A producer task plans batches and publishes them; a committer task commits them in order once
confirmed (`max_inflight` batches may be in flight; 1 by default, see Settings). Per batch:

    read changes after the last placed rev (a few ms of linger, bounded by changes and ops)
    → plan (plan.py, pure): each change placed into per-node ops, the last state per resource,
      the ports' own hosts first
    → encode (encode.py): one message per node {v, node_id, kind, prev_rev, rev, ops}; nodes owed
      a snapshot get one instead (a few per batch, so a thousand restarting agents never stall
      the others' deltas)
    → publish all, confirms pipelined; retry what the broker did not confirm
    → ONE transaction (state.py): watermark = rev, each node's sent_rev, the topology rows that
      changed.

A crash anywhere before that transaction replays the same changes from W with the node's old
prev_rev: agents drop what they already applied (docs/architecture.md, "Revisions"). With
batches in flight, a later batch's prev_rev assumes the earlier one arrives; if it does not, the
agent sees a gap and asks for a snapshot, and the commit marks the node as owed one anyway. The
topology is persisted with the watermark (table sb_model) because placement needs the model *at
W*, not the newer one in the resources table. Agent feedback (hello, resync, status, digests) is
feedback.py's.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import gc
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import structlog

import alcor.southbound.state as tables
from alcor.config import Config, ConfigError
from alcor.db.changelog import Change
from alcor.db.store import Store, StoreConfig
from alcor.southbound.encode import encode_delta, encode_snapshot, pack, vpc_snapshot
from alcor.southbound.feedback import Feedback
from alcor.southbound.goalstate import Key, Topology
from alcor.southbound.placement import Op
from alcor.southbound.plan import BatchPlan, Channels, plan
from alcor.southbound.state import MIGRATIONS, Deposed, DispatchState, NodeState, VpcState
from alcor.transport import Address, MqConfig, Transport
from alcor.wire import CONTROLLER_QUEUE, vpc_key, vpc_stream

__all__ = ["MIGRATIONS", "Batch", "Deposed", "Dispatcher", "Metrics", "NodeState", "Settings",
           "encode_snapshot"]

log = structlog.get_logger("alcor.southbound")

# Filled in from [mq] and [store] by `Settings.from_config`: not keys of [southbound].
_NOT_A_KEY = {"config": False}

# The cyclic GC's full collections walk every tracked object: with the topology on the heap
# (10^5-10^6 objects) one took ~220 ms in the bench's latency run, every change waiting behind
# it. What survives a batch is frozen out of the GC's reach (gc.freeze: O(1)), so the automatic
# collections walk only what is newer; the full collection it holds off is taken once the
# dispatcher has had nothing to do for IDLE_GC_AFTER, or after FULL_GC_EVERY under load at the
# latest (what the topology holds forms no cycles: garbage frozen meanwhile is freed by
# reference counting, or by that collection).
IDLE_GC_AFTER = 1.0  # seconds without a batch
FULL_GC_EVERY = 600.0  # seconds


@dataclass
class Settings:
    """[southbound]: how goal-state messages reach the nodes, and the dispatcher's tuning."""

    SECTION: ClassVar[str] = "southbound"
    # "inprocess" (the dev run) or "rabbitmq" (add "rabbitmq" to [kernel] plugins)
    transport: Literal["inprocess", "rabbitmq"] = "inprocess"
    max_changes: int = 2000  # change-log rows per batch
    max_ops: int = 200_000  # node-ops per batch (bounds message sizes and memory)
    linger: float = 0.003  # seconds to wait for more changes before sending a small batch
    # While changes keep arriving, a batch lingers on (linger by linger) until it holds
    # min_batch changes or has waited linger_max: a steady stream is sent in fewer, larger
    # batches (each batch costs a plan, messages and a watermark commit), while a lone change,
    # or the end of a burst, still goes after one linger; min_batch changes waiting already go
    # without lingering. linger_max <= linger: never.
    min_batch: int = 32
    linger_max: float = 0.015
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
    # A VPC with at least this many member nodes is served on its multicast chain (one message
    # per batch, copied by the broker to every member's queue); back on the nodes' own chains at
    # unicast_nodes or fewer (hysteresis). 0: never multicast.
    multicast_nodes: int = 16
    unicast_nodes: int = 8
    # How a multicast VPC's chain reaches its members: "queue", published once under the VPC's
    # routing key, which every member's queue is bound to (the broker copies it into each); or
    # "stream", appended once to a stream per VPC (x-queue-type=stream) that every member reads
    # by offset (one append and one confirm per message, not one write per member queue; each
    # reader holds files open on the broker: docs/operations.md). A change takes effect at the
    # controller's start: every follower then gets a snapshot (it says how to follow).
    vpc_channel: Literal["queue", "stream"] = "queue"
    # What each VPC's stream keeps (x-max-length-bytes, x-max-age): an agent that falls further
    # behind, or is away longer, sees a gap on the chain and gets the VPC's state instead.
    stream_max_bytes: int = 100 << 20
    stream_max_age: float = 3600.0  # seconds
    # Several controllers on PostgreSQL: seconds a stalled leader keeps the lead before
    # PostgreSQL ends its quiet session and another controller takes over (election.py).
    leader_timeout: float = 3.0
    # [mq]: where the controller listens for agents' reports by default
    mq_url: str = field(default=MqConfig.url, metadata=_NOT_A_KEY)
    mq_vhost: str = field(default=MqConfig.vhost, metadata=_NOT_A_KEY)
    mq_exchange: str = field(default=MqConfig.exchange, metadata=_NOT_A_KEY)

    def check(self) -> None:
        if self.vpc_channel not in ("queue", "stream"):
            raise ConfigError(
                f'southbound.vpc_channel must be "queue" or "stream", got {self.vpc_channel!r}'
            )
        if self.stream_max_bytes < 1 << 20 or self.stream_max_age < 60:
            raise ConfigError(
                "southbound.stream_max_bytes must be at least 1 MiB and stream_max_age at least "
                f"60 s, got {self.stream_max_bytes} and {self.stream_max_age}"
            )
        if self.multicast_nodes > 0 and not 0 <= self.unicast_nodes < self.multicast_nodes:
            raise ConfigError(
                "southbound.unicast_nodes must be 0 or more and below multicast_nodes, got "
                f"{self.unicast_nodes} and {self.multicast_nodes}"
            )

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
class Batch:
    """One batch between placement and commit (several may be in flight)."""

    rev: int
    # (node or VPC, kind, body): kind "delta" or "snapshot" on a node's chain, "vpc" on a VPC's;
    # nodes getting a port of their own first, the VPCs' chains last
    messages: list[tuple[str, str, bytes]]
    model_rows: list[tuple[str, str, str | None]]
    first_ts: list[float]
    changes: int
    ops: int
    new_brokers: list[Address]
    binds: list[tuple[str, str]] = field(default_factory=list)  # (node, vpc) before publishing
    unbinds: list[tuple[str, str]] = field(default_factory=list)
    vpcs: dict[str, int | None] = field(default_factory=dict)  # chains started (rev) or ended
    task: asyncio.Future[set[int]] = field(default_factory=lambda: asyncio.Future())
    # Wall-clock instants of the batch's life (time.time(), the clock of a change's ts), for
    # where a change waits between its commit and its batch's confirm (Metrics.stages).
    woke_at: float = 0.0  # the producer saw work (or came back to look for it)
    started_at: float = 0.0  # it had a slot: the batch before it (max_inflight) was committed
    read_at: float = 0.0  # the changes read, after lingering
    published_at: float = 0.0  # planned and encoded
    subscribed_at: float = 0.0  # queues bound (or streams declared): publishing starts
    sent_at: float = 0.0  # the transport confirmed the last message
    confirmed_at: float = 0.0  # the committer picked the confirmed batch up


@dataclass
class Metrics:
    batches: int = 0
    changes: int = 0
    messages: int = 0
    ops: int = 0
    snapshots: int = 0
    publish_failures: int = 0
    vpc_messages: int = 0  # of `messages`, published once on a VPC's chain
    deliveries: int = 0  # messages the broker put in queues (a VPC's, once per follower)
    agent_messages: int = 0
    agent_rejected: int = 0
    digest_mismatches: int = 0
    plan_seconds: float = 0.0  # planning and encoding batches (the event loop is busy)
    confirm_seconds: float = 0.0  # batches published until confirmed (waiting on the broker)
    # (commit → broker-confirmed) seconds of recent changes, for the benchmark and operators.
    latencies: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=100_000)
    )
    # The same changes' latency split into the stages of STAGES (seconds each, summing to it).
    stages: collections.deque[tuple[float, ...]] = field(
        default_factory=lambda: collections.deque(maxlen=100_000)
    )
    commit_seconds: float = 0.0  # the watermark transactions (the next batch waits for them)

    # Where a change waits, from its commit to its batch's confirm, in order:
    STAGES: ClassVar[tuple[str, ...]] = (
        "wake",  # committed → the producer saw it (it was idle, or busy planning the last batch)
        "previous",  # → a slot: the batch(es) before it confirmed and committed
        "linger",  # → read: lingering for more changes (linger, min_batch, linger_max)
        "plan",  # → planned and encoded
        "subscribe",  # → bound / declared, after the previous batch's (un)binds
        "publish",  # → the transport confirmed every message
        "pickup",  # → the committer took it (it was committing the batch before, or the loop
        #            was busy with others' callbacks)
    )


class Dispatcher:
    """The pipeline: read → plan → encode → publish → commit, and its supervision. Its state is
    a `DispatchState` (state.py); agents' reports go to its `Feedback` (feedback.py)."""

    def __init__(
        self,
        store: Store,
        transport: Transport,
        settings: Settings | None = None,
        set_statuses: Callable[[dict[str, tuple[str, str]]], Awaitable[None]] | None = None,
        epoch: int = 0,
        fence: Callable[[], bool] | None = None,
        set_fip_statuses: Callable[[dict[str, tuple[str, str]]], Awaitable[None]] | None = None,
    ) -> None:
        """`epoch`: the leader epoch this dispatcher was elected with (on every message, checked
        at every commit); `fence()`: may it still publish (election.py). Defaults: a sole leader."""
        self.store = store
        self.epoch = epoch
        self.fence = fence or (lambda: True)
        self.deposed = False
        self.transport = transport
        self.settings = settings or Settings()
        self.state = DispatchState()
        self.metrics = Metrics()
        self.feedback = Feedback(self, set_statuses, set_fip_statuses)
        s = self.settings
        self.channels = Channels(s.multicast_nodes, s.unicast_nodes)
        self._buffer: list[Change] = []
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._last_compact = time.monotonic()
        self._pipeline: asyncio.Queue[Batch] = asyncio.Queue()
        self._slots = asyncio.Semaphore(self.settings.max_inflight)
        # After a (re)load: bind every follower's queue again (a batch that bound or unbound
        # some before a crash may be replayed with other batch bounds).
        self._rebind = False
        self._last_publish: asyncio.Future[set[int]] | None = None
        self._last_subscribed: asyncio.Future[None] | None = None
        self.streams = self.settings.vpc_channel == "stream"
        self._declared: set[Address] = set()  # VPC streams known to exist
        self._last_batch = time.monotonic()
        self._last_full_gc = time.monotonic()
        self._frozen = False  # objects frozen since the last full collection

    # The state's parts, by the names the operator views and tests read.
    @property
    def topology(self) -> Topology:
        return self.state.topology

    @property
    def nodes(self) -> dict[str, NodeState]:
        return self.state.nodes

    @property
    def watermark(self) -> int:
        return self.state.watermark

    @property
    def placed(self) -> int:
        return self.state.placed

    @property
    def set_statuses(self) -> Callable[[dict[str, tuple[str, str]]], Awaitable[None]] | None:
        return self.feedback.set_statuses

    @set_statuses.setter
    def set_statuses(
        self, fn: Callable[[dict[str, tuple[str, str]]], Awaitable[None]] | None
    ) -> None:
        self.feedback.set_statuses = fn

    def kick(self) -> None:
        self._kick.set()

    def request_snapshot(self, node: str, reason: str) -> None:
        self.feedback.request_snapshot(node, reason)

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Apply this module's migrations and load the state at the watermark."""
        await self.store.migrate("southbound", MIGRATIONS)
        await self._load()

    async def _load(self) -> None:
        self._buffer = []
        state = await tables.load(self.store)
        if state is None:
            await self._rebuild("first start on a compacted change log")
            return
        self.state = state
        log.info("dispatch.loaded", watermark=state.watermark, nodes=len(state.nodes),
                 multicast_vpcs=len(state.vpcs))
        self._rebind = True
        self._declared.clear()
        await self._channel_changed()

    async def _channel_changed(self) -> None:
        """If the VPC chains travel another way than under the last leader (`vpc_channel`
        changed), every follower gets a snapshot: it says how to follow them from here (a
        stream with `since`, or the node's queue). Recorded with the snapshots owed, in one
        transaction, so a crash in between cannot forget them."""
        channel = self.settings.vpc_channel
        row = await self.store.fetchone("SELECT value FROM sb_state WHERE key = 'vpc_channel'")
        was = row[0] if row is not None else "queue"
        if was == channel and row is not None:
            return
        followers = sorted({n for v in self.state.vpcs
                            for n in self.topology.members.get(v, ())} if was != channel else ())
        async with self.store.transaction() as tx:
            await tx.executemany(
                "INSERT INTO sb_nodes(node_id, sent_rev, need_snapshot) VALUES (?, ?, 1) "
                "ON CONFLICT(node_id) DO UPDATE SET need_snapshot = 1",
                [(n, self.state.node(n).sent_rev) for n in followers],
            )
            await tx.execute(
                "INSERT INTO sb_state(key, value) VALUES ('vpc_channel', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (channel,),
            )
        for n in followers:
            self.state.request_snapshot(n, f"vpc channel {was} → {channel}")
            self.state.node(n).persisted_need = True
        if followers:
            log.warning("vpc.channel_changed", was=was, now=channel, snapshots=len(followers))

    async def _rebuild(self, reason: str) -> None:
        """Start over from the resources table: the model at the current rev, and a snapshot
        owed to every node."""
        try:
            self.state = await tables.rebuild(self.store, self.epoch, self.state.nodes)
        except Deposed:
            self.deposed = True
            raise
        self._buffer = []
        self._declared.clear()
        # Every node is owed a snapshot (recorded by the rebuild): it says how to follow.
        await self._channel_changed()
        log.warning("dispatch.rebuilt", reason=reason, rev=self.state.watermark,
                    nodes=len(self.state.nodes))

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self.run(), name="southbound.dispatcher")
        self._flusher = loop.create_task(self.feedback.run(), name="southbound.statuses")

    async def stop(self) -> None:
        await self.feedback.stop()
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
        await self.feedback.listen_all()
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
            woke = time.time()
            await self._slots.acquire()
            started = time.time()
            batch = await self.prepare()
            if batch is None:
                self._slots.release()
                if time.monotonic() - self._last_batch >= IDLE_GC_AFTER:
                    self._full_gc("idle")
                continue
            self._last_batch = time.monotonic()
            if self._last_batch - self._last_full_gc >= FULL_GC_EVERY:
                self._full_gc("interval")
            batch.woke_at, batch.started_at = woke, started
            batch.published_at = time.time()
            subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            batch.task = asyncio.ensure_future(
                self._publish(batch, self._last_publish, self._last_subscribed, subscribed))
            self._last_publish, self._last_subscribed = batch.task, subscribed
            self._pipeline.put_nowait(batch)

    def _full_gc(self, why: str) -> None:
        """The full collection that freezing held off: unfreeze, collect, freeze what survives."""
        if not self._frozen or not gc.isenabled():
            return
        t0 = time.perf_counter()
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self._frozen = False
        self._last_full_gc = time.monotonic()
        log.debug("dispatch.gc_collected", why=why,
                  ms=round((time.perf_counter() - t0) * 1000, 1))

    async def _commit_loop(self) -> None:
        while True:
            batch = await self._pipeline.get()
            confirmed = await batch.task
            batch.confirmed_at = time.time()
            await self._commit(batch, confirmed)
            self._slots.release()
            if self.between_batches():
                self.feedback.verify_digests()
                await self._maybe_compact()

    def between_batches(self) -> bool:
        """Nothing in flight and nothing placed beyond W: the topology is the model at W, every
        node's goal at its sent_rev, so digests can be compared."""
        return self._pipeline.empty() and self.placed == self.watermark

    async def cycle(self) -> None:
        """One whole batch, without pipelining (tests and tools): prepare, publish, commit."""
        woke = time.time()
        batch = await self.prepare()
        if batch is None:
            return
        batch.woke_at = batch.started_at = woke
        batch.published_at = time.time()
        confirmed = await self._publish(batch)
        batch.confirmed_at = time.time()
        await self._commit(batch, confirmed)
        self.feedback.verify_digests()
        await self._maybe_compact()

    async def _wait_for_work(self) -> None:
        if self._buffer or self.store.changes.last_rev > self.placed or self.state.owed():
            return
        waiter = asyncio.ensure_future(self.store.changes.wait(self.placed, timeout=1.0))
        kicked = asyncio.ensure_future(self._kick.wait())
        try:
            await asyncio.wait({waiter, kicked}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            kicked.cancel()
            self._kick.clear()

    # -- one batch -----------------------------------------------------------------------------

    def address(self, node_id: str) -> Address | None:
        body = self.topology.res["node"].get(node_id)
        if body is None:
            return None
        s = self.settings
        return Address.of_node(node_id, body, MqConfig(s.mq_url, s.mq_vhost, s.mq_exchange))

    async def _read(self) -> list[Change]:
        s = self.settings
        if self.placed < self.store.changes.horizon:
            if self.placed != self.watermark:
                raise RuntimeError("compacted past changes in flight")
            await self._rebuild(f"watermark {self.watermark} is below the compaction horizon")
        if not self._buffer:
            last = self.store.changes.last_rev
            # A batch that holds min_batch changes already does not linger: under a steady
            # stream the previous batch's publish and commit gathered them, and a linger more
            # was every change's wait (plus the loop's lag on the timer).
            if 0 < last - self.placed < min(s.min_batch, s.max_changes) and s.linger > 0:
                await self._linger(last)
            self._buffer = await self.store.changes.read(self.placed, s.max_changes)
        return self._buffer

    async def _linger(self, last: int) -> None:
        """Wait for more changes before a batch: one linger, then more while changes keep
        arriving, until the batch would hold min_batch (or max_changes) changes or linger_max
        has passed. Nothing new within a linger means no stream to wait for."""
        s = self.settings
        changes = self.store.changes
        want = min(s.min_batch, s.max_changes)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.linger_max
        while True:
            await asyncio.sleep(s.linger)
            now = changes.last_rev
            if now == last or now - self.placed >= want or loop.time() + s.linger > deadline:
                return
            last = now

    async def prepare(self) -> Batch | None:
        """Read and plan the next changes, build one message per node; None if nothing to send.

        Everything after the read is synchronous: no other task sees the topology half-placed.
        """
        t_read = time.perf_counter()
        changes = await self._read()
        read_at = time.time()
        t_place = time.perf_counter()
        # Planning and encoding make ~10^5 short-lived acyclic objects over a heap holding the
        # whole topology: the cyclic GC, run again and again meanwhile, was 40 % of the time.
        enabled = gc.isenabled()
        gc.disable()
        try:
            batch = self._prepare(changes)
        finally:
            if enabled:
                gc.freeze()  # what the batch left alive, out of the full collections' walk
                self._frozen = True
                gc.enable()
        self.metrics.plan_seconds += time.perf_counter() - t_place
        if batch is not None:
            batch.read_at = read_at
            log.debug(
                "batch.prepared",
                rev=batch.rev,
                changes=batch.changes,
                messages=len(batch.messages),
                ops=batch.ops,
                read_ms=round((t_place - t_read) * 1000, 1),
                place_ms=round((time.perf_counter() - t_place) * 1000, 1),
            )
        return batch

    def _prepare(self, changes: list[Change]) -> Batch | None:
        s = self.settings
        state = self.state
        # With the chains on streams, a message that starts a node following some says from
        # when to read them: every later batch's VPC messages are appended after this instant.
        since = int(time.time() * 1000) if self.streams else 0
        p = plan(self.topology, changes, self.placed, s.max_ops, state.vpcs.keys(), self.channels)
        del self._buffer[: p.used]
        rev = p.rev
        vpcs: dict[str, int | None] = {}
        for v in [v for v in state.vpcs if v not in p.multicast]:
            del state.vpcs[v]
            vpcs[v] = None
            log.info("vpc.unicast", vpc=v, rev=rev, members=len(self.topology.members.get(v, ())))
        for v in p.multicast:
            if v not in state.vpcs:
                # A new chain starts at this rev: its members follow it from here on.
                state.vpcs[v] = VpcState(rev, rev)
                vpcs[v] = rev
                log.info("vpc.multicast", vpc=v, rev=rev,
                         members=len(self.topology.members.get(v, ())))

        messages: list[tuple[str, str, bytes]] = []  # (node, kind, body), hosts first
        cache: dict[int, bytes] = {}
        # Nodes whose agent saw a gap on a VPC's chain get that VPC's state in their message.
        resyncs = [n for n, st in state.nodes.items() if st.vpc_resync and n not in p.per_node]
        for node in [*p.per_node, *resyncs]:
            if node not in self.topology.res["node"]:
                continue  # deleted in this batch: nobody left to tell
            ns = self.state.node(node)
            if ns.need_snapshot:
                # Owed a snapshot: deltas would be dropped anyway; the snapshot covers them.
                continue
            bucket = p.per_node.get(node, {})
            follow = p.follow.get(node)
            replace: list[str] = []
            if ns.vpc_resync:
                bucket, follow, replace = self._vpc_snapshots(node, ns, bucket, follow, p, rev)
                if not bucket and not follow:
                    continue
            raw = encode_delta(node, "delta", ns.next_prev, rev, bucket.values(), cache,
                               self.topology, self.epoch, follow, replace=replace)
            if since and follow and any(r is not None for r in follow.values()):
                raw = with_since(raw, since)
            messages.append((node, "delta", pack(raw, s.compress_over)))
            ns.next_prev = rev
        # Snapshots owed, a few per batch (count and ops), so deltas to others never wait long.
        snap_ops = 0
        snap_start = time.perf_counter()
        for node in self.state.owed()[: s.snapshots_per_batch]:
            if snap_ops >= s.snapshot_ops_per_batch or (
                snap_ops and time.perf_counter() - snap_start > s.snapshot_budget
            ):
                break
            t0 = time.perf_counter()
            st = self.nodes[node]
            follows = state.followed(node)
            raw, n = encode_snapshot(self.topology, node, st.next_prev, rev, self.epoch,
                                     dict.fromkeys(follows, rev))
            if since and follows:
                raw = with_since(raw, since)
            # Bound again (idempotent): the snapshot says it follows these chains from here.
            p.binds.extend((node, v) for v in follows)
            snap_ops += n
            messages.append((node, "snapshot", pack(raw, s.compress_over)))
            # Deltas of the following batches build on this snapshot; if it is not confirmed,
            # the commit puts the node back among those owed one.
            st.need_snapshot = False
            st.next_prev = rev
            st.vpc_resync.clear()
            log.info(
                "snapshot.built",
                node=node,
                rev=rev,
                ops=n,
                reason=st.snapshot_reason,
                ms=round((time.perf_counter() - t0) * 1000, 1),
            )
        # The VPCs' chains, after the nodes' (host first).
        for v, bucket in p.per_vpc.items():
            vs = state.vpcs[v]
            raw = encode_delta("", "delta", vs.next_prev, rev, bucket.values(), cache,
                               self.topology, self.epoch, vpc=v)
            messages.append((v, "vpc", pack(raw, s.compress_over)))
            vs.next_prev = rev
        if not p.used and not messages:
            return None
        self.state.placed = rev
        # The model rows as of this batch's rev, for sb_model (later batches move the topology on).
        model_rows = []
        for t, i in p.touched:
            body = self.topology.get(t, i)
            model_rows.append((t, i, None if body is None else json.dumps(body)))
        new_brokers = [a for t, i in p.touched if t == "node" and (a := self.address(i)) is not None]
        return Batch(rev, messages, model_rows, p.first_ts, p.used, p.ops, new_brokers,
                     p.binds, p.unbinds, vpcs)

    def _vpc_snapshots(
        self, node: str, ns: NodeState, bucket: dict[Key, Op], follow: dict[str, int | None] | None,
        p: BatchPlan, rev: int,
    ) -> tuple[dict[Key, Op], dict[str, int | None], list[str]]:
        """Add to a node's message the state of each VPC whose chain it saw a gap on (a VPC
        snapshot: the agent replaces what it held of the VPC, and follows its chain from this
        rev on), for the VPCs it still follows after this batch."""
        t = self.topology
        ops = dict(bucket)
        fresh = dict(follow or {})
        replace = []
        for v in sorted(ns.vpc_resync):
            if v not in p.multicast or node not in t.members.get(v, {}) or (
                v in fresh and fresh[v] is None
            ):
                continue  # it stops following this chain: nothing to repair
            for op in vpc_snapshot(t, node, v, rev):
                ops[(op["type"], op["id"])] = op
            fresh[v] = rev
            replace.append(v)
            p.binds.append((node, v))  # idempotent: make sure its queue gets the chain
            log.info("vpc.snapshot", node=node, vpc=v, rev=rev)
        ns.vpc_resync.clear()
        return ops, fresh, replace

    def _vpc_addresses(self, vpc: str) -> list[Address]:
        """Where a VPC's chain is published: its key on each exchange its members' queues use,
        or its stream on each broker they use (one, unless nodes are spread over brokers)."""
        out: dict[tuple[str, str, str], Address] = {}
        key = vpc_key(vpc)
        for n in self.topology.members.get(vpc, ()):
            a = self.address(n)
            if a is not None:
                if self.streams:
                    out.setdefault((a.url, a.vhost, ""), a.with_stream(vpc_stream(vpc)))
                else:
                    out.setdefault((a.url, a.vhost, a.exchange), a.with_key(key))
        return list(out.values())

    async def _declare_streams(self, batch: Batch) -> None:
        """The streams of the chains this batch publishes on or starts nodes on, before it is
        published: an agent opens a VPC's stream as soon as its join is applied."""
        vpcs = {v for v, r in batch.vpcs.items() if r is not None}
        vpcs |= {v for _, v in batch.binds}
        vpcs |= {t for t, kind, _ in batch.messages if kind == "vpc"}
        if self._rebind:
            vpcs |= set(self.state.vpcs)
        todo = [a for v in sorted(vpcs) for a in self._vpc_addresses(v) if a not in self._declared]
        deadline = time.monotonic() + self.settings.retry_deadline
        delay = 0.1
        s = self.settings
        for a in todo:
            while True:
                try:
                    await self.transport.declare_stream(a, s.stream_max_bytes, s.stream_max_age)
                    self._declared.add(a)
                    break
                except Exception as e:
                    if time.monotonic() >= deadline:
                        raise
                    log.warning("vpc.declare_retry", stream=a.queue, error=str(e))
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
        self._rebind = False

    async def _subscribe(self, batch: Batch) -> None:
        """Unbind the queues of nodes that stop following a VPC's chain, bind those that start:
        before the batch is published, so the broker copies its VPC messages to exactly the
        followers. Errors are retried until the deadline, then fail the batch (replayed)."""
        if self.streams:
            await self._declare_streams(batch)
            return
        todo: list[tuple[bool, Address, str]] = []
        if self._rebind:
            todo += [(True, a, vpc_key(v)) for v in self.state.vpcs
                     for n in sorted(self.topology.members.get(v, ()))
                     if (a := self.address(n)) is not None]
        todo += [(False, a, vpc_key(v)) for n, v in batch.unbinds
                 if (a := self.address(n)) is not None]
        todo += [(True, a, vpc_key(v)) for n, v in batch.binds if (a := self.address(n)) is not None]
        deadline = time.monotonic() + self.settings.retry_deadline
        delay = 0.1
        for bound, addr, key in todo:
            while True:
                try:
                    if bound:
                        await self.transport.bind(addr, key)
                    else:
                        await self.transport.unbind(addr, key)
                    break
                except Exception as e:
                    if time.monotonic() >= deadline:
                        raise
                    log.warning("vpc.bind_retry", queue=addr.queue, key=key, error=str(e))
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
        self._rebind = False

    async def _publish(
        self,
        batch: Batch,
        previous: asyncio.Future[set[int]] | None = None,
        previous_subscribed: asyncio.Future[None] | None = None,
        subscribed: asyncio.Future[None] | None = None,
    ) -> set[int]:
        """Subscribe, then publish; retry what was not confirmed until the deadline. Returns the
        indexes of the confirmed messages (a VPC's: confirmed on every exchange it goes to).

        A batch that changes subscriptions waits for the one before it to be confirmed (routed):
        a node unbound from a chain must not miss that batch's message on it. Every batch
        publishes only once the one before it has (un)bound its queues: a chain's next message
        must reach the queues its follower list says (with batches in flight, it would
        otherwise be unroutable, retried, and land after its successor: a gap)."""
        s = self.settings
        try:
            await self._fenced()
            if previous is not None and not self.streams and (
                batch.binds or batch.unbinds or self._rebind
            ):
                await asyncio.wait([previous])
            elif previous_subscribed is not None:
                await asyncio.wait([previous_subscribed])
            await self._subscribe(batch)
        finally:
            if subscribed is not None and not subscribed.done():
                subscribed.set_result(None)
        batch.subscribed_at = time.time()
        pending: list[tuple[int, Address, bytes]] = []
        for i, (target, kind, body) in enumerate(batch.messages):
            if kind == "vpc":
                pending += [(i, a, body) for a in self._vpc_addresses(target)]
            elif (addr := self.address(target)) is not None:
                pending.append((i, addr, body))
        failed_any: set[int] = set()
        sent: set[int] = set()
        deadline = time.monotonic() + s.retry_deadline
        delay = 0.1
        while pending:
            await self._fenced()
            ok = await self.transport.publish([(a, b) for _, a, b in pending], s.publish_timeout)
            failed = []
            for item, good in zip(pending, ok, strict=True):
                if good:
                    sent.add(item[0])
                else:
                    failed.append(item)
                    if item[1].stream and item[1] in self._declared:
                        # Gone from the broker (deleted, or a fresh broker): declared again.
                        self._declared.discard(item[1])
                        try:
                            await self.transport.declare_stream(
                                item[1], s.stream_max_bytes, s.stream_max_age)
                            self._declared.add(item[1])
                        except Exception as e:
                            log.warning("vpc.declare_failed", stream=item[1].queue, error=str(e))
            if not failed:
                break
            self.metrics.publish_failures += len(failed)
            if time.monotonic() >= deadline:
                for i, _, _ in failed:
                    target, kind, _ = batch.messages[i]
                    log.warning("delta.undeliverable", target=target, kind=kind)
                    failed_any.add(i)
                break
            log.warning("publish.retry", failed=len(failed), of=len(pending), delay=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            pending = failed
        batch.sent_at = time.time()
        return sent - failed_any

    async def _fenced(self) -> None:
        """Wait while this controller may not act as leader (its lease is in doubt); a deposed
        one is stopped meanwhile by its election."""
        while not self.fence():
            if self.deposed:
                raise Deposed(f"epoch {self.epoch} is over")
            await asyncio.sleep(0.05)

    async def _commit(self, batch: Batch, confirmed: set[int]) -> None:
        """Record a confirmed batch: watermark, nodes' sent_rev, the model rows. One transaction."""
        rev, messages = batch.rev, batch.messages
        sent: dict[str, int] = {}  # node → need_snapshot after this batch
        vpcs = dict(batch.vpcs)
        m = self.metrics
        for i, (node, kind, _) in enumerate(messages):
            if kind == "vpc":
                followers = self.topology.members.get(node, {})
                if i in confirmed:
                    vpcs[node] = rev
                    m.vpc_messages += 1
                    m.deliveries += len(followers)
                    continue
                # The VPC's chain is broken for whoever missed it: its followers are owed a
                # snapshot (those that got it see no gap, the others would only at the next).
                for n in followers:
                    st = self.state.node(n)
                    st.need_snapshot = True
                    st.snapshot_reason = st.snapshot_reason or "undeliverable"
                continue
            st = self.state.node(node)
            if i in confirmed:
                m.deliveries += 1
                sent[node] = int(st.need_snapshot and st.persisted_need and kind != "snapshot")
            else:
                # The chain to this node is broken (a message may be lost): snapshot later.
                st.need_snapshot = True
                st.snapshot_reason = st.snapshot_reason or "undeliverable"
        owed = [n for n, st in self.nodes.items() if st.need_snapshot and not st.persisted_need]
        try:
            await tables.commit(self.store, self.epoch, rev, sent,
                                [(n, self.nodes[n].sent_rev) for n in owed], batch.model_rows,
                                vpcs)
        except Deposed:
            self.deposed = True
            raise
        committed = time.time()
        m.commit_seconds += committed - batch.confirmed_at
        self.state.watermark = rev
        for v, r in vpcs.items():
            vs = self.state.vpcs.get(v)
            if vs is not None and r is not None:
                vs.sent_rev = r
        for n in owed:
            self.nodes[n].persisted_need = True
        for node, need in sent.items():
            st = self.nodes[node]
            st.sent_rev = rev
            if not need:
                st.persisted_need = False
            # The agent's last report may now be comparable.
            if st.applied_rev is not None:
                self.feedback.verify.add(node)
        for i, (node, kind, _) in enumerate(messages):
            if kind == "snapshot" and i in confirmed:
                self.nodes[node].snapshot_reason = ""
                self.metrics.snapshots += 1
                log.info("snapshot.published", node=node, rev=rev)
        b = batch
        marks = (b.woke_at, b.started_at, b.read_at, b.published_at, b.subscribed_at, b.sent_at,
                 b.confirmed_at)
        for ts in batch.first_ts:
            m.latencies.append(batch.confirmed_at - ts)
            m.stages.append(stage_split(ts, marks))
        m.batches += 1
        m.confirm_seconds += batch.confirmed_at - batch.published_at
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
            commit_ms=round((committed - batch.confirmed_at) * 1000, 1),
            previous_ms=round((b.started_at - b.woke_at) * 1000, 1),
            linger_ms=round((b.read_at - b.started_at) * 1000, 1),
            plan_ms=round((b.published_at - b.read_at) * 1000, 1),
            subscribe_ms=round((b.subscribed_at - b.published_at) * 1000, 1),
            send_ms=round((b.sent_at - b.subscribed_at) * 1000, 1),
            pickup_ms=round((b.confirmed_at - b.sent_at) * 1000, 1),
        )
        for addr in batch.new_brokers:
            await self.feedback.listen(addr)

    async def read_view(self) -> None:
        """A standby's view of the leader's state (not dispatching): watermark, each node's
        stream and its agent's last report, as the leader recorded them."""
        watermark, nodes = await tables.read_view(self.store)
        self.state.watermark = self.state.placed = watermark
        self.state.nodes = nodes

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


def stage_split(ts: float, marks: tuple[float, ...]) -> tuple[float, ...]:
    """A change committed at `ts`: the seconds it spent in each stage of Metrics.STAGES, given
    its batch's instants (woke, started, read, planned, subscribed, sent, confirmed). A stage
    that ended before the change was committed took none of its time (a change that arrived
    while the batch lingered waited only for the rest of the linger)."""
    out = []
    t = ts
    for mark in marks:
        end = max(t, mark)
        out.append(end - t)
        t = end
    return tuple(out)


def with_since(raw: bytes, since: int) -> bytes:
    """A node-chain message (encoded JSON, before compression) with `since` (wire.md): from
    when to read the VPC streams it starts the node on. Added here, on the publishing side,
    so the encoder stays the same for both channels."""
    assert raw[:1] == b"{"
    return b'{"since":%d,' % since + raw[1:]
