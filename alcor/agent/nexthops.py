"""The next hops of this node's gateways on the physical networks, found by ARP.

A gateway node sends SNATed traffic to its external subnet's gateway (the upstream router): it needs
that router's MAC. The agent asks (an ARP request from the gateway IP and MAC, out the patch port to
the mapped bridge) every `retry` seconds until it is answered, then every `refresh` seconds; the
replies reach the agent through the gateway's ARP-reply flow (alcor/agent/gateway.py) and the MAC
found is an input of the flow compiler (`FlowCompiler.compile(neighbours=...)`), so the
`SNAT_OUT` flow appears once it is known and follows it when it changes. What is learnt is kept
in memory only: a restarted agent asks again (traffic waits for the first reply).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import structlog
from os_ken.lib.packet import arp, ethernet, packet
from os_ken.ofproto import ofproto_v1_3_parser as parser

from alcor.agent.gateway import Probe
from alcor.agent.openflow import Switch

log = structlog.get_logger("alcor.agent.nexthops")

BROADCAST = "ff:ff:ff:ff:ff:ff"


def arp_request(p: Probe) -> bytes:
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(dst=BROADCAST, src=p.src_mac, ethertype=0x0806))
    pkt.add_protocol(
        arp.arp(opcode=arp.ARP_REQUEST, src_mac=p.src_mac, src_ip=p.src_ip,
                dst_mac="00:00:00:00:00:00", dst_ip=p.target_ip)
    )  # fmt: skip
    pkt.serialize()
    return bytes(pkt.data)


def parse_reply(data: bytes) -> tuple[str, str] | None:
    """(IP, MAC) an ARP reply says, or None."""
    try:
        a = packet.Packet(data).get_protocol(arp.arp)
    except Exception:
        return None
    if a is None or a.opcode != arp.ARP_REPLY:
        return None
    return str(a.src_ip), str(a.src_mac).lower()


class NextHops:
    def __init__(
        self, on_change: Callable[[], None], retry: float = 1.0, refresh: float = 30.0
    ) -> None:
        self.on_change = on_change
        self.retry = retry
        self.refresh = refresh
        self.bindings: dict[str, str] = {}  # IP -> MAC
        self._probes: Sequence[Probe] = ()
        self._switch: Switch | None = None
        self._asked: dict[str, float] = {}  # IP -> when last asked (monotonic)
        self._task: asyncio.Task[None] | None = None
        self.counters = {"requests": 0, "replies": 0, "changes": 0}

    def update(self, switch: Switch | None, probes: Sequence[Probe]) -> None:
        """What to ask for now (after each reconcile)."""
        self._switch = switch
        new = [p for p in probes if p.target_ip not in {q.target_ip for q in self._probes}]
        self._probes = probes
        wanted = {p.target_ip for p in probes}
        for ip in [ip for ip in self.bindings if ip not in wanted]:
            del self.bindings[ip]
        if probes and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run(), name="agent.nexthops")
        elif new and self._task is not None:
            self._asked.clear()  # ask for the new ones at once

    async def _run(self) -> None:
        while self._probes:
            now = time.monotonic()
            for p in self._probes:
                every = self.refresh if p.target_ip in self.bindings else self.retry
                if now - self._asked.get(p.target_ip, -1e9) >= every and self._switch is not None:
                    self._asked[p.target_ip] = now
                    try:
                        await self._switch.packet_out(
                            arp_request(p), [parser.OFPActionOutput(p.ofport, 0)]
                        )
                        self.counters["requests"] += 1
                    except Exception as e:  # switch gone: asked again after it is back
                        log.info("nexthops.request_failed", ip=p.target_ip, error=str(e))
            await asyncio.sleep(min(self.retry, 0.2))

    def packet_in(self, data: bytes) -> None:
        found = parse_reply(data)
        if found is None:
            return
        ip, mac = found
        self.counters["replies"] += 1
        if ip in {p.target_ip for p in self._probes} and self.bindings.get(ip) != mac:
            log.info("nexthops.learnt", ip=ip, mac=mac)
            self.bindings[ip] = mac
            self.counters["changes"] += 1
            self.on_change()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
