"""The dispatcher and agents over the in-process transport, on a real SQLite file: delivery,
crash points, gaps, an absent agent, bad messages, digest repair, compaction."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import random
import time
import weakref
from pathlib import Path
from typing import Any

import pytest

from alcor.agent.stream import AgentStream
from alcor.db.changelog import Change
from alcor.southbound.dispatcher import Dispatcher, Settings
from alcor.transport import InProcessBroker, InProcessTransport
from tests.support.southbound import (
    Harness,
    all_agents_converged,
    blocked,
    changes_while_away,
    crash_mid_snapshot,
    crash_scenario,
    node_ids,
    topology,
)
from tests.support.wait import eventually

# Every scene twice: the VPC chains on the node queues (bound routing key), and on a stream per
# VPC read by each member beside its queue (two sources into one ordering rule). A scene that
# acts on the node queues themselves runs on the queue channel only (QUEUE_ONLY); the stream's
# own drills are below.
QUEUE_ONLY = pytest.mark.parametrize("h", ["queue"], indirect=True)


@pytest.fixture(params=["queue", "stream"])
async def h(tmp_path: Path, request: pytest.FixtureRequest):
    broker = InProcessBroker()
    h = Harness(tmp_path / "alcor.db", lambda: InProcessTransport(broker),
                vpc_channel=request.param)
    h.broker = broker  # type: ignore[attr-defined]
    await h.start()
    yield h
    await h.stop()


async def test_agents_converge_and_ports_go_active(h: Harness) -> None:
    await all_agents_converged(h, 3)
    # Every compute port was reported programmed by its host and set ACTIVE.
    for _ in range(100):
        computes = [p for p in h.world.res["port"].values() if p["binding:host_id"]]
        if all(h.statuses.get(p["id"]) == "ACTIVE" for p in computes):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"statuses: {h.statuses}")
    d = h.dispatcher
    assert d is not None
    for n in node_ids(h):
        await eventually(lambda n=n: d.node_sync(n)["in_sync"])
        sync = d.node_sync(n)
        assert sync["applied_rev"] == sync["goal_rev"] and sync["last_report_at"]


async def test_later_changes_flow_as_deltas(h: Harness) -> None:
    await all_agents_converged(h, 2)
    w = h.world
    sub = next(iter(w.res["subnet"].values()))
    await h.commit([w.add_port(sub, "host-1", []) for _ in range(50)])
    victim = sorted(p for p, b in w.res["port"].items() if b["binding:host_id"] == "host-0")[0]
    await h.commit([w.delete("port", victim)])
    await h.converge()
    for a in h.agents.values():
        assert a.counters.snapshots == 1 and a.counters.applied >= 1 and a.counters.gaps == 0


@pytest.mark.parametrize("where", ["commit", "publish"])
async def test_crash_points_lose_nothing(h: Harness, where: str) -> None:
    await crash_scenario(h, where)


@pytest.mark.parametrize("where", ["commit", "publish"])
async def test_crash_points_with_batches_in_flight(tmp_path: Path, where: str) -> None:
    broker = InProcessBroker()
    settings = Settings(linger=0.001, max_inflight=3, max_changes=7, repair_interval=0.5)
    h = Harness(tmp_path / "alcor.db", lambda: InProcessTransport(broker), settings)
    await h.start()
    try:
        await crash_scenario(h, where)
    finally:
        await h.stop()


async def test_crash_mid_snapshot(h: Harness) -> None:
    await crash_mid_snapshot(h)


async def test_agent_down_during_1000_changes_gets_snapshot_on_return(h: Harness) -> None:
    await all_agents_converged(h, 3)
    away = node_ids(h)[1]
    await changes_while_away(h, away)
    await h.converge(nodes=[n for n in node_ids(h) if n != away])
    # A restarted agent (empty model) says hello: its queue's old deltas are dropped, the
    # snapshot makes it whole.
    a = await h.add_agent(away)
    await h.converge()
    assert a.counters.snapshots == 1
    if h.settings.vpc_channel == "queue":
        assert a.counters.waiting >= 1
    else:
        # Its queue holds nothing of the VPC (its chain is on the stream), and the stream is
        # read from the snapshot's `since` on: nothing of what it missed is read at all.
        assert a.counters.waiting == 0
        await eventually(lambda: bool(a.streams))


async def test_disconnected_agent_tails_its_queue(h: Harness) -> None:
    await all_agents_converged(h, 2)
    n = node_ids(h)[0]
    a = h.agents[n]
    assert a._sub is not None
    await a._sub.cancel()  # the agent keeps its model but stops consuming (a partition)
    w = h.world
    sub = next(iter(w.res["subnet"].values()))
    await h.commit([w.add_port(sub, "host-1", []) for _ in range(1000)])
    transport = h.agent_transports[0]
    a._sub = await transport.consume(a.address, a._on_delivery, a.prefetch)
    await h.converge()
    assert a.counters.snapshots == 1  # caught up from the durable queue, no new snapshot


@QUEUE_ONLY
async def test_lost_message_is_a_gap_repaired_by_snapshot(h: Harness) -> None:
    """A message lost on the VPC's chain costs that VPC's state on the node's chain; one lost on
    the node's own chain costs a snapshot."""
    await h.commit(topology(h, 2))
    n = node_ids(h)[0]
    await h.add_agent(n)
    await h.converge()
    a = h.agents[n]
    w = h.world
    sub = next(iter(w.res["subnet"].values()))

    def port(host: str, own_chain: bool) -> list[Change]:
        if not own_chain:
            return [w.add_port(sub, host, [])]
        # A port in a security group new to its host: the group's body goes on the host's own
        # chain, and the port with it (alone, it would ride on the VPC's chain).
        sg = w.add_sg()
        return [sg, w.add_port(sub, host, [sg.id])]

    async def lose(host: str, messages: int, own_chain: bool = False) -> None:
        await a._sub.cancel()  # type: ignore[union-attr]
        await h.commit(port(host, own_chain))
        await eventually(lambda: h.broker.depth(a.address) == messages)  # type: ignore[attr-defined]
        h.broker.queue(a.address).ready.clear()  # type: ignore[attr-defined]  # lost
        await h.commit(port(host, own_chain))
        await eventually(lambda: h.broker.depth(a.address) == messages)  # type: ignore[attr-defined]
        a._sub = await h.agent_transports[0].consume(a.address, a._on_delivery, a.prefetch)
        await h.converge(nodes=[n])

    await lose("host-1", 1)  # a neighbour's port: on the VPC's chain
    assert (a.counters.gaps, a.counters.vpc_gaps, a.counters.snapshots) == (1, 1, 1)
    # its own port in a new group: on its chain (and the neighbours' on the VPC's)
    await lose("host-0", 2, own_chain=True)
    assert (a.counters.gaps, a.counters.vpc_gaps, a.counters.snapshots) == (2, 1, 2)


async def test_malformed_and_foreign_messages_rejected_and_counted(h: Harness) -> None:
    await h.commit(topology(h, 2))
    n0, n1 = node_ids(h)
    await h.add_agent(n0)
    await h.converge(nodes=[n0])
    a = h.agents[n0]
    junk = [
        b"\x00\xff not json",
        b'{"v": 1}',
        json.dumps(
            {"v": 9, "node_id": n0, "kind": "delta", "prev_rev": 0, "rev": 1, "ops": []}
        ).encode(),
        json.dumps(
            {"v": 2, "node_id": n1, "kind": "snapshot", "prev_rev": 0, "rev": 10**9, "ops": []}
        ).encode(),
    ]
    t = InProcessTransport(h.broker)  # type: ignore[attr-defined]
    await t.publish([(a.address, j) for j in junk], 1.0)
    await eventually(lambda: a.counters.rejected == 4)
    assert a.counters.foreign == 1
    assert h.broker.queue(a.address).rejected == 4  # type: ignore[attr-defined]
    # Still healthy: later changes apply.
    w = h.world
    await h.commit([w.add_port(next(iter(w.res["subnet"].values())), "host-0", [])])
    await h.converge(nodes=[n0])
    # Garbage on the controller queue is rejected and counted too.
    d = h.dispatcher
    assert d is not None
    await t.publish([(a.address.with_queue("alcor.controller"), b"{nonsense")], 1.0)
    await eventually(lambda: d.metrics.agent_rejected >= 1)


async def test_digest_mismatch_is_repaired(h: Harness) -> None:
    await h.commit(topology(h, 2))
    n = node_ids(h)[0]
    a = await h.add_agent(n)
    await h.converge()
    # Drift: the agent's model loses a resource behind the protocol's back.
    some = next(iter(a.model.resources["port"]))
    a.model._drop(("port", some))
    w = h.world
    await h.commit([w.add_port(next(iter(w.res["subnet"].values())), "host-1", [])])
    await h.converge(nodes=[n])
    d = h.dispatcher
    assert d is not None
    assert d.metrics.digest_mismatches >= 1 and a.counters.snapshots == 2


async def test_watermark_behind_compaction_rebuilds_and_snapshots(h: Harness) -> None:
    await all_agents_converged(h, 2)
    await h.crash()
    # While the controller is down, many changes happen and the log is compacted past W.
    from alcor.db.store import SqliteStore

    store = SqliteStore(h.path, "NORMAL")
    await store.open()
    from tests.support.world import write

    w = h.world
    sub = next(iter(w.res["subnet"].values()))
    await write(store, [w.add_port(sub, "host-0", []) for _ in range(20)])
    await store.changes.compact(store.changes.last_rev)
    await store.close()
    d: Dispatcher = await h.start()
    await h.converge()
    assert all(a.counters.snapshots == 2 for a in h.agents.values())
    assert d.watermark == h.store.changes.last_rev  # type: ignore[union-attr]


async def test_mass_restart_snapshots_are_rate_limited_and_deltas_keep_flowing(
    tmp_path: Path,
) -> None:
    broker = InProcessBroker()
    batches: list[list[tuple[str, bool]]] = []

    class Recording(InProcessTransport):
        async def publish(self, messages, timeout):  # type: ignore[no-untyped-def]
            batches.append(
                [(a.queue, b[:200].find(b'"kind":"snapshot"') >= 0) for a, b in messages]
            )
            return await super().publish(messages, timeout)

    settings = Settings(linger=0.001, snapshots_per_batch=2, compress_over=0)
    h = Harness(tmp_path / "alcor.db", lambda: Recording(broker), settings)
    await h.start()
    try:
        await h.commit(topology(h, 12, ports_per_host=1))
        steady = node_ids(h)[0]
        await h.add_agent(steady)
        await h.converge()
        batches.clear()
        for n in node_ids(h)[1:]:
            await h.add_agent(n)  # eleven agents start at once: eleven hellos
        w = h.world
        sub = next(iter(w.res["subnet"].values()))
        for _ in range(10):
            await h.commit([w.add_port(sub, "host-0", [])])
            await asyncio.sleep(0.005)
        await h.converge()
        steady_q = w.res["node"][steady]["mq_queue"]
        assert all(sum(snap for _, snap in b) <= 2 for b in batches)
        # Deltas to the steady node went out in batches that also carried snapshots.
        assert any(
            any(q == steady_q and not snap for q, snap in b) and any(snap for _, snap in b)
            for b in batches
        )
    finally:
        await h.stop()


async def test_change_log_compacted_below_lowest_applied_rev(tmp_path: Path) -> None:
    broker = InProcessBroker()
    settings = Settings(linger=0.001, compact_interval=0.0, retention=5)
    h = Harness(tmp_path / "alcor.db", lambda: InProcessTransport(broker), settings)
    await h.start()
    try:
        await all_agents_converged(h, 2)
        w = h.world
        sub = next(iter(w.res["subnet"].values()))
        for _ in range(5):
            await h.commit([w.add_port(sub, "host-0", []) for _ in range(10)])
        await h.converge()
        store = h.store
        assert store is not None
        d = h.dispatcher
        assert d is not None
        await eventually(lambda: store.changes.horizon > 0)
        lowest = min(st.applied_rev or 0 for st in d.nodes.values())
        assert store.changes.horizon <= lowest - 5
        assert (await store.changes.read(0, 1))[0].rev == store.changes.horizon + 1
    finally:
        await h.stop()


async def test_datapath_errors_become_port_status(h: Harness) -> None:
    await h.commit(topology(h, 2, ports_per_host=2))
    n0 = node_ids(h)[0]
    bad = sorted(p for p, b in h.world.res["port"].items() if b["binding:host_id"] == "host-0")[0]

    async def datapath(goal):  # type: ignore[no-untyped-def]
        return {
            pid: (("ERROR", "no ofport") if pid == bad else ("ACTIVE", ""))
            for pid, p in goal["port"].items()
            if p["node_id"] == goal["node_id"]
        }

    await h.add_agent(n0, apply=datapath)
    await h.converge()
    await eventually(lambda: h.statuses.get(bad) == "ERROR")
    good = [
        p for p, b in h.world.res["port"].items() if b["binding:host_id"] == "host-0" and p != bad
    ]
    await eventually(lambda: all(h.statuses.get(p) == "ACTIVE" for p in good))


async def test_failed_commit_reloads_and_replays(h: Harness) -> None:
    await all_agents_converged(h, 2)
    d = h.dispatcher
    assert d is not None
    real = d._commit
    failures = []

    async def flaky(batch, confirmed):  # type: ignore[no-untyped-def]
        # A late hello's snapshot batch (no change) is replayed as a snapshot, not a duplicate:
        # the batch under test carries the ports.
        if not failures and batch.changes:
            failures.append(batch.rev)
            raise RuntimeError("disk I/O error")  # the store refused the watermark write
        await real(batch, confirmed)

    d._commit = flaky  # type: ignore[method-assign]
    w = h.world
    sub = next(iter(w.res["subnet"].values()))
    await h.commit([w.add_port(sub, f"host-{i % 2}", []) for i in range(20)])
    await h.converge()
    assert failures and d.watermark == h.store.changes.last_rev  # type: ignore[union-attr]
    assert sum(a.counters.duplicates for a in h.agents.values()) >= 1


async def test_status_reports_carry_only_what_changed(h: Harness) -> None:
    """A report lists the ports whose state changed (all of them after a snapshot), so its size
    follows the churn, not the number of ports on the host."""
    await h.commit(topology(h, 2))
    d = h.dispatcher
    assert d is not None
    n0, n1 = node_ids(h)
    reports: list[dict[str, str]] = []
    real = d.feedback.on_status

    def spy(node: str, msg: dict) -> None:  # type: ignore[type-arg]
        if node == n0:
            reports.append(dict(msg["ports"]))
        real(node, msg)

    d.feedback.on_status = spy  # type: ignore[method-assign]
    await h.add_agent(n0)
    await h.add_agent(n1)
    await h.converge()
    w = h.world
    local = {p for p, b in w.res["port"].items() if b["binding:host_id"] == "host-0"}
    await eventually(lambda: any(set(r) == local for r in reports))

    reports.clear()
    sub = next(iter(w.res["subnet"].values()))
    await h.commit([w.add_port(sub, "host-1", [])])  # a neighbour for host-0
    await h.converge()
    await eventually(lambda: bool(reports))
    assert all(r == {} for r in reports)

    reports.clear()
    mine = w.add_port(sub, "host-0", [])
    await h.commit([mine])
    await h.converge()
    await eventually(lambda: any(reports))
    assert [r for r in reports if r] == [{mine.id: "ACTIVE"}]

    reports.clear()
    d.request_snapshot(n0, "test")  # what a digest repair or an agent restart leads to
    await eventually(lambda: any(set(r) == local | {mine.id} for r in reports))


async def test_a_status_report_is_acked_only_once_written(h: Harness) -> None:
    """Agents report a port's state once: if the controller dies before writing it, the broker
    hands the report to the next controller, and the port does not stay DOWN."""
    await h.commit(topology(h, 2))
    d = h.dispatcher
    assert d is not None
    reached = asyncio.Event()

    async def stuck(statuses: dict[str, tuple[str, str]]) -> None:
        reached.set()
        await blocked()

    d.set_statuses = stuck
    for n in node_ids(h):
        await h.add_agent(n)
    await asyncio.wait_for(reached.wait(), 10)
    await h.converge()
    assert not h.statuses
    await h.crash()
    await h.start()
    computes = [p for p, b in h.world.res["port"].items() if b["binding:host_id"]]
    await eventually(lambda: all(h.statuses.get(p) == "ACTIVE" for p in computes))


@QUEUE_ONLY
async def test_the_queue_of_an_agent_away_is_bounded_and_it_recovers_from_a_gap(
    h: Harness,
) -> None:
    """A partitioned agent's queue keeps its newest messages only (RabbitMQ's drop-head); when
    it consumes again it sees a gap (on the VPC's chain: the changes are a neighbour's), asks
    for the VPC's state and converges."""
    broker: InProcessBroker = h.broker  # type: ignore[attr-defined]
    broker.max_depth = 5
    await all_agents_converged(h, 2)
    n = node_ids(h)[0]
    a = h.agents[n]
    assert a._sub is not None
    await a._sub.cancel()  # stops consuming, keeps its model
    w = h.world
    sub = next(iter(w.res["subnet"].values()))
    for _ in range(12):  # one batch, so one message to each node, per commit
        await h.commit([w.add_port(sub, "host-1", [])])
        await eventually(lambda: h.dispatcher is not None and h.dispatcher.watermark == h.store.changes.last_rev)  # type: ignore[union-attr]
    q = broker.queue(a.address)
    assert len(q.ready) == 5 and q.dropped >= 7
    a._sub = await h.agent_transports[0].consume(a.address, a._on_delivery, a.prefetch)
    await h.converge()
    assert a.counters.gaps >= 1 and a.counters.vpc_gaps == a.counters.gaps
    assert a.counters.snapshots == 1  # the first; the gap cost the VPC's state only


async def test_a_report_ahead_of_a_restarted_dispatcher_is_still_written(h: Harness) -> None:
    """The dispatcher dies after the agents got (and reported) new ports but before it recorded
    sending them: the next one starts from an older model, and the reports it is handed again
    concern ports it has not placed yet. Whether a node hosts a port is checked against the
    store, so they are written, not dropped."""
    await all_agents_converged(h, 2)
    d = h.dispatcher
    assert d is not None
    w = h.world
    sub = next(iter(w.res["subnet"].values()))
    new = [w.add_port(sub, "host-0", []) for _ in range(5)]
    d._commit = blocked  # type: ignore[method-assign]
    # Hold the write-back too, so the reports are still unacknowledged at the crash.
    d.set_statuses = blocked
    await h.commit(new)
    agent = h.agents[node_ids(h)[0]]
    await eventually(lambda: all(agent.port_status.get(c.id) == "ACTIVE" for c in new))
    await eventually(lambda: all(c.id in agent._reported for c in new))
    await h.crash()
    await h.start()
    await eventually(lambda: all(h.statuses.get(c.id) == "ACTIVE" for c in new))


async def test_a_vpc_switches_chains_and_nodes_join_and_leave_while_it_changes(h: Harness) -> None:
    """Three hosts: the VPC goes multicast at 3 members and back to unicast at 1, nodes join
    and leave it, all while ports keep changing; every agent ends at its goal, with no gap."""
    h.settings.multicast_nodes, h.settings.unicast_nodes = 3, 1
    d = h.dispatcher
    assert d is not None
    d.channels = type(d.channels)(3, 1)
    w = h.world
    await h.commit([w.add_node(f"host-{i}", ip=i) for i in range(3)])
    net = w.add_network(2100)
    sub_c = w.add_subnet(net.id)
    await h.commit([net, sub_c])
    for n in node_ids(h):
        await h.add_agent(n)
    sub = w.res["subnet"][sub_c.id]
    ports: list[str] = []
    for rnd in range(3):
        # Grow: a port on each host in turn (joins; the switch to multicast at the third).
        for i in range(3):
            batch = [w.add_port(sub, f"host-{i}", []) for _ in range(5)]
            ports += [c.id for c in batch]
            await h.commit(batch)
        await h.converge()
        assert d.state.vpcs, "a VPC of 3 member nodes is on its multicast chain"
        # Shrink: the ports of two hosts go (leaves; back to unicast at one member), while the
        # remaining host's ports change.
        gone = [pid for pid in ports if w.res["port"][pid]["binding:host_id"] != "host-0"]
        for pid in gone:
            await h.commit([w.delete("port", pid), w.add_port(sub, "host-0", [])])
        ports = [pid for pid in w.res["port"]]
        await h.converge()
        assert not d.state.vpcs, f"round {rnd}: back on the node chains"
    assert all(a.counters.gaps == 0 for a in h.agents.values())
    assert sum(a.model.applied_rev > 0 for a in h.agents.values()) == 3


async def test_a_stream_goes_in_fewer_batches_and_a_lone_change_after_one_linger(
        tmp_path: Path) -> None:
    """While changes keep arriving the batch lingers on, up to min_batch changes; a change
    with nothing after it goes after one linger, not linger_max."""
    broker = InProcessBroker()
    settings = Settings(linger=0.01, min_batch=30, linger_max=2.0)
    h = Harness(tmp_path / "alcor.db", lambda: InProcessTransport(broker), settings)
    await h.start()
    try:
        await all_agents_converged(h, 2)
        d = h.dispatcher
        store = h.store
        assert d is not None and store is not None
        w = h.world
        sub = next(iter(w.res["subnet"].values()))
        before = d.metrics.batches
        for _ in range(60):  # one change every 2 ms: new ones within every linger
            await h.commit([w.add_port(sub, "host-0", [])])
            await asyncio.sleep(0.002)
        await eventually(lambda: d.watermark == store.changes.last_rev)
        # Without lingering on: a batch per 10 ms linger, 12 or more over the stream's 120 ms;
        # lingering on, two (a stall of a whole linger between two commits ends one early).
        assert d.metrics.batches - before <= 5, d.metrics.batches - before
        await h.converge()

        await asyncio.sleep(0.1)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        rev = await h.commit([w.add_port(sub, "host-1", [])])
        await eventually(lambda: d.watermark >= rev)
        assert loop.time() - t0 < 1.0  # one linger (10 ms) and the batch, not linger_max (2 s)
        await h.converge()
    finally:
        await h.stop()


async def test_a_batch_that_holds_min_batch_changes_already_does_not_linger(
        tmp_path: Path) -> None:
    broker = InProcessBroker()
    settings = Settings(linger=1.0, min_batch=10, linger_max=3.0)
    h = Harness(tmp_path / "alcor.db", lambda: InProcessTransport(broker), settings)
    await h.start()
    try:
        await all_agents_converged(h, 2)
        d = h.dispatcher
        assert d is not None
        sub = next(iter(h.world.res["subnet"].values()))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        rev = await h.commit([h.world.add_port(sub, "host-1", []) for _ in range(10)])
        await eventually(lambda: d.watermark >= rev)
        assert loop.time() - t0 < 0.5  # no linger (1 s) for the 10 changes waiting
        t0 = loop.time()
        rev = await h.commit([h.world.add_port(sub, "host-1", []) for _ in range(9)])
        await eventually(lambda: d.watermark >= rev)
        assert loop.time() - t0 >= 1.0  # fewer than min_batch: one linger
        await h.converge()
    finally:
        await h.stop()


async def test_each_change_latency_is_split_into_stages(h: Harness) -> None:
    await all_agents_converged(h, 2)
    d = h.dispatcher
    assert d is not None
    sub = next(iter(h.world.res["subnet"].values()))
    for _ in range(5):
        await h.commit([h.world.add_port(sub, "host-1", [])])
    await h.converge()
    lat, stages = list(d.metrics.latencies), list(d.metrics.stages)
    assert len(lat) == len(stages) > 0
    for x, split in zip(lat, stages, strict=True):
        assert len(split) == len(d.metrics.STAGES) and min(split) >= 0.0
        assert sum(split) == pytest.approx(x, abs=1e-6)
    assert d.metrics.commit_seconds > 0.0


@QUEUE_ONLY
async def test_what_batches_leave_alive_is_frozen_and_collected_once_idle(h: Harness) -> None:
    """The full collection held off by freezing runs once the dispatcher is idle: cyclic
    garbage frozen meanwhile is reclaimed then, not leaked."""
    await all_agents_converged(h, 2)
    d = h.dispatcher
    assert d is not None

    class Cycle:
        pass

    c = Cycle()
    c.me = c  # type: ignore[attr-defined]
    gone = weakref.ref(c)
    sub = next(iter(h.world.res["subnet"].values()))
    await h.commit([h.world.add_port(sub, "host-1", [])])
    await h.converge()
    assert gc.get_freeze_count() > 0  # the batch froze what was alive, the cycle with it
    del c
    gc.collect()
    assert gone() is not None  # frozen: out of even an explicit collection's reach
    await eventually(lambda: gone() is None, 5.0)  # the idle full collection unfroze it


# -- the VPC chains on streams -------------------------------------------------------------------


@pytest.fixture
async def hs(tmp_path: Path):
    broker = InProcessBroker()
    h = Harness(tmp_path / "alcor.db", lambda: InProcessTransport(broker), vpc_channel="stream")
    h.broker = broker  # type: ignore[attr-defined]
    await h.start()
    yield h
    await h.stop()


def perturbing(a: AgentStream, seed: int, first: int) -> list[str]:
    """Make `a`'s stream readers lose, duplicate and reorder the first `first` deliveries
    (at random, by `seed`), then pass everything through; returns what was done."""
    rng = random.Random(seed)
    done: list[str] = []
    wrap = a._on_stream
    held: list[tuple[Any, Any]] = []
    count = [0]

    def on_stream(vpc: str) -> Any:
        inner = wrap(vpc)

        async def handler(d: Any) -> None:
            count[0] += 1
            if count[0] > first:
                while held:
                    await inner(held.pop()[1])
                await inner(d)
                return
            what = rng.choice(["pass", "pass", "lose", "dup", "hold"])
            done.append(what)
            if what == "lose":
                await d.ack()
            elif what == "dup":
                await inner(d)
                await inner(d)
            elif what == "hold":
                held.append((vpc, d))  # delivered after a later one
            else:
                await inner(d)
                while held and rng.random() < 0.5:
                    await inner(held.pop()[1])

        return handler

    a._on_stream = on_stream  # type: ignore[method-assign]
    return done


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_losses_duplicates_and_reordering_on_a_vpc_stream_end_at_the_goal(
    hs: Harness, seed: int
) -> None:
    """Deliveries of a VPC's stream lost, duplicated and reordered at random while the VPC
    changes: every agent ends at its goal; a loss shows up as a gap on that VPC's chain (a VPC
    snapshot), never applied silently."""
    h = hs
    await h.commit(topology(h, 3))
    n = node_ids(h)[0]
    a = await h.add_agent(n)
    done = perturbing(a, seed, 40)
    for other in node_ids(h)[1:]:
        await h.add_agent(other)
    await h.converge()
    await eventually(lambda: bool(a.streams))  # the VPC's chain comes from its stream
    w = h.world
    sub = next(iter(w.res["subnet"].values()))
    ports: list[str] = []
    for i in range(60):
        c = w.add_port(sub, f"host-{1 + i % 2}", [])
        ports.append(c.id)
        await h.commit([c])
        if i % 7 == 3:
            await h.commit([w.delete("port", ports.pop(0))])
        await asyncio.sleep(0.005)  # a batch (a VPC message) per change or two
    await h.converge()
    assert "lose" in done and "dup" in done and "hold" in done  # (these seeds do all three)
    assert a.counters.vpc_gaps >= 1 and a.counters.duplicates >= 1
    assert a.counters.gaps == a.counters.vpc_gaps  # never a whole snapshot for the VPC's losses


async def test_a_node_joins_and_leaves_a_vpc_stream_while_it_changes(hs: Harness) -> None:
    """A third host gets its first port in a multicast VPC, while the VPC keeps changing, and
    loses it again, three times: it reads the VPC's stream from its join on, stops at its
    leave, and ends at its goal each time with no gap."""
    h = hs
    await all_agents_converged(h, 2)
    w = h.world
    await h.commit([w.add_node("host-2", ip=2)])
    n2 = sorted(n for n, b in w.res["node"].items() if b["node_name"] == "host-2")[0]
    a = await h.add_agent(n2)
    sub = next(iter(w.res["subnet"].values()))
    vpc = sub_vpc = w.res["subnet"][sub["id"]]["network_id"]
    for _ in range(3):
        mine = w.add_port(sub, "host-2", [])
        changing = asyncio.create_task(_churn(h, sub, 20))
        await h.commit([mine])
        await changing
        await h.converge()
        await eventually(lambda: a.streams == [vpc])
        assert vpc in a.model.chains
        changing = asyncio.create_task(_churn(h, sub, 20))
        await h.commit([w.delete("port", mine.id)])
        await changing
        await h.converge()
        await eventually(lambda: a.streams == [])
        assert sub_vpc not in a.model.chains
    assert all(x.counters.gaps == 0 for x in h.agents.values())


async def _churn(h: Harness, sub: Any, n: int) -> None:
    w = h.world
    for i in range(n):
        await h.commit([w.add_port(sub, f"host-{i % 2}", [])])
        await asyncio.sleep(0.003)


async def test_a_vpc_stream_truncated_under_a_stalled_reader_is_a_gap_not_silence(
    hs: Harness,
) -> None:
    """Retention drops the VPC messages an agent had not read yet (it was stalled on the
    stream): reading on from the oldest one kept, it sees a gap on that chain, gets the VPC's
    state, and ends at its goal."""
    h = hs
    broker: InProcessBroker = h.broker  # type: ignore[attr-defined]
    await all_agents_converged(h, 2)
    n = node_ids(h)[0]
    a = h.agents[n]
    (vpc,) = a.streams
    (st,) = broker.streams.values()
    since = time.time() - 1  # before the messages below: all of them are for it to read
    await a._close_stream(vpc)  # stalled: it reads nothing more for now
    st.max_bytes = 1  # keeps only the newest message
    w = h.world
    sub = next(iter(w.res["subnet"].values()))
    for _ in range(5):
        await h.commit([w.add_port(sub, "host-1", [])])
        await eventually(lambda: h.dispatcher is not None and h.dispatcher.watermark == h.store.changes.last_rev)  # type: ignore[union-attr]
    assert len(st.entries) == 1 and st.first >= 4
    a._unopened[vpc] = float(since)
    await a._open_stream(vpc)
    await h.converge()
    assert a.counters.vpc_gaps == 1 and a.counters.gaps == 1 and a.counters.snapshots == 1


async def test_a_restarted_agent_reads_the_vpc_stream_from_its_snapshot(hs: Harness) -> None:
    """An agent restarted (empty model) while the VPC changes: its snapshot says from when to
    read the VPC's stream, and it ends at its goal without reading what it missed."""
    h = hs
    await all_agents_converged(h, 3)
    n = node_ids(h)[2]
    await h.agents.pop(n).stop()
    sub = next(iter(h.world.res["subnet"].values()))
    await _churn(h, sub, 30)
    changing = asyncio.create_task(_churn(h, sub, 30))
    a = await h.add_agent(n)
    await changing
    await h.converge()
    await eventually(lambda: bool(a.streams))
    assert a.counters.snapshots == 1 and a.counters.gaps == 0


async def test_switching_the_vpc_channel_snapshots_every_follower(tmp_path: Path) -> None:
    """`vpc_channel` changed between two runs of the controller: every follower of a multicast
    VPC gets a snapshot saying how to follow it now, and ends at its goal on the new channel."""
    broker = InProcessBroker()
    h = Harness(tmp_path / "alcor.db", lambda: InProcessTransport(broker), vpc_channel="queue")
    await h.start()
    try:
        await all_agents_converged(h, 2)
        assert not any(a.streams for a in h.agents.values())
        for channel, followed in (("stream", True), ("queue", False)):
            await h.crash()
            h.settings = dataclasses.replace(h.settings, vpc_channel=channel)  # type: ignore[arg-type]
            await h.start()
            sub = next(iter(h.world.res["subnet"].values()))
            await _churn(h, sub, 10)
            await h.converge()
            await eventually(lambda f=followed: all(bool(a.streams) == f for a in h.agents.values()))
        assert all(a.counters.snapshots == 3 for a in h.agents.values())
    finally:
        await h.stop()
