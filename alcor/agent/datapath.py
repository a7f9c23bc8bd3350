"""The host's datapath as the agent process sees it: goal state in, flows on the switch, port status out.

    dp = Datapath(DatapathConfig(node_id="node-a"), on_status=report)
    await dp.start()                       # listen; set up br-int unless manage_bridge=False
    statuses = await dp.apply(goal)        # {port_id: ("ACTIVE", "") | ("ERROR", reason)}
    await dp.stop()

It keeps the last goal state, so a switch that (re)connects and a tap that appears or disappears
trigger another reconcile on their own; `on_status` hears about the port statuses those change.
Until the first goal state is applied after a start, a connecting switch is left untouched: an
agent restart must not wipe flows the datapath is forwarding on. Each local port's conntrack
zone comes from alcor.agent.ctzones (kept in the bridge's OVSDB record, so the same after a
restart); a zone given back is flushed once no flow uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from alcor.agent import gateway
from alcor.agent.bridge import BridgeConfig, BridgeError, ensure_bridge, ensure_patches
from alcor.agent.compiler import Changes, FlowCompiler, LocalPorts
from alcor.agent.config import AgentConfig, DhcpConfig, NodeConfig
from alcor.agent.ctzones import ZoneStore
from alcor.agent.dhcp_server import DhcpServer
from alcor.agent.fastcodec import SigCache
from alcor.agent.ir import T_CLASSIFY, Flow, Key, cookie_for, cookie_type, tap_name
from alcor.agent.nexthops import NextHops
from alcor.agent.oam import ZetaAgent
from alcor.agent.openflow import OpenFlowServer, Switch, SwitchGone, parse_listen
from alcor.agent.openflow import connect as openflow_connect
from alcor.agent.ra import RouterAdvertiser, advertisements
from alcor.agent.reconcile import Reconciler, Report
from alcor.config import Config
from alcor.wire import GoalState

log = structlog.get_logger("alcor.agent.datapath")

PortStatus = tuple[str, str]  # ("ACTIVE" | "ERROR" | "DOWN", reason)
StatusCallback = Callable[[dict[str, PortStatus]], Any]

ACTIVE, ERROR, DOWN = "ACTIVE", "ERROR", "DOWN"


@dataclass(frozen=True)
class DatapathConfig:
    """The datapath's settings: [agent]'s (alcor/agent/config.py, whose defaults these are) plus
    what only a program or a test sets (a network namespace, timeouts)."""

    node_id: str = ""  # for logs; which ports are local is decided by the goal state's node_id
    bridge: str = AgentConfig.bridge
    listen: str = AgentConfig.openflow_listen  # or unix:/path
    netns: str | None = None  # listen inside this network namespace (a switch in a container)
    controller: str | None = None  # what ovs-vswitchd dials; derived from `listen` by default
    tunnel_port: str = AgentConfig.tunnel_port
    datapath_type: str = AgentConfig.datapath_type
    manage_bridge: bool = AgentConfig.manage_bridge
    ovs_db: str | None = None  # ovs-vsctl --db; None honours OVS_RUNDIR
    barrier_timeout: float = 60.0
    # The first apply() after start waits this long for the switch to (re)connect, so that an
    # agent restart reports its ports ACTIVE rather than "not connected" for a moment.
    connect_wait: float = 3.0
    # Every this many seconds, read every flow back and repair drift (someone's ovs-ofctl);
    # 0 = only on (re)connect.
    resync_interval: float = AgentConfig.flow_resync_interval
    # a big batch of flow-mods is spread over this many connections (the extra ones to the
    # bridge's management socket, `<bridge>.mgmt` in OVS's run directory)
    flow_mod_connections: int = AgentConfig.flow_mod_connections
    dhcp: DhcpConfig = DhcpConfig()  # [dhcp]
    # physical network -> OVS bridge ([agent] bridge_mappings): patched to the integration
    # bridge; where this node's router gateways reach the outside (alcor/agent/gateway.py)
    bridge_mappings: tuple[tuple[str, str], ...] = ()

    def management_socket(self) -> str:
        """Where ovs-vswitchd serves the bridge's OpenFlow management connections: its run
        directory, the one ovsdb-server's socket is in (ovs_db), else OVS_RUNDIR's."""
        if self.ovs_db and self.ovs_db.startswith("unix:"):
            rundir = os.path.dirname(self.ovs_db.removeprefix("unix:"))
        else:
            rundir = os.environ.get("OVS_RUNDIR", "/var/run/openvswitch")
        return os.path.join(rundir, f"{self.bridge}.mgmt")

    def controller_target(self) -> str:
        if self.controller:
            return self.controller
        kind, where, port = parse_listen(self.listen)
        if kind == "unix":
            return f"unix:{where}"
        host = "127.0.0.1" if where in ("0.0.0.0", "") else where
        return f"tcp:[{host}]:{port}" if ":" in host else f"tcp:{host}:{port}"


class Datapath:
    def __init__(self, config: DatapathConfig, on_status: StatusCallback | None = None) -> None:
        self.config = config
        self.on_status = on_status
        self.goal: GoalState | Mapping[str, Any] | None = None
        self.switch: Switch | None = None
        self.statuses: dict[str, PortStatus] = {}
        self.connected = asyncio.Event()
        self.last_report: Report | None = None
        self.last_timings: dict[str, float] = {}
        self.counters = {
            "reconciles": 0,
            "full": 0,
            "flow_mods": 0,
            "packet_in": 0,
            "arp_packet_in": 0,
            "dhcp_packet_in": 0,
        }
        self._server = OpenFlowServer(config.listen, self, netns=config.netns)
        self._reconciler: Reconciler | None = None
        self._compiler = FlowCompiler(config.tunnel_port, dict(config.bridge_mappings))
        self._local_ports = LocalPorts()  # the goal state's local ports, kept incrementally
        # the ACTIVE local ports' ofports, and the switch's ofports they were read from
        self._live_from: tuple[dict[str, int], dict[str, int]] = ({}, {})
        self.nexthops = NextHops(lambda: self._schedule("nexthop") if self.goal else None)
        self._signatures: SigCache = {}
        self._rejected: set[Key] = set()
        self._lock = asyncio.Lock()
        self._kick: asyncio.Task[None] | None = None
        self._idle_gc: asyncio.Task[None] | None = None
        self._last_apply = 0.0
        self._first_apply = True
        self.zeta = ZetaAgent(config.netns)  # Zeta select groups, OAM listener, direct paths
        # router advertisements for IPv6 slaac subnets, to local ports (alcor/agent/ra.py)
        self.ra = RouterAdvertiser(counters=self.counters)
        # the agent's own connections to the bridge's management socket, beside the controller
        # connection: big flow-mod batches and bursts of DHCP answers are spread over them
        self._lanes: list[Switch] = []
        self._lanes_retry = 0.0
        # answers punted DHCP requests; per-port meters
        self.dhcp = DhcpServer(config.dhcp, lanes=self.open_lanes)
        self._resync: asyncio.Task[None] | None = None
        self.zones = ZoneStore(BridgeConfig(bridge=config.bridge, db=config.ovs_db))

    @property
    def oam_counters(self) -> dict[str, int]:
        """Zeta OAM messages by outcome (injected, deleted, malformed, …), for /metrics."""
        return self.zeta.counters

    # --- lifecycle ---

    async def start(self) -> None:
        """Listen for the switch, then (unless manage_bridge is off) make the bridge point here."""
        await self.listen()
        try:
            await self.setup_bridge()
        except Exception:
            await self._server.stop()
            raise

    async def listen(self) -> None:
        await self._server.start()
        if self.config.resync_interval > 0:
            self._resync = asyncio.get_running_loop().create_task(self._resync_loop())

    async def setup_bridge(self) -> None:
        if not self.config.manage_bridge:
            return
        cfg = BridgeConfig(
            bridge=self.config.bridge,
            datapath_type=self.config.datapath_type,
            controller=self.controller_target(),
            tunnel_port=self.config.tunnel_port,
            db=self.config.ovs_db,
        )
        await ensure_bridge(cfg)
        if self.config.bridge_mappings:
            await ensure_patches(cfg, dict(self.config.bridge_mappings))

    def controller_target(self) -> str:
        return self.config.controller_target()

    async def stop(self) -> None:
        for task in (self._kick, self._idle_gc, self._resync):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.zeta.stop()
        await self.ra.stop()
        await self.dhcp.stop()
        lanes, self._lanes = self._lanes, []
        for sw in lanes:
            await sw.close()
        await self.nexthops.stop()
        await self._server.stop()
        self.switch = None
        self._reconciler = None
        self.connected.clear()

    @property
    def flows_installed(self) -> int | None:
        """Our flows on the switch as last read back or confirmed; None when not connected."""
        r = self._reconciler
        return None if r is None or r.installed is None else len(r.installed)

    @property
    def port_zones(self) -> Mapping[str, int]:
        """The conntrack zone of each local port, as the flows use them."""
        return self._compiler.zones

    @property
    def desired_flows(self) -> Mapping[Key, Any]:
        """The flows the switch should hold for the current goal state (key -> Flow)."""
        return self._compiler.desired

    async def wait_connected(self, timeout: float = 10.0) -> Switch:
        async with asyncio.timeout(timeout):  # not wait_for: see apply
            await self.connected.wait()
        assert self.switch is not None
        return self.switch

    # --- the stream side's entry point ---

    async def apply(self, goal: GoalState | Mapping[str, Any]) -> dict[str, PortStatus]:
        """Make the switch forward as `goal` says; the local ports' status once it does."""
        self.goal = goal
        self._last_apply = time.monotonic()
        if self._first_apply:
            self._first_apply = False
            # asyncio.timeout, not asyncio.wait_for: on Python 3.11 wait_for returns normally
            # when a cancel arrives just as the event is set, so a stream stopped while its
            # first apply saw the switch connect would run on (bench/north_south hung at exit).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.connect_wait):
                    await self.connected.wait()
        async with self._lock:
            return await self._reconcile("apply")

    # --- reconcile ---

    async def _reconcile(self, why: str) -> dict[str, PortStatus]:
        goal = self.goal
        if goal is None:
            return {}
        switch, reconciler = self.switch, self._reconciler
        if switch is None or reconciler is None:
            reason = f"bridge {self.config.bridge} not connected to the agent"
            self.statuses = {pid: (ERROR, reason) for pid in self._local_ports.of(goal)}
            self.ra.update(None, {}, {})  # a switch that comes back gets every RA afresh
            return dict(self.statuses)
        start = time.perf_counter()
        zones, gone = await self.zones.assign(self._local_ports.of(goal))
        zoned = time.perf_counter() - start
        # The cyclic GC held off from the compile to the last flow-mod's barrier; after bulk
        # work (~10^6 new objects, none in a cycle) what it made is frozen out of the GC's
        # reach before it is enabled again, so that the full collection this much allocation
        # would trigger on the next allocation (~0.2 s) is the idle one (_idle_collect).
        gc_on, bulk_work = gc.isenabled(), False
        gc.disable()
        try:
            # A start: if the switch holds none of our flows, they go to it as they are compiled
            # (ovs-vswitchd takes the first while the agent compiles the rest); asked by a count,
            # so that a restart reads back after its compile as before.
            if (
                reconciler.installed is None
                and not self._compiler.desired
                and await reconciler.holds_none()
            ):
                report, changes, compiling = await self._reconcile_streamed(
                    goal, switch, reconciler, zones, gone
                )
                compiled = zoned + compiling
            else:
                changes = self._compiler.compile(goal, switch.ports, zones, self.nexthops.bindings)
                compiled = time.perf_counter() - start
                desired = self._compiler.desired
                # a first reconcile reads everything back anyway: no need to gather the cookies of
                # tens of thousands of changed keys
                bulk = reconciler.installed is None
                # (the changed keys only for a partial one: hashing 70,000 keys costs ~0.25 s)
                cookies = changes.cookies if not bulk else set()
                if self._rejected and not bulk:  # try flows the switch rejected last time again
                    cookies |= {desired[k].cookie for k in self._rejected if k in desired}
                await self.zeta.before_flows(switch, goal, self.config.tunnel_port)  # groups first
                await self.dhcp.before_flows(switch, self._compiler.meters)  # meters too
                if bulk or len(cookies) > PARTIAL_COOKIES:
                    report = await reconciler.full(desired)
                else:
                    keys = set(changes.flows) | self._rejected
                    report = await reconciler.partial(desired, keys, cookies)
                await self.zeta.after_flows(switch)  # stale groups once no flow names them
                await self._flush_zones(switch, gone)
                await self.dhcp.after_flows(switch)  # and stale meters
            bulk_work = report.adds > BULK_ADDS or changes.recomputed
        except SwitchGone:
            log.info("datapath.reconcile_interrupted", why=why)
            return await self._reconcile_disconnected(why)
        finally:
            if gc_on:
                if bulk_work:
                    gc.freeze()
                gc.enable()
        return await self._reconciled(
            why, goal, switch, start, zoned, report, changes, compiled, bulk_work
        )

    async def _reconcile_streamed(
        self,
        goal: GoalState | Mapping[str, Any],
        switch: Switch,
        reconciler: Reconciler,
        zones: Mapping[str, int],
        gone: Mapping[str, int],
    ) -> tuple[Report, Changes, float]:
        """_reconcile's compile and flow-mods, overlapped: a switch holding none of our flows
        and a compiler that has none. The compile is run to its end whatever happens to the
        switch (the compiler's state is whole only then)."""
        await self.zeta.before_flows(switch, goal, self.config.tunnel_port)  # groups first
        steps = self._compiler.stream(goal, switch.ports, zones, self.nexthops.bindings)
        outcome: list[Changes] = []
        compiling = [0.0]

        def chunks() -> Iterator[list[Flow]]:
            while True:
                t = time.perf_counter()
                try:
                    chunk = next(steps)
                except StopIteration as done:
                    outcome.append(done.value)
                    return
                finally:
                    compiling[0] += time.perf_counter() - t
                yield chunk

        flows = chunks()
        try:
            report, held = await reconciler.stream(flows)
        finally:
            for _ in flows:  # the rest of the compile, if the switch went away mid-way
                pass
        changes = outcome[0]
        await self.dhcp.before_flows(switch, self._compiler.meters)  # meters, then their flows
        await reconciler.finish(self._compiler.desired, report, [*changes.late_adds, *held])
        await self.zeta.after_flows(switch)
        await self._flush_zones(switch, gone)
        await self.dhcp.after_flows(switch)
        return report, changes, compiling[0]

    async def _reconciled(
        self,
        why: str,
        goal: GoalState | Mapping[str, Any],
        switch: Switch,
        start: float,
        zoned: float,
        report: Report,
        changes: Changes,
        compiled: float,
        bulk_work: bool,
    ) -> dict[str, PortStatus]:
        """A reconcile's bookkeeping once its flow-mods are confirmed: timings, counters, the
        flows to try again, the statuses."""
        self.last_report = report
        # where the last reconcile's time went (seconds), for logs and bench/agent_flows.py; a
        # streamed one's compile overlapped its switch time
        self.last_timings = {
            "zones": zoned,
            "compile": compiled - zoned,
            "switch": report.seconds,
            "total": time.perf_counter() - start,
        }
        desired = self._compiler.desired
        self._rejected = {e.flow.key for e in report.errors if e.flow is not None}
        if bulk_work:
            self._collect_when_idle()
        self.counters["reconciles"] += 1
        self.counters["full"] += int(report.full)
        self.counters["flow_mods"] += report.adds + report.deletes
        before, self.statuses = self.statuses, self._statuses(report)
        if self.statuses != before or switch.ports != self._live_from[1]:
            live = {
                pid: ofport
                for pid, (status, _) in self.statuses.items()
                if status == ACTIVE and (ofport := switch.ports.get(tap_name(pid))) is not None
            }
            self._live_from = (live, dict(switch.ports))
        live = self._live_from[0]  # the same statuses and ofports as last time: the same ports
        self.ra.update(switch, advertisements(goal, switch.ports, live), live)
        self.dhcp.update(goal, {ofport: pid for pid, ofport in live.items()})
        mappings = dict(self.config.bridge_mappings)
        me = str(goal.get("node_id", ""))
        self.nexthops.update(switch, gateway.probes(goal, me, switch.ports, mappings))
        for pid, (status, reason) in self.statuses.items():
            if before.get(pid) != (status, reason):
                log.info("datapath.port_status", port=pid, status=status, reason=reason)
        log.info(
            "datapath.reconciled",
            why=why,
            full=report.full,
            flows=len(desired),
            recompiled=changes.recomputed,
            read_back=report.read_back,
            adds=report.adds,
            deletes=report.deletes,
            errors=len(report.errors),
            compile_ms=round(compiled * 1000, 2),
            ms=round((time.perf_counter() - start) * 1000, 2),
        )
        for err in report.errors:
            owner = self._compiler.owners.get(err.flow.cookie) if err.flow else None
            log.warning("datapath.flow_rejected", owner=owner, error=err.error, flow=str(err.flow))
        return dict(self.statuses)

    async def _helper_connections(self) -> list[Switch]:
        """More connections to the switch for a big batch of flow-mods (and DHCP's packet-outs),
        or [] (then the batch goes on the controller connection alone, just slower). They are
        opened on the first batch that wants them and kept: opening sixteen for every batch of a
        few hundred flow-mods would cost more than it saves. One that closes (OVS restarted) is
        opened again by the next batch, not more often than every LANE_RETRY seconds."""
        extra = self.config.flow_mod_connections - 1
        if extra <= 0:
            return []
        self._lanes = [sw for sw in self._lanes if not sw.closed.is_set()]
        missing = extra - len(self._lanes)
        if missing > 0 and time.monotonic() >= self._lanes_retry:
            path = self.config.management_socket()
            opened = await asyncio.gather(
                *(openflow_connect(path) for _ in range(missing)), return_exceptions=True
            )
            self._lanes += [sw for sw in opened if isinstance(sw, Switch)]
            if len(self._lanes) < extra:
                self._lanes_retry = time.monotonic() + LANE_RETRY
                errors = sorted({str(e) for e in opened if isinstance(e, BaseException)})
                log.info(
                    "datapath.helper_connections", path=path, opened=len(self._lanes), errors=errors
                )
        return list(self._lanes)

    def open_lanes(self) -> list[Switch]:
        """The helper connections open now (none before the first batch that wanted them)."""
        return [sw for sw in self._lanes if not sw.closed.is_set()]

    async def _flush_zones(self, switch: Switch, gone: Mapping[str, int]) -> None:
        """The connections of ports that left (their flows are gone now) are flushed, then
        their zones may go to other ports, who so start with none."""
        flushed = []
        for pid, zone in sorted(gone.items()):
            errors = await switch.ct_flush_zone(zone)
            if errors:
                log.warning("datapath.ct_flush_failed", zone=zone, error=errors[0].error)
            else:
                flushed.append(pid)
        await self.zones.forget(flushed)

    async def _reconcile_disconnected(self, why: str) -> dict[str, PortStatus]:
        self.switch = None
        self._reconciler = None
        return await self._reconcile(why)

    def _collect_when_idle(self) -> None:
        if self._idle_gc is None or self._idle_gc.done():
            self._idle_gc = asyncio.get_running_loop().create_task(self._idle_collect())

    async def _idle_collect(self) -> None:
        """Bulk work runs with the cyclic GC held off; the full collection it owes (~0.2 s at
        40,000 flows) is taken once no goal state has arrived for a while, rather than landing
        on some later small delta. Deltas come in bursts: wait for the burst to end.

        What survives it (the goal state, the desired flows, the compiler's indexes: ~10^6
        objects at 10,000 neighbours) is then frozen out of the cyclic GC's reach, so the
        automatic full collections that deltas still trigger walk only what is newer (a walk
        of the whole heap is hundreds of ms under load, the p99 of a one-flow delta). None of
        it forms cycles, and the next idle collection unfreezes it first: garbage frozen in
        between is reclaimed by reference counting, or by that collection."""
        while True:
            idle = time.monotonic() - self._last_apply
            if idle >= IDLE_GC_AFTER:
                break
            await asyncio.sleep(IDLE_GC_AFTER - idle)
        t0 = time.perf_counter()
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        log.debug("datapath.gc_collected", ms=round((time.perf_counter() - t0) * 1000, 1))

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.resync_interval)
            if self.goal is None or self._reconciler is None:
                continue
            async with self._lock:
                if self._reconciler is not None:
                    self._reconciler.installed = None  # forget: the next reconcile reads all back
            self._schedule("resync")

    def _statuses(self, report: Report) -> dict[str, PortStatus]:
        failed = report.failed_cookies
        out: dict[str, PortStatus] = {}
        problems = self._compiler.port_problems
        for pid in self._compiler.local_ports:
            problem = problems.get(pid, "")
            if problem == "admin_state_up is false":
                out[pid] = (DOWN, problem)
            elif problem:
                out[pid] = (ERROR, problem)
            elif failed and (cookie := cookie_for("port", pid)) in failed:
                errs = sorted(
                    {e.error for e in report.errors if e.flow and e.flow.cookie == cookie}
                )
                out[pid] = (ERROR, "switch rejected flows: " + ", ".join(errs))
            else:
                out[pid] = (ACTIVE, "")
        # a router gateway port, a floating IP of a router this node carries: ACTIVE once the
        # router's NAT flows are on the switch
        nat_owned = (
            (self._compiler.gateway_ports, _router_of),
            (self._compiler.floating_ips, _router_of_fip),
        )
        for problems_of, router_of in nat_owned:
            for res_id, problem in problems_of.items():
                if problem:
                    out[res_id] = (ERROR, problem)
                elif cookie_for("nat", router_of(self.goal, res_id)) in failed:
                    out[res_id] = (ERROR, "switch rejected the gateway's flows")
                else:
                    out[res_id] = (ACTIVE, "")
        return out

    def _schedule(self, why: str) -> None:
        """Coalesce event-driven reconciles: at most one waiting behind the running one."""
        if self._kick is not None and not self._kick.done():
            return
        self._kick = asyncio.get_running_loop().create_task(self._run_scheduled(why))

    async def _run_scheduled(self, why: str) -> None:
        async with self._lock:
            self._kick = None
            before = dict(self.statuses)
            try:
                after = await self._reconcile(why)
            except Exception:
                log.exception("datapath.reconcile_failed", why=why)
                return
        if after != before and self.on_status is not None:
            result = self.on_status(after)
            if asyncio.iscoroutine(result):
                await result

    # --- SwitchHandler ---

    async def switch_connected(self, switch: Switch) -> None:
        old = self.switch
        if old is not None and old is not switch:
            # The newest connection wins: an old one may be half-open after a switch restart.
            log.warning("datapath.switch_replaced", old=f"{old.datapath_id:#x}")
            self.switch = None
            await old.close()
        self.switch = switch
        self._reconciler = Reconciler(
            switch,
            barrier_timeout=self.config.barrier_timeout,
            signatures=self._signatures,
            helpers=self._helper_connections,
        )
        self.connected.set()
        if self.goal is not None:
            self._schedule("connected")

    def switch_disconnected(self, switch: Switch) -> None:
        if self.switch is switch:
            self.switch = None
            self._reconciler = None
            self.dhcp.disconnected()
            self.connected.clear()
            if self.goal is not None:
                self._schedule("disconnected")

    def port_changed(self, switch: Switch, reason: str, name: str, ofport: int) -> None:
        log.info("datapath.port_changed", reason=reason, interface=name, ofport=ofport)
        if self.goal is not None:
            self._schedule(f"port_{reason}")

    def packet_in(self, switch: Switch, msg: Any) -> None:
        self.counters["packet_in"] += 1
        data = bytes(msg.data or b"")
        if len(data) >= 14 and data[12:14] == b"\x08\x06":
            self.counters["arp_packet_in"] += 1
        if cookie_type(msg.cookie) == "nat":
            self.nexthops.packet_in(data)  # an ARP reply to a gateway IP (gateway.node_flows)
            return
        if msg.table_id == T_CLASSIFY and cookie_type(msg.cookie) == "port":
            # a port's only flow that sends to the agent is its DHCP flow (pipeline.dhcp_flow)
            self.counters["dhcp_packet_in"] += 1
            self.dhcp.packet_in(switch, int(msg.match["in_port"]), data)
            return
        log.debug("datapath.packet_in", reason=msg.reason, table=msg.table_id, bytes=len(data))


BULK_ADDS = 1000
LANE_RETRY = 5.0  # seconds before helper connections that failed to open are tried again
IDLE_GC_AFTER = 1.0  # seconds without apply()
# Beyond this many touched resources, one full read-back is cheaper than planning each change
# (a partial reconcile no longer reads back each of many resources: see Reconciler.partial).
PARTIAL_COOKIES = 4096


def _router_of(goal: Mapping[str, Any] | None, port_id: str) -> str:
    for rid, r in ((goal or {}).get("router") or {}).items():
        if ((r or {}).get("gateway") or {}).get("port_id") == port_id:
            return str(rid)
    return ""


def _router_of_fip(goal: Mapping[str, Any] | None, fip_id: str) -> str:
    return str((((goal or {}).get("floating_ip") or {}).get(fip_id) or {}).get("router_id") or "")


class DatapathModule:
    """Kernel module "datapath": this host's Datapath, which the agent stream applies goal states to.

    Config: [agent] (alcor/agent/config.py: bridge, openflow_listen, controller, tunnel_port,
    datapath_type, manage_bridge, ovs_db, flow_resync_interval; the stream reads its own keys there).
    A bridge that cannot be set up (no Open vSwitch here) is logged, not fatal: the ports then
    report ERROR "bridge … not connected to the agent", which is what an operator needs to see.
    """

    name = "datapath"
    requires: tuple[str, ...] = ()

    def __init__(self, config: Config) -> None:
        self.datapath = Datapath(datapath_config(config))

    async def start(self, kernel: Any) -> None:
        await self.datapath.listen()  # a listen address in use is fatal
        try:
            await self.datapath.setup_bridge()
        except (BridgeError, OSError) as exc:  # OSError: no ovs-vsctl on this machine
            log.error(
                "datapath.bridge_setup_failed", bridge=self.datapath.config.bridge, error=str(exc)
            )

    async def stop(self) -> None:
        await self.datapath.stop()

    async def apply(self, goal: Mapping[str, Any]) -> dict[str, PortStatus]:
        return await self.datapath.apply(goal)


def datapath_config(config: Config) -> DatapathConfig:
    agent = config.get(AgentConfig)
    node = config.get(NodeConfig)
    return DatapathConfig(
        node_id=node.id or node.name,
        bridge=agent.bridge,
        listen=agent.openflow_listen,
        controller=agent.controller or None,
        tunnel_port=agent.tunnel_port,
        datapath_type=agent.datapath_type,
        manage_bridge=agent.manage_bridge,
        ovs_db=agent.ovs_db or None,
        # not "resync_interval": the stream owns that key (how often it asks for a snapshot)
        resync_interval=agent.flow_resync_interval,
        flow_mod_connections=agent.flow_mod_connections,
        dhcp=config.get(DhcpConfig),
        bridge_mappings=tuple(sorted(agent.mappings().items())),
    )


def create(config: Config) -> DatapathModule:
    return DatapathModule(config)
