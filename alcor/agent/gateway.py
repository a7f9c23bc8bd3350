"""The NAT gateway type on the agent: a router's north-south flows, as pure functions.

A router whose goal-state body has a `gateway` (its port on an external, flat network and the
gateway node carrying it; alcor/southbound/goalstate.py) gets two kinds of flows:

- **On every host of its VPCs** (cookie `nat`): IPv4 traffic sent to one of the router's gateway
  MACs for an address outside all of its subnets (no more specific flow: routed neighbours, extra
  routes) is given the gateway port's MAC as destination and goes to the gateway node through the
  tunnel, VNI of the source VPC (or, on the gateway node itself, straight to SNAT). Addresses inside
  the router's subnets that no port holds are dropped, never sent out.
- **On its gateway node**: `SNAT` decrements the TTL and commits the connection in the router's own
  conntrack zone with `nat(src=<gateway IP>)` (so overlapping tenant CIDRs behind two routers stay
  apart), then `SNAT_OUT` sends it to the physical network's bridge through the patch port, to the
  next hop's MAC (the external subnet's gateway, resolved by ARP: alcor/agent/nexthops.py). From the
  bridge, `EXT_IN` answers ARP for the gateway IP (and ping to it), hands ARP replies to the agent,
  and sends traffic for the gateway IP to `EXT_CT`, which un-NATs it in the router's zone and
  resubmits it to L3 with the router's tag as metadata, where the pipeline's per-port routed flows
  (the router's tag acting as one more subnet of the router: pipeline.context) deliver it into the
  VPC (MACs rewritten, through the receiving port's security groups).

    >>> gw = parse_gateway({"gateway": {"port_id": "p", "network_id": "ext", "subnet_id": "s",
    ...     "ip_address": "203.0.113.5", "mac_address": "FA:16:3E:00:00:09", "node_id": "n1",
    ...     "enable_snat": True}})
    >>> (gw.ip, gw.mac, gw.node_id)
    ('203.0.113.5', 'fa:16:3e:00:00:09', 'n1')
    >>> patch_name("br-ex")
    'int-br-ex'
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from alcor.agent.ir import (
    ETH_ARP,
    ETH_IP,
    IPPROTO_ICMP,
    METADATA_MASK,
    OFPP_CONTROLLER,
    P_HOST,
    P_ROUTE_BASE,
    REG_ROUTER,
    REG_ZONE,
    T_CLASSIFY,
    T_EXT_CT,
    T_EXT_IN,
    T_L2,
    T_L3,
    T_SNAT,
    T_SNAT_OUT,
    Action,
    Ct,
    DecTtl,
    Flow,
    Output,
    SetField,
    arp_reply_actions,
    cookie_for,
    icmp_echo_reply_actions,
    match,
)

# In L3, below every route (host routes P_HOST, extra routes P_ROUTE_BASE + prefix length):
P_INTERNAL = P_ROUTE_BASE - 1  # an unknown address of the router's own subnets: dropped
P_EXTERNAL = P_ROUTE_BASE - 2  # anything else: to the gateway
P_ECHO = P_HOST + 10  # ping to the gateway IP, answered before un-NAT looks at it
# Router zones are taken from the top of the 16-bit space, far from the ports' (from 1 up).
ZONE_BASE = 0xF000
ZONE_SPAN = 0x0FFF
ROUTER_TAG = 1 << 32  # | zone: a router's metadata on its gateway node, apart from every VNI


@dataclass(frozen=True, slots=True)
class Gateway:
    """A router's gateway as its goal-state body says (docs/wire.md, `router`)."""

    router_id: str
    port_id: str
    network_id: str
    subnet_id: str | None
    ip: str | None
    mac: str | None
    node_id: str | None
    enable_snat: bool


def parse_gateway(router: Mapping[str, Any], router_id: str = "") -> Gateway | None:
    g = router.get("gateway")
    if not isinstance(g, Mapping):
        return None
    ip = g.get("ip_address")
    try:
        ip = str(ipaddress.IPv4Address(str(ip))) if ip else None
    except ValueError:
        ip = None
    mac = g.get("mac_address")
    return Gateway(
        router_id,
        str(g.get("port_id") or ""),
        str(g.get("network_id") or ""),
        str(g["subnet_id"]) if g.get("subnet_id") else None,
        ip,
        str(mac).lower() if mac else None,
        str(g["node_id"]) if g.get("node_id") else None,
        g.get("enable_snat", True) is not False,
    )


def gateways(goal: Mapping[str, Any]) -> dict[str, Gateway]:
    """The routers of this goal state that have a gateway with an address and a MAC."""
    out: dict[str, Gateway] = {}
    for rid, body in sorted((goal.get("router") or {}).items()):
        gw = parse_gateway(body or {}, rid)
        if gw is not None and gw.ip and gw.mac and (body or {}).get("admin_state_up") is not False:
            out[rid] = gw
    return out


def patch_name(bridge: str) -> str:
    """The integration bridge's patch port to a mapped bridge (Neutron's OVS agent's name)."""
    return ("int-" + bridge)[:15]


def router_zones(router_ids: Iterable[str]) -> dict[str, int]:
    """A conntrack zone per router hosted here: a hash of its id in the top range, probed in id
    order on collision, so a router keeps its zone (and its connections) while others come and go
    unless two collide."""
    zones: dict[str, int] = {}
    taken: set[int] = set()
    for rid in sorted(router_ids):
        h = int.from_bytes(hashlib.blake2b(rid.encode(), digest_size=4).digest(), "big")
        z = h % ZONE_SPAN
        while ZONE_BASE + z in taken:
            z = (z + 1) % ZONE_SPAN
        zones[rid] = ZONE_BASE + z
        taken.add(ZONE_BASE + z)
    return zones


def tag(zone: int) -> int:
    return ROUTER_TAG | zone


@dataclass(frozen=True, slots=True)
class External:
    """What the gateway node knows of a router's external side."""

    ofport: int | None  # the patch port to the physical network's bridge
    cidr: ipaddress.IPv4Network | None
    nexthop: str | None  # the external subnet's gateway IP
    nexthop_mac: str | None  # ... as ARP resolved it
    problem: str  # why the gateway is not carried here ("" when it is)


def external(
    goal: Mapping[str, Any],
    gw: Gateway,
    ofports: Mapping[str, int],
    mappings: Mapping[str, str],
    neighbours: Mapping[str, str],
) -> External:
    vpc = (goal.get("vpc") or {}).get(gw.network_id) or {}
    physnet = vpc.get("physical_network")
    if vpc.get("network_type") != "flat" or not physnet:
        return External(None, None, None, None, f"network {gw.network_id} is not a flat network")
    bridge = mappings.get(str(physnet))
    if bridge is None:
        return External(None, None, None, None, f"physical network {physnet} not mapped here")
    ofport = ofports.get(patch_name(bridge))
    if ofport is None:
        return External(None, None, None, None, f"bridge {bridge} not patched to the agent's")
    sub = (goal.get("subnet") or {}).get(gw.subnet_id or "") or {}
    try:
        cidr = ipaddress.IPv4Network(str(sub.get("cidr")), strict=False)
    except ValueError:
        cidr = None
    nexthop = sub.get("gateway_ip")
    nexthop = str(nexthop) if nexthop else None
    return External(ofport, cidr, nexthop, neighbours.get(nexthop or ""), "")


def _tunnel(vni: int, ip: str, tun: int) -> tuple[Action, ...]:
    return (SetField("tunnel_id", vni), SetField("tun_ipv4_dst", ip), Output(tun))


def host_flows(
    rid: str,
    gw: Gateway,
    joined: Iterable[Any],
    me: str,
    node_ip: Mapping[str, str],
    tun_ofport: int | None,
) -> list[Flow]:
    """Every host of the router's VPCs: traffic for the outside goes to the gateway node.

    `joined` are the router's subnets (pipeline.Subnet: id, vni, net, gateway_mac)."""
    c = cookie_for("nat", rid)
    v4 = [s for s in joined if s.net.version == 4 and s.gateway_mac]
    if gw.node_id is None or gw.mac is None:
        return []
    here = gw.node_id == me
    remote = node_ip.get(gw.node_id)
    if not here and (remote is None or tun_ofport is None):
        return []
    flows: list[Flow] = []
    for a in v4:
        base = match(metadata=a.vni, eth_type=ETH_IP, eth_dst=a.gateway_mac)
        flows.append(
            Flow(T_L3, P_EXTERNAL, base, (SetField("eth_dst", gw.mac),), goto_table=T_L2, cookie=c)
        )
        for b in v4:
            net = b.net
            m = match(
                metadata=a.vni,
                eth_type=ETH_IP,
                eth_dst=a.gateway_mac,
                ipv4_dst=(str(net.network_address), str(net.netmask)),
            )
            flows.append(Flow(T_L3, P_INTERNAL, m, cookie=c))
        l2 = match(metadata=a.vni, eth_dst=gw.mac)
        if here:
            flows.append(Flow(T_L2, P_HOST, l2, goto_table=T_SNAT, cookie=c))
        else:
            assert remote is not None and tun_ofport is not None
            flows.append(Flow(T_L2, P_HOST, l2, _tunnel(a.vni, remote, tun_ofport), cookie=c))
    return flows


def floating_ips(goal: Mapping[str, Any], router_id: str) -> list[tuple[str, str, str]]:
    """(id, floating IP, fixed IP) of the router's associated floating IPs, sorted."""
    out = []
    for fid, f in (goal.get("floating_ip") or {}).items():
        if (f or {}).get("router_id") != router_id:
            continue
        try:
            fip = str(ipaddress.IPv4Address(str(f.get("floating_ip_address"))))
            fixed = str(ipaddress.IPv4Address(str(f.get("fixed_ip_address"))))
        except ValueError:
            continue
        out.append((str(fid), fip, fixed))
    return sorted(out)


def floating_ip_problem(fixed: str, joined: Iterable[Any], ext: External) -> str:
    """Why this gateway node does not NAT a floating IP of its router ("" when it does): the
    datapath's answer to the floating IP's `status`."""
    if ext.problem:
        return ext.problem
    addr = ipaddress.IPv4Address(fixed)
    if not any(a.net.version == 4 and a.gateway_mac and addr in a.net for a in joined):
        return f"no subnet of the router here holds {fixed}"
    return ""


def node_flows(
    rid: str,
    gw: Gateway,
    joined: Iterable[Any],
    ext: External,
    zone: int,
    fips: Iterable[tuple[str, str, str]] = (),
) -> list[Flow]:
    """The gateway node's SNAT and un-NAT for one router (none while `ext.problem` says why),
    and its floating IPs' 1:1 NAT: a floating IP answers ARP with the gateway's MAC; what comes
    in for it is DNATed to the fixed IP (then routed in like the replies of SNAT); what its fixed
    IP sends out is SNATed to it, whatever `enable_snat` says."""
    if ext.problem or ext.ofport is None or gw.ip is None or gw.mac is None:
        return []
    c = cookie_for("nat", rid)
    rtag = tag(zone)
    x = ext.ofport
    flows: list[Flow] = [
        Flow(T_CLASSIFY, P_HOST, match(in_port=x), goto_table=T_EXT_IN, cookie=c),
        Flow(
            T_EXT_IN,
            P_HOST,
            match(in_port=x, eth_type=ETH_ARP, arp_op=1, arp_tpa=gw.ip),
            arp_reply_actions(gw.mac, gw.ip),
            cookie=c,
        ),
        # ARP replies to the gateway IP: the next hop's MAC, for the agent (nexthops.py)
        Flow(
            T_EXT_IN,
            P_HOST,
            match(in_port=x, eth_type=ETH_ARP, arp_op=2, arp_tpa=gw.ip),
            (Output(OFPP_CONTROLLER),),
            cookie=c,
        ),
        Flow(
            T_EXT_IN,
            P_ECHO,
            match(
                in_port=x, eth_type=ETH_IP, ip_proto=IPPROTO_ICMP, ipv4_dst=gw.ip, icmpv4_type=8
            ),
            icmp_echo_reply_actions(gw.mac, gw.ip),
            cookie=c,
        ),
        Flow(
            T_EXT_IN,
            P_HOST,
            match(in_port=x, eth_type=ETH_IP, ipv4_dst=gw.ip),
            write_metadata=(rtag, METADATA_MASK),
            goto_table=T_EXT_CT,
            cookie=c,
        ),
        Flow(
            T_EXT_CT,
            P_HOST,
            match(metadata=rtag, eth_type=ETH_IP),
            (SetField(REG_ZONE, zone), Ct(table=T_L3, nat=("", ""))),
            cookie=c,
        ),
    ]
    joined = list(joined)
    for _fid, fip, fixed in fips:
        flows += [
            Flow(
                T_EXT_IN,
                P_HOST,
                match(in_port=x, eth_type=ETH_ARP, arp_op=1, arp_tpa=fip),
                arp_reply_actions(gw.mac, fip),
                cookie=c,
            ),
            Flow(
                T_EXT_IN,
                P_HOST,
                match(in_port=x, eth_type=ETH_IP, ipv4_dst=fip),
                write_metadata=(rtag, METADATA_MASK),
                goto_table=T_EXT_CT,
                cookie=c,
            ),
            Flow(
                T_EXT_CT,
                P_HOST + 1,
                match(metadata=rtag, eth_type=ETH_IP, ipv4_dst=fip),
                (SetField(REG_ZONE, zone), Ct(commit=True, table=T_L3, nat=("dst", fixed))),
                cookie=c,
            ),
        ]
        addr = ipaddress.IPv4Address(fixed)
        for a in joined:
            if a.net.version == 4 and a.gateway_mac and addr in a.net:
                m = match(metadata=a.vni, eth_type=ETH_IP, eth_dst=gw.mac, ipv4_src=fixed)
                out_fip: tuple[Action, ...] = (
                    DecTtl(),
                    SetField(REG_ZONE, zone),
                    SetField(REG_ROUTER, zone),
                    Ct(commit=True, table=T_SNAT_OUT, nat=("src", fip)),
                )
                flows.append(Flow(T_SNAT, P_HOST + 1, m, out_fip, cookie=c))
    for a in joined:
        if a.net.version != 4 or not a.gateway_mac:
            continue
        m = match(metadata=a.vni, eth_type=ETH_IP, eth_dst=gw.mac)
        if gw.enable_snat:
            snat: tuple[Action, ...] = (
                DecTtl(),
                SetField(REG_ZONE, zone),
                SetField(REG_ROUTER, zone),
                Ct(commit=True, table=T_SNAT_OUT, nat=("src", gw.ip)),
            )
            flows.append(Flow(T_SNAT, P_HOST, m, snat, cookie=c))
        else:
            flows.append(Flow(T_SNAT, P_HOST, m, cookie=c))  # no SNAT: dropped
    if ext.nexthop_mac:
        out = (SetField("eth_src", gw.mac), SetField("eth_dst", ext.nexthop_mac), Output(x))
        flows.append(
            Flow(T_SNAT_OUT, P_HOST, match(eth_type=ETH_IP, **{REG_ROUTER: zone}), out, cookie=c)
        )
    return flows


def base_flows() -> list[Flow]:
    return [Flow(t, 0, ()) for t in (T_SNAT, T_SNAT_OUT, T_EXT_IN, T_EXT_CT)]  # drop


@dataclass(frozen=True, slots=True)
class Probe:
    """An ARP request the agent sends for a next hop it needs (alcor/agent/nexthops.py)."""

    ofport: int
    target_ip: str
    src_ip: str
    src_mac: str


def probes(
    goal: Mapping[str, Any],
    me: str,
    ofports: Mapping[str, int],
    mappings: Mapping[str, str],
) -> list[Probe]:
    """The next hops of the gateways this node carries, and how to ask for them."""
    out: set[Probe] = set()
    for gw in gateways(goal).values():
        if gw.node_id != me or gw.ip is None or gw.mac is None:
            continue
        ext = external(goal, gw, ofports, mappings, {})
        if ext.ofport is not None and ext.nexthop:
            out.add(Probe(ext.ofport, ext.nexthop, gw.ip, gw.mac))
    return sorted(out, key=lambda p: (p.target_ip, p.src_ip))
