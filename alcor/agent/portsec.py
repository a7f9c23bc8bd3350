"""Port security: what a local VM port may send, as the flows of table PORT_SECURITY (pure).

A port with `port_security_enabled` (Neutron's default) sends only from its MAC and its fixed
IPs, plus its `allowed_address_pairs` (an IP or a CIDR, with the port's MAC or one of its own),
plus its IPv6 link-local address. ARP is checked on sender MAC and IP; IPv6 neighbour discovery on
source, target and link-layer options (an NS may not claim another IP's MAC, an NA may not
advertise someone else's address); DHCP server replies and router advertisements from VMs are
dropped. Whatever no flow allows is dropped here, before it reaches any other port, local or
remote. A port with port security off never comes here (CLASSIFY sends it straight on).

    >>> flows = port_flows("p1", 5, {"mac_address": "fa:16:3e:00:00:05",
    ...     "fixed_ips": [{"ip_address": "10.0.0.5"}], "allowed_address_pairs": []})
    >>> sorted({dict(f.match).get("eth_type") for f in flows})
    [2048, 2054, 34525]

The survivors go on to EGRESS_CT (alcor/agent/secgroups.py). Unit tests: tests/unit/agent/
test_portsec.py (pure) and tests/integration/agent/test_port_security.py (real packets).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

from alcor.agent.ipv6 import link_local
from alcor.agent.ir import (
    ETH_ARP,
    ETH_IP,
    ETH_IPV6,
    IPPROTO_ICMPV6,
    IPPROTO_UDP,
    P_DEFAULT,
    T_EGRESS_CT,
    T_PORT_SECURITY,
    Flow,
    MatchValue,
    cookie_for,
    match,
)
from alcor.wire import Body

# Priorities in PORT_SECURITY: global drops beat the per-port allows; neighbour discovery that
# no port-specific flow allows falls to the ND drop below them, everything else to the miss.
P_DROP = 200  # DHCP server replies, router advertisements: never from a VM
P_ND = 150  # NS/NA checked on source, target and link-layer address
P_ND_DROP = 140
P_ALLOW = 100  # IP and ARP from an allowed (MAC, address)

ICMPV6_RS, ICMPV6_RA, ICMPV6_NS, ICMPV6_NA, ICMPV6_MLD2_REPORT = 133, 134, 135, 136, 143
NO_LLADDR = "00:00:00:00:00:00"  # what OVS reads as the link-layer option of an NS/NA without one
UNSPECIFIED_V6 = "::"

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def allowed_pairs(body: Body) -> list[tuple[str, Net]]:
    """(MAC, network) pairs the port may send from: fixed IPs and its link-local address with
    its MAC, allowed address pairs with theirs (the port's when they name none)."""
    mac = _mac(body.get("mac_address"))
    if mac is None:
        return []
    pairs: list[tuple[str, Net]] = []
    for fip in body.get("fixed_ips") or ():
        net = _net(fip.get("ip_address"))
        if net is not None:
            pairs.append((mac, net))
    for aap in body.get("allowed_address_pairs") or ():
        net = _net(aap.get("ip_address"))
        if net is not None:
            pairs.append((_mac(aap.get("mac_address")) or mac, net))
    pairs.append((mac, ipaddress.IPv6Network(link_local(mac))))
    return list(dict.fromkeys(pairs))  # once each, in order


def port_flows(pid: str, ofport: int, body: Body) -> list[Flow]:
    """The PORT_SECURITY flows of one local port with port security on (cookie of the port)."""
    mac = _mac(body.get("mac_address"))
    if mac is None:
        return []
    c = cookie_for("port", pid)
    flows: list[Flow] = []

    def allow(priority: int, **fields: MatchValue) -> None:
        m = match(in_port=ofport, **fields)
        flows.append(Flow(T_PORT_SECURITY, priority, m, goto_table=T_EGRESS_CT, cookie=c))

    pairs = allowed_pairs(body)
    for pmac, net in pairs:
        if net.version == 4:
            allow(P_ALLOW, eth_src=pmac, eth_type=ETH_IP, **prefix("ipv4_src", net))
            allow(P_ALLOW, eth_src=pmac, eth_type=ETH_ARP, arp_sha=pmac, **prefix("arp_spa", net))
            continue
        allow(P_ALLOW, eth_src=pmac, eth_type=ETH_IPV6, **prefix("ipv6_src", net))
        icmp6: dict[str, MatchValue] = {
            "eth_src": pmac,
            "eth_type": ETH_IPV6,
            "ip_proto": IPPROTO_ICMPV6,
        }
        # An NS from this address may carry this MAC (or none); an NA may advertise only this
        # address, with this MAC (or none, in reply to a unicast NS).
        for lladdr in (pmac, NO_LLADDR):
            ns: dict[str, MatchValue] = {"icmpv6_type": ICMPV6_NS, "ipv6_nd_sll": lladdr}
            allow(P_ND, **icmp6, **ns, **prefix("ipv6_src", net))
            na: dict[str, MatchValue] = {"icmpv6_type": ICMPV6_NA, "ipv6_nd_tll": lladdr}
            allow(P_ND, **icmp6, **na, **prefix("ipv6_nd_target", net))
    # Before it has an address: DHCP discover/request from 0.0.0.0, ARP probes (RFC 5227, which
    # nobody learns from), duplicate address detection (NS without a link-layer option), MLD
    # reports and router solicitations from ::.
    allow(
        P_ALLOW,
        eth_src=mac,
        eth_type=ETH_IP,
        ip_proto=IPPROTO_UDP,
        ipv4_src="0.0.0.0",
        udp_src=68,
        udp_dst=67,
    )
    allow(P_ALLOW, eth_src=mac, eth_type=ETH_ARP, arp_sha=mac, arp_spa="0.0.0.0")
    unspec: dict[str, MatchValue] = {
        "eth_src": mac,
        "eth_type": ETH_IPV6,
        "ip_proto": IPPROTO_ICMPV6,
    }
    allow(P_ND, **unspec, ipv6_src=UNSPECIFIED_V6, icmpv6_type=ICMPV6_NS, ipv6_nd_sll=NO_LLADDR)
    for t in (ICMPV6_MLD2_REPORT, ICMPV6_RS):
        allow(P_ALLOW, **unspec, ipv6_src=UNSPECIFIED_V6, icmpv6_type=t)
    return flows


def base_flows() -> list[Flow]:
    """PORT_SECURITY flows shared by every port (pipeline cookie): what no VM may send."""
    udp4 = {"eth_type": ETH_IP, "ip_proto": IPPROTO_UDP}
    udp6 = {"eth_type": ETH_IPV6, "ip_proto": IPPROTO_UDP}
    icmp6 = {"eth_type": ETH_IPV6, "ip_proto": IPPROTO_ICMPV6}
    return [
        Flow(T_PORT_SECURITY, P_DROP, match(**udp4, udp_src=67, udp_dst=68)),  # DHCP server
        Flow(T_PORT_SECURITY, P_DROP, match(**udp6, udp_src=547, udp_dst=546)),  # DHCPv6 server
        Flow(T_PORT_SECURITY, P_DROP, match(**icmp6, icmpv6_type=ICMPV6_RA)),
        Flow(T_PORT_SECURITY, P_ND_DROP, match(**icmp6, icmpv6_type=ICMPV6_NS)),
        Flow(T_PORT_SECURITY, P_ND_DROP, match(**icmp6, icmpv6_type=ICMPV6_NA)),
        Flow(T_PORT_SECURITY, P_DEFAULT, ()),  # anything else from a port: dropped
    ]


# --- helpers ----------------------------------------------------------------------------------


def _mac(value: Any) -> str | None:
    return str(value).lower() if value else None


def _net(value: Any) -> Net | None:
    return _parse_net(str(value)) if value else None


def ipv4_host(text: str) -> bool:
    """Whether `text` is an IPv4 address spelled as OVS reads it back (a dotted quad without
    leading zeros): true of nearly every fixed IP, and ~10x cheaper to tell than to parse it
    with ipaddress, which a from-scratch compile would do for each of 10,000 neighbours."""
    try:
        return socket.inet_ntoa(socket.inet_aton(text)) == text
    except (OSError, ValueError):  # not an address; a NUL in it
        return False


@functools.lru_cache(maxsize=1 << 17)  # an address is parsed once, not once per flow it is in
def _parse_net(text: str) -> Net | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


@functools.lru_cache(maxsize=1 << 14)
def prefix(field_name: str, net: Net) -> dict[str, MatchValue]:
    """A prefix as OVS reads it back: a host route is an exact value, /0 no field at all."""
    if net.prefixlen == net.max_prefixlen:
        return {field_name: str(net.network_address)}
    if net.prefixlen == 0:
        return {}
    return {field_name: (str(net.network_address), str(net.netmask))}


def host_addresses(body: Body) -> Iterable[tuple[int, str, Net | None]]:
    """`addresses`, cheaper: (IP version, the address as OVS reads it back, None) for an IPv4
    host address, (version, "", network) for anything else."""
    for entry in (*(body.get("fixed_ips") or ()), *(body.get("allowed_address_pairs") or ())):
        value = entry.get("ip_address")
        if not value:
            continue
        text = str(value)
        if ipv4_host(text):
            yield 4, text, None
            continue
        net = _parse_net(text)
        if net is not None:
            yield net.version, "", net


def addresses(body: Body) -> Iterable[Net]:
    """Every address a port owns (fixed IPs, allowed address pairs), for remote-group members."""
    for fip in body.get("fixed_ips") or ():
        net = _net(fip.get("ip_address"))
        if net is not None:
            yield net
    for aap in body.get("allowed_address_pairs") or ():
        net = _net(aap.get("ip_address"))
        if net is not None:
            yield net
