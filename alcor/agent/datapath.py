"""The host's datapath as the agent process sees it: goal state in, flows on the switch, port status out.

    dp = Datapath(DatapathConfig(node_id="node-a"), on_status=report)
    await dp.start()                       # listen; set up br-int unless manage_bridge=False
    statuses = await dp.apply(goal)        # {port_id: ("ACTIVE", "") | ("ERROR", reason)}
    await dp.stop()

It keeps the last goal state, so a switch that (re)connects and a tap that appears or disappears
trigger another reconcile on their own; `on_status` hears about the port statuses those change.
Until the first goal state is applied after a start, a connecting switch is left untouched: an
agent restart must not wipe flows the datapath is forwarding on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from alcor.agent.bridge import BridgeConfig, ensure_bridge
from alcor.agent.flows import ROUTER_INTERFACE, FlowCompiler, GoalState, cookie_for
from alcor.agent.openflow import OpenFlowServer, Switch, SwitchGone, parse_listen
from alcor.agent.reconcile import Reconciler, Report

log = structlog.get_logger("alcor.agent.datapath")

PortStatus = tuple[str, str]  # ("ACTIVE" | "ERROR" | "DOWN", reason)
StatusCallback = Callable[[dict[str, PortStatus]], Any]

ACTIVE, ERROR, DOWN = "ACTIVE", "ERROR", "DOWN"


@dataclass(frozen=True)
class DatapathConfig:
    node_id: str
    bridge: str = "br-int"
    listen: str = "tcp:127.0.0.1:6653"  # or unix:/path
    netns: str | None = None  # listen inside this network namespace (a switch in a container)
    controller: str | None = None  # what ovs-vswitchd dials; derived from `listen` by default
    tunnel_port: str = "vxlan0"
    datapath_type: str = "netdev"
    manage_bridge: bool = True
    ovs_db: str | None = None  # ovs-vsctl --db; None honours OVS_RUNDIR
    barrier_timeout: float = 60.0

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
        self.counters = {
            "reconciles": 0,
            "full": 0,
            "flow_mods": 0,
            "packet_in": 0,
            "arp_packet_in": 0,
        }
        self._server = OpenFlowServer(config.listen, self, netns=config.netns)
        self._reconciler: Reconciler | None = None
        self._compiler = FlowCompiler(config.tunnel_port)
        self._lock = asyncio.Lock()
        self._kick: asyncio.Task[None] | None = None

    # --- lifecycle ---

    async def start(self) -> None:
        await self._server.start()
        if self.config.manage_bridge:
            await ensure_bridge(
                BridgeConfig(
                    bridge=self.config.bridge,
                    datapath_type=self.config.datapath_type,
                    controller=self.controller_target(),
                    tunnel_port=self.config.tunnel_port,
                    db=self.config.ovs_db,
                )
            )

    def controller_target(self) -> str:
        return self.config.controller_target()

    async def stop(self) -> None:
        if self._kick is not None:
            self._kick.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._kick
        await self._server.stop()
        self.switch = None
        self._reconciler = None
        self.connected.clear()

    async def wait_connected(self, timeout: float = 10.0) -> Switch:
        await asyncio.wait_for(self.connected.wait(), timeout)
        assert self.switch is not None
        return self.switch

    # --- the stream side's entry point ---

    async def apply(self, goal: GoalState | Mapping[str, Any]) -> dict[str, PortStatus]:
        """Make the switch forward as `goal` says; the local ports' status once it does."""
        self.goal = goal
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
            self.statuses = {pid: (ERROR, reason) for pid in _local_ports(goal)}
            return dict(self.statuses)
        start = time.perf_counter()
        changes = self._compiler.compile(goal, switch.ports)
        compiled = time.perf_counter() - start
        desired = self._compiler.desired
        try:
            cookies = changes.cookies
            if reconciler.installed is None or len(cookies) > PARTIAL_COOKIES:
                report = await reconciler.full(desired)
            else:
                report = await reconciler.partial(desired, changes.flows.keys(), cookies)
        except SwitchGone:
            log.info("datapath.reconcile_interrupted", why=why)
            return await self._reconcile_disconnected(why)
        self.last_report = report
        self.counters["reconciles"] += 1
        self.counters["full"] += int(report.full)
        self.counters["flow_mods"] += report.adds + report.deletes
        self.statuses = self._statuses(report)
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

    async def _reconcile_disconnected(self, why: str) -> dict[str, PortStatus]:
        self.switch = None
        self._reconciler = None
        return await self._reconcile(why)

    def _statuses(self, report: Report) -> dict[str, PortStatus]:
        failed = report.failed_cookies
        out: dict[str, PortStatus] = {}
        problems = self._compiler.port_problems
        for pid in self._compiler.local_ports:
            problem = problems.get(pid, "")
            cookie = cookie_for("port", pid)
            if problem == "admin_state_up is false":
                out[pid] = (DOWN, problem)
            elif problem:
                out[pid] = (ERROR, problem)
            elif cookie in failed:
                errs = sorted(
                    {e.error for e in report.errors if e.flow and e.flow.cookie == cookie}
                )
                out[pid] = (ERROR, "switch rejected flows: " + ", ".join(errs))
            else:
                out[pid] = (ACTIVE, "")
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
        if self.switch is not None and not self.switch.closed.is_set():
            log.warning("datapath.second_switch_ignored", dpid=f"{switch.datapath_id:#x}")
            await switch.close()
            return
        self.switch = switch
        self._reconciler = Reconciler(switch, barrier_timeout=self.config.barrier_timeout)
        self.connected.set()
        if self.goal is not None:
            self._schedule("connected")

    def switch_disconnected(self, switch: Switch) -> None:
        if self.switch is switch:
            self.switch = None
            self._reconciler = None
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
        log.debug("datapath.packet_in", reason=msg.reason, table=msg.table_id, bytes=len(data))


PARTIAL_COOKIES = 256  # beyond this many touched resources one full read-back is cheaper


def _local_ports(goal: Mapping[str, Any]) -> list[str]:
    me = goal.get("node_id")
    return sorted(
        pid
        for pid, p in (goal.get("port") or {}).items()
        if p.get("node_id") == me and p.get("device_owner") != ROUTER_INTERFACE
    )
