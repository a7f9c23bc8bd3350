"""Router advertisements: IPv6 subnets with `ipv6_ra_mode` slaac, on a router, advertised to VMs.

Which advertisements a host sends is a pure function of its goal state (`advertisements`): one
per local VM port and IPv6 slaac subnet it has an address in, while a router holds the subnet's
gateway. Each is built with os-ken's packet library, as a router's interface would send it: from
the gateway's link-local address and MAC to all nodes, with the gateway as default router
(lifetime 1800 s), the network's MTU, and the subnet's /64 on-link and autonomous, so the VM
takes the EUI-64 address IPAM gave its port and routes through the distributed router.

`RouterAdvertiser` (the imperative shell) sends them by packet-out straight to the port's tap:
at once and again 2, 4, 8 and 16 s after a port first gets one (its VM may still be booting),
then every 30 s; and when a subnet stops being advertised to a port that is still there (its
router interface went, say), one last advertisement with lifetime 0 so the VM drops the route.
Router solicitations are not answered: they would need a packet-in per VM, and the schedule
above reaches a booting VM within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from os_ken.lib.packet import ethernet, icmpv6, ipv6, packet
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from alcor.agent.ipv6 import link_local
from alcor.agent.ir import ETH_IPV6, IPPROTO_ICMPV6, tap_name
from alcor.agent.pipeline import gateways_down
from alcor.wire import ROUTER_INTERFACE

log = structlog.get_logger("alcor.agent.ra")

ALL_NODES, ALL_NODES_MAC = "ff02::1", "33:33:00:00:00:01"
CUR_HOP_LIMIT = 64
ROUTER_LIFETIME = 1800  # s; RFC 4861's default (3 x MaxRtrAdvInterval)
VALID_LIFETIME, PREFERRED_LIFETIME = 86400, 14400  # s; radvd's defaults, as Neutron's routers
INTERVAL = 30.0  # s between advertisements to one port
INITIAL = (0.0, 2.0, 4.0, 8.0, 16.0)  # s after a port first gets one
PREFIX_ON_LINK, PREFIX_AUTONOMOUS = 0b100, 0b010  # os-ken's res1 bits: L, A, R

Key = tuple[str, str]  # (port id, subnet id)


@dataclass(frozen=True, slots=True)
class Advert:
    port_id: str
    subnet_id: str
    ofport: int
    packet: bytes  # the whole Ethernet frame
    withdrawal: bytes  # the same with router lifetime 0: the VM drops the default route now


def router_advertisement(
    gateway_mac: str, prefix: str, mtu: int | None, lifetime: int = ROUTER_LIFETIME
) -> bytes:
    """The frame a router interface with `gateway_mac` sends for `prefix` (slaac)."""
    net = ipaddress.IPv6Network(prefix, strict=False)
    options: list[Any] = [icmpv6.nd_option_sla(hw_src=gateway_mac)]
    if mtu:
        # as bytes: os-ken's MTU option serializes but cannot tell its length (os-ken 4.2)
        options.append(icmpv6.nd_option_mtu(mtu=mtu).serialize())
    options.append(
        icmpv6.nd_option_pi(
            pl=net.prefixlen,
            res1=PREFIX_ON_LINK | PREFIX_AUTONOMOUS,
            val_l=VALID_LIFETIME,
            pre_l=PREFERRED_LIFETIME if lifetime else 0,
            prefix=str(net.network_address),
        )
    )
    p = packet.Packet()
    p.add_protocol(ethernet.ethernet(dst=ALL_NODES_MAC, src=gateway_mac, ethertype=ETH_IPV6))
    p.add_protocol(
        ipv6.ipv6(src=link_local(gateway_mac), dst=ALL_NODES, nxt=IPPROTO_ICMPV6, hop_limit=255)
    )
    ra = icmpv6.nd_router_advert(ch_l=CUR_HOP_LIMIT, res=0, rou_l=lifetime, options=options)
    p.add_protocol(icmpv6.icmpv6(type_=icmpv6.ND_ROUTER_ADVERT, data=ra))
    p.serialize()
    return bytes(p.data)


def advertisements(
    goal: Mapping[str, Any], ofports: Mapping[str, int], active: Iterable[str]
) -> dict[Key, Advert]:
    """The advertisements this host sends: to each of its `active` ports, for each IPv6 slaac
    subnet the port has an address in and a router's interface holds the gateway of."""
    subnets = goal.get("subnet") or {}
    if not any(s.get("ipv6_ra_mode") == "slaac" for s in subnets.values()):
        return {}  # the common case, without a pass over every local port per goal state
    vpcs = goal.get("vpc") or {}
    me = goal.get("node_id")
    ports = goal.get("port") or {}
    down = gateways_down(goal)
    out: dict[Key, Advert] = {}
    cache: dict[str, tuple[bytes, bytes]] = {}
    for pid in sorted(set(active)):
        p = ports.get(pid)
        ofport = ofports.get(tap_name(pid))
        if p is None or ofport is None or p.get("node_id") != me:
            continue
        if p.get("device_owner") == ROUTER_INTERFACE:
            continue
        for fip in p.get("fixed_ips") or ():
            sid = str(fip.get("subnet_id"))
            s = subnets.get(sid)
            if not s or s.get("ipv6_ra_mode") != "slaac" or not s.get("gateway_mac"):
                continue
            if sid in down:
                continue
            if s.get("ip_version") != 6 or s.get("network_id") != p.get("network_id"):
                continue
            if sid not in cache:
                mtu = (vpcs.get(str(s.get("network_id"))) or {}).get("mtu")
                mac = str(s["gateway_mac"]).lower()
                cache[sid] = (
                    router_advertisement(mac, s["cidr"], mtu),
                    router_advertisement(mac, s["cidr"], mtu, lifetime=0),
                )
            out[(pid, sid)] = Advert(pid, sid, ofport, *cache[sid])
    return out


class PacketOut(Protocol):
    async def packet_out(
        self, data: bytes, actions: list[Any], in_port: int | None = None
    ) -> None: ...


class RouterAdvertiser:
    """Sends each port its advertisements on the schedule above, through the current switch."""

    def __init__(
        self,
        interval: float = INTERVAL,
        initial: tuple[float, ...] = INITIAL,
        clock: Callable[[], float] = time.monotonic,
        counters: dict[str, int] | None = None,
    ) -> None:
        self.interval, self.initial, self.clock = interval, initial, clock
        self.counters = counters if counters is not None else {}
        self.counters.setdefault("router_advertisements", 0)
        self.adverts: dict[Key, Advert] = {}
        self._due: dict[Key, tuple[float, int]] = {}  # key -> (when, sends so far)
        self._withdraw: list[Advert] = []
        self._switch: PacketOut | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def update(
        self, switch: PacketOut | None, adverts: Mapping[Key, Advert], live: Mapping[str, int]
    ) -> None:
        """The advertisements wanted now, after a reconcile (`live`: local active port -> its
        ofport). New or changed ones go out at once; one a port that is still there no longer
        gets is withdrawn."""
        self._switch = switch
        now = self.clock()
        for key, old in self.adverts.items():
            if key not in adverts:
                self._due.pop(key, None)
                if live.get(old.port_id) == old.ofport:
                    self._withdraw.append(old)
        for key, ad in adverts.items():
            if self.adverts.get(key) != ad:
                self._due[key] = (now, 0)
        self.adverts = dict(adverts)
        if (self._due or self._withdraw) and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            if self._switch is None:  # keep the schedule; send once a switch is back
                await self._wake.wait()
                continue
            await self._send_due()
            wait = min((when for when, _ in self._due.values()), default=None)
            timeout = None if wait is None else max(0.0, wait - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _send_due(self) -> None:
        switch = self._switch
        assert switch is not None
        withdraw, self._withdraw = self._withdraw, []
        for gone in withdraw:
            await self._send(switch, gone.ofport, gone.withdrawal, gone)
        now = self.clock()
        for key, (when, n) in list(self._due.items()):
            ad = self.adverts.get(key)
            if when > now or ad is None or self._due.get(key) != (when, n):
                continue  # not yet, or changed by an update() while we were sending
            await self._send(switch, ad.ofport, ad.packet, ad)
            if self._due.get(key) != (when, n):
                continue
            if n + 1 < len(self.initial):
                nxt = when + self.initial[n + 1] - self.initial[n]
            else:
                nxt = now + self.interval
            self._due[key] = (max(nxt, now), n + 1)

    async def _send(self, switch: PacketOut, ofport: int, data: bytes, ad: Advert) -> None:
        try:
            await switch.packet_out(data, [parser.OFPActionOutput(ofport, ofp.OFPCML_NO_BUFFER)])
        except Exception as e:  # a switch going away: the next reconcile brings a new one
            log.info("ra.send_failed", port=ad.port_id, subnet=ad.subnet_id, error=str(e))
            return
        self.counters["router_advertisements"] += 1
