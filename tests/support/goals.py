"""Goal states for agent tests, built the way docs/wire.md shapes them.

g = GoalBuilder("node-a")
g.node("node-b", "172.31.255.2")
g.vpc("vpc1", 100).subnet("s1", "vpc1", "10.0.0.0/24", "10.0.0.1", "fa:16:3e:00:00:01")
g.port("p1…", "vpc1", "s1", "10.0.0.5", "fa:16:3e:00:01:05", node="node-a")
goal = g.goal()

Ports have port security on and are in the group OPEN (every IPv4/IPv6 packet in and out, with
conntrack) unless told otherwise: forwarding tests run through the whole filtering pipeline.
`sg()` and `rule()` build others:

g.sg("web", [rule("ingress", protocol="tcp", port_range_min=22, port_range_max=22)])
g.port(..., security_groups=("web",))

`two_vpcs()` is the usual scene of the agent's tests (two hosts, two VPCs with the same CIDR, a
router); its names (ports PA1…, MACs, OFPORTS) are shared by the unit and integration tests.
"""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

from alcor.agent.ir import tap_name
from alcor.wire import GoalState

OPEN = "sg-open"  # allows everything, both ways


def rule(
    direction: str,
    ethertype: str = "IPv4",
    protocol: str | None = None,
    port_range_min: int | None = None,
    port_range_max: int | None = None,
    remote_ip_prefix: str | None = None,
    remote_group_id: str | None = None,
) -> dict[str, Any]:
    """A security group rule as the wire carries it (docs/wire.md)."""
    return {
        "direction": direction,
        "ethertype": ethertype,
        "protocol": protocol,
        "port_range_min": port_range_min,
        "port_range_max": port_range_max,
        "remote_ip_prefix": remote_ip_prefix,
        "remote_group_id": remote_group_id,
    }


def open_rules() -> list[dict[str, Any]]:
    return [rule(d, e) for d in ("ingress", "egress") for e in ("IPv4", "IPv6")]


class GoalBuilder:
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.res: dict[str, dict[str, dict[str, Any]]] = {
            t: {} for t in ("node", "vpc", "subnet", "router", "port", "security_group", "gateway")
        }

    def node(self, node_id: str, local_ip: str, mac: str = "02:00:00:00:00:99") -> GoalBuilder:
        self.res["node"][node_id] = {
            "id": node_id,
            "node_name": node_id,
            "local_ip": local_ip,
            "mac_address": mac,
        }
        return self

    def vpc(self, vpc_id: str, vni: int, mtu: int = 1450) -> GoalBuilder:
        self.res["vpc"][vpc_id] = {
            "id": vpc_id,
            "project_id": "p",
            "segmentation_id": vni,
            "mtu": mtu,
            "gateway_ids": [],
        }
        return self

    def subnet(
        self,
        subnet_id: str,
        vpc_id: str,
        cidr: str,
        gateway_ip: str | None = None,
        gateway_mac: str | None = None,
        ipv6_ra_mode: str | None = None,
        *,
        enable_dhcp: bool = False,
        dns_nameservers: tuple[str, ...] = (),
        host_routes: tuple[tuple[str, str], ...] = (),
    ) -> GoalBuilder:
        """A subnet; DHCP is off unless asked for (most tests are about forwarding)."""
        self.res["subnet"][subnet_id] = {
            "id": subnet_id,
            "network_id": vpc_id,
            "cidr": cidr,
            "ip_version": ipaddress.ip_network(cidr, strict=False).version,
            "gateway_ip": gateway_ip,
            "gateway_mac": gateway_mac,
            "ipv6_ra_mode": ipv6_ra_mode,
            "enable_dhcp": enable_dhcp,
            "dns_nameservers": list(dns_nameservers),
            "host_routes": [{"destination": d, "nexthop": h} for d, h in host_routes],
        }
        return self

    def port(
        self,
        port_id: str,
        vpc_id: str,
        subnet_id: str,
        ip: str,
        mac: str,
        *,
        node: str,
        admin_state_up: bool = True,
        device_owner: str = "compute:nova",
        more_ips: tuple[tuple[str, str], ...] = (),
        port_security: bool = True,
        security_groups: tuple[str, ...] | None = None,
        allowed_address_pairs: list[dict[str, Any]] | None = None,
    ) -> GoalBuilder:
        """A port with `ip` on `subnet_id`, and (subnet, ip) pairs in `more_ips` (dual stack);
        with port security on, in OPEN unless `security_groups` are given."""
        if security_groups is None:
            security_groups = (OPEN,) if port_security else ()
        if OPEN in security_groups and OPEN not in self.res["security_group"]:
            self.sg(OPEN, open_rules())
        self.res["port"][port_id] = {
            "id": port_id,
            "network_id": vpc_id,
            "mac_address": mac,
            "fixed_ips": [
                {"subnet_id": sid, "ip_address": addr} for sid, addr in ((subnet_id, ip), *more_ips)
            ],
            "node_id": node,
            "device_owner": device_owner,
            "admin_state_up": admin_state_up,
            "allowed_address_pairs": [
                {"ip_address": a["ip_address"], "mac_address": a.get("mac_address")}
                for a in allowed_address_pairs or ()
            ],
            "security_group_ids": sorted(security_groups),
            "port_security_enabled": port_security,
        }
        return self

    def sg(self, sg_id: str, rules: list[dict[str, Any]], *, stateful: bool = True) -> GoalBuilder:
        """A security group (the wire body: its rules, sorted as the controller sorts them)."""
        self.res["security_group"][sg_id] = {
            "id": sg_id,
            "stateful": stateful,
            "rules": sorted(rules, key=lambda r: sorted((k, str(v)) for k, v in r.items())),
        }
        return self

    def router(
        self,
        router_id: str,
        subnet_ids: list[str],
        routes: list[dict[str, str]] | None = None,
        admin_state_up: bool = True,
    ) -> GoalBuilder:
        self.res["router"][router_id] = {
            "id": router_id,
            "subnet_ids": list(subnet_ids),
            "routes": routes or [],
            "admin_state_up": admin_state_up,
        }
        return self

    def zeta_gateway(
        self,
        vpc_id: str,
        gateway_id: str,
        destinations: list[dict[str, str]],
        status: str = "ready",
        /,
        **extra: Any,
    ) -> GoalBuilder:
        """A Zeta gateway of the VPC (its FWDs as {"ip", "mac"}), as the wire carries it; `extra`
        fields are the body's last word (a test may give it another vpc_id)."""
        self.res["vpc"][vpc_id]["gateway_ids"] = [gateway_id]
        self.res["gateway"][gateway_id] = {
            "id": gateway_id,
            "type": "zeta",
            "vpc_id": vpc_id,
            "status": status,
            "destinations": destinations,
            "oam_port": 8300,
            **extra,
        }
        return self

    def remove(self, rtype: str, rid: str) -> GoalBuilder:
        self.res[rtype].pop(rid, None)
        return self

    def goal(self) -> GoalState:
        return GoalState(node_id=self.node_id, **copy.deepcopy(self.res))  # type: ignore[typeddict-item]


# --- the usual scene ---------------------------------------------------------------------------

A, B = "node-a", "node-b"
B_IP = "172.31.255.2"
GW1, GW2, GW3 = "fa:16:3e:00:00:01", "fa:16:3e:00:00:02", "fa:16:3e:00:00:03"
# port ids: the first 11 characters name the tap
PA1, PA2, PA3 = "aaaa0001-0000-4000-8000-000000000001", "aaaa0002-0000", "aaaa0003-0000"
PB1, PB2 = "bbbb0001-0000", "bbbb0002-0000"
QA1, QB1 = "cccc0001-0000", "dddd0001-0000"
MAC = {
    PA1: "fa:16:3e:0a:00:05",
    PA2: "fa:16:3e:0a:01:05",
    PA3: "fa:16:3e:0a:00:07",
    PB1: "fa:16:3e:0b:00:06",
    PB2: "fa:16:3e:0b:01:06",
    QA1: "fa:16:3e:0c:00:05",
    QB1: "fa:16:3e:0d:00:06",
}
IP = {PA1: "10.0.0.5", PA2: "10.0.1.5", PA3: "10.0.0.7", PB1: "10.0.0.6", PB2: "10.0.1.6"}  # VPC1's
VX = 9
OFPORTS = {tap_name(PA1): 1, tap_name(PA2): 2, tap_name(PA3): 4, tap_name(QA1): 3, "vxlan0": VX}


def two_vpc_networks(node_id: str) -> GoalBuilder:
    """VPC1 (VNI 100): s1, s2 joined by r1. VPC2 (VNI 200): t1, the same CIDR as s1. No node, no port."""
    g = GoalBuilder(node_id).vpc("vpc1", 100).vpc("vpc2", 200)
    g.subnet("s1", "vpc1", "10.0.0.0/24", "10.0.0.1", GW1)
    g.subnet("s2", "vpc1", "10.0.1.0/24", "10.0.1.1", GW2)
    g.subnet("t1", "vpc2", "10.0.0.0/24", "10.0.0.1", GW3)
    return g.router("r1", ["s1", "s2"])


def two_vpcs() -> GoalBuilder:
    """two_vpc_networks with ports on host A (this one) and host B (remote)."""
    g = two_vpc_networks(A).node(A, "172.31.255.1").node(B, B_IP)
    g.port(PA1, "vpc1", "s1", "10.0.0.5", MAC[PA1], node=A)
    g.port(PA2, "vpc1", "s2", "10.0.1.5", MAC[PA2], node=A)
    g.port(PA3, "vpc1", "s1", "10.0.0.7", MAC[PA3], node=A)
    g.port(PB1, "vpc1", "s1", "10.0.0.6", MAC[PB1], node=B)
    g.port(PB2, "vpc1", "s2", "10.0.1.6", MAC[PB2], node=B)
    g.port(QA1, "vpc2", "t1", "10.0.0.5", MAC[QA1], node=A)
    g.port(QB1, "vpc2", "t1", "10.0.0.6", MAC[QB1], node=B)
    return g


def default_rules(sid: str) -> list[dict[str, Any]]:
    """Neutron's default group: all egress, ingress from its own members."""
    return [
        rule("egress", "IPv4"),
        rule("egress", "IPv6"),
        rule("ingress", "IPv4", remote_group_id=sid),
        rule("ingress", "IPv6", remote_group_id=sid),
    ]


def secgroup_scene(groups: dict[str, tuple[str, ...]] | None = None) -> GoalBuilder:
    """two_vpcs with PA1, PA3 and PB1 in "default", PB2 in "other", others as given; "ssh"
    allows tcp/22 in and everything out."""
    g = two_vpcs()
    g.sg("default", default_rules("default"))
    g.sg("other", [rule("egress", "IPv4")])
    g.sg(
        "ssh",
        [rule("ingress", protocol="tcp", port_range_min=22, port_range_max=22), rule("egress")],
    )
    member = {PA1: ("default",), PA3: ("default",), PB1: ("default",), PB2: ("other",)}
    member.update(groups or {})
    for pid, sgs in member.items():
        g.res["port"][pid]["security_group_ids"] = sorted(sgs)
    return g


GW1V6, GW2V6, GW3V6 = "fa:16:3e:00:06:01", "fa:16:3e:00:06:02", "fa:16:3e:00:06:03"
V6 = {  # each port of two_vpcs() gets an IPv6 address in the /64 beside its IPv4 subnet
    PA1: ("s1v6", "2001:db8:1::5"),
    PA2: ("s2v6", "2001:db8:2::5"),
    PA3: ("s1v6", "2001:db8:1::7"),
    PB1: ("s1v6", "2001:db8:1::6"),
    PB2: ("s2v6", "2001:db8:2::6"),
    QA1: ("t1v6", "2001:db8:1::5"),
    QB1: ("t1v6", "2001:db8:1::6"),
}


def dual_stack() -> GoalBuilder:
    """two_vpcs() with an IPv6 subnet beside each IPv4 one (VPC2's has VPC1's CIDR again), the
    IPv6 subnets of VPC1 on r1 too, and every port dual-stacked."""
    g = two_vpcs()
    g.subnet("s1v6", "vpc1", "2001:db8:1::/64", "2001:db8:1::1", GW1V6)
    g.subnet("s2v6", "vpc1", "2001:db8:2::/64", "2001:db8:2::1", GW2V6)
    g.subnet("t1v6", "vpc2", "2001:db8:1::/64", "2001:db8:1::1", GW3V6)
    g.router("r1", ["s1", "s2", "s1v6", "s2v6"])
    for pid, (sid, ip) in V6.items():
        g.res["port"][pid]["fixed_ips"].append({"subnet_id": sid, "ip_address": ip})
    return g


# --- Zeta: two FWDs of a gateway cluster ------------------------------------------------------

FWD1 = {"ip": "172.31.255.9", "mac": "02:00:00:00:00:09"}
FWD2 = {"ip": "172.31.255.10", "mac": "02:00:00:00:00:0a"}
ZETA_P1, ZETA_P2 = "p1000000-aaaa", "p2000000-bbbb"


def zeta_scene(
    status: str = "ready", dests: list[dict[str, str]] | None = None, **gw: Any
) -> GoalState:
    """Host node-a's goal: VPCs v1 and v2 (same CIDR) on node-a and node-b, v1 through the Zeta
    gateway gw1 (FWD1 unless `dests`)."""
    g = GoalBuilder(A).node(A, "172.31.255.1").node(B, "172.31.255.2")
    g.vpc("v1", 100).vpc("v2", 200)
    g.subnet("s1", "v1", "10.0.0.0/24", "10.0.0.1", "fa:16:3e:00:00:01")
    g.subnet("s2", "v2", "10.0.0.0/24", "10.0.0.1", "fa:16:3e:00:00:02")
    g.port(ZETA_P1, "v1", "s1", "10.0.0.5", "fa:16:3e:00:00:05", node=A)
    g.port(ZETA_P2, "v1", "s1", "10.0.0.6", "fa:16:3e:00:00:06", node=B)
    g.port("q1000000-aaaa", "v2", "s2", "10.0.0.5", "fa:16:3e:00:01:05", node=A)
    g.port("q2000000-bbbb", "v2", "s2", "10.0.0.6", "fa:16:3e:00:01:06", node=B)
    g.zeta_gateway("v1", "gw1", [FWD1] if dests is None else dests, status, **gw)
    return g.goal()
