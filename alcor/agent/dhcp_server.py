"""DHCPv4 on the host, the imperative side: requests punted by the datapath come in as packet-ins,
answers go back out as packet-outs to the asking port, and every local port's meter (which caps
what one VM can send the agent) is kept on the switch. The answers themselves are
alcor/agent/dhcp.py's pure functions of the frame and the goal state.

The Datapath calls `before_flows` (meters the flows will name must exist first) ahead of its flow
reconcile and `after_flows` (meters no flow names any more) once it is done, like the Zeta groups,
and `update` with the goal state and the switch's ofports after each reconcile.

    server = DhcpServer(DhcpConfig())
    await server.before_flows(switch, {meter_id(5)})
    ...                                                  # flows reconciled
    await server.after_flows(switch)
    server.update(goal, {5: "port-id"})
    server.packet_in(switch, 5, frame)                   # answered on a worker task
    server.counters  # {"offer": …, "ack": …, "nak": …, "ignored": …, "dropped": …, …}
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from typing import Any

import structlog
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from alcor.agent import codec
from alcor.agent.compiler import changed_keys
from alcor.agent.config import DhcpConfig
from alcor.agent.dhcp import prepare, respond
from alcor.agent.leases import METER_BASE, METER_SPAN, Lease, lease_for
from alcor.agent.openflow import Switch, SwitchGone

log = structlog.get_logger("alcor.agent.dhcp")

OUTCOMES = (
    "offer",
    "ack",
    "nak",
    "inform",
    "release",
    "decline",
    "ignored",  # not a request we answer (see the debug log's reason)
    "unknown_port",  # from an ofport that is no local port with a lease
    "dropped",  # the agent's queue was full
)
# Logged at info: what an operator follows a port by. Offers and ignored frames only at debug.
_NOTABLE = {"ack", "nak", "release", "decline"}
METER_FLAGS = ofp.OFPMF_PKTPS | ofp.OFPMF_BURST | ofp.OFPMF_STATS


class DhcpServer:
    def __init__(
        self,
        settings: DhcpConfig,
        *,
        queue_max: int = 4096,
        lanes: Callable[[], list[Switch]] | None = None,
    ) -> None:
        self.settings = settings
        # more connections to the same switch: a burst's packet-outs are spread over them (OVS
        # reads 50 messages of a connection per turn of its loop)
        self.lanes = lanes or list
        self.queue_max = queue_max
        self.counters = dict.fromkeys(OUTCOMES, 0)
        self.requests: dict[str, int] = {}  # port id -> requests that reached the agent
        self.answer_seconds: deque[float] = deque(maxlen=10000)  # packet-in -> packet-out written
        self._goal: Mapping[str, Any] = {}
        self._ports: Mapping[int, str] = {}  # ofport -> local port id
        self._leases: dict[
            str, tuple[tuple[Any, ...], Lease | None]
        ] = {}  # port -> (inputs, lease)
        self._to_warm: list[str] = []
        self._warmer: asyncio.Task[None] | None = None
        self._queue: deque[tuple[Switch, int, bytes, float]] = deque()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._switch: Switch | None = None
        self._meters: dict[int, tuple[int, int]] | None = None  # ours on the switch: id -> band
        self._stale: set[int] = set()

    # --- the goal state, after each reconcile ---

    def update(self, goal: Mapping[str, Any], ports: Mapping[int, str]) -> None:
        """The goal state and which local port each ofport is. Each port's answers are then
        prepared in the background, so that VMs booting together meet no cold path."""
        old = self._goal
        self._goal = goal
        self._ports = dict(ports)
        live = set(self._ports.values())
        for pid in [p for p in self.requests if p not in live]:
            del self.requests[pid]
        for pid in [p for p in self._leases if p not in live]:
            del self._leases[pid]
        if _same_bodies(old, goal, "subnet") and _same_bodies(old, goal, "vpc"):
            # only the ports whose lease may have changed: a delta should not cost a pass
            # over every local port's lease
            before, now = old.get("port") or {}, goal.get("port") or {}
            changed = live.intersection(changed_keys(before, now))
            live = (live - self._leases.keys()) | changed
        self._to_warm = sorted(live)
        if self._warmer is None or self._warmer.done():
            self._warmer = asyncio.get_running_loop().create_task(self._warm(), name="dhcp.warm")

    def lease(self, port_id: str) -> Lease | None:
        """The port's lease under the current goal state; recomputed only when the bodies it
        comes from (the port's, its subnets', its network's) are not the ones it came from."""
        goal = self._goal
        port = (goal.get("port") or {}).get(port_id)
        subnets = goal.get("subnet") or {}
        inputs = (
            port,
            tuple(
                subnets.get(str(f.get("subnet_id"))) for f in (port or {}).get("fixed_ips") or ()
            ),
            (goal.get("vpc") or {}).get(str((port or {}).get("network_id"))),
        )
        held = self._leases.get(port_id)
        if held is not None and _same(held[0], inputs):
            return held[1]
        lease = lease_for(goal, port_id, self.settings)
        self._leases[port_id] = (inputs, lease)
        return lease

    async def _warm(self) -> None:
        while self._to_warm:
            for pid in self._to_warm[-64:]:
                lease = self.lease(pid)
                if lease is not None:
                    prepare(lease)
            del self._to_warm[-64:]
            await asyncio.sleep(0)

    # --- meters, around the flow reconcile ---

    def desired_meters(self, meter_ids: Collection[int]) -> dict[int, tuple[int, int]]:
        band = (self.settings.rate, self.settings.burst)
        return dict.fromkeys(meter_ids, band)

    async def before_flows(self, switch: Switch, meter_ids: Collection[int]) -> None:
        """Add or change the meters the desired flows name, before any flow names them."""
        desired = self.desired_meters(meter_ids)
        if switch is not self._switch or self._meters is None:
            self._switch = switch
            self._meters = await _our_meters(switch)
        todo = {
            mid: (ofp.OFPMC_MODIFY if mid in self._meters else ofp.OFPMC_ADD, band)
            for mid, band in sorted(desired.items())
            if self._meters.get(mid) != band
        }
        # one write and one barrier for all of them (a host's start adds one per local port)
        failed = await _meter_mods(switch, todo)
        retry = {  # an ADD that failed: the meter is there already, unknown to us
            mid: (ofp.OFPMC_MODIFY, todo[mid][1]) for mid in failed if todo[mid][0] == ofp.OFPMC_ADD
        }
        failed = {mid: e for mid, e in failed.items() if mid not in retry}
        failed |= await _meter_mods(switch, retry)
        for mid, (_, band) in todo.items():
            if mid in failed:
                log.warning("dhcp.meter_failed", meter=mid, error=failed[mid])
                self._meters.pop(mid, None)
            else:
                self._meters[mid] = band
        self._stale = set(self._meters) - set(desired)

    async def after_flows(self, switch: Switch) -> None:
        """Delete our meters no flow names any more (deleting a meter deletes its flows)."""
        assert self._meters is not None
        await switch.mods(
            [_meter_msg(ofp.OFPMC_DELETE, m, None) for m in sorted(self._stale)], "meter"
        )
        for mid in self._stale:
            self._meters.pop(mid, None)
        self._stale = set()

    def disconnected(self) -> None:
        self._switch = None
        self._meters = None

    # --- packet-ins ---

    def packet_in(self, switch: Switch, in_port: int, data: bytes) -> None:
        """One punted request: queued for the worker (the switch's read loop must not wait)."""
        if len(self._queue) >= self.queue_max:
            self.counters["dropped"] += 1
            return
        self._queue.append((switch, in_port, data, time.perf_counter()))
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._serve(), name="dhcp")

    async def _serve(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(256, len(self._queue)))]
                await self._answer(batch)

    async def _answer(self, batch: list[tuple[Switch, int, bytes, float]]) -> None:
        sent: list[tuple[Switch, float]] = []
        lanes = self.lanes() if len(batch) > 1 else []
        for switch, in_port, data, at in batch:
            pid = self._ports.get(in_port)
            lease = self.lease(pid) if pid is not None else None
            if pid is None or lease is None:
                self._count("unknown_port", pid, f"ofport {in_port}")
                continue
            self.requests[pid] = self.requests.get(pid, 0) + 1
            answer = respond(data, lease)
            self._count(answer.kind, pid, answer.reason, lease)
            if answer.frame is None:
                continue
            msg = _packet_out(answer.frame, in_port)
            out = switch
            if lanes and (k := len(sent) % (len(lanes) + 1)):
                out = lanes[k - 1]
            try:
                out.write(msg)
            except SwitchGone:
                if out is switch:
                    continue
                try:  # a lane that closed: the controller connection takes its answer
                    out = switch
                    out.write(msg)
                except SwitchGone:
                    continue
            sent.append((out, at))
        for switch in {s for s, _ in sent}:
            with contextlib.suppress(ConnectionError):
                await switch.drain()
        done = time.perf_counter()
        self.answer_seconds.extend(done - at for _, at in sent)

    def _count(self, kind: str, pid: str | None, reason: str, lease: Lease | None = None) -> None:
        self.counters[kind] += 1
        level = log.info if kind in _NOTABLE else log.debug
        level(
            "dhcp.answered" if kind in ("offer", "ack", "nak", "inform") else "dhcp.received",
            outcome=kind,
            port=pid,
            ip=lease.ip if lease else None,
            reason=reason or None,
        )

    async def stop(self) -> None:
        for task in (self._worker, self._warmer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._worker = self._warmer = None


def _same_bodies(a: Mapping[str, Any], b: Mapping[str, Any], kind: str) -> bool:
    """The same resources of `kind` in both goal states, by identity of their bodies."""
    x, y = a.get(kind) or {}, b.get(kind) or {}
    return x is y or (len(x) == len(y) and all(y.get(k) is v for k, v in x.items()))


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Equal inputs, by identity first (a goal state shares the bodies that did not change)."""
    return len(a) == len(b) and all(x is y or x == y for x, y in zip(a, b, strict=True))


async def _our_meters(switch: Switch) -> dict[int, tuple[int, int]]:
    pages = await switch.request(parser.OFPMeterConfigStatsRequest(codec.DP, 0, ofp.OFPM_ALL))
    out: dict[int, tuple[int, int]] = {}
    for page in pages:
        for m in page.body:
            if METER_BASE <= m.meter_id < METER_BASE + METER_SPAN:
                band = m.bands[0] if len(m.bands) == 1 and m.flags == METER_FLAGS else None
                out[m.meter_id] = (band.rate, band.burst_size) if band else (-1, -1)
    return out


async def _meter_mods(
    switch: Switch, todo: Mapping[int, tuple[int, tuple[int, int]]]
) -> dict[int, str]:
    """Send meter-mods {meter id: (command, band)}; the meters that failed, with the error."""
    if not todo:
        return {}
    msgs = {mid: _meter_msg(command, mid, band) for mid, (command, band) in todo.items()}
    by_msg = {id(msg): mid for mid, msg in msgs.items()}
    errors = await switch.mods(list(msgs.values()), "meter")
    return {by_msg[id(e.request)]: e.error for e in errors if id(e.request) in by_msg}


def _meter_msg(command: int, mid: int, band: tuple[int, int] | None) -> parser.OFPMeterMod:
    bands = [parser.OFPMeterBandDrop(rate=band[0], burst_size=band[1])] if band else []
    return parser.OFPMeterMod(codec.DP, command, METER_FLAGS, mid, bands)


def _packet_out(frame: bytes, ofport: int) -> parser.OFPPacketOut:
    return parser.OFPPacketOut(
        codec.DP,
        buffer_id=ofp.OFP_NO_BUFFER,
        in_port=ofp.OFPP_CONTROLLER,
        actions=[parser.OFPActionOutput(ofport, 0)],
        data=frame,
    )
