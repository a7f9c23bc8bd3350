"""The flow compiler: a host's goal state and its switch's ofports in, the desired OpenFlow flows out.

A pure function (no I/O, no clock, no os-ken): the reconciler diffs its result against what the
switch holds. Every flow carries a cookie derived from the resource it belongs to, so flows can be
read back, attributed and deleted per resource.

    >>> fs = compile_flows({"node_id": "n1"}, {})
    >>> sorted({f.table for f in fs.flows})
    [0, 10, 20, 30]

Pipeline (OpenFlow 1.3 tables):

    0  CLASSIFY   in_port=<tap>            -> metadata=VNI, goto RESPOND
                  in_port=<vxlan>,tun_id=VNI -> metadata=VNI, goto L2 (tunnelled traffic was
                                                 already answered and routed on the sending host)
    10 RESPOND    ARP requests (arp_op=1) for known IPs of the VPC, ICMP echo to gateway IPs:
                  answered in the datapath, sent back out IN_PORT. A port asking for its own IP
                  falls through (no answer, normal flooding).
    20 L3         dl_dst=<gateway MAC of subnet A>, ip_dst=<port in subnet B on A's router>
                  -> eth_src=gateway MAC of B, eth_dst=port MAC, dec_ttl, metadata=VNI of B,
                  goto L2. Distributed: done on the sending host, no router hop.
    30 L2         metadata=VNI, dl_dst=MAC -> output tap | set tun_id, tun_dst, output vxlan
                  metadata=VNI (anything else) -> flood to local ports and member hosts

`metadata` holds the VPC's VNI, which isolates VPCs with overlapping CIDRs: every flow after
classification matches it. Zeta redirection (a later issue) replaces a VPC's flood flow with a
select group per gateway; OAM direct-path flows would sit in L3 at a higher priority.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

# --- tables and priorities -------------------------------------------------------------------

T_CLASSIFY = 0
T_RESPOND = 10
T_L3 = 20
T_L2 = 30
TABLES = (T_CLASSIFY, T_RESPOND, T_L3, T_L2)

P_DEFAULT = 0
P_FLOOD = 10
P_HOST = 100  # exact MAC / exact IP
P_OWN_IP = 200  # beats the responder: a port asking for its own IP gets no answer
P_PROXY_ARP = 150  # L3 neighbour, asked from another subnet: answered with the gateway MAC
P_ROUTE_BASE = 20  # + prefix length, so longer prefixes win; stays below P_HOST
P_GATEWAY_DROP = 1

# OpenFlow's reserved "send back where it came from" port; output to the ingress port by number
# is silently dropped by OVS, which also gives split horizon on the VXLAN port for free.
OFPP_IN_PORT = 0xFFFFFFF8

ETH_IP = 0x0800
ETH_ARP = 0x0806
IPPROTO_ICMP = 1
ROUTER_INTERFACE = "network:router_interface"
METADATA_MASK = 0xFFFFFFFFFFFFFFFF

# --- cookies ---------------------------------------------------------------------------------

# Top 16 bits mark a flow as ours (read-back filters on them), 4 bits name the resource type,
# 44 bits are a hash of its id: collisions among 10^5 resources are ~1e-4 likely, and a collision
# only merges two resources' attribution, never the flows' identity (table, priority, match).
COOKIE_TAG = 0xA1C0 << 48
COOKIE_TAG_MASK = 0xFFFF << 48
_TYPE_CODES = {
    "pipeline": 0,
    "port": 1,
    "subnet": 2,
    "vpc": 3,
    "router": 4,
    "node": 5,
    "gateway": 6,
}


def cookie_for(rtype: str, rid: str) -> int:
    """The cookie of every flow that belongs to resource (rtype, rid); stable across restarts."""
    digest = hashlib.blake2b(rid.encode(), digest_size=8).digest()
    return COOKIE_TAG | (_TYPE_CODES[rtype] << 44) | (int.from_bytes(digest, "big") & (1 << 44) - 1)


PIPELINE_COOKIE = cookie_for("pipeline", "base")


def tap_name(port_id: str) -> str:
    """The OVS interface name of a VM port (Neutron's and ACA's convention)."""
    return "tap" + port_id[:11]


# --- flows -----------------------------------------------------------------------------------

MatchValue = int | str | tuple[str, str] | tuple[int, int]
Match = tuple[tuple[str, MatchValue], ...]


@dataclass(frozen=True, slots=True)
class Output:
    port: int


@dataclass(frozen=True, slots=True)
class SetField:
    field: str
    value: int | str


@dataclass(frozen=True, slots=True)
class Move:
    """NXAST_REG_MOVE of a whole field (OVS: move:SRC[]->DST[])."""

    src: str
    dst: str
    n_bits: int


@dataclass(frozen=True, slots=True)
class DecTtl:
    pass


@dataclass(frozen=True, slots=True)
class Group:
    group_id: int


@dataclass(frozen=True, slots=True)
class Opaque:
    """An action read back from the switch that the compiler never emits (so never "equal")."""

    text: str


Action = Output | SetField | Move | DecTtl | Group | Opaque


@dataclass(frozen=True, slots=True)
class Flow:
    """One OpenFlow 1.3 flow. Its identity on the switch is `key` (table, priority, match)."""

    table: int
    priority: int
    match: Match
    actions: tuple[Action, ...] = ()
    write_metadata: tuple[int, int] | None = None
    goto_table: int | None = None
    cookie: int = PIPELINE_COOKIE
    idle_timeout: int = 0
    hard_timeout: int = 0

    @property
    def key(self) -> tuple[int, int, Match]:
        return (self.table, self.priority, self.match)


def match(**fields: MatchValue) -> Match:
    """A canonical match: fields sorted by name, so equal matches compare and hash equal."""
    return tuple(sorted(fields.items()))


@dataclass(frozen=True)
class FlowSet:
    """The compiler's result: the flows, and for each local port whether it could be compiled."""

    flows: frozenset[Flow]
    # local port id -> reason it has no flows ("" when it has them)
    port_problems: Mapping[str, str] = field(default_factory=dict)
    # local port id -> OVS interface name
    local_ports: Mapping[str, str] = field(default_factory=dict)
    # cookie -> (type, id), to name a resource in logs and errors
    owners: Mapping[int, tuple[str, str]] = field(default_factory=dict)
    # flows dropped because another flow already had the same key (conflicting goal state)
    conflicts: tuple[tuple[Flow, Flow], ...] = ()

    def by_key(self) -> dict[tuple[int, int, Match], Flow]:
        return {f.key: f for f in self.flows}


# --- goal state ------------------------------------------------------------------------------

Body = Mapping[str, Any]


class GoalState(TypedDict, total=False):
    """A host's goal state as docs/wire.md describes it: plain dicts of wire bodies by id."""

    node_id: str
    node: Mapping[str, Body]
    vpc: Mapping[str, Body]
    subnet: Mapping[str, Body]
    router: Mapping[str, Body]
    port: Mapping[str, Body]
    security_group: Mapping[str, Body]
    gateway: Mapping[str, Body]


@dataclass(frozen=True, slots=True)
class _Endpoint:
    """One (IP, MAC) of a port that traffic can be delivered to, local or remote."""

    port_id: str
    vni: int
    mac: str
    ip: str  # IPv4 only; "" for a MAC-only endpoint
    subnet_id: str
    ofport: int | None  # local
    remote_ip: str | None  # remote: the hosting node's tunnel IP


@dataclass(frozen=True, slots=True)
class _Subnet:
    id: str
    vni: int
    net: ipaddress.IPv4Network
    gateway_ip: str | None
    gateway_mac: str | None


class _Builder:
    def __init__(self) -> None:
        self.flows: dict[tuple[int, int, Match], Flow] = {}
        self.owners: dict[int, tuple[str, str]] = {}
        self.conflicts: list[tuple[Flow, Flow]] = []

    def add(self, flow: Flow) -> None:
        old = self.flows.get(flow.key)
        if old is None:
            self.flows[flow.key] = flow
        elif old != flow:
            # First one wins; input is iterated in sorted order, so the choice is deterministic.
            self.conflicts.append((old, flow))

    def own(self, rtype: str, rid: str) -> int:
        c = cookie_for(rtype, rid)
        self.owners[c] = (rtype, rid)
        return c


def _mac(value: Any) -> str | None:
    return str(value).lower() if value else None


def _ipv4(value: Any) -> str | None:
    try:
        addr = ipaddress.ip_address(str(value))
    except ValueError:
        return None
    return str(addr) if addr.version == 4 else None


def _vni(vpc: Body | None) -> int | None:
    if not vpc:
        return None
    seg = vpc.get("segmentation_id")
    return int(seg) if isinstance(seg, int) or (isinstance(seg, str) and seg.isdigit()) else None


def arp_reply_actions(mac: str, ip: str) -> tuple[Action, ...]:
    """Turn an ARP request into the reply for (ip is-at mac), in place (DESIGN §4)."""
    return (
        Move("eth_src", "eth_dst", 48),
        SetField("eth_src", mac),
        SetField("arp_op", 2),
        Move("arp_sha", "arp_tha", 48),
        Move("arp_spa", "arp_tpa", 32),
        SetField("arp_sha", mac),
        SetField("arp_spa", ip),
        Output(OFPP_IN_PORT),
    )


def icmp_echo_reply_actions(mac: str, ip: str) -> tuple[Action, ...]:
    """Turn an ICMP echo request to a gateway IP into its reply (OVS fixes the checksums)."""
    return (
        Move("eth_src", "eth_dst", 48),
        SetField("eth_src", mac),
        Move("ipv4_src", "ipv4_dst", 32),
        SetField("ipv4_src", ip),
        SetField("icmpv4_type", 0),
        Output(OFPP_IN_PORT),
    )


def _tunnel(vni: int, remote_ip: str, tun_ofport: int) -> tuple[Action, ...]:
    return (SetField("tunnel_id", vni), SetField("tun_ipv4_dst", remote_ip), Output(tun_ofport))


def _base_flows(b: _Builder) -> None:
    b.own("pipeline", "base")
    b.add(Flow(T_CLASSIFY, P_DEFAULT, ()))  # drop: unknown in_port or tun_id
    b.add(Flow(T_RESPOND, P_DEFAULT, (), goto_table=T_L3))
    b.add(Flow(T_L3, P_DEFAULT, (), goto_table=T_L2))
    b.add(Flow(T_L2, P_DEFAULT, ()))  # drop: metadata of no VPC


def compile_flows(
    goal: GoalState | Mapping[str, Any], ofports: Mapping[str, int], *, tunnel_port: str = "vxlan0"
) -> FlowSet:
    """The flows this host's switch should hold for `goal`, given its ofports by interface name."""
    me = goal.get("node_id", "")
    vpcs = goal.get("vpc") or {}
    subnets_in = goal.get("subnet") or {}
    ports = goal.get("port") or {}
    nodes = goal.get("node") or {}
    routers = goal.get("router") or {}
    tun_ofport = ofports.get(tunnel_port)

    b = _Builder()
    _base_flows(b)
    problems: dict[str, str] = {}
    local_ports: dict[str, str] = {}

    # A router interface port is never an OVS interface; it only tells us a gateway's MAC.
    rif_mac: dict[tuple[str, str], str] = {}
    for pid in sorted(ports):
        p = ports[pid]
        if p.get("device_owner") == ROUTER_INTERFACE:
            mac = _mac(p.get("mac_address"))
            for fip in p.get("fixed_ips") or ():
                ip = _ipv4(fip.get("ip_address"))
                if mac and ip:
                    rif_mac[(str(fip.get("subnet_id")), ip)] = mac

    subnets: dict[str, _Subnet] = {}
    for sid in sorted(subnets_in):
        body = subnets_in[sid]
        vni = _vni(vpcs.get(str(body.get("network_id"))))
        try:
            net = ipaddress.ip_network(str(body.get("cidr")), strict=False)
        except ValueError:
            continue
        if vni is None or net.version != 4:
            continue  # IPv6: no NDP responder yet; such subnets get L2 flooding only
        gw_ip = _ipv4(body.get("gateway_ip"))
        gw_mac = _mac(body.get("gateway_mac")) or (rif_mac.get((sid, gw_ip)) if gw_ip else None)
        assert isinstance(net, ipaddress.IPv4Network)
        subnets[sid] = _Subnet(sid, vni, net, gw_ip, gw_mac)

    # --- endpoints: every deliverable (IP, MAC) of every port ---
    endpoints: list[_Endpoint] = []
    vpc_local: dict[int, set[int]] = {}
    vpc_remote: dict[int, set[str]] = {}
    for pid in sorted(ports):
        p = ports[pid]
        if p.get("device_owner") == ROUTER_INTERFACE:
            continue
        local = p.get("node_id") == me
        vni = _vni(vpcs.get(str(p.get("network_id"))))
        if vni is None:
            if local:
                problems[pid] = f"vpc {p.get('network_id')} unknown or without segmentation_id"
            continue
        ofport: int | None = None
        remote_ip: str | None = None
        if local:
            iface = tap_name(pid)
            local_ports[pid] = iface
            if p.get("admin_state_up") is False:
                problems[pid] = "admin_state_up is false"
                continue
            ofport = ofports.get(iface)
            if ofport is None:
                problems[pid] = f"interface {iface} not on the bridge"
                continue
            problems[pid] = ""
            vpc_local.setdefault(vni, set()).add(ofport)
        else:
            node = nodes.get(str(p.get("node_id"))) or {}
            remote_ip = _ipv4(node.get("local_ip"))
            if remote_ip is None or tun_ofport is None:
                continue  # unreachable neighbour: answering its ARP would blackhole traffic
            vpc_remote.setdefault(vni, set()).add(remote_ip)
        mac = _mac(p.get("mac_address"))
        if not mac:
            continue
        pairs: list[tuple[str, str, str]] = []  # (mac, ip, subnet_id)
        for fip in p.get("fixed_ips") or ():
            ip = _ipv4(fip.get("ip_address"))
            if ip:
                pairs.append((mac, ip, str(fip.get("subnet_id"))))
        for aap in p.get("allowed_address_pairs") or ():
            ip = _ipv4(str(aap.get("ip_address", "")).split("/")[0])
            if ip:
                pairs.append((_mac(aap.get("mac_address")) or mac, ip, ""))
        if not pairs:
            pairs.append((mac, "", ""))
        for emac, ip, sid in pairs:
            endpoints.append(_Endpoint(pid, vni, emac, ip, sid, ofport, remote_ip))

    # --- per port: classify, L2 delivery, ARP ---
    own_ips: dict[str, set[str]] = {}
    for ep in endpoints:
        c = b.own("port", ep.port_id)
        meta = match(metadata=ep.vni, eth_dst=ep.mac)
        if ep.ofport is not None:
            b.add(
                Flow(
                    T_CLASSIFY,
                    P_HOST,
                    match(in_port=ep.ofport),
                    write_metadata=(ep.vni, METADATA_MASK),
                    goto_table=T_RESPOND,
                    cookie=c,
                )
            )
            b.add(Flow(T_L2, P_HOST, meta, (Output(ep.ofport),), cookie=c))
        else:
            assert ep.remote_ip is not None and tun_ofport is not None
            b.add(Flow(T_L2, P_HOST, meta, _tunnel(ep.vni, ep.remote_ip, tun_ofport), cookie=c))
        if not ep.ip:
            continue
        arp = match(metadata=ep.vni, eth_type=ETH_ARP, arp_op=1, arp_tpa=ep.ip)
        b.add(Flow(T_RESPOND, P_HOST, arp, arp_reply_actions(ep.mac, ep.ip), cookie=c))
        if ep.ofport is not None and ep.ip not in own_ips.setdefault(ep.port_id, set()):
            own_ips[ep.port_id].add(ep.ip)
            own = match(
                in_port=ep.ofport, metadata=ep.vni, eth_type=ETH_ARP, arp_op=1, arp_tpa=ep.ip
            )
            b.add(Flow(T_RESPOND, P_OWN_IP, own, goto_table=T_L2, cookie=c))

    # --- per VPC: tunnel ingress and flooding (broadcast, multicast, unknown unicast) ---
    for vpc_id in sorted(vpcs):
        vni = _vni(vpcs[vpc_id])
        if vni is None:
            continue
        c = b.own("vpc", vpc_id)
        if tun_ofport is not None:
            b.add(
                Flow(
                    T_CLASSIFY,
                    P_HOST,
                    match(in_port=tun_ofport, tunnel_id=vni),
                    write_metadata=(vni, METADATA_MASK),
                    goto_table=T_L2,
                    cookie=c,
                )
            )
        flood: list[Action] = [Output(o) for o in sorted(vpc_local.get(vni, ()))]
        if tun_ofport is not None:
            for rip in sorted(vpc_remote.get(vni, ()), key=ipaddress.IPv4Address):
                flood.extend(_tunnel(vni, rip, tun_ofport))
        if flood:
            b.add(Flow(T_L2, P_FLOOD, match(metadata=vni), tuple(flood), cookie=c))

    # --- per subnet: the gateway answers ARP and ping; traffic to it that is not routed drops ---
    for s in subnets.values():
        if not (s.gateway_ip and s.gateway_mac):
            continue
        c = b.own("subnet", s.id)
        arp = match(metadata=s.vni, eth_type=ETH_ARP, arp_op=1, arp_tpa=s.gateway_ip)
        b.add(
            Flow(T_RESPOND, P_HOST, arp, arp_reply_actions(s.gateway_mac, s.gateway_ip), cookie=c)
        )
        echo = match(
            metadata=s.vni,
            eth_type=ETH_IP,
            ip_proto=IPPROTO_ICMP,
            ipv4_dst=s.gateway_ip,
            icmpv4_type=8,
        )
        b.add(
            Flow(
                T_RESPOND,
                P_HOST,
                echo,
                icmp_echo_reply_actions(s.gateway_mac, s.gateway_ip),
                cookie=c,
            )
        )
        b.add(Flow(T_L3, P_GATEWAY_DROP, match(metadata=s.vni, eth_dst=s.gateway_mac), cookie=c))

    # --- per router: distributed routing between its subnets ---
    by_subnet: dict[str, list[_Endpoint]] = {}
    for ep in endpoints:
        if ep.ip:
            for sid in (ep.subnet_id,) if ep.subnet_id else _containing(subnets, ep):
                by_subnet.setdefault(sid, []).append(ep)
    for rid in sorted(routers):
        r = routers[rid]
        joined = [
            subnets[sid]
            for sid in sorted(set(map(str, r.get("subnet_ids") or ())))
            if sid in subnets and subnets[sid].gateway_mac
        ]
        for a in joined:
            a_mac = a.gateway_mac
            assert a_mac is not None
            for bsub in joined:
                if bsub.id == a.id or bsub.net.overlaps(a.net):
                    continue
                b_mac = bsub.gateway_mac
                assert b_mac is not None
                for ep in by_subnet.get(bsub.id, ()):
                    c = b.own("port", ep.port_id)
                    b.add(
                        Flow(
                            T_L3,
                            P_HOST,
                            match(metadata=a.vni, eth_type=ETH_IP, eth_dst=a_mac, ipv4_dst=ep.ip),
                            _routed(b_mac, ep.mac),
                            write_metadata=(bsub.vni, METADATA_MASK),
                            goto_table=T_L2,
                            cookie=c,
                        )
                    )
                    # A VM that treats another subnet as on-link gets the router's MAC, so its
                    # traffic is routed (TTL decremented) like everyone else's.
                    b.add(
                        Flow(
                            T_RESPOND,
                            P_PROXY_ARP,
                            match(
                                metadata=a.vni,
                                eth_type=ETH_ARP,
                                arp_op=1,
                                arp_tpa=ep.ip,
                                **prefix_match("arp_spa", a.net),
                            ),
                            arp_reply_actions(a_mac, ep.ip),
                            cookie=c,
                        )
                    )
            _static_routes(b, rid, r, a, joined, by_subnet)

    return FlowSet(
        flows=frozenset(b.flows.values()),
        port_problems=problems,
        local_ports=local_ports,
        owners=b.owners,
        conflicts=tuple(b.conflicts),
    )


def prefix_match(
    field_name: str, net: ipaddress.IPv4Network | ipaddress.IPv6Network
) -> dict[str, MatchValue]:
    """A prefix as OVS reads it back: /32 is an exact value, /0 is no field at all."""
    if net.prefixlen == net.max_prefixlen:
        return {field_name: str(net.network_address)}
    if net.prefixlen == 0:
        return {}
    return {field_name: (str(net.network_address), str(net.netmask))}


def _routed(src_mac: str, dst_mac: str) -> tuple[Action, ...]:
    return (SetField("eth_src", src_mac), SetField("eth_dst", dst_mac), DecTtl())


def _containing(subnets: Mapping[str, _Subnet], ep: _Endpoint) -> Iterable[str]:
    """Subnets of the endpoint's VPC that hold its IP (allowed address pairs name no subnet)."""
    addr = ipaddress.IPv4Address(ep.ip)
    return [s.id for s in subnets.values() if s.vni == ep.vni and addr in s.net]


def _static_routes(
    b: _Builder,
    rid: str,
    router: Body,
    a: _Subnet,
    joined: list[_Subnet],
    by_subnet: Mapping[str, list[_Endpoint]],
) -> None:
    """A router's extra routes: destination CIDR via a next hop that is a port on a joined subnet."""
    a_mac = a.gateway_mac
    assert a_mac is not None
    for route in router.get("routes") or ():
        try:
            dest = ipaddress.ip_network(str(route.get("destination")), strict=False)
        except ValueError:
            continue
        nexthop = _ipv4(route.get("nexthop"))
        if dest.version != 4 or nexthop is None:
            continue
        nh_addr = ipaddress.IPv4Address(nexthop)
        for bsub in joined:
            if nh_addr not in bsub.net:
                continue
            hop = next((ep for ep in by_subnet.get(bsub.id, ()) if ep.ip == nexthop), None)
            if hop is None or bsub.gateway_mac is None:
                continue
            b.add(
                Flow(
                    T_L3,
                    P_ROUTE_BASE + dest.prefixlen,
                    match(
                        metadata=a.vni,
                        eth_type=ETH_IP,
                        eth_dst=a_mac,
                        **prefix_match("ipv4_dst", dest),
                    ),
                    _routed(bsub.gateway_mac, hop.mac),
                    write_metadata=(bsub.vni, METADATA_MASK),
                    goto_table=T_L2,
                    cookie=b.own("router", rid),
                )
            )
