"""What each local port is told by DHCP, as a pure function of the host's goal state: its address
and its subnet's options (the lease), and which ports the agent answers for at all.

The port's fixed IP is its address for as long as the port has it, so there is no lease
database to keep, lose or replicate: every agent, and every restart, tells a port the same.
The packets are alcor/agent/dhcp.py's; the flow compiler asks `served_address` so that
exactly the ports that get an answer have their requests punted to the agent.

    >>> goal = {"node_id": "n1", "vpc": {"v1": {"mtu": 1450}},
    ...         "subnet": {"s1": {"cidr": "10.0.0.0/24", "gateway_ip": "10.0.0.1",
    ...                           "enable_dhcp": True, "dns_nameservers": ["10.0.0.2"]}},
    ...         "port": {"p1": {"node_id": "n1", "network_id": "v1", "mac_address": "fa:16:3e:00:00:05",
    ...                         "fixed_ips": [{"subnet_id": "s1", "ip_address": "10.0.0.5"}]}}}
    >>> lease = lease_for(goal, "p1", DhcpConfig())
    >>> lease.ip, lease.netmask, lease.router, lease.dns, lease.mtu
    ('10.0.0.5', '255.255.255.0', '10.0.0.1', ('10.0.0.2',), 1450)
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from alcor import dhcp_options
from alcor.agent.config import DhcpConfig
from alcor.wire import ROUTER_INTERFACE

MIN_MTU = 68  # RFC 2132 §5.1: the smallest MTU option value a client accepts

# A subnet without a gateway has no address of ours in it; the server identifier is then a
# link-local address that can collide with no tenant's (a client renews by broadcast then).
SERVER_IP_WITHOUT_GATEWAY = "169.254.0.254"


# Each local port's requests pass its own meter; its id is the port's ofport in this range, so
# the agent can tell its meters from any other on the switch.
METER_BASE = 0xD0000
METER_SPAN = 0x10000  # ofports are below OFPP_MAX (0xff00)


def meter_id(ofport: int) -> int:
    return METER_BASE + ofport


Route = tuple[ipaddress.IPv4Network, str]  # destination, next hop ("0.0.0.0": on-link)


@dataclass(frozen=True, slots=True)
class Lease:
    """Everything one port's DHCP answers carry; a pure function of the goal state (lease_for)."""

    port_id: str
    mac: str
    ip: str
    prefixlen: int
    router: str | None
    dns: tuple[str, ...]
    mtu: int | None
    routes: tuple[Route, ...]  # option 121; empty: the option is not sent
    lease_time: int
    domain: str
    server_ip: str
    server_mac: str
    # The port's own options (extra_dhcp_opts), (code, value) in the port's order: each replaces
    # the lease's option of that code. next_server: the reply's siaddr (server-ip-address).
    extra: tuple[tuple[int, bytes], ...] = ()
    next_server: str | None = None

    @property
    def netmask(self) -> str:
        return str(ipaddress.IPv4Network(f"0.0.0.0/{self.prefixlen}").netmask)

    @property
    def broadcast(self) -> str:
        net = ipaddress.IPv4Network(f"{self.ip}/{self.prefixlen}", strict=False)
        return str(net.broadcast_address)


def dhcp_subnet(subnet: Mapping[str, Any] | None) -> ipaddress.IPv4Network | None:
    """The subnet's network if the agent serves DHCP on it: IPv4 with enable_dhcp true. A body
    without the field (from before the wire carried it) is not served."""
    if not subnet or subnet.get("enable_dhcp") is not True:
        return None
    try:
        net = ipaddress.ip_network(str(subnet.get("cidr")), strict=False)
    except ValueError:
        return None
    return net if isinstance(net, ipaddress.IPv4Network) else None


def dhcp_nets(goal: Mapping[str, Any]) -> dict[str, ipaddress.IPv4Network]:
    """Subnet id -> network, for the subnets of the goal state the agent serves DHCP on."""
    subnets = goal.get("subnet") or {}
    return {sid: net for sid in subnets if (net := dhcp_subnet(subnets[sid])) is not None}


def served_address(
    nets: Mapping[str, ipaddress.IPv4Network], port: Mapping[str, Any]
) -> tuple[str, str] | None:
    """(subnet id, IP) the port is offered: its first IPv4 fixed IP on a DHCP subnet (`nets`,
    from dhcp_nets). The flow compiler asks this too, so that exactly the ports that get an
    answer have their requests punted to the agent."""
    for fip in port.get("fixed_ips") or ():
        sid = str(fip.get("subnet_id"))
        net = nets.get(sid)
        if net is None:
            continue
        try:
            addr = ipaddress.ip_address(str(fip.get("ip_address")))
        except ValueError:
            continue
        if addr.version == 4 and addr in net:
            return sid, str(addr)
    return None


def lease_for(goal: Mapping[str, Any], port_id: str, settings: DhcpConfig) -> Lease | None:
    """The lease of local port `port_id`, or None when the agent does not answer for it (not
    local, a router interface, administratively down, or no IPv4 address on a DHCP subnet)."""
    port = (goal.get("port") or {}).get(port_id)
    if not port or port.get("node_id") != goal.get("node_id"):
        return None
    if port.get("device_owner") == ROUTER_INTERFACE or port.get("admin_state_up") is False:
        return None
    mac = str(port.get("mac_address") or "").lower()
    nets = dhcp_nets(goal)
    served = served_address(nets, port)
    if not mac or served is None:
        return None
    sid, ip = served
    subnet, net = (goal.get("subnet") or {})[sid], nets[sid]
    vpc = (goal.get("vpc") or {}).get(str(port.get("network_id"))) or {}
    gateway = _ipv4_in(subnet.get("gateway_ip"), net)
    dns = tuple(a for a in map(_ipv4, subnet.get("dns_nameservers") or ()) if a)
    if not dns:
        dns = tuple(a for a in map(_ipv4, settings.dns_servers) if a)
    mtu = vpc.get("mtu")
    extra, next_server = port_options(port.get("extra_dhcp_opts") or ())
    return Lease(
        port_id=port_id,
        mac=mac,
        ip=ip,
        prefixlen=net.prefixlen,
        router=gateway,
        dns=dns,
        mtu=mtu if isinstance(mtu, int) and not isinstance(mtu, bool) and mtu >= MIN_MTU else None,
        routes=classless_routes(subnet.get("host_routes") or (), gateway),
        lease_time=settings.lease_time,
        domain=settings.domain,
        server_ip=gateway or SERVER_IP_WITHOUT_GATEWAY,
        server_mac=_mac(subnet.get("gateway_mac")) or server_mac(sid),
        extra=extra,
        next_server=next_server,
    )


def port_options(
    opts: Iterable[Mapping[str, Any]],
) -> tuple[tuple[tuple[int, bytes], ...], str | None]:
    """A port's extra_dhcp_opts as (code, value) options and the next-server address. The API
    took only what encodes; anything else (a body from elsewhere) is left out, never sent."""
    extra: dict[int, bytes] = {}
    next_server = None
    for o in opts:
        try:
            encoded = dhcp_options.encode(str(o.get("opt_name")), str(o.get("opt_value")))
        except dhcp_options.BadOption:
            continue
        if encoded is None:
            continue
        code, raw = encoded
        if code == dhcp_options.SIADDR:
            next_server = str(ipaddress.IPv4Address(raw))
        else:
            extra[code] = raw
    return tuple(extra.items()), next_server


def classless_routes(
    host_routes: Iterable[Mapping[str, Any]], gateway: str | None
) -> tuple[Route, ...]:
    """Option 121 from a subnet's host_routes. A client that gets option 121 ignores option 3
    (RFC 3442), so the default route via the gateway is added unless a host route names 0/0."""
    routes: list[Route] = []
    for r in host_routes:
        try:
            dest = ipaddress.ip_network(str(r.get("destination")), strict=False)
        except ValueError:
            continue
        hop = _ipv4(r.get("nexthop"))
        if isinstance(dest, ipaddress.IPv4Network) and hop:
            routes.append((dest, hop))
    if not routes:
        return ()
    if gateway and not any(d.prefixlen == 0 for d, _ in routes):
        routes.append((ipaddress.IPv4Network("0.0.0.0/0"), gateway))
    return tuple(routes)


def server_mac(subnet_id: str) -> str:
    """The MAC our answers come from on a subnet with no router interface: locally administered,
    stable across restarts and hosts, distinct per subnet."""
    b = bytearray(hashlib.blake2b(subnet_id.encode(), digest_size=6).digest())
    b[0] = (b[0] & 0xFC) | 0x02  # unicast, locally administered
    return ":".join(f"{x:02x}" for x in b)


def _ipv4(value: Any) -> str | None:
    try:
        addr = ipaddress.ip_address(str(value))
    except ValueError:
        return None
    return str(addr) if addr.version == 4 else None


def _ipv4_in(value: Any, net: ipaddress.IPv4Network) -> str | None:
    ip = _ipv4(value) if value else None
    return ip if ip and ipaddress.IPv4Address(ip) in net else None


def _mac(value: Any) -> str | None:
    return str(value).lower() if value else None
