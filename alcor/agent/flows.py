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

An IP of another subnet on the asker's router (an L3 neighbour) is answered with the asker's
gateway MAC (proxy ARP), so that traffic is routed (TTL decremented) like all routed traffic.
`metadata` holds the VPC's VNI, which isolates VPCs with overlapping CIDRs: every flow after
classification matches it. `FlowCompiler` gives the same result incrementally (per-resource
groups; a full recompute only when VPCs, subnets, routers or nodes change). Zeta redirection (alcor/agent/zeta.py): a VPC with a ready Zeta
gateway floods to its local ports and its gateway's select group instead of to member hosts;
OAM direct-path flows sit in L3 at a higher priority and are not this compiler's.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Mapping
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


# Actions every responder flow shares are built once (tens of thousands of flows, less garbage).
_MOVE_ETH = Move("eth_src", "eth_dst", 48)
_ARP_REPLY_OP = SetField("arp_op", 2)
_MOVE_SHA = Move("arp_sha", "arp_tha", 48)
_MOVE_SPA = Move("arp_spa", "arp_tpa", 32)
_TO_IN_PORT = Output(OFPP_IN_PORT)
_DEC_TTL = DecTtl()


def arp_reply_actions(mac: str, ip: str) -> tuple[Action, ...]:
    """Turn an ARP request into the reply for (ip is-at mac), in place (DESIGN §4)."""
    return (
        _MOVE_ETH,
        SetField("eth_src", mac),
        _ARP_REPLY_OP,
        _MOVE_SHA,
        _MOVE_SPA,
        SetField("arp_sha", mac),
        SetField("arp_spa", ip),
        _TO_IN_PORT,
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


@functools.lru_cache(maxsize=1 << 14)  # one per (VPC, host): shared by all its neighbours' flows
def _tunnel(vni: int, remote_ip: str, tun_ofport: int) -> tuple[Action, ...]:
    return (SetField("tunnel_id", vni), SetField("tun_ipv4_dst", remote_ip), Output(tun_ofport))


@functools.lru_cache(maxsize=4096)
def prefix_match(
    field_name: str, net: ipaddress.IPv4Network | ipaddress.IPv6Network
) -> Mapping[str, MatchValue]:
    """A prefix as OVS reads it back: /32 is an exact value, /0 is no field at all."""
    if net.prefixlen == net.max_prefixlen:
        return {field_name: str(net.network_address)}
    if net.prefixlen == 0:
        return {}
    return {field_name: (str(net.network_address), str(net.netmask))}


def _routed(src_mac: str, dst_mac: str) -> tuple[Action, ...]:
    return (SetField("eth_src", src_mac), SetField("eth_dst", dst_mac), _DEC_TTL)


Key = tuple[int, int, Match]
Ref = tuple[str, str]  # the (type, id) of the resource a group of flows belongs to

_REF_ORDER = {"pipeline": 0, "port": 1, "vpc": 2, "subnet": 3, "router": 4}


@dataclass(frozen=True)
class _Ctx:
    """Everything but the ports: when any of it changes, everything is recompiled."""

    me: str
    tun_ofport: int | None
    vni: dict[str, int]  # vpc id -> VNI
    subnets: dict[str, _Subnet]
    node_ip: dict[str, str]  # node id -> tunnel IP
    # subnet B -> [(A, B)]: a port in B is reached from A through a router joining both
    routed_to: dict[str, list[tuple[_Subnet, _Subnet]]]
    routers: dict[str, tuple[Body, list[_Subnet]]]  # router id -> (body, its routable subnets)
    # vpc id -> select group of its Zeta gateway: flooding goes there, not to member hosts
    redirect: dict[str, int] = field(default_factory=dict)


def _context(goal: Mapping[str, Any], tun_ofport: int | None) -> _Ctx:
    vpcs = goal.get("vpc") or {}
    vni = {vid: v for vid in vpcs if (v := _vni(vpcs[vid])) is not None}
    # A router interface port is never an OVS interface; it only tells us a gateway's MAC.
    rif_mac: dict[tuple[str, str], str] = {}
    ports = goal.get("port") or {}
    for pid in sorted(ports):
        p = ports[pid]
        if p.get("device_owner") == ROUTER_INTERFACE:
            mac = _mac(p.get("mac_address"))
            for fip in p.get("fixed_ips") or ():
                ip = _ipv4(fip.get("ip_address"))
                if mac and ip:
                    rif_mac[(str(fip.get("subnet_id")), ip)] = mac
    subnets: dict[str, _Subnet] = {}
    subnets_in = goal.get("subnet") or {}
    for sid in sorted(subnets_in):
        body = subnets_in[sid]
        v = vni.get(str(body.get("network_id")))
        try:
            net = ipaddress.ip_network(str(body.get("cidr")), strict=False)
        except ValueError:
            continue
        if v is None or not isinstance(net, ipaddress.IPv4Network):
            continue  # IPv6: no NDP responder yet; such subnets get L2 flooding only
        gw_ip = _ipv4(body.get("gateway_ip"))
        gw_mac = _mac(body.get("gateway_mac")) or (rif_mac.get((sid, gw_ip)) if gw_ip else None)
        subnets[sid] = _Subnet(sid, v, net, gw_ip, gw_mac)
    nodes = goal.get("node") or {}
    node_ip = {nid: ip for nid in nodes if (ip := _ipv4((nodes[nid] or {}).get("local_ip")))}
    routed_to: dict[str, list[tuple[_Subnet, _Subnet]]] = {}
    routers: dict[str, tuple[Body, list[_Subnet]]] = {}
    routers_in = goal.get("router") or {}
    for rid in sorted(routers_in):
        r = routers_in[rid]
        joined = [
            subnets[sid]
            for sid in sorted(set(map(str, r.get("subnet_ids") or ())))
            if sid in subnets and subnets[sid].gateway_mac
        ]
        routers[rid] = (r, joined)
        for a in joined:
            for b in joined:
                if b.id != a.id and not b.net.overlaps(a.net):
                    routed_to.setdefault(b.id, []).append((a, b))
    return _Ctx(
        me=str(goal.get("node_id", "")),
        tun_ofport=tun_ofport,
        vni=vni,
        subnets=subnets,
        node_ip=node_ip,
        routed_to=routed_to,
        routers=routers,
        redirect=_zeta_redirects(goal),
    )


def _zeta_redirects(goal: Mapping[str, Any]) -> dict[str, int]:
    from alcor.agent import zeta  # imported here: zeta builds on this module's Flow types

    return {vpc: r.group_id for vpc, r in zeta.redirects(goal).items()}


@dataclass
class _PortOut:
    flows: list[Flow]
    local: bool
    problem: str  # local ports only: "" when the port has flows
    vni: int | None = None
    ofport: int | None = None
    remote_ip: str | None = None
    endpoints: tuple[_Endpoint, ...] = ()


def _port_group(ctx: _Ctx, pid: str, p: Body, ofport: int | None) -> _PortOut | None:
    """All flows of one port (cookie of the port); None for router interfaces."""
    if p.get("device_owner") == ROUTER_INTERFACE:
        return None
    local = p.get("node_id") == ctx.me
    vni = ctx.vni.get(str(p.get("network_id")))
    if vni is None:
        reason = f"vpc {p.get('network_id')} unknown or without segmentation_id"
        return _PortOut([], local, reason)
    remote_ip: str | None = None
    if local:
        if p.get("admin_state_up") is False:
            return _PortOut([], local, "admin_state_up is false")
        if ofport is None:
            return _PortOut([], local, f"interface {tap_name(pid)} not on the bridge")
    else:
        remote_ip = ctx.node_ip.get(str(p.get("node_id")))
        if remote_ip is None or ctx.tun_ofport is None:
            # unreachable neighbour: answering its ARP would blackhole traffic
            return _PortOut([], local, "")
        ofport = None
    mac = _mac(p.get("mac_address"))
    if not mac:
        return _PortOut([], local, "port has no MAC address", vni, ofport, remote_ip)
    pairs: list[tuple[str, str, str]] = []  # (mac, ip, subnet_id)
    for fip in p.get("fixed_ips") or ():
        ip = _ipv4(fip.get("ip_address"))
        if ip:
            pairs.append((mac, ip, str(fip.get("subnet_id"))))
    for aap in p.get("allowed_address_pairs") or ():
        # A host address (a VIP, say) is answered and routed like a fixed IP; a wider prefix
        # only lets its MAC, if it names one, be delivered (nothing to answer ARP for).
        addr, _, plen = str(aap.get("ip_address", "")).partition("/")
        ip = _ipv4(addr) if plen in ("", "32") else None
        pair_mac = _mac(aap.get("mac_address")) or mac
        if ip:
            pairs.append((pair_mac, ip, ""))
        elif pair_mac != mac:
            pairs.append((pair_mac, "", ""))
    if not pairs:
        pairs.append((mac, "", ""))
    c = cookie_for("port", pid)
    flows: list[Flow] = []
    endpoints = tuple(_Endpoint(pid, vni, m, ip, sid, ofport, remote_ip) for m, ip, sid in pairs)
    own_ips: set[str] = set()
    for ep in endpoints:
        l2 = match(metadata=vni, eth_dst=ep.mac)
        if ofport is not None:
            flows.append(
                Flow(
                    T_CLASSIFY,
                    P_HOST,
                    match(in_port=ofport),
                    write_metadata=(vni, METADATA_MASK),
                    goto_table=T_RESPOND,
                    cookie=c,
                )
            )
            flows.append(Flow(T_L2, P_HOST, l2, (Output(ofport),), cookie=c))
        else:
            assert remote_ip is not None and ctx.tun_ofport is not None
            flows.append(Flow(T_L2, P_HOST, l2, _tunnel(vni, remote_ip, ctx.tun_ofport), cookie=c))
        if not ep.ip:
            continue
        arp = match(metadata=vni, eth_type=ETH_ARP, arp_op=1, arp_tpa=ep.ip)
        flows.append(Flow(T_RESPOND, P_HOST, arp, arp_reply_actions(ep.mac, ep.ip), cookie=c))
        if ofport is not None and ep.ip not in own_ips:
            own_ips.add(ep.ip)
            own = match(in_port=ofport, metadata=vni, eth_type=ETH_ARP, arp_op=1, arp_tpa=ep.ip)
            flows.append(Flow(T_RESPOND, P_OWN_IP, own, goto_table=T_L2, cookie=c))
        # distributed routing towards this endpoint from every subnet routed to its own
        for sid in (ep.subnet_id,) if ep.subnet_id else _containing(ctx.subnets, ep):
            for a, b in ctx.routed_to.get(sid, ()):
                a_mac, b_mac = a.gateway_mac, b.gateway_mac
                assert a_mac is not None and b_mac is not None
                flows.append(
                    Flow(
                        T_L3,
                        P_HOST,
                        match(metadata=a.vni, eth_type=ETH_IP, eth_dst=a_mac, ipv4_dst=ep.ip),
                        _routed(b_mac, ep.mac),
                        write_metadata=(b.vni, METADATA_MASK),
                        goto_table=T_L2,
                        cookie=c,
                    )
                )
                # A VM that treats another subnet as on-link gets the router's MAC, so its
                # traffic is routed (TTL decremented) like everyone else's.
                flows.append(
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
    return _PortOut(flows, local, "", vni, ofport, remote_ip, endpoints)


def _vpc_group(
    ctx: _Ctx, vpc_id: str, local_ofports: Iterable[int], remote_ips: Iterable[str]
) -> list[Flow]:
    """Tunnel ingress and flooding (broadcast, multicast, unknown unicast) of one VPC."""
    vni = ctx.vni[vpc_id]
    c = cookie_for("vpc", vpc_id)
    flows: list[Flow] = []
    tun = ctx.tun_ofport
    if tun is not None:
        flows.append(
            Flow(
                T_CLASSIFY,
                P_HOST,
                match(in_port=tun, tunnel_id=vni),
                write_metadata=(vni, METADATA_MASK),
                goto_table=T_L2,
                cookie=c,
            )
        )
    flood: list[Action] = [Output(o) for o in sorted(local_ofports)]
    group = ctx.redirect.get(vpc_id)
    if group is not None and tun is not None:
        flood.append(Group(group))  # Zeta: the gateway cluster forwards to member hosts
    elif tun is not None:
        for rip in sorted(remote_ips, key=ipaddress.IPv4Address):
            flood.extend(_tunnel(vni, rip, tun))
    if flood:
        flows.append(Flow(T_L2, P_FLOOD, match(metadata=vni), tuple(flood), cookie=c))
    return flows


def _subnet_group(s: _Subnet) -> list[Flow]:
    """The gateway answers ARP and ping; traffic to its MAC that is not routed is dropped."""
    if not (s.gateway_ip and s.gateway_mac):
        return []
    c = cookie_for("subnet", s.id)
    arp = match(metadata=s.vni, eth_type=ETH_ARP, arp_op=1, arp_tpa=s.gateway_ip)
    echo = match(
        metadata=s.vni, eth_type=ETH_IP, ip_proto=IPPROTO_ICMP, ipv4_dst=s.gateway_ip, icmpv4_type=8
    )
    return [
        Flow(T_RESPOND, P_HOST, arp, arp_reply_actions(s.gateway_mac, s.gateway_ip), cookie=c),
        Flow(
            T_RESPOND, P_HOST, echo, icmp_echo_reply_actions(s.gateway_mac, s.gateway_ip), cookie=c
        ),
        Flow(T_L3, P_GATEWAY_DROP, match(metadata=s.vni, eth_dst=s.gateway_mac), cookie=c),
    ]


def _router_group(ctx: _Ctx, rid: str, hop: Callable[[str, str], _Endpoint | None]) -> list[Flow]:
    """A router's extra routes: destination CIDR via a next hop that is a port on a joined subnet."""
    router, joined = ctx.routers[rid]
    c = cookie_for("router", rid)
    flows: list[Flow] = []
    for route in router.get("routes") or ():
        try:
            dest = ipaddress.ip_network(str(route.get("destination")), strict=False)
        except ValueError:
            continue
        nexthop = _ipv4(route.get("nexthop"))
        if dest.version != 4 or nexthop is None:
            continue
        nh_addr = ipaddress.IPv4Address(nexthop)
        for b in joined:
            ep = hop(b.id, nexthop) if nh_addr in b.net else None
            if ep is None or b.gateway_mac is None:
                continue
            for a in joined:
                assert a.gateway_mac is not None
                flows.append(
                    Flow(
                        T_L3,
                        P_ROUTE_BASE + dest.prefixlen,
                        match(
                            metadata=a.vni,
                            eth_type=ETH_IP,
                            eth_dst=a.gateway_mac,
                            **prefix_match("ipv4_dst", dest),
                        ),
                        _routed(b.gateway_mac, ep.mac),
                        write_metadata=(b.vni, METADATA_MASK),
                        goto_table=T_L2,
                        cookie=c,
                    )
                )
    return flows


def _base_flows() -> list[Flow]:
    return [
        Flow(T_CLASSIFY, P_DEFAULT, ()),  # drop: unknown in_port or tun_id
        Flow(T_RESPOND, P_DEFAULT, (), goto_table=T_L3),
        Flow(T_L3, P_DEFAULT, (), goto_table=T_L2),
        Flow(T_L2, P_DEFAULT, ()),  # drop: metadata of no VPC
    ]


@dataclass
class Changes:
    """What one FlowCompiler.compile changed in the desired flows."""

    # key -> (flow before, flow after); None = absent. Only keys whose flow really changed.
    flows: dict[Key, tuple[Flow | None, Flow | None]]
    recomputed: bool  # True when everything was recompiled (context changed, or first run)

    @property
    def cookies(self) -> set[int]:
        return {f.cookie for pair in self.flows.values() for f in pair if f is not None}


class FlowCompiler:
    """compile_flows, incrementally: recompile only the ports that changed.

    Flows are grouped by the resource they belong to. Ports are compared by identity and then
    equality of their bodies and their tap's ofport; a changed port recompiles its own group and
    its VPC's flood group. Anything else (VPCs, subnets, routers, nodes, router interfaces, the
    tunnel port) is the context: when it changes, everything is recompiled (`recomputes` counts
    how often). The desired set is `self.desired`; state is data, nothing here does I/O.
    """

    def __init__(self, tunnel_port: str = "vxlan0") -> None:
        self.tunnel_port = tunnel_port
        self.recomputes = 0
        self._reset()

    def _reset(self) -> None:
        self.desired: dict[Key, Flow] = {}
        self.port_problems: dict[str, str] = {}
        self.local_ports: dict[str, str] = {}
        self.owners: dict[int, Ref] = {}
        self._ctx: _Ctx | None = None
        self._ctx_inputs: tuple[Any, ...] = ()
        self._ports: Mapping[str, Body] = {}
        self._port_out: dict[str, _PortOut | None] = {}
        self._port_ofport: dict[str, int | None] = {}
        self._groups: dict[Ref, list[Flow]] = {}
        self._refs: dict[Key, dict[Ref, Flow]] = {}
        self._local_ofports: dict[int, dict[int, int]] = {}  # vni -> ofport -> count
        self._remote_ips: dict[int, dict[str, int]] = {}  # vni -> tunnel IP -> count
        self._hops: dict[tuple[str, str], list[_Endpoint]] = {}  # (subnet, ip) -> endpoints

    # --- public ---

    def compile(self, goal: Mapping[str, Any], ofports: Mapping[str, int]) -> Changes:
        tun = ofports.get(self.tunnel_port)
        ctx_inputs = (
            goal.get("node_id"),
            tun,
            goal.get("vpc") or {},
            goal.get("subnet") or {},
            goal.get("router") or {},
            goal.get("node") or {},
            goal.get("gateway") or {},
        )
        ports: Mapping[str, Body] = goal.get("port") or {}
        if self._ctx is None or not _same_inputs(self._ctx_inputs, ctx_inputs):
            return self._recompute(goal, ofports, ctx_inputs)
        changed_ports = self._changed_ports(ports, ofports)
        if changed_ports is None:  # a router interface changed: gateway MACs are context
            return self._recompute(goal, ofports, ctx_inputs)
        touched: dict[Key, Flow | None] = {}
        vpcs: set[int] = set()
        for pid in changed_ports:
            for v in self._set_port(pid, ports.get(pid), ofports, touched):
                vpcs.add(v)
        self._ports = ports
        self._refresh_vpcs(vpcs, touched)
        if any(r.get("routes") for r, _ in self._ctx.routers.values()):
            for rid in self._ctx.routers:
                self._set_group(("router", rid), _router_group(self._ctx, rid, self._hop), touched)
        return Changes(self._diff(touched), recomputed=False)

    def flowset(self) -> FlowSet:
        conflicts = tuple(
            (refs[a], refs[b])
            for refs in self._refs.values()
            if len(refs) > 1
            for a, b in [sorted(refs, key=_ref_order)[:2]]
            if refs[a] != refs[b]
        )
        return FlowSet(
            flows=frozenset(self.desired.values()),
            port_problems=dict(self.port_problems),
            local_ports=dict(self.local_ports),
            owners=dict(self.owners),
            conflicts=conflicts,
        )

    # --- internals ---

    def _recompute(
        self, goal: Mapping[str, Any], ofports: Mapping[str, int], ctx_inputs: tuple[Any, ...]
    ) -> Changes:
        # Building ~10^5 acyclic objects triggers the cyclic GC again and again over a large
        # heap (a third of the time at 10,000 neighbours); nothing here can form a cycle.
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._recompute_all(goal, ofports, ctx_inputs)
        finally:
            if paused:
                gc.enable()

    def _recompute_all(
        self, goal: Mapping[str, Any], ofports: Mapping[str, int], ctx_inputs: tuple[Any, ...]
    ) -> Changes:
        before = self.desired
        self._reset()
        self.recomputes += 1
        ctx = self._ctx = _context(goal, ctx_inputs[1])
        self._ctx_inputs = ctx_inputs
        touched: dict[Key, Flow | None] = {}
        self._set_group(("pipeline", "base"), _base_flows(), touched)
        ports: Mapping[str, Body] = goal.get("port") or {}
        self._ports = ports
        for pid in sorted(ports):
            self._set_port(pid, ports[pid], ofports, touched)
        self._refresh_vpcs(set(ctx.vni.values()), touched)
        for sid in ctx.subnets:
            self._set_group(("subnet", sid), _subnet_group(ctx.subnets[sid]), touched)
        for rid in ctx.routers:
            self._set_group(("router", rid), _router_group(ctx, rid, self._hop), touched)
        changes: dict[Key, tuple[Flow | None, Flow | None]] = {}
        for k, f in self.desired.items():
            old = before.get(k)
            if old != f:
                changes[k] = (old, f)
        for k, old in before.items():
            if k not in self.desired:
                changes[k] = (old, None)
        return Changes(changes, recomputed=True)

    def _changed_ports(
        self, ports: Mapping[str, Body], ofports: Mapping[str, int]
    ) -> list[str] | None:
        old = self._ports
        changed: list[str] = []
        if ports is not old:
            for pid, body in ports.items():
                prev = old.get(pid)
                if prev is not body and prev != body:
                    changed.append(pid)
            changed.extend(pid for pid in old if pid not in ports)
        for pid in self.local_ports:  # a tap that appeared, went or moved
            if pid in ports and ofports.get(tap_name(pid)) != self._port_ofport.get(pid):
                changed.append(pid)
        for pid in changed:
            for maybe in (old.get(pid), ports.get(pid)):
                if maybe is not None and maybe.get("device_owner") == ROUTER_INTERFACE:
                    return None
        return sorted(set(changed))

    def _set_port(
        self,
        pid: str,
        body: Body | None,
        ofports: Mapping[str, int],
        touched: dict[Key, Flow | None],
    ) -> set[int]:
        """(Re)compile one port; return the VNIs whose flood group must be refreshed."""
        assert self._ctx is not None
        vnis: set[int] = set()
        prev = self._port_out.pop(pid, None)
        if prev is not None:
            self._membership(prev, -1)
            if prev.vni is not None:
                vnis.add(prev.vni)
        self.port_problems.pop(pid, None)
        self.local_ports.pop(pid, None)
        self._port_ofport.pop(pid, None)
        out = None
        if body is not None:
            ofport = ofports.get(tap_name(pid))
            out = _port_group(self._ctx, pid, body, ofport)
        if out is not None:
            self._port_out[pid] = out
            self._membership(out, +1)
            if out.vni is not None:
                vnis.add(out.vni)
            if out.local:
                self.local_ports[pid] = tap_name(pid)
                self.port_problems[pid] = out.problem
                self._port_ofport[pid] = ofport
        self._set_group(("port", pid), out.flows if out else [], touched)
        return vnis

    def _membership(self, out: _PortOut, delta: int) -> None:
        if out.vni is None or not out.flows:
            return
        if out.ofport is not None:
            _count(self._local_ofports.setdefault(out.vni, {}), out.ofport, delta)
        if out.remote_ip is not None:
            _count(self._remote_ips.setdefault(out.vni, {}), out.remote_ip, delta)
        for ep in out.endpoints:
            if ep.ip:
                hops = self._hops.setdefault((ep.subnet_id, ep.ip), [])
                if delta > 0:
                    hops.append(ep)
                else:
                    hops.remove(ep)
                    if not hops:
                        del self._hops[(ep.subnet_id, ep.ip)]

    def _hop(self, subnet_id: str, ip: str) -> _Endpoint | None:
        eps = self._hops.get((subnet_id, ip)) or self._hops.get(("", ip))
        return min(eps, key=lambda e: e.port_id) if eps else None

    def _refresh_vpcs(self, vnis: set[int], touched: dict[Key, Flow | None]) -> None:
        assert self._ctx is not None
        for vpc_id, vni in self._ctx.vni.items():
            if vni in vnis:
                flows = _vpc_group(
                    self._ctx,
                    vpc_id,
                    self._local_ofports.get(vni, {}),
                    self._remote_ips.get(vni, {}),
                )
                self._set_group(("vpc", vpc_id), flows, touched)

    def _set_group(self, ref: Ref, flows: list[Flow], touched: dict[Key, Flow | None]) -> None:
        if len({f.key for f in flows}) != len(flows):  # one resource, two flows, one key
            first: dict[Key, Flow] = {}
            for f in flows:
                first.setdefault(f.key, f)
            flows = list(first.values())
        old = self._groups.pop(ref, [])
        if old == flows:
            if flows:
                self._groups[ref] = flows
            return
        for f in old:
            k = f.key
            if k not in touched:
                touched[k] = self.desired.get(k)
            refs = self._refs[k]
            del refs[ref]
            if refs:
                self.desired[k] = refs[min(refs, key=_ref_order)]
            else:
                del self._refs[k]
                del self.desired[k]
        for f in flows:
            k = f.key
            if k not in touched:
                touched[k] = self.desired.get(k)
            refs = self._refs.setdefault(k, {})
            refs[ref] = f
            self.desired[k] = refs[min(refs, key=_ref_order)] if len(refs) > 1 else f
        if flows:
            self._groups[ref] = flows
            self.owners[cookie_for(*ref)] = ref
        else:
            self.owners.pop(cookie_for(*ref), None)

    def _diff(self, touched: dict[Key, Flow | None]) -> dict[Key, tuple[Flow | None, Flow | None]]:
        out: dict[Key, tuple[Flow | None, Flow | None]] = {}
        for k, before in touched.items():
            after = self.desired.get(k)
            if before != after:
                out[k] = (before, after)
        return out


def _count(counter: dict[Any, int], item: Any, delta: int) -> None:
    n = counter.get(item, 0) + delta
    if n > 0:
        counter[item] = n
    else:
        counter.pop(item, None)


def _ref_order(ref: Ref) -> tuple[int, str]:
    return (_REF_ORDER.get(ref[0], 9), ref[1])


def _same_inputs(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x is y:
            continue
        if isinstance(x, Mapping) and isinstance(y, Mapping):
            if len(x) != len(y) or any(y.get(k) is not v and y.get(k) != v for k, v in x.items()):
                return False
        elif x != y:
            return False
    return True


def compile_flows(
    goal: GoalState | Mapping[str, Any], ofports: Mapping[str, int], *, tunnel_port: str = "vxlan0"
) -> FlowSet:
    """The flows this host's switch should hold for `goal`, given its ofports by interface name."""
    compiler = FlowCompiler(tunnel_port)
    compiler.compile(goal, ofports)
    return compiler.flowset()


def _containing(subnets: Mapping[str, _Subnet], ep: _Endpoint) -> Iterable[str]:
    """Subnets of the endpoint's VPC that hold its IP (allowed address pairs name no subnet)."""
    addr = ipaddress.IPv4Address(ep.ip)
    return [s.id for s in subnets.values() if s.vni == ep.vni and addr in s.net]
