"""The pipeline rules: a host's goal state in, the flows of each resource out, as pure functions.

Each function builds the flows one resource owns (a port, a VPC, a subnet, a router, the base
pipeline), with that resource's cookie; `alcor.agent.compiler` calls them and keeps the desired
set current incrementally. No I/O, no clock, no os-ken. The flows are `alcor.agent.ir` data.

    >>> ctx = context({"node_id": "n1", "vpc": {"v1": {"segmentation_id": 100}}}, tun_ofport=1)
    >>> [(f.table, f.priority, f.goto_table) for f in vpc_flows(ctx, "v1", (), ())]
    [(0, 100, 30)]

Pipeline (OpenFlow 1.3 tables):

    0  CLASSIFY   in_port=<tap>,udp,68->67 -> meter <the port's>, CONTROLLER: a local port's DHCP
                                                 requests reach the agent only (alcor/agent/
                                                 leases.py: the ports on DHCP subnets)
                  in_port=<tap>            -> metadata=VNI, REG_ZONE=its zone, goto PORT_SECURITY
                                              (port security off: goto RESPOND)
                  in_port=<vxlan>,tun_id=VNI -> metadata=VNI, goto L2 (tunnelled traffic was
                                                 already answered and routed on the sending host)
    1  PORT_SECURITY  what the port may send (alcor/agent/portsec.py), then:
    2, 3  EGRESS_CT, EGRESS_RULES  its security groups' egress rules (alcor/agent/secgroups.py)
    10 RESPOND    ARP requests (arp_op=1) and IPv6 neighbour solicitations for known IPs of the
                  VPC, ICMP and ICMPv6 echo to gateway IPs: answered in the datapath, sent back
                  out IN_PORT. A port asking for its own IP falls through (no answer, normal
                  flooding); so do duplicate address detection and solicitations without a
                  source link-layer option.
    11 ND_REPLY   the last step of a neighbour advertisement (alcor/agent/ipv6.py)
    12 ARP_PROXY  a port's ARP reply for an address in subnet B, to an asker in A (a subnet of the
                  same VPC routed to B): eth_src and arp_sha are A's gateway MAC (proxy ARP),
                  one flow per pair; anything else goes back out IN_PORT as built
    20 L3         dl_dst=<gateway MAC of subnet A>, ip_dst=<port in subnet B on A's router>
                  -> eth_src=gateway MAC of B, eth_dst=port MAC, dec_ttl (IPv4 TTL or IPv6
                  hop limit), metadata=VNI of B, goto L2. Distributed: done on the sending host,
                  no router hop.
    30 L2         metadata=VNI, dl_dst=MAC -> deliver to the local port | set tun_id, tun_dst,
                  output vxlan; metadata=VNI (anything else) -> flood to local ports and member
                  hosts. Delivering to a filtered port is REG_ZONE=its zone, REG_PORT=its ofport,
                  then INGRESS_CT (a flood resubmits there once per such port); to a port with
                  port security off, output to it.
    31 FLOOD      the rest of a flood too long for one flow (REG_FLOOD: which part)
    40, 41 INGRESS_CT, INGRESS_RULES  the receiver's ingress rules, then output:REG_PORT
    50-53 SNAT, SNAT_OUT, EXT_IN, EXT_CT  north-south on a router's gateway node: NAT in the
                  router's conntrack zone, to and from the physical network's bridge
                  (alcor/agent/gateway.py); on every host, L3 sends what leaves the router's
                  subnets to the gateway node (priorities below every route)

An IPv4 address of another subnet on the asker's router (an L3 neighbour) is answered with the
asker's gateway MAC (proxy ARP), so that traffic is routed (TTL decremented) like all routed
traffic: in ARP_PROXY when both subnets are in one VPC, by a flow per such address in RESPOND
when they are not (the asker's VPC holds no responder flow for it); IPv6 hosts take their
on-link prefixes from their subnet, so there is no proxy ND. An
IPv6 gateway also answers on its link-local address (fe80:: + EUI-64 of its MAC).
`metadata` holds the VPC's VNI, which isolates VPCs with overlapping CIDRs: every flow after
classification matches it. Zeta redirection (alcor/agent/zeta.py): a VPC with a ready Zeta
gateway floods to its local ports and its gateway's select group instead of to member hosts;
OAM direct-path flows sit in L3 at a higher priority and are not this module's.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from alcor.agent import gateway, ipv6, leases, portsec, secgroups, zeta
from alcor.agent.ir import (
    ETH_ARP,
    ETH_IP,
    ETH_IPV6,
    IPPROTO_ICMP,
    IPPROTO_UDP,
    METADATA_MASK,
    OFPP_CONTROLLER,
    OFPP_IN_PORT,
    P_DEFAULT,
    P_DHCP,
    P_FLOOD,
    P_GATEWAY_DROP,
    P_HOST,
    P_OWN_IP,
    P_PROXY_ARP,
    P_ROUTE_BASE,
    REG_FLOOD,
    REG_PORT,
    REG_ZONE,
    T_ARP_PROXY,
    T_CLASSIFY,
    T_FLOOD,
    T_INGRESS_CT,
    T_L2,
    T_L3,
    T_ND_REPLY,
    T_PORT_SECURITY,
    T_RESPOND,
    Action,
    DecTtl,
    Flow,
    Group,
    Match,
    MatchValue,
    Output,
    Resubmit,
    SetField,
    arp_reply_actions,
    cookie_for,
    icmp_echo_reply_actions,
    match,
    tap_name,
)
from alcor.wire import ROUTER_GATEWAY, ROUTER_INTERFACE, Body


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One (IP, MAC) of a port that traffic can be delivered to, local or remote."""

    port_id: str
    vni: int
    mac: str
    ip: str  # IPv4 or IPv6; "" for a MAC-only endpoint
    subnet_id: str
    ofport: int | None  # local
    remote_ip: str | None  # remote: the hosting node's tunnel IP


@dataclass(frozen=True, slots=True)
class Subnet:
    id: str
    vni: int
    net: ipaddress.IPv4Network | ipaddress.IPv6Network
    gateway_ip: str | None
    gateway_mac: str | None

    @property
    def gateway_addresses(self) -> tuple[str, ...]:
        """What the gateway answers on: its IP, and for IPv6 its link-local address as well."""
        if not (self.gateway_ip and self.gateway_mac):
            return ()
        if self.net.version == 4:
            return (self.gateway_ip,)
        return (self.gateway_ip, ipv6.link_local(self.gateway_mac))


def _mac(value: Any) -> str | None:
    return str(value).lower() if value else None


def _ipv4(value: Any) -> str | None:
    return _ipv4_text(str(value))


@functools.lru_cache(maxsize=1 << 17)  # every address is read again for each of its flows
def _ipv4_text(text: str) -> str | None:
    if portsec.ipv4_host(text):
        return text
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    return str(addr) if addr.version == 4 else None


def _ip(value: Any, version: int | None = None) -> str | None:
    """An IPv4 or IPv6 address as the flows spell it (and OVS reads it back), or None."""
    if version != 6 and portsec.ipv4_host(text := str(value)):
        return text
    try:
        addr = ipaddress.ip_address(str(value))
    except ValueError:
        return None
    return str(addr) if version in (None, addr.version) else None


def _v6(ip: str) -> bool:
    return ":" in ip


def _vni(vpc: Body | None) -> int | None:
    if not vpc:
        return None
    seg = vpc.get("segmentation_id")
    return int(seg) if isinstance(seg, int) or (isinstance(seg, str) and seg.isdigit()) else None


# Actions every responder flow shares are built once (tens of thousands of flows, less garbage).
_DEC_TTL = DecTtl()


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


@dataclass(frozen=True)
class Context:
    """Everything but the ports: when any of it changes, everything is recompiled."""

    me: str
    tun_ofport: int | None
    vni: dict[str, int]  # vpc id -> VNI
    subnets: dict[str, Subnet]
    node_ip: dict[str, str]  # node id -> tunnel IP
    # subnet B -> [(A, B)]: a port in B is reached from A through a router joining both
    routed_to: dict[str, list[tuple[Subnet, Subnet]]]
    routers: dict[str, tuple[Body, list[Subnet]]]  # router id -> (body, its routable subnets)
    # vpc id -> select group of its Zeta gateway: flooding goes there, not to member hosts
    redirect: dict[str, int] = field(default_factory=dict)
    # subnet id -> network, for the subnets the agent serves DHCP on
    dhcp_nets: dict[str, ipaddress.IPv4Network] = field(default_factory=dict)
    # router id -> its gateway (alcor/agent/gateway.py), and its conntrack zone when this node
    # is its gateway node (else None)
    gateways: dict[str, tuple[gateway.Gateway, int | None]] = field(default_factory=dict)
    # IPv4 subnet A -> the subnets B of its VPC routed to it (a router joins both): ARP_PROXY
    # gives an asker in A A's gateway MAC in the replies of B's ports (proxy_arp_flows)
    proxy_arp: dict[str, list[Subnet]] = field(default_factory=dict)
    # those subnets B: their ports' ARP replies go through ARP_PROXY
    arp_proxied: frozenset[str] = frozenset()


def context(goal: Mapping[str, Any], tun_ofport: int | None) -> Context:
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
                ip = _ip(fip.get("ip_address"))
                if mac and ip:
                    rif_mac[(str(fip.get("subnet_id")), ip)] = mac
    subnets: dict[str, Subnet] = {}
    subnets_in = goal.get("subnet") or {}
    down = gateways_down(goal)
    for sid in sorted(subnets_in):
        body = subnets_in[sid]
        v = vni.get(str(body.get("network_id")))
        try:
            net = ipaddress.ip_network(str(body.get("cidr")), strict=False)
        except ValueError:
            continue
        if v is None:
            continue
        gw_ip = _ip(body.get("gateway_ip"), net.version)
        gw_mac = _mac(body.get("gateway_mac")) or (rif_mac.get((sid, gw_ip)) if gw_ip else None)
        if sid in down:
            gw_mac = None  # like a router with no interfaces: no answers, no routing
        subnets[sid] = Subnet(sid, v, net, gw_ip, gw_mac)
    nodes = goal.get("node") or {}
    node_ip = {nid: ip for nid in nodes if (ip := _ipv4((nodes[nid] or {}).get("local_ip")))}
    routed_to: dict[str, list[tuple[Subnet, Subnet]]] = {}
    routers: dict[str, tuple[Body, list[Subnet]]] = {}
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
                if b.id != a.id and b.net.version == a.net.version and not b.net.overlaps(a.net):
                    routed_to.setdefault(b.id, []).append((a, b))
    me = str(goal.get("node_id", ""))
    gws = gateway.gateways(goal)
    zones = gateway.router_zones(rid for rid, g in gws.items() if g.node_id == me)
    nat: dict[str, tuple[gateway.Gateway, int | None]] = {}
    for rid, gw in gws.items():
        if rid not in routers:
            continue
        zone = zones.get(rid)
        nat[rid] = (gw, zone)
        if zone is None or gw.mac is None:
            continue
        # On the gateway node, what comes in from the outside (un-NATed, with the router's tag
        # as metadata) is routed to the ports of the router's subnets like traffic from one
        # more subnet of the router: the per-port routed flows are the pipeline's own.
        outside = Subnet(f"gateway:{rid}", gateway.tag(zone), _ANY_V4, gw.ip, gw.mac)
        for b in routers[rid][1]:
            if b.net.version == 4:
                routed_to.setdefault(b.id, []).append((outside, b))
    proxy_arp: dict[str, dict[str, Subnet]] = {}  # two routers may join the same pair
    for pairs in routed_to.values():
        for a, b in pairs:
            if a.vni == b.vni and b.net.version == 4:
                proxy_arp.setdefault(a.id, {})[b.id] = b
    proxied = frozenset(b for bs in proxy_arp.values() for b in bs)
    return Context(
        me=str(goal.get("node_id", "")),
        tun_ofport=tun_ofport,
        vni=vni,
        subnets=subnets,
        node_ip=node_ip,
        routed_to=routed_to,
        routers=routers,
        redirect=_zeta_redirects(goal),
        dhcp_nets=leases.dhcp_nets(goal),
        gateways=nat,
        proxy_arp={a: [bs[b] for b in sorted(bs)] for a, bs in sorted(proxy_arp.items())},
        arp_proxied=proxied,
    )


_ANY_V4 = ipaddress.IPv4Network("0.0.0.0/0")


def gateways_down(goal: Mapping[str, Any]) -> set[str]:
    """Subnets whose gateway is on a router with admin_state_up false: as in Neutron, where such
    a router's interfaces go away, their gateway answers nothing and nothing is routed."""
    routers = goal.get("router") or {}
    return {
        str(sid)
        for r in routers.values()
        if (r or {}).get("admin_state_up") is False
        for sid in r.get("subnet_ids") or ()
    }


def _zeta_redirects(goal: Mapping[str, Any]) -> dict[str, int]:
    return {vpc: r.group_id for vpc, r in zeta.redirects(goal).items()}


@dataclass
class PortFlows:
    flows: list[Flow]
    local: bool
    problem: str  # local ports only: "" when the port has flows
    vni: int | None = None
    ofport: int | None = None
    remote_ip: str | None = None
    endpoints: tuple[Endpoint, ...] = ()
    # local ports: how its VPC's flood reaches it (straight out, or through its ingress rules)
    deliver: tuple[Action, ...] = ()


def deliver_actions(ofport: int, zone: int | None) -> tuple[Action, ...]:
    """How a flood reaches a local port: through its ingress filter when it has a zone."""
    if zone is None:
        return (Output(ofport),)
    return (SetField(REG_ZONE, zone), SetField(REG_PORT, ofport), Resubmit(T_INGRESS_CT))


def port_flows(
    ctx: Context, pid: str, p: Body, ofport: int | None, zone: int | None = None
) -> PortFlows | None:
    """All flows of one port (cookie of the port); None for router interfaces.

    `zone` is what a filtered local port's packets carry in REG_ZONE (its conntrack zone and
    whether it is tracked, secgroups.zone_register); None for a port with port security off,
    whose packets go straight from CLASSIFY to RESPOND and from L2 out to it."""
    if p.get("device_owner") in (ROUTER_INTERFACE, ROUTER_GATEWAY):
        return None
    local = p.get("node_id") == ctx.me
    vni = ctx.vni.get(str(p.get("network_id")))
    if vni is None:
        reason = f"vpc {p.get('network_id')} unknown or without segmentation_id"
        return PortFlows([], local, reason)
    remote_ip: str | None = None
    if local:
        if p.get("admin_state_up") is False:
            return PortFlows([], local, "admin_state_up is false")
        if ofport is None:
            return PortFlows([], local, f"interface {tap_name(pid)} not on the bridge")
    else:
        remote_ip = ctx.node_ip.get(str(p.get("node_id")))
        if remote_ip is None or ctx.tun_ofport is None:
            # unreachable neighbour: answering its ARP would blackhole traffic
            return PortFlows([], local, "")
        ofport = None
    mac = _mac(p.get("mac_address"))
    if not mac:
        return PortFlows([], local, "port has no MAC address", vni, ofport, remote_ip)
    pairs: list[tuple[str, str, str]] = []  # (mac, ip, subnet_id)
    for fip in p.get("fixed_ips") or ():
        ip = _ip(fip.get("ip_address"))
        if ip:
            pairs.append((mac, ip, str(fip.get("subnet_id"))))
    for aap in p.get("allowed_address_pairs") or ():
        # A host address (a VIP, say) is answered and routed like a fixed IP; a wider prefix
        # only lets its MAC, if it names one, be delivered (nothing to answer ARP or NS for).
        addr, _, plen = str(aap.get("ip_address", "")).partition("/")
        ip = _ip(addr)
        if ip and plen not in ("", "128" if _v6(ip) else "32"):
            ip = None
        pair_mac = _mac(aap.get("mac_address")) or mac
        if ip:
            pairs.append((pair_mac, ip, ""))
        elif pair_mac != mac:
            pairs.append((pair_mac, "", ""))
    if not pairs:
        pairs.append((mac, "", ""))
    c = cookie_for("port", pid)
    flows: list[Flow] = []
    if ofport is not None and leases.served_address(ctx.dhcp_nets, p) is not None:
        flows.append(dhcp_flow(ofport, c))
    endpoints = tuple(Endpoint(pid, vni, m, ip, sid, ofport, remote_ip) for m, ip, sid in pairs)
    own_ips: set[str] = set()
    if ofport is not None:
        flows.append(_classify(ofport, vni, zone, c))
        if zone is not None:
            flows += portsec.port_flows(pid, ofport, p)
    for ep in endpoints:
        l2 = match(metadata=vni, eth_dst=ep.mac)
        if ofport is not None:
            flows.append(_deliver(l2, ofport, zone, c))
        else:
            assert remote_ip is not None and ctx.tun_ofport is not None
            flows.append(Flow(T_L2, P_HOST, l2, _tunnel(vni, remote_ip, ctx.tun_ofport), cookie=c))
        if not ep.ip:
            continue
        if _v6(ep.ip):
            flows.extend(_ipv6_endpoint_flows(ctx, ep, c, own_ips))
            continue
        sids = (ep.subnet_id,) if ep.subnet_id else _containing(ctx.subnets, ep)
        # asked from a routed subnet of its own VPC, the reply is rewritten in ARP_PROXY
        proxied = any(sid in ctx.arp_proxied for sid in sids)
        arp = match(metadata=vni, eth_type=ETH_ARP, arp_op=1, arp_tpa=ep.ip)
        reply = arp_reply_actions(ep.mac, ep.ip, proxied)
        flows.append(Flow(T_RESPOND, P_HOST, arp, reply, cookie=c))
        if ofport is not None and ep.ip not in own_ips:
            own_ips.add(ep.ip)
            own = match(in_port=ofport, metadata=vni, eth_type=ETH_ARP, arp_op=1, arp_tpa=ep.ip)
            flows.append(Flow(T_RESPOND, P_OWN_IP, own, goto_table=T_L2, cookie=c))
        # distributed routing towards this endpoint from every subnet routed to its own
        for sid in sids:
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
                if a.vni == b.vni:
                    continue  # proxied by the pair's flow in ARP_PROXY (proxy_arp_flows)
                # A VM that treats another subnet as on-link gets the router's MAC, so its
                # traffic is routed (TTL decremented) like everyone else's: asked from
                # another VPC's subnet, the answer is this flow of its own.
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
    deliver = deliver_actions(ofport, zone) if ofport is not None else ()
    return PortFlows(flows, local, "", vni, ofport, remote_ip, endpoints, deliver)


def _classify(ofport: int, vni: int, zone: int | None, cookie: int) -> Flow:
    m = match(in_port=ofport)
    if zone is None:
        return Flow(
            T_CLASSIFY, P_HOST, m, write_metadata=(vni, METADATA_MASK), goto_table=T_RESPOND,
            cookie=cookie,
        )  # fmt: skip
    return Flow(
        T_CLASSIFY, P_HOST, m, (SetField(REG_ZONE, zone),), write_metadata=(vni, METADATA_MASK),
        goto_table=T_PORT_SECURITY, cookie=cookie,
    )  # fmt: skip


def _deliver(m: Match, ofport: int, zone: int | None, cookie: int) -> Flow:
    if zone is None:
        return Flow(T_L2, P_HOST, m, (Output(ofport),), cookie=cookie)
    regs = (SetField(REG_ZONE, zone), SetField(REG_PORT, ofport))
    return Flow(T_L2, P_HOST, m, regs, goto_table=T_INGRESS_CT, cookie=cookie)


def _ipv6_endpoint_flows(ctx: Context, ep: Endpoint, c: int, own_ips: set[str]) -> list[Flow]:
    """An IPv6 address of a port: answered to NS in its VPC, routed to from its router's subnets
    (hop limit decremented). No proxy ND: IPv6 hosts take on-link prefixes from their subnet."""
    flows = [ipv6.ns_responder(ep.vni, ep.mac, ep.ip, c)]
    if ep.ofport is not None and ep.ip not in own_ips:
        own_ips.add(ep.ip)
        flows.append(ipv6.own_address(ep.vni, ep.ofport, ep.ip, c))
    for sid in (ep.subnet_id,) if ep.subnet_id else _containing(ctx.subnets, ep):
        for a, b in ctx.routed_to.get(sid, ()):
            assert a.gateway_mac is not None and b.gateway_mac is not None
            flows.append(
                Flow(
                    T_L3,
                    P_HOST,
                    match(metadata=a.vni, eth_type=ETH_IPV6, eth_dst=a.gateway_mac, ipv6_dst=ep.ip),
                    _routed(b.gateway_mac, ep.mac),
                    write_metadata=(b.vni, METADATA_MASK),
                    goto_table=T_L2,
                    cookie=c,
                )
            )
    return flows


def dhcp_flow(ofport: int, cookie: int) -> Flow:
    """A local port's DHCP requests (any destination: renewals are unicast to the server) go to
    the agent through the port's own meter, so one VM cannot flood it; never to another port."""
    return Flow(
        T_CLASSIFY,
        P_DHCP,
        match(in_port=ofport, eth_type=ETH_IP, ip_proto=IPPROTO_UDP, udp_src=68, udp_dst=67),
        (Output(OFPP_CONTROLLER),),
        cookie=cookie,
        meter=leases.meter_id(ofport),
    )


FLOOD_CHUNK = 3000  # actions per flood flow: each is 16 bytes or less on the wire


def vpc_flows(
    ctx: Context,
    vpc_id: str,
    local_deliveries: Iterable[tuple[int, tuple[Action, ...]]],
    remote_ips: Iterable[str],
) -> list[Flow]:
    """Tunnel ingress and flooding (broadcast, multicast, unknown unicast) of one VPC.

    `local_deliveries` are (ofport, how a flood reaches it) of its local ports."""
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
    ordered = sorted(local_deliveries, key=lambda d: d[0])
    flood: list[Action] = [a for _, deliver in ordered for a in deliver]
    group = ctx.redirect.get(vpc_id)
    if group is not None and tun is not None:
        flood.append(Group(group))  # Zeta: the gateway cluster forwards to member hosts
    elif tun is not None:
        for rip in sorted(remote_ips, key=ipaddress.IPv4Address):
            flood.extend(_tunnel(vni, rip, tun))
    # An OpenFlow message is at most 64 KiB: a flood to more than ~1,200 local ports or member
    # hosts goes on in FLOOD, a chunk per flow, REG_FLOOD naming the next one.
    chunks = [tuple(flood[i : i + FLOOD_CHUNK]) for i in range(0, len(flood), FLOOD_CHUNK)]
    for n, chunk in enumerate(chunks):
        if n + 1 < len(chunks):
            chunk += (SetField(REG_FLOOD, n + 1), Resubmit(T_FLOOD))
        if n == 0:
            flows.append(Flow(T_L2, P_FLOOD, match(metadata=vni), chunk, cookie=c))
        else:
            m = match(metadata=vni, **{REG_FLOOD: n})
            flows.append(Flow(T_FLOOD, P_FLOOD, m, chunk, cookie=c))
    if any(s.vni == vni and s.net.version == 6 for s in ctx.subnets.values()):
        flows.extend(ipv6.vpc_nd_flows(vni, c))
    return flows


def subnet_flows(s: Subnet) -> list[Flow]:
    """The gateway answers ARP (NS) and ping; traffic to its MAC that is not routed is dropped."""
    if not (s.gateway_ip and s.gateway_mac):
        return []
    c = cookie_for("subnet", s.id)
    if s.net.version == 6:
        return [
            *ipv6.gateway_flows(s.vni, s.gateway_mac, s.gateway_addresses, c),
            Flow(T_L3, P_GATEWAY_DROP, match(metadata=s.vni, eth_dst=s.gateway_mac), cookie=c),
        ]
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


def router_flows(ctx: Context, rid: str, hop: Callable[[str, str], Endpoint | None]) -> list[Flow]:
    """A router's extra routes: destination CIDR via a next hop that is a port on a joined subnet."""
    router, joined = ctx.routers[rid]
    c = cookie_for("router", rid)
    flows: list[Flow] = []
    for route in router.get("routes") or ():
        try:
            dest = ipaddress.ip_network(str(route.get("destination")), strict=False)
        except ValueError:
            continue
        nexthop = _ip(route.get("nexthop"), dest.version)
        if nexthop is None:
            continue
        nh_addr = ipaddress.ip_address(nexthop)
        eth_type, field_name = (ETH_IP, "ipv4_dst") if dest.version == 4 else (ETH_IPV6, "ipv6_dst")
        for b in joined:
            ep = hop(b.id, nexthop) if b.net.version == dest.version and nh_addr in b.net else None
            if ep is None or b.gateway_mac is None:
                continue
            for a in joined:
                assert a.gateway_mac is not None
                if a.net.version != dest.version:
                    continue
                flows.append(
                    Flow(
                        T_L3,
                        P_ROUTE_BASE + dest.prefixlen,
                        match(
                            metadata=a.vni,
                            eth_type=eth_type,
                            eth_dst=a.gateway_mac,
                            **prefix_match(field_name, dest),
                        ),
                        _routed(b.gateway_mac, ep.mac),
                        write_metadata=(b.vni, METADATA_MASK),
                        goto_table=T_L2,
                        cookie=c,
                    )
                )
    return flows


def proxy_arp_flows(ctx: Context, a: Subnet) -> list[Flow]:
    """One flow per subnet B of A's VPC routed to A (cookie of A, whose gateway answers): a
    port's ARP reply (built in RESPOND, sent on through here) for an address in B, to an asker
    in A, gives A's gateway MAC, so a VM that treats B as on-link still has its traffic routed
    (TTL decremented) like everyone else's. Only addresses a port holds are answered (the reply
    comes from its responder flow), at one flow per pair of subnets rather than one per port."""
    c = cookie_for("subnet", a.id)
    flows: list[Flow] = []
    for b in ctx.proxy_arp.get(a.id, ()):
        assert a.gateway_mac is not None
        m = match(
            metadata=a.vni,
            eth_type=ETH_ARP,
            **prefix_match("arp_spa", b.net),  # the reply's: the address asked for
            **prefix_match("arp_tpa", a.net),  # the asker's
        )
        rewrite = (SetField("eth_src", a.gateway_mac), SetField("arp_sha", a.gateway_mac))
        flows.append(Flow(T_ARP_PROXY, P_HOST, m, (*rewrite, _TO_IN_PORT), cookie=c))
    return flows


_TO_IN_PORT = Output(OFPP_IN_PORT)


def base_flows() -> list[Flow]:
    return [
        Flow(T_CLASSIFY, P_DEFAULT, ()),  # drop: unknown in_port or tun_id
        Flow(T_RESPOND, P_DEFAULT, (), goto_table=T_L3),
        Flow(T_ND_REPLY, P_DEFAULT, ()),  # drop: only the NS responder sends packets here
        Flow(T_ARP_PROXY, P_DEFAULT, (), (_TO_IN_PORT,)),  # a reply to an asker not routed
        Flow(T_L3, P_DEFAULT, (), goto_table=T_L2),
        Flow(T_L2, P_DEFAULT, ()),  # drop: metadata of no VPC
        Flow(T_FLOOD, P_DEFAULT, ()),
        *portsec.base_flows(),
        *secgroups.base_flows(),
        *gateway.base_flows(),
    ]


def _containing(subnets: Mapping[str, Subnet], ep: Endpoint) -> Iterable[str]:
    """Subnets of the endpoint's VPC that hold its IP (allowed address pairs name no subnet)."""
    addr = ipaddress.ip_address(ep.ip)
    return [
        s.id
        for s in subnets.values()
        if s.vni == ep.vni and s.net.version == addr.version and addr in s.net
    ]
