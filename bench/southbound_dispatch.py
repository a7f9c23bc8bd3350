"""Southbound dispatch benchmark over the real RabbitMQ: prints its figures, asserts nothing.

    .venv/bin/python bench/southbound_dispatch.py [--agents 1000] [--vpcs 20] [--ports 10000]
        [--vpc-channel queue|stream|both] [--private-broker [--nofile 65536]]

With `--vpc-channel both` the whole bench runs once per channel, on the same broker, one after
the other, and a side-by-side summary ends the output. `--private-broker` starts a RabbitMQ
node of the bench's own (tests/support/broker.py) with `ulimit -n` raised in its environment
(a stream reader holds files open on the broker: 1,000 of them do not fit the 1,024 descriptors
the shared broker here was started with), and stops it at the end. BENCH_NO_STREAM_READERS=1
(a diagnostic): the light agents do not read the VPC streams, to see what the readers cost the
broker's confirms.

1. Throughput: N simulated agents (light consumers in this process: parse, check the prev_rev
   chain, ack with a prefetch window), V VPCs, each node hosting ports in one VPC; P port creates
   committed as fast as the store takes them (transactions of 50). Reports changes/s, node-ops/s
   and messages/s dispatched, from first commit to the last message confirmed.
2. Latency: one port create per transaction at ~1,000 changes/s for 3 s; commit → broker-confirmed
   p50/p99 as the dispatcher measures it.
3. Snapshot: a node in a VPC of 10,000 neighbours; time to build, encode and publish (confirmed)
   its snapshot, and end to end from the request to the agent holding it.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aio_pika  # noqa: E402

from alcor import log as alcor_log  # noqa: E402
from alcor.agent.config import AgentConfig  # noqa: E402
from alcor.agent.model import unpack  # noqa: E402
from alcor.db.store import SqliteStore  # noqa: E402
from alcor.southbound.dispatcher import Dispatcher, Metrics, Settings  # noqa: E402
from alcor.southbound.encode import encode_snapshot, pack  # noqa: E402
from alcor.transport import Address, InProcessTransport  # noqa: E402
from alcor.wire import vpc_stream  # noqa: E402
from alcor_plugins.rabbitmq import RabbitConfig, RabbitTransport  # noqa: E402
from tests.support.broker import PrivateBroker  # noqa: E402
from tests.support.wait import eventually  # noqa: E402
from tests.support.world import (
    World,  # noqa: E402
    write,  # noqa: E402
)

URL = "amqp://guest:guest@127.0.0.1:5672/"


def head(raw: bytes) -> dict[str, Any]:
    """A message's head (kind, revs, chains: everything before its ops) without decoding the
    ops. The light agents share this machine's two cores with the broker and the dispatcher:
    decoding every copy of every VPC message in one process (a real agent decodes its one copy
    on its own host) made the fleet, not the dispatcher or the broker, what the bench timed."""
    prefix = zlib.decompressobj().decompress(raw, 4096) if raw[:1] == b"\x78" else raw[:4096]
    i = prefix.find(b',"ops":[')
    if i < 0:
        return dict(json.loads(unpack(raw)))  # a longer head: the whole message
    return dict(json.loads(prefix[:i] + b"}"))


class LightAgent:
    """Just enough of an agent to prove delivery: the ordering rule's rev bookkeeping per chain
    (the node's own, and the VPC chains it follows), acks. It reads each message's head only.
    With the VPC chains on streams it reads each followed VPC's stream from the `since` of the
    message that started it (less AgentConfig's stream_rewind), as the agent does."""

    def __init__(self, transport: Any = None, url: str = URL) -> None:
        self.applied = 0
        self.chains: dict[str, int] = {}
        self.messages = 0
        self.gaps = 0
        self.snapshot_at: float | None = None
        self.transport, self.url = transport, url
        self.streams: dict[str, Any] = {}

    async def _follow(self, m: dict[str, Any], snapshot: bool) -> None:
        vpcs = m.get("vpcs", {})
        for v in [v for v in self.streams if snapshot and v not in vpcs]:
            await self.streams.pop(v).cancel()
        for v, r in vpcs.items():
            if v in self.streams:
                await self.streams.pop(v).cancel()
            if r is not None and m.get("since") and not os.environ.get("BENCH_NO_STREAM_READERS"):
                addr = Address(self.url, "/", "", "").with_stream(vpc_stream(v))
                self.streams[v] = await self.transport.consume_stream(
                    addr, self.on_delivery, 200, m["since"] / 1000 - AgentConfig.stream_rewind)

    busy = 0.0  # seconds all light agents of this process spent handling deliveries

    async def on_delivery(self, d: Any) -> None:
        t0 = time.perf_counter()
        try:
            await self._on_delivery(d)
        finally:
            LightAgent.busy += time.perf_counter() - t0

    async def _on_delivery(self, d: Any) -> None:
        m = head(d.body)
        self.messages += 1
        vpc = m.get("vpc_id")
        if vpc is not None:
            held = self.chains.get(vpc)
            if held is not None and m["rev"] > held:
                if m["prev_rev"] > held:
                    self.gaps += 1
                self.chains[vpc] = m["rev"]
        elif m["kind"] == "snapshot":
            self.applied = max(self.applied, m["rev"])
            self.chains = dict(m.get("vpcs", {}))
            self.snapshot_at = time.time()
            await self._follow(m, True)
        elif m["rev"] > self.applied:
            if m["prev_rev"] > self.applied:
                self.gaps += 1
            self.applied = m["rev"]
            for v, r in m.get("vpcs", {}).items():
                if r is None:
                    self.chains.pop(v, None)
                else:
                    self.chains[v] = r
            await self._follow(m, False)
        await d.ack()


Report = tuple[int, int, int, float | None, dict[str, int]]


class Fleet:
    """The simulated agents, in this process (--agents-inline) or in a child process, so that
    consuming 1,000 queues does not steal the dispatcher's event loop."""

    def __init__(self, queues: dict[str, str], inline: bool, transport: Any,
                 queue_version: int = RabbitConfig.queue_version, url: str = URL,
                 nice: int = 0) -> None:
        self.queues, self.inline, self.transport = queues, inline, transport
        self.queue_version = queue_version
        self.url = url
        self.nice = nice
        self.agents: dict[str, LightAgent] = {}
        self.subs: list[Any] = []
        self.conn: Any = None
        self.proc: Any = None

    async def start(self) -> None:
        if self.inline:
            for n, q in self.queues.items():
                a = self.agents[n] = LightAgent(self.transport, self.url)
                addr = Address(self.url, "/", "alcor", q)
                self.subs.append(await self.transport.consume(addr, a.on_delivery, 200))
            return
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_fleet_child,
                                args=(child, self.queues, self.queue_version, self.url,
                                      self.nice),
                                daemon=True)
        self.proc.start()
        await asyncio.to_thread(self.conn.recv)  # subscribed

    async def report(self) -> dict[str, Report]:
        """node → (applied rev, messages received, gaps, wall time of last snapshot, the VPC
        chains it follows → their applied rev)."""
        if self.inline:
            return {n: (a.applied, a.messages, a.gaps, a.snapshot_at, dict(a.chains))
                    for n, a in self.agents.items()}
        self.conn.send("report")
        result: dict[str, Report] = await asyncio.to_thread(
            self.conn.recv
        )
        return result

    async def stop(self) -> None:
        for sub in self.subs:
            await sub.cancel()
        for a in self.agents.values():
            for sub in a.streams.values():
                await sub.cancel()
        if self.conn is not None:
            self.conn.send("stop")
            await asyncio.to_thread(self.proc.join, 30)


def _fleet_child(conn: Any, queues: dict[str, str], queue_version: int, url: str,
                 nice: int = 0) -> None:
    if nice:
        # The simulated fleet (1,000 agents in one Python process) after the broker and the
        # dispatcher for the CPU: on two shared cores it otherwise takes a whole core while the
        # broker confirms, where real agents each run on their own host.
        os.nice(nice)

    async def run() -> None:
        fleet = Fleet(queues, True, RabbitTransport(
            RabbitConfig(reconnect_interval=1.0, queue_version=queue_version)), url=url)
        await fleet.start()
        conn.send("ready")
        while True:
            cmd = await asyncio.to_thread(conn.recv)
            if cmd == "stop":
                await fleet.stop()
                await fleet.transport.stop()
                return
            conn.send(await fleet.report())

    asyncio.run(run())


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


class LoopWatch:
    """What else holds this process's event loop during the latency run: the cyclic GC's
    pauses (gc.callbacks, per generation) and how late a 1 ms timer fires (a synchronous
    plan, encode, write or a fleet of callbacks in the way)."""

    def __init__(self) -> None:
        self.gc: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self.lags: list[float] = []
        self._t = 0.0
        self._task: asyncio.Task[None] | None = None

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.gc[info["generation"]].append(time.perf_counter() - self._t)

    async def _tick(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            self.lags.append(time.perf_counter() - t - 0.001)

    def start(self) -> None:
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.get_running_loop().create_task(self._tick())

    def stop(self) -> None:
        gc.callbacks.remove(self._on_gc)
        if self._task is not None:
            self._task.cancel()

    def report(self) -> str:
        out = ["  the loop: a 1 ms timer late by p50 "
               f"{pct(self.lags, 0.5):.1f} ms, p99 {pct(self.lags, 0.99):.1f} ms, max "
               f"{max(self.lags, default=0) * 1000:.1f} ms; GC pauses"]
        for g, xs in self.gc.items():
            out.append(f" gen{g} {len(xs)} x, max {max(xs, default=0) * 1000:.1f} ms, total "
                       f"{sum(xs) * 1000:.0f} ms;")
        return "".join(out)


def stage_table(lat: list[float], stages: list[tuple[float, ...]]) -> list[str]:
    """Where the latency run's changes waited, per stage (Metrics.STAGES): mean, p50 and p99
    over all changes, and the mean over the slowest 1 % of them (what p99 is made of)."""
    if not stages:
        return []
    cut = sorted(lat)[min(len(lat) - 1, int(0.99 * len(lat)))]
    slow = [st for x, st in zip(lat, stages, strict=True) if x >= cut]
    rows = [f"  {'stage (ms)':<12}{'mean':>8}{'p50':>8}{'p99':>8}{'slowest 1 %':>13}"]
    for k, name in enumerate(Metrics.STAGES):
        xs = [st[k] for st in stages]
        rows.append(f"  {name:<12}{statistics.fmean(xs) * 1000:>8.1f}{pct(xs, 0.5):>8.1f}"
                    f"{pct(xs, 0.99):>8.1f}"
                    f"{statistics.fmean(st[k] for st in slow) * 1000:>13.1f}")
    return rows


async def main(args: argparse.Namespace) -> None:
    alcor_log.setup(args.log, "console")
    broker = None
    url = URL
    if args.private_broker:
        broker = PrivateBroker(Path(tempfile.mkdtemp(prefix="alcor-bench-rmq-")), args.nofile)
        await broker.start()
        url = broker.url
        print(f"private RabbitMQ node on port {broker.port}, open files limit "
              f"{broker.open_files_limit()} (asked for {args.nofile})")
    channels = ["queue", "stream"] if args.vpc_channel == "both" else [args.vpc_channel]
    summary = {}
    try:
        for channel in channels:
            print(f"\n== vpc_channel = {channel!r} ==")
            summary[channel] = await run(args, channel, url)
    finally:
        if broker is not None:
            await broker.stop()
    if len(summary) > 1:
        print("\nside by side (same broker, one after the other):")
        keys = list(next(iter(summary.values())))
        print(f"  {'':<40}" + "".join(f"{c:>22}" for c in summary))
        for k in keys:
            print(f"  {k:<40}" + "".join(f"{summary[c][k]:>22}" for c in summary))


async def run(args: argparse.Namespace, channel: str, url: str) -> dict[str, str]:
    tmp = Path(tempfile.mkdtemp(prefix="alcor-bench-"))
    tag = f"bench.{uuid.uuid4().hex[:6]}."
    store = SqliteStore(tmp / "alcor.db", "NORMAL")
    await store.open()
    transport: Any = (
        InProcessTransport()
        if args.transport == "inprocess"
        else RabbitTransport(RabbitConfig(reconnect_interval=1.0, persistent=not args.transient,
                                          queue_version=args.queue_version))
    )
    settings = Settings(
        controller_queue=tag + "controller", linger=args.linger, min_batch=args.min_batch,
        linger_max=args.linger_max, max_inflight=args.inflight,
        multicast_nodes=args.multicast_nodes, unicast_nodes=args.multicast_nodes // 2,
        vpc_channel=channel,  # type: ignore[arg-type]
        mq_url=url,
    )
    print(f"load average {os.getloadavg()}; fleet at nice {args.fleet_nice}; {args.transport}, "
          f"VPC chains on "
          f"{'a stream per VPC' if channel == 'stream' else 'bound routing keys'}, multicast from "
          f"{args.multicast_nodes or 'never'} member nodes, classic queues "
          f"{args.queue_version or 'v1 (the broker default)'}, "
          f"{'transient' if args.transient else 'persistent'}, {args.inflight} batch(es) in flight")
    d = Dispatcher(store, transport, settings)
    await d.open()
    w = World(uuids=True)
    w.queue_prefix = tag
    w.mq_url = url

    # Topology: nodes, VPCs with a /16 subnet each, the default security group.
    nodes = [w.add_node(f"host-{i}", ip=i) for i in range(args.agents)]
    sg = w.add_sg()
    nets = [w.add_network(5000 + v) for v in range(args.vpcs)]
    subs = []
    for v, net in enumerate(nets):
        c = w.add_subnet(net.id, v)
        w.res["subnet"][c.id]["cidr"] = f"10.{v}.0.0/16"
        c.body["cidr"] = f"10.{v}.0.0/16"  # type: ignore[index]
        subs.append(c)
    await write(store, [*nodes, sg, *nets, *subs])
    d.start()

    t0 = time.perf_counter()
    fleet = Fleet(
        {n.id: w.res["node"][n.id]["mq_queue"] for n in nodes},
        args.agents_inline or args.transport == "inprocess",
        transport,
        args.queue_version,
        url,
        args.fleet_nice,
    )
    await fleet.start()
    print(
        f"setup: {args.agents} agents subscribed in {time.perf_counter() - t0:.1f} s "
        f"({'in this process' if fleet.inline else 'in a child process'})"
    )
    await eventually(lambda: d.watermark >= store.changes.last_rev, 600.0, interval=0.05)

    # 1. Throughput.
    def port(i: int) -> Any:
        node = i % args.agents
        v = node % args.vpcs
        s = w.res["subnet"][subs[v].id]
        p = w.add_port(s, f"host-{node}", [sg.id], ip_last=2)
        ip = 10 + i // args.vpcs
        p.body["fixed_ips"][0]["ip_address"] = f"10.{v}.{ip // 250}.{ip % 250 + 2}"  # type: ignore[index]
        return p

    base = dict(vars(d.metrics))
    # The Neutron bodies are the simulated API's work (World's bookkeeping copies each body
    # twice), not the store's or the dispatcher's: built before the clock starts.
    created = [port(i) for i in range(args.ports)]
    prof = cProfile.Profile() if args.profile else None
    if prof is not None:
        prof.enable()
    cpu0 = time.process_time()
    start = time.perf_counter()
    for chunk in range(0, args.ports, 50):
        await write(store, created[chunk : chunk + 50])
    committed = time.perf_counter() - start
    await eventually(lambda: d.watermark >= store.changes.last_rev, 600.0, interval=0.005)
    elapsed = time.perf_counter() - start
    cpu = (time.process_time() - cpu0) / elapsed
    m = d.metrics
    changes = m.changes - base["changes"]
    ops = m.ops - base["ops"]
    msgs = m.messages - base["messages"]
    vpc_msgs = m.vpc_messages - base["vpc_messages"]
    deliveries = m.deliveries - base["deliveries"]
    print(
        f"throughput: {changes} port creates committed in {committed:.2f} s, dispatched and "
        f"confirmed in {elapsed:.2f} s"
    )
    print(
        f"  {changes / elapsed:,.0f} changes/s  {ops / elapsed:,.0f} node-ops/s  "
        f"{msgs / elapsed:,.0f} msgs/s  ({ops:,} node-ops in {msgs:,} messages, "
        f"{m.batches - base['batches']} batches); this process (store writes, dispatcher) "
        f"used {cpu:.0%} of a core"
    )
    print(
        f"  of which planning+encoding {m.plan_seconds - base['plan_seconds']:.2f} s, batches "
        f"waiting for confirms {m.confirm_seconds - base['confirm_seconds']:.2f} s"
    )
    print(
        f"  publishes {msgs / elapsed:,.0f}/s ({vpc_msgs:,} of {msgs:,} on VPC chains), broker "
        f"deliveries {deliveries / elapsed:,.0f}/s ({deliveries:,}); multicast VPCs "
        f"{len(d.state.vpcs)}/{args.vpcs}"
    )
    last = store.changes.last_rev
    deadline = time.perf_counter() + 120
    while True:
        rep = await fleet.report()
        done = all(rep[n][0] >= d.nodes[n].sent_rev for n in rep) and (
            bool(os.environ.get("BENCH_NO_STREAM_READERS")) or all(
                r >= d.state.vpcs[v].sent_rev
                for n in rep for v, r in rep[n][4].items() if v in d.state.vpcs))
        if done or time.perf_counter() > deadline:
            break
        await asyncio.sleep(0.2)
    print(
        f"  agents: {sum(r[1] for r in rep.values()):,} messages received, all at their goal "
        f"rev (own chain and VPC chains): "
        f"{done}, gaps: {sum(r[2] for r in rep.values())}, head rev {last}"
    )

    # 2. Latency at ~1,000 changes/s.
    m.latencies.clear()
    m.stages.clear()
    b2, plan2, wait2, commit2 = m.batches, m.plan_seconds, m.confirm_seconds, m.commit_seconds
    rate, seconds = args.rate, 3.0
    watch = LoopWatch()
    watch.start()
    start = time.perf_counter()
    i = args.ports
    cpu0 = time.process_time()
    writing = 0.0
    slow_writes: list[float] = []  # a write that held the loop > 20 ms (a WAL checkpoint?)
    fleet0 = LightAgent.busy
    while time.perf_counter() - start < seconds:
        due = start + (i - args.ports) / rate
        now = time.perf_counter()
        if due > now:
            await asyncio.sleep(due - now)
        t0 = time.perf_counter()
        await write(store, [port(i)])
        took = time.perf_counter() - t0
        writing += took
        if took > 0.02:
            slow_writes.append(took)
        i += 1
    await eventually(lambda: d.watermark >= store.changes.last_rev, 600.0, interval=0.005)
    cpu = (time.process_time() - cpu0) / (time.perf_counter() - start)
    watch.stop()
    lat = list(m.latencies)
    stages = list(m.stages)
    if prof is not None:
        prof.disable()
        prof.dump_stats(args.profile)
    print(f"  batches {m.batches - b2}, sent {i - args.ports}, this process used {cpu:.0%} of a "
          f"core (planning+encoding {m.plan_seconds - plan2:.2f} s, waiting for confirms "
          f"{m.confirm_seconds - wait2:.2f} s), load average {os.getloadavg()}")
    print(
        f"latency at {rate}/s ({len(lat)} changes, one per transaction): commit -> confirmed "
        f"p50 {pct(lat, 0.5):.1f} ms  p99 {pct(lat, 0.99):.1f} ms  max {max(lat) * 1000:.1f} ms"
    )
    print(f"  where a change waited (settings: linger {settings.linger * 1000:g} ms, min_batch "
          f"{settings.min_batch}, linger_max {settings.linger_max * 1000:g} ms, "
          f"{settings.max_inflight} in flight):")
    print("\n".join(stage_table(lat, stages)))
    batches2 = max(1, m.batches - b2)
    print(f"  per batch: {(i - args.ports) / batches2:.0f} changes, watermark commit "
          f"{(m.commit_seconds - commit2) / batches2 * 1000:.1f} ms; the bench's writer "
          f"(bodies, one transaction per create, on this loop) {writing:.2f} s of the "
          f"{seconds:g} s" + (f"; the simulated fleet (on this loop) "
                              f"{LightAgent.busy - fleet0:.2f} s" if fleet.inline else ""))
    print(f"  writes over 20 ms: {len(slow_writes)}, max "
          f"{max(slow_writes, default=0) * 1000:.0f} ms")
    print(watch.report())
    summary = {
        "throughput: changes/s, node-ops/s": f"{changes / elapsed:,.0f}, {ops / elapsed:,.0f}",
        "publishes/s, broker deliveries/s": f"{msgs / elapsed:,.0f}, {deliveries / elapsed:,.0f}",
        "messages (on VPC chains)": f"{msgs:,} ({vpc_msgs:,})",
        "agents at goal, gaps": f"{done}, {sum(r[2] for r in rep.values())}",
        "latency batches (changes)": f"{m.batches - b2} ({len(lat)})",
        "latency p50 / p99 (ms)": f"{pct(lat, 0.5):.0f} / {pct(lat, 0.99):.0f}",
        "confirm wait in latency run (s)": f"{m.confirm_seconds - wait2:.2f}",
        "load average (1 min) after": f"{os.getloadavg()[0]:.2f}",
    }

    # 3. Snapshot of 10,000 neighbours.
    big_net = w.add_network(9000)
    big_sub = w.add_subnet(big_net.id, 99)
    w.res["subnet"][big_sub.id]["cidr"] = "10.99.0.0/16"
    big_sub.body["cidr"] = "10.99.0.0/16"  # type: ignore[index]
    s = w.res["subnet"][big_sub.id]
    me, other = nodes[0].id, "host-1"
    batch = [big_net, big_sub, w.add_port(s, "host-0", [sg.id], ip_last=2)]
    for k in range(args.neighbours):
        p = w.add_port(s, other, [sg.id], ip_last=2)
        p.body["fixed_ips"][0]["ip_address"] = f"10.99.{k // 250}.{k % 250 + 3}"  # type: ignore[index]
        batch.append(p)
    for chunk in range(0, len(batch), 500):
        await write(store, batch[chunk : chunk + 500])
    await eventually(lambda: d.watermark >= store.changes.last_rev, 600.0, interval=0.01)
    await asyncio.sleep(0.5)
    addr = d.address(me)
    assert addr is not None
    builds, sends = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        raw, n_ops = encode_snapshot(d.topology, me, d.nodes[me].sent_rev, d.watermark)
        raw = pack(raw, settings.compress_over)
        t1 = time.perf_counter()
        ok = await transport.publish([(addr, raw)], 10.0)
        t2 = time.perf_counter()
        assert ok == [True]
        builds.append(t1 - t0)
        sends.append(t2 - t1)
    neighbours = len(d.topology.ports_by_vpc[big_net.id]) - 1
    print(
        f"snapshot: {neighbours:,} neighbours, {n_ops:,} ops, {len(raw) / 1e6:.2f} MB compressed: "
        f"build+encode+compress "
        f"{statistics.median(builds) * 1000:.0f} ms, publish+confirm "
        f"{statistics.median(sends) * 1000:.0f} ms, total "
        f"{(statistics.median(builds) + statistics.median(sends)) * 1000:.0f} ms (median of 5)"
    )
    await asyncio.sleep(1.0)
    before = (await fleet.report())[me][3]
    t0 = time.time()
    d.request_snapshot(me, "bench")
    while True:
        got_at = (await fleet.report())[me][3]
        if got_at is not None and got_at != before:
            break
        await asyncio.sleep(0.02)
    print(
        f"  end to end (request -> dispatcher -> broker -> agent parsed): "
        f"{(got_at - t0) * 1000:.0f} ms"
    )

    summary["snapshot end to end (ms)"] = f"{(got_at - t0) * 1000:.0f}"
    await d.stop()
    await fleet.stop()
    await transport.stop()
    await store.close()
    if args.transport != "inprocess":
        names = [b["mq_queue"] for b in w.res["node"].values()] + [tag + "controller"]
        names += [vpc_stream(b["id"]) for b in w.res["network"].values()]
        await delete_queues(names, url)
    return summary


async def delete_queues(names: list[str], url: str = URL) -> None:
    """Remove the bench's queues, even if the broker dropped our connections meanwhile."""
    for _attempt in range(3):
        try:
            conn = await aio_pika.connect(url)
            async with conn:
                ch = await conn.channel()
                while names:
                    await ch.queue_delete(names[-1])
                    names.pop()
            return
        except Exception as e:
            print(f"cleanup: {e!r}; retrying", file=sys.stderr)
            await asyncio.sleep(1.0)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--vpcs", type=int, default=20)
    ap.add_argument("--ports", type=int, default=10000)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--log", default="warning")
    ap.add_argument("--transient", action="store_true", help="[rabbitmq] persistent = false")
    ap.add_argument("--queue-version", type=int, default=RabbitConfig.queue_version,
                    help="[rabbitmq] queue_version (0: the broker's default, v1 on 3.10)")
    ap.add_argument("--inflight", type=int, default=Settings.max_inflight)
    ap.add_argument("--linger", type=float, default=0.002, help="[southbound] linger (s)")
    ap.add_argument("--min-batch", type=int, default=Settings.min_batch,
                    help="[southbound] min_batch")
    ap.add_argument("--linger-max", type=float, default=Settings.linger_max,
                    help="[southbound] linger_max (s)")
    ap.add_argument(
        "--agents-inline", action="store_true", help="consume in the dispatcher's own process"
    )
    ap.add_argument("--profile", metavar="FILE",
                    help="cProfile the dispatcher's process over the throughput and latency runs")
    ap.add_argument("--neighbours", type=int, default=10000)
    ap.add_argument(
        "--multicast-nodes", type=int, default=Settings.multicast_nodes,
        help="[southbound] multicast_nodes (unicast_nodes: half of it); 0: unicast only",
    )
    ap.add_argument("--transport", choices=["rabbitmq", "inprocess"], default="rabbitmq")
    ap.add_argument("--vpc-channel", choices=["queue", "stream", "both"], default="queue",
                    help="[southbound] vpc_channel; both: one run each, side by side")
    ap.add_argument("--private-broker", action="store_true",
                    help="start a RabbitMQ node of the bench's own (and stop it after)")
    ap.add_argument("--fleet-nice", type=int, default=0,
                    help="run the simulated agents' process at this nice value (e.g. 19)")
    ap.add_argument("--nofile", type=int, default=65536,
                    help="the private node's `ulimit -n` (up to the hard limit granted here)")
    asyncio.run(main(ap.parse_args()))
