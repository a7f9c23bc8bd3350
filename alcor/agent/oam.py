"""Zeta on the host, the imperative side: select groups on the switch, the OAM UDP listener, and
direct-path flows installed from OAM messages (the pure parts are alcor/agent/zeta.py).

The Datapath calls `before_flows` (add or modify groups, open listeners) ahead of its flow
reconcile, since a flow may only name a group that exists, and `after_flows` (delete stale
groups and the direct flows of VPCs no longer redirected) once the flows are gone.

    zeta = ZetaAgent(netns=None)
    await zeta.before_flows(switch, goal)
    ...                                    # flows reconciled
    await zeta.after_flows(switch, goal)
    zeta.counters   # {"injected": …, "deleted": …, "malformed": …, "unknown_opcode": …, …}

An OAM message is dropped and counted, never raised: malformed, unknown_opcode, unknown_vni (no
redirected VPC of this host has it), wrong_port (the VPC's gateway uses another OAM port),
unknown_source (not sent from one of the gateway's FWDs), no_switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from alcor.agent import codec, zeta
from alcor.agent.ir import Flow
from alcor.agent.openflow import Switch, SwitchGone, socket_in_netns

log = structlog.get_logger("alcor.agent.oam")

SO_RCVBUFFORCE = 33  # Linux; not exported by the socket module
RCVBUF = 16 << 20

OUTCOMES = (
    "injected",
    "deleted",
    "malformed",
    "unknown_opcode",
    "unknown_vni",
    "wrong_port",
    "unknown_source",
    "no_switch",
)


def udp_socket(ip: str, port: int, netns: str | None) -> socket.socket:
    """A bound UDP socket, made inside network namespace `netns` when given (on a short-lived
    thread, so the agent's own thread never changes namespace)."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # FWDs send injects in bursts (every new flow through the cluster): a deep buffer, past
        # net.core.rmem_max when we may (root), so a burst waits instead of being dropped.
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind((ip, port))
        sock.setblocking(False)
        return sock

    return socket_in_netns(make, netns)


@dataclass
class _Pending:
    op: int
    flow: Flow
    received: float  # perf_counter when the datagram arrived


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, owner: ZetaAgent, port: int) -> None:
        self.owner, self.port = owner, port

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.owner.received(data, str(addr[0]), self.port, time.perf_counter())


class ZetaAgent:
    def __init__(self, netns: str | None = None, *, batch_max: int = 512) -> None:
        self.netns = netns
        self.batch_max = batch_max
        self.counters = dict.fromkeys(OUTCOMES, 0)
        # OAM received -> flow confirmed by a barrier, seconds (recent ones, for ops and bench)
        self.latencies: deque[float] = deque(maxlen=10000)
        self._switch: Switch | None = None
        self._tun_ofport: int | None = None
        self._by_vni: dict[int, zeta.Redirect] = {}
        self._installed: dict[int, tuple[Any, ...]] | None = None  # group id -> buckets
        self._stale_groups: set[int] = set()
        self._gone_vnis: set[int] = set()
        self._listeners: dict[tuple[str, int], asyncio.DatagramTransport] = {}
        self._queue: list[_Pending] = []
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    # --- called by the Datapath around its flow reconcile ---

    async def before_flows(self, switch: Switch, goal: Mapping[str, Any], tunnel_port: str) -> None:
        redirects = zeta.redirects(goal)
        tun = switch.ports.get(tunnel_port)
        self._tun_ofport = tun
        gone_vnis = set(self._by_vni) - {r.vni for r in redirects.values()}
        self._by_vni = {r.vni: r for r in redirects.values()}
        self._gone_vnis = gone_vnis
        await self._listen(goal, redirects)
        desired = zeta.groups(goal, tun)
        if switch is not self._switch or self._installed is None:
            # a new connection: learn which of our groups the switch already has
            self._switch = switch
            existing = await _our_group_ids(switch)
            self._installed = {g: ("?",) for g in existing}
        for gid, buckets in desired.items():
            if self._installed.get(gid) == buckets:
                continue
            command = ofp.OFPGC_MODIFY if gid in self._installed else ofp.OFPGC_ADD
            errors = await switch.group_mod(_group_msg(command, gid, buckets))
            if errors and command == ofp.OFPGC_ADD:
                errors = await switch.group_mod(_group_msg(ofp.OFPGC_MODIFY, gid, buckets))
            if errors:
                log.warning("zeta.group_failed", group=f"{gid:#x}", error=str(errors[0]))
                self._installed.pop(gid, None)
                continue
            log.info(
                "zeta.group_set",
                group=f"{gid:#x}",
                fwds=len(buckets),
                command="modify" if command == ofp.OFPGC_MODIFY else "add",
            )
            self._installed[gid] = buckets
        self._stale_groups = set(self._installed) - set(desired)

    async def after_flows(self, switch: Switch) -> None:
        assert self._installed is not None
        for gid in sorted(self._stale_groups):
            await switch.group_mod(_group_msg(ofp.OFPGC_DELETE, gid, ()))
            self._installed.pop(gid, None)
            log.info("zeta.group_deleted", group=f"{gid:#x}")
        self._stale_groups = set()
        for vni in sorted(self._gone_vnis):
            # the VPC is no longer redirected here: its direct paths go with it
            await switch.send(_delete_by_cookie(zeta.vni_cookie(vni), zeta.DIRECT_VNI_MASK))
            log.info("zeta.direct_flows_cleared", vni=vni)
        self._gone_vnis = set()

    def disconnected(self) -> None:
        self._switch = None
        self._installed = None

    async def stop(self) -> None:
        for t in self._listeners.values():
            t.close()
        self._listeners.clear()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker
            self._worker = None

    @property
    def listening(self) -> list[tuple[str, int]]:
        return sorted(self._listeners)

    # --- OAM ---

    async def _listen(
        self, goal: Mapping[str, Any], redirects: Mapping[str, zeta.Redirect]
    ) -> None:
        me = (goal.get("node") or {}).get(str(goal.get("node_id")), {}) or {}
        ip = str(me.get("local_ip") or "")
        wanted = {(ip, r.oam_port) for r in redirects.values()} if ip else set()
        for key in set(self._listeners) - wanted:
            self._listeners.pop(key).close()
            log.info("zeta.oam_closed", ip=key[0], port=key[1])
        loop = asyncio.get_running_loop()
        for key in sorted(wanted - set(self._listeners)):
            try:
                sock = await asyncio.to_thread(udp_socket, key[0], key[1], self.netns)
            except OSError as exc:
                log.error("zeta.oam_listen_failed", ip=key[0], port=key[1], error=str(exc))
                continue
            port = key[1]
            transport, _ = await loop.create_datagram_endpoint(
                functools.partial(_Listener, self, port), sock=sock
            )
            self._listeners[key] = transport
            log.info("zeta.oam_listening", ip=key[0], port=key[1], netns=self.netns)
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._install_loop(), name="zeta.oam")

    def received(self, data: bytes, source: str, port: int, at: float) -> None:
        """One OAM datagram: checked, turned into a flow-mod, queued for the installer."""
        try:
            msg = zeta.parse_oam(data)
        except zeta.OamError as exc:
            self._drop(exc.outcome, str(exc), source)
            return
        r = self._by_vni.get(msg.vni)
        if r is None:
            self._drop("unknown_vni", f"vni {msg.vni}", source)
            return
        if r.oam_port != port:
            self._drop("wrong_port", f"vni {msg.vni} uses port {r.oam_port}, not {port}", source)
            return
        if source not in {ip for ip, _ in r.destinations}:
            self._drop("unknown_source", f"{source} is not a FWD of vni {msg.vni}", source)
            return
        if self._tun_ofport is None or self._switch is None:
            self._drop("no_switch", "switch or tunnel port not connected", source)
            return
        if msg.opcode == zeta.OP_INJECT:
            flow = zeta.direct_flow(msg, self._tun_ofport)
        else:
            flow = zeta.delete_flow(msg)
        self._queue.append(_Pending(msg.opcode, flow, at))
        self._wake.set()

    def _drop(self, outcome: str, why: str, source: str) -> None:
        self.counters[outcome] += 1
        log.debug("zeta.oam_dropped", outcome=outcome, reason=why, source=source)

    async def _install_loop(self) -> None:
        # Everything that arrived while the last batch was on its way goes in the next one:
        # one write and one barrier for many messages under load, one each when idle.
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue[: self.batch_max], self._queue[self.batch_max :]
                await self._install(batch)

    async def _install(self, batch: list[_Pending]) -> None:
        switch = self._switch
        if switch is None:
            self.counters["no_switch"] += len(batch)
            return
        adds = [p.flow for p in batch if p.op == zeta.OP_INJECT]
        deletes = [p.flow for p in batch if p.op == zeta.OP_DELETE]
        try:
            errors = await switch.flow_mods(adds, deletes)
        except (SwitchGone, TimeoutError, ConnectionError) as exc:
            self.counters["no_switch"] += len(batch)
            log.warning("zeta.direct_install_failed", error=str(exc), messages=len(batch))
            return
        done = time.perf_counter()
        failed = {id(e.flow) for e in errors if e.flow is not None}
        for p in batch:
            if id(p.flow) in failed:
                self.counters["malformed"] += 1
                continue
            self.latencies.append(done - p.received)
            self.counters["injected" if p.op == zeta.OP_INJECT else "deleted"] += 1
        for e in errors:
            log.warning("zeta.direct_flow_rejected", error=e.error, flow=str(e.flow))
        log.debug("zeta.direct_installed", adds=len(adds), deletes=len(deletes))


async def _our_group_ids(switch: Switch) -> set[int]:
    pages = await switch.request(parser.OFPGroupDescStatsRequest(codec.DP, 0))
    ids = {g.group_id for page in pages for g in page.body}
    return {g for g in ids if zeta.GROUP_BASE <= g < zeta.GROUP_BASE + zeta.GROUP_SPAN}


def _group_msg(command: int, gid: int, buckets: tuple[Any, ...]) -> parser.OFPGroupMod:
    ofbuckets = [
        parser.OFPBucket(
            weight=1,
            watch_port=ofp.OFPP_ANY,
            watch_group=ofp.OFPG_ANY,
            actions=[codec.to_action(a) for a in actions],
        )
        for actions in buckets
    ]
    return parser.OFPGroupMod(codec.DP, command, ofp.OFPGT_SELECT, gid, ofbuckets)


def _delete_by_cookie(cookie: int, mask: int) -> parser.OFPFlowMod:
    return parser.OFPFlowMod(
        codec.DP,
        cookie=cookie,
        cookie_mask=mask,
        table_id=ofp.OFPTT_ALL,
        command=ofp.OFPFC_DELETE,
        buffer_id=ofp.OFP_NO_BUFFER,
        out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY,
    )
