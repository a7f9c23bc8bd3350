"""Goal state: what each node must hold, as docs/wire.md shapes it.

`Topology` is the controller's southbound model: the Neutron bodies from the change log plus the
indexes placement needs (VPC → member nodes, node → VPCs, security groups in use per node, router
interfaces). The rest are pure functions of it: the wire body of a resource (`info`), a node's whole
goal state (`goal_entries`, `goal_state`) and its digest (`node_digest`, the sum alcor/wire.py
defines, from cached shares).

    >>> t = Topology()
    >>> t.put("node", "n1", {"node_id": "n1", "node_name": "h1", "local_ip": "10.0.0.1"})
    >>> sorted(goal_state(t, "n1")["node"])
    ['n1']
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from alcor.wire import (
    ROUTER_GATEWAY,
    ROUTER_INTERFACE,
    WIRE_TYPES,
    canonical,
    combine,
    hex_digest,
    resource_hash,
)

Body = dict[str, Any]  # a Neutron body as the change log holds it (the wire's bodies are views)
Key = tuple[str, str]  # (wire type, id)
# Change-log type → wire type. Only these feed the southbound.
WIRE_TYPE = {
    "node": "node",
    "network": "vpc",
    "subnet": "subnet",
    "router": "router",
    "security_group": "security_group",
    "gateway": "gateway",
    "floatingip": "floating_ip",
    "port": "port",
}
SOURCE_TYPE = {w: s for s, w in WIRE_TYPE.items()}


def _inc(index: dict[str, dict[str, int]], a: str, b: str, delta: int) -> bool:
    """Count `delta` more of (a, b); True when b entered or left a's keys."""
    inner = index.setdefault(a, {})
    had = b in inner
    n = inner.get(b, 0) + delta
    if n > 0:
        inner[b] = n
    else:
        inner.pop(b, None)
        if not inner:
            del index[a]
    return had != (n > 0)


@dataclass(frozen=True, slots=True)
class _PortLinks:
    """What one port contributes to the indexes (computed with the node names known then)."""

    vpc: str
    node: str | None  # hosting node id, resolved from binding:host_id
    sgs: tuple[str, ...]
    router: str | None  # a router interface's router id
    subnets: tuple[str, ...]
    gateway_of: str | None = None  # a router gateway port's router id


# Every Neutron port field that placement, the indexes or a wire body (the port's own, a subnet's
# gateway MAC, a router's subnets) read: a change to anything else is invisible to every node.
PORT_WIRE_FIELDS = (
    "network_id",
    "mac_address",
    "fixed_ips",
    "device_owner",
    "device_id",
    "binding:host_id",
    "allowed_address_pairs",
    "security_groups",
    "admin_state_up",
    "port_security_enabled",
    "extra_dhcp_opts",
)


# What the dispatcher keeps of a Neutron port: the wire fields, and what it reports on.
_PORT_KEPT = frozenset((*PORT_WIRE_FIELDS, "id", "revision_number", "status"))


def slim_port(body: Body) -> Body:
    """The part of a Neutron port body placement uses: the topology holds every port, so the
    rest (name, description, timestamps, binding details...) would be most of its memory."""
    return {k: v for k, v in body.items() if k in _PORT_KEPT}


@dataclass(slots=True)
class _PortView:
    src: Body  # the Neutron body it was built from (by identity)
    node: str | None  # the node it binds to
    body: Body
    json: bytes | None = None
    hash: int | None = None


class Topology:
    """Neutron bodies by change-log type and id, with the indexes that answer "who needs what"."""

    def __init__(self) -> None:
        self.res: dict[str, dict[str, Body]] = {t: {} for t in WIRE_TYPE}
        # Node names should be unique; if two nodes share one, the lowest id hosts its ports, so
        # the binding depends only on which nodes exist (placement flips states back and forth).
        self.nodes_by_name: dict[str, set[str]] = {}
        self.ports_by_host: dict[str, set[str]] = {}  # binding:host_id → port ids
        self.ports_by_vpc: dict[str, set[str]] = {}
        self.subnets_by_vpc: dict[str, set[str]] = {}
        self.gateways_by_vpc: dict[str, set[str]] = {}
        self.members: dict[str, dict[str, int]] = {}  # vpc → node → ports hosted there
        self.vpcs_of: dict[str, dict[str, int]] = {}  # node → vpc → ports hosted there
        self.sgs_of: dict[str, dict[str, int]] = {}  # node → security group → local ports using it
        self.sg_nodes: dict[str, dict[str, int]] = {}  # security group → node → local ports
        self.ifaces_by_subnet: dict[str, set[str]] = {}  # subnet → router interface ports
        self.ifaces_by_router: dict[str, set[str]] = {}
        self.router_vpcs: dict[str, dict[str, int]] = {}  # router → vpc → interfaces there
        self.vpc_routers: dict[str, dict[str, int]] = {}
        # router → its gateway ports (network:router_gateway): the node hosting one is a member
        # of every VPC the router has an interface in (it routes their north-south traffic)
        self.gateways_by_router: dict[str, set[str]] = {}
        # ... and the external networks they are on: every member there holds the router
        self.router_gw_vpcs: dict[str, dict[str, int]] = {}
        self.vpc_gw_routers: dict[str, dict[str, int]] = {}
        self.fips_by_router: dict[str, set[str]] = {}  # associated floating IPs
        self._links: dict[str, _PortLinks] = {}
        # Port wire bodies (with their JSON and digest share, computed on first use) by (port id,
        # local?), valid while the Neutron body is the same object and binds to the same node:
        # ports are most of every message, snapshot and digest, and placement evaluates each
        # twice (before/after) per change.
        self._ports: dict[tuple[str, bool], _PortView] = {}
        # Audiences as frozensets (a VPC's member nodes, a security group's nodes), rebuilt only
        # when the set changes: placement asks for them before and after every change, and a
        # shared security group's audience is every node.
        self._member_sets: dict[str, frozenset[str]] = {}
        self._sg_sets: dict[str, frozenset[str]] = {}
        self._sg_bodies: dict[str, tuple[Body, Body]] = {}  # sg → (source body, wire body)
        # node → (source body, wire body): every member of a node's VPCs holds its record, and a
        # node joining a VPC gets all of its members' records; one object per source body lets
        # the plan see them as the same op and the encoder serialise each once.
        self._node_bodies: dict[str, tuple[Body, Body]] = {}

    # -- mutation ------------------------------------------------------------------------------

    def get(self, type: str, id: str) -> Body | None:
        return self.res[type].get(id)

    def put(self, type: str, id: str, body: Body | None) -> None:
        """Make (type, id) hold `body` (None: absent), keeping every index current."""
        if type == "port":
            self._unlink_port(id)
            self._store(type, id, body)
            if body is not None:
                self._link_port(id, body)
        elif type == "node":
            old = self.res["node"].get(id)
            names = {n for n in (_host(old), _host(body)) if n}
            rebound = [p for n in names for p in self.ports_by_host.get(n, ())]
            for p in rebound:
                self._unlink_port(p)
            if old is not None:
                _discard(self.nodes_by_name, _host(old), id)
            self._store(type, id, body)
            if body is not None and _host(body):
                self.nodes_by_name.setdefault(_host(body), set()).add(id)
            for p in rebound:
                self._link_port(p, self.res["port"][p])
        elif type == "floatingip":
            old = self.res[type].get(id)
            if old is not None and old.get("router_id"):
                _discard(self.fips_by_router, str(old["router_id"]), id)
            self._store(type, id, body)
            if body is not None and _associated(body):
                self.fips_by_router.setdefault(str(body["router_id"]), set()).add(id)
        elif type in ("subnet", "gateway"):
            index = self.subnets_by_vpc if type == "subnet" else self.gateways_by_vpc
            field = "network_id" if type == "subnet" else "vpc_id"
            old = self.res[type].get(id)
            if old is not None:
                _discard(index, str(old.get(field)), id)
            self._store(type, id, body)
            if body is not None:
                index.setdefault(str(body.get(field)), set()).add(id)
        else:
            self._store(type, id, body)

    def restate_port(self, id: str, body: Body) -> bool:
        """Take a new body for a port whose wire-visible fields did not change (its `status`,
        `updated_at`, name...): nothing any node holds changes, so the indexes and the cached
        views stay as they are. False (nothing done) if the port is unknown or the change shows."""
        old = self.res["port"].get(id)
        if old is None or any(old.get(f) != body.get(f) for f in PORT_WIRE_FIELDS):
            return False
        self.res["port"][id] = body
        for local in (False, True):
            c = self._ports.get((id, local))
            if c is not None and c.src is old:
                c.src = body
        return True

    def port_view(self, id: str, src: Body, node: str | None, local: bool) -> Body:
        c = self._ports.get((id, local))
        if c is not None and c.src is src and c.node == node:
            return c.body
        body = port_body(id, src, node, local)
        self._ports[(id, local)] = _PortView(src, node, body)
        return body

    def _cached(self, id: str, body: Body) -> _PortView | None:
        for local in (False, True):
            c = self._ports.get((id, local))
            if c is not None and c.body is body:
                return c
        return None

    def port_json(self, id: str, body: Body) -> bytes:
        """The JSON of a port view returned by port_view, computed once per view."""
        c = self._cached(id, body)
        if c is None:
            return json.dumps(body, separators=(",", ":")).encode()
        if c.json is None:
            c.json = json.dumps(body, separators=(",", ":")).encode()
        return c.json

    def port_hash(self, id: str, body: Body) -> int:
        """A port view's share of a digest (`resource_hash`), computed once per view: a node's
        digest is then a sum over cached shares, not a re-serialisation of its whole VPC."""
        c = self._cached(id, body)
        if c is None:
            return resource_hash("port", id, body)
        if c.hash is None:
            c.hash = resource_hash("port", id, body)
        return c.hash

    def _store(self, type: str, id: str, body: Body | None) -> None:
        if type == "port" and body is None:
            self._ports.pop((id, True), None)
            self._ports.pop((id, False), None)
        if type == "security_group":
            self._sg_bodies.pop(id, None)
        elif type == "node":
            self._node_bodies.pop(id, None)
        if body is None:
            self.res[type].pop(id, None)
        else:
            self.res[type][id] = body

    def _link_port(self, id: str, body: Body) -> None:
        host = str(body.get("binding:host_id") or "")
        vpc = str(body.get("network_id"))
        iface = body.get("device_owner") == ROUTER_INTERFACE
        node = None if iface else self.node_named(host)
        gateway = body.get("device_owner") == ROUTER_GATEWAY
        links = _PortLinks(
            vpc=vpc,
            node=node,
            sgs=tuple(sorted(set(body.get("security_groups") or ()))) if node else (),
            router=str(body.get("device_id")) if iface else None,
            subnets=tuple(str(f.get("subnet_id")) for f in body.get("fixed_ips") or ()),
            gateway_of=str(body.get("device_id")) if gateway else None,
        )
        self._links[id] = links
        self.ports_by_vpc.setdefault(vpc, set()).add(id)
        if host:
            self.ports_by_host.setdefault(host, set()).add(id)
        if node:
            if _inc(self.members, vpc, node, 1):
                self._member_sets.pop(vpc, None)
            _inc(self.vpcs_of, node, vpc, 1)
            for sg in links.sgs:
                _inc(self.sgs_of, node, sg, 1)
                if _inc(self.sg_nodes, sg, node, 1):
                    self._sg_sets.pop(sg, None)
        if links.router:
            self.ifaces_by_router.setdefault(links.router, set()).add(id)
            _inc(self.router_vpcs, links.router, vpc, 1)
            _inc(self.vpc_routers, vpc, links.router, 1)
            for s in links.subnets:
                self.ifaces_by_subnet.setdefault(s, set()).add(id)
            for g in self.gateways_by_router.get(links.router, ()):
                self._gateway_member(self._links[g].node, vpc, 1)
        if links.gateway_of:
            self.gateways_by_router.setdefault(links.gateway_of, set()).add(id)
            _inc(self.router_gw_vpcs, links.gateway_of, vpc, 1)
            _inc(self.vpc_gw_routers, vpc, links.gateway_of, 1)
            for vpc_in, n in self.router_vpcs.get(links.gateway_of, {}).items():
                self._gateway_member(node, vpc_in, n)

    def _unlink_port(self, id: str) -> None:
        links = self._links.pop(id, None)
        if links is None:
            return
        body = self.res["port"][id]
        _discard(self.ports_by_vpc, links.vpc, id)
        _discard(self.ports_by_host, str(body.get("binding:host_id") or ""), id)
        if links.node:
            if _inc(self.members, links.vpc, links.node, -1):
                self._member_sets.pop(links.vpc, None)
            _inc(self.vpcs_of, links.node, links.vpc, -1)
            for sg in links.sgs:
                _inc(self.sgs_of, links.node, sg, -1)
                if _inc(self.sg_nodes, sg, links.node, -1):
                    self._sg_sets.pop(sg, None)
        if links.router:
            _discard(self.ifaces_by_router, links.router, id)
            _inc(self.router_vpcs, links.router, links.vpc, -1)
            _inc(self.vpc_routers, links.vpc, links.router, -1)
            for s in links.subnets:
                _discard(self.ifaces_by_subnet, s, id)
            for g in self.gateways_by_router.get(links.router, ()):
                self._gateway_member(self._links[g].node, links.vpc, -1)
        if links.gateway_of:
            _discard(self.gateways_by_router, links.gateway_of, id)
            _inc(self.router_gw_vpcs, links.gateway_of, links.vpc, -1)
            _inc(self.vpc_gw_routers, links.vpc, links.gateway_of, -1)
            for vpc_in, n in self.router_vpcs.get(links.gateway_of, {}).items():
                self._gateway_member(links.node, vpc_in, -n)

    def _gateway_member(self, node: str | None, vpc: str, n: int) -> None:
        """A gateway node is a member of the VPCs behind its router, once per (interface,
        gateway port) pair: it gets their ports as neighbours, to route replies back."""
        if node and n:
            if _inc(self.members, vpc, node, n):
                self._member_sets.pop(vpc, None)
            _inc(self.vpcs_of, node, vpc, n)

    # -- queries -------------------------------------------------------------------------------

    def member_set(self, vpc: str) -> frozenset[str]:
        """The VPC's member nodes (cached until one joins or leaves)."""
        s = self._member_sets.get(vpc)
        if s is None:
            s = self._member_sets[vpc] = frozenset(self.members.get(vpc, ()))
        return s

    def sg_node_set(self, sg: str) -> frozenset[str]:
        """The nodes hosting a port that uses the security group (cached likewise)."""
        s = self._sg_sets.get(sg)
        if s is None:
            s = self._sg_sets[sg] = frozenset(self.sg_nodes.get(sg, ()))
        return s

    def sg_body(self, id: str, src: Body) -> Body:
        """`security_group_body`, computed once per source body (it sorts the rules)."""
        return _per_source(self._sg_bodies, id, src, security_group_body)

    def node_view(self, id: str, src: Body) -> Body:
        """`node_body`, one object per source body (callers never change it)."""
        return _per_source(self._node_bodies, id, src, node_body)

    def node_named(self, name: str) -> str | None:
        ids = self.nodes_by_name.get(name)
        return min(ids) if ids else None

    def router_gateway(self, router_id: str) -> tuple[str, Body] | None:
        """The router's gateway port (id, body), the lowest id if several claim it."""
        ids = self.gateways_by_router.get(router_id)
        if not ids:
            return None
        pid = min(ids)
        return pid, self.res["port"][pid]

    def gateway_nodes(self, router_id: str) -> set[str]:
        """The nodes hosting the router's gateway port."""
        return {n for g in self.gateways_by_router.get(router_id, ()) if (n := self.port_node(g))}

    def routers_gatewayed_on(self, node: str) -> set[str]:
        body = self.res["node"].get(node)
        name = _host(body)
        out = set()
        for p in self.ports_by_host.get(name, ()) if name else ():
            links = self._links.get(p)
            if links is not None and links.gateway_of and links.node == node:
                out.add(links.gateway_of)
        return out

    def router_held_in(self, router_id: str) -> Iterator[str]:
        """The VPCs whose members hold the router: those it has interfaces in, and the external
        networks of its gateway ports."""
        yield from self.router_vpcs.get(router_id, ())
        yield from self.router_gw_vpcs.get(router_id, ())

    def port_node(self, port_id: str) -> str | None:
        links = self._links.get(port_id)
        return links.node if links else None

    def peers(self, node: str) -> set[str]:
        """Nodes whose record `node` holds: itself and every node sharing a VPC with it."""
        out = {node} if node in self.res["node"] else set()
        for vpc in self.vpcs_of.get(node, ()):
            out.update(self.members.get(vpc, ()))
        return out

    def vpc_keys(self, vpc: str) -> set[Key]:
        """Every key a member of `vpc` holds because of it (a joining node needs all of them)."""
        keys: set[Key] = {("vpc", vpc)}
        keys.update(("subnet", s) for s in self.subnets_by_vpc.get(vpc, ()))
        keys.update(("port", p) for p in self.ports_by_vpc.get(vpc, ()))
        keys.update(("gateway", g) for g in self.gateways_by_vpc.get(vpc, ()))
        keys.update(("router", r) for r in self.vpc_routers.get(vpc, ()))
        keys.update(("router", r) for r in self.vpc_gw_routers.get(vpc, ()))
        keys.update(("node", n) for n in self.members.get(vpc, ()))
        return keys

    def load(self, rows: Iterable[tuple[str, str, Body]]) -> None:
        """Fill from (type, id, body) rows; nodes first so port bindings resolve."""
        rows = sorted(rows, key=lambda r: r[0] != "node")
        for type, id, body in rows:
            if type in self.res:
                self.put(type, id, slim_port(body) if type == "port" else body)


def _associated(b: Body) -> bool:
    return bool(b.get("router_id") and b.get("port_id") and b.get("fixed_ip_address"))


def floating_ip_body(id: str, b: Body) -> Body:
    return {
        "id": id,
        "router_id": b.get("router_id"),
        "floating_ip_address": b.get("floating_ip_address"),
        "fixed_ip_address": b.get("fixed_ip_address"),
        "port_id": b.get("port_id"),
    }


def _discard(index: dict[str, set[str]], a: str, b: str) -> None:
    s = index.get(a)
    if s is not None:
        s.discard(b)
        if not s:
            del index[a]


def _host(body: Body | None) -> str:
    return str(body.get("node_name") or "") if body else ""


# -- wire bodies (docs/wire.md) ----------------------------------------------------------------


def _mac(v: Any) -> Any:
    return v.lower() if isinstance(v, str) else v


def node_body(id: str, b: Body) -> Body:
    return {
        "id": id,
        "node_name": b.get("node_name"),
        "local_ip": b.get("local_ip"),
        "mac_address": _mac(b.get("mac_address")),
    }


def vpc_body(t: Topology, id: str, b: Body) -> Body:
    out = {
        "id": id,
        "project_id": b.get("project_id"),
        "segmentation_id": b.get("provider:segmentation_id"),
        "mtu": b.get("mtu"),
        "gateway_ids": sorted(t.gateways_by_vpc.get(id, ())),
    }
    if b.get("provider:network_type") == "flat":
        # A physical network, reached through the hosts' bridge mappings (no VNI).
        out["network_type"] = "flat"
        out["physical_network"] = b.get("provider:physical_network")
    return out


def subnet_body(t: Topology, id: str, b: Body) -> Body:
    # The gateway IP answers with the MAC of the router interface that holds it, if any: the
    # agent's ARP responder and distributed L3 both need it. min() keeps the choice deterministic.
    gateway_mac = None
    gw_ip = b.get("gateway_ip")
    ifaces = sorted(t.ifaces_by_subnet.get(id, ()))
    for pid in ifaces:
        port = t.res["port"][pid]
        if any(f.get("ip_address") == gw_ip for f in port.get("fixed_ips") or ()):
            gateway_mac = _mac(port.get("mac_address"))
            break
    # What the agent's DHCP server answers with (alcor/agent/dhcp.py). DNS servers keep the
    # tenant's order (resolvers are tried in it); host routes are a set in Neutron, so sorted.
    routes = [
        {"destination": r.get("destination"), "nexthop": r.get("nexthop")}
        for r in b.get("host_routes") or ()
    ]
    routes.sort(key=lambda r: (str(r["destination"]), str(r["nexthop"])))
    return {
        "id": id,
        "network_id": b.get("network_id"),
        "cidr": b.get("cidr"),
        "ip_version": b.get("ip_version"),
        "gateway_ip": gw_ip,
        "gateway_mac": gateway_mac,
        "ipv6_ra_mode": b.get("ipv6_ra_mode"),
        "enable_dhcp": b.get("enable_dhcp", True) is not False,
        "dns_nameservers": list(b.get("dns_nameservers") or ()),
        "host_routes": routes,
    }


def router_body(t: Topology, id: str, b: Body) -> Body:
    subnets: set[str] = set()
    for pid in t.ifaces_by_router.get(id, ()):
        subnets.update(str(f.get("subnet_id")) for f in t.res["port"][pid].get("fixed_ips") or ())
    routes = [
        {"destination": r.get("destination"), "nexthop": r.get("nexthop")}
        for r in b.get("routes") or ()
    ]
    routes.sort(key=lambda r: (str(r["destination"]), str(r["nexthop"])))
    out = {
        "id": id,
        "subnet_ids": sorted(subnets),
        "routes": routes,
        "admin_state_up": b.get("admin_state_up", True) is not False,
    }
    gw = t.router_gateway(id)
    if gw is not None:
        pid, port = gw
        v4 = [
            f
            for f in port.get("fixed_ips") or ()
            if ":" not in str(f.get("ip_address") or ":")
        ]
        info = b.get("external_gateway_info") or {}
        # Where the router meets the outside: its gateway port's IPv4 address and MAC, and the
        # gateway node that carries it (alcor/agent/gateway.py); null node: not placed yet.
        out["gateway"] = {
            "port_id": pid,
            "network_id": port.get("network_id"),
            "subnet_id": v4[0].get("subnet_id") if v4 else None,
            "ip_address": v4[0].get("ip_address") if v4 else None,
            "mac_address": _mac(port.get("mac_address")),
            "node_id": t.port_node(pid),
            "enable_snat": info.get("enable_snat", True) is not False,
        }
    return out


_RULE_FIELDS = (
    "direction",
    "ethertype",
    "protocol",
    "port_range_min",
    "port_range_max",
    "remote_ip_prefix",
    "remote_group_id",
)


def security_group_body(id: str, b: Body) -> Body:
    rules = [{f: r.get(f) for f in _RULE_FIELDS} for r in b.get("security_group_rules") or ()]
    rules.sort(key=canonical)
    return {"id": id, "stateful": b.get("stateful", True) is not False, "rules": rules}


def gateway_body(id: str, b: Body) -> Body:
    return {
        "id": id,
        "type": b.get("type", "zeta"),
        "vpc_id": b.get("vpc_id"),
        "status": b.get("status"),
        "destinations": [
            {"ip": d.get("ip"), "mac": _mac(d.get("mac"))} for d in b.get("destinations") or ()
        ],
        "oam_port": b.get("oam_port", 8300),
    }


def port_body(id: str, b: Body, node: str | None, local: bool) -> Body:
    """A port as its host holds it (local) or as a neighbour on every other member node."""
    out: Body = {
        "id": id,
        "network_id": b.get("network_id"),
        "mac_address": _mac(b.get("mac_address")),
        "fixed_ips": [
            {"subnet_id": f.get("subnet_id"), "ip_address": f.get("ip_address")}
            for f in b.get("fixed_ips") or ()
        ],
        "node_id": node,
        "device_owner": b.get("device_owner") or "",
        "allowed_address_pairs": [
            {"ip_address": a.get("ip_address"), "mac_address": _mac(a.get("mac_address"))}
            for a in b.get("allowed_address_pairs") or ()
        ],
        "security_group_ids": sorted(b.get("security_groups") or ()),
    }
    if local:
        out["admin_state_up"] = b.get("admin_state_up", True)
        out["port_security_enabled"] = b.get("port_security_enabled", True)
        # The port's own DHCPv4 options, for its host's DHCP server only (absent when none).
        opts = [{"opt_name": o.get("opt_name"), "opt_value": o.get("opt_value")}
                for o in b.get("extra_dhcp_opts") or () if o.get("ip_version", 4) == 4]
        if opts:
            out["extra_dhcp_opts"] = opts
    return out


@dataclass(frozen=True, slots=True)
class Info:
    """A key's wire body (per variant) and who holds it, in one state of the topology."""

    neighbour: Body | None  # None: the resource does not exist
    local: Body | None  # ports only: the host's variant
    host: str | None  # ports only: the hosting node
    audience: frozenset[str]
    revision_number: int

    def view(self, node: str) -> Body | None:
        if node not in self.audience:
            return None
        if self.host is not None and node == self.host:
            return self.local
        return self.neighbour


NOBODY = Info(None, None, None, frozenset(), 0)


def info(t: Topology, key: Key) -> Info:
    """The wire body of `key` and the set of nodes whose goal state holds it."""
    wtype, id = key
    src = t.res[SOURCE_TYPE[wtype]].get(id)
    if src is None:
        return NOBODY
    rn = int(src.get("revision_number") or 0)
    if wtype == "port":
        vpc = str(src.get("network_id"))
        node = t.port_node(id)
        audience = t.member_set(vpc)
        local = t.port_view(id, src, node, True) if node else None
        return Info(t.port_view(id, src, node, False), local, node, audience, rn)
    if wtype == "node":
        return Info(t.node_view(id, src), None, None, frozenset(t.peers(id)), rn)
    if wtype == "vpc":
        body = vpc_body(t, id, src)
        return Info(body, None, None, t.member_set(id), rn)
    if wtype == "subnet":
        members = t.member_set(str(src.get("network_id")))
        return Info(subnet_body(t, id, src), None, None, members, rn)
    if wtype == "gateway":
        members = t.member_set(str(src.get("vpc_id")))
        return Info(gateway_body(id, src), None, None, members, rn)
    if wtype == "router":
        aud: set[str] = set()
        for vpc in t.router_held_in(id):
            aud.update(t.members.get(vpc, ()))
        return Info(router_body(t, id, src), None, None, frozenset(aud), rn)
    if wtype == "security_group":
        return Info(t.sg_body(id, src), None, None, t.sg_node_set(id), rn)
    if wtype == "floating_ip":
        if not _associated(src):
            return Info(None, None, None, frozenset(), rn)
        aud_fip = frozenset(t.gateway_nodes(str(src["router_id"])))
        return Info(floating_ip_body(id, src), None, None, aud_fip, rn)
    raise ValueError(f"unknown wire type {wtype!r}")


def view_of(t: Topology, node: str, key: Key) -> tuple[Body | None, int]:
    """What `node` holds for `key` (None: nothing) and its revision_number; `info(t, key).view(node)`
    without building the audience, for the many keys of a VPC a node joins or leaves."""
    wtype, id = key
    src = t.res[SOURCE_TYPE[wtype]].get(id)
    if src is None:
        return None, 0
    rn = int(src.get("revision_number") or 0)
    vpcs = t.vpcs_of.get(node, {})
    if wtype == "port":
        if str(src.get("network_id")) not in vpcs:
            return None, rn
        host = t.port_node(id)
        return t.port_view(id, src, host, host == node), rn
    if wtype == "subnet":
        ok = str(src.get("network_id")) in vpcs
        return (subnet_body(t, id, src) if ok else None), rn
    if wtype == "vpc":
        return (vpc_body(t, id, src) if id in vpcs else None), rn
    if wtype == "gateway":
        ok = str(src.get("vpc_id")) in vpcs
        return (gateway_body(id, src) if ok else None), rn
    if wtype == "router":
        ok = any(v in vpcs for v in t.router_held_in(id))
        return (router_body(t, id, src) if ok else None), rn
    if wtype == "security_group":
        ok = id in t.sgs_of.get(node, ())
        return (t.sg_body(id, src) if ok else None), rn
    if wtype == "node":
        ok = id == node or any(v in vpcs for v in t.vpcs_of.get(id, ()))
        return (t.node_view(id, src) if ok else None), rn
    if wtype == "floating_ip":
        ok = _associated(src) and node in t.gateway_nodes(str(src["router_id"]))
        return (floating_ip_body(id, src) if ok else None), rn
    raise ValueError(f"unknown wire type {wtype!r}")


def views_of(t: Topology, node: str, keys: Iterable[Key]) -> dict[Key, tuple[Body | None, int]]:
    """`view_of` for many keys of one node (a node joining a VPC: every port and member record
    of it, before and after), with the lookups they share done once: ports and node records,
    nearly all of such keys, are answered inline."""
    vpcs = t.vpcs_of.get(node, {})
    ports, nodes, vpcs_of, links = t.res["port"], t.res["node"], t.vpcs_of, t._links
    out: dict[Key, tuple[Body | None, int]] = {}
    for key in keys:
        wtype, id = key
        if wtype == "port":
            src = ports.get(id)
            if src is None:
                out[key] = (None, 0)
                continue
            rn = int(src.get("revision_number") or 0)
            if str(src.get("network_id")) not in vpcs:
                out[key] = (None, rn)
                continue
            lk = links.get(id)
            host = lk.node if lk else None
            out[key] = (t.port_view(id, src, host, host == node), rn)
        elif wtype == "node":
            src = nodes.get(id)
            if src is None:
                out[key] = (None, 0)
                continue
            rn = int(src.get("revision_number") or 0)
            ok = id == node or any(v in vpcs for v in vpcs_of.get(id, ()))
            out[key] = ((t.node_view(id, src) if ok else None), rn)
        else:
            out[key] = view_of(t, node, key)
    return out


# -- a node's whole goal state -----------------------------------------------------------------


def goal_keys(t: Topology, node: str) -> set[Key]:
    keys: set[Key] = set()
    for vpc in t.vpcs_of.get(node, ()):
        keys |= t.vpc_keys(vpc)
    if node in t.res["node"]:
        keys.add(("node", node))
    keys.update(("security_group", g) for g in t.sgs_of.get(node, ()))
    for r in t.routers_gatewayed_on(node):
        keys.update(("floating_ip", f) for f in t.fips_by_router.get(r, ()))
    return keys


def goal_entries(t: Topology, node: str) -> Iterator[tuple[str, str, Body, int]]:
    """(wire type, id, body, revision_number) of everything `node` holds, in snapshot order.

    Built directly from the indexes (not through `info`) because a snapshot of 10,000 neighbours
    must stay well under 200 ms.
    """
    order = {w: i for i, w in enumerate(WIRE_TYPES)}
    vpcs = t.vpcs_of.get(node, {})
    nodes = t.peers(node)
    keys = sorted(goal_keys(t, node), key=lambda k: (order[k[0]], k[1]))
    for wtype, id in keys:
        src = t.res[SOURCE_TYPE[wtype]].get(id)
        if src is None:
            continue
        rn = int(src.get("revision_number") or 0)
        if wtype == "port":
            host = t.port_node(id)
            yield wtype, id, t.port_view(id, src, host, host == node), rn
        elif wtype == "node":
            if id in nodes:
                yield wtype, id, t.node_view(id, src), rn
        elif wtype == "router":
            if any(v in vpcs for v in t.router_held_in(id)):
                yield wtype, id, router_body(t, id, src), rn
        else:
            i = info(t, (wtype, id))
            body = i.view(node)
            if body is not None:
                yield wtype, id, body, rn


def vpc_entries(t: Topology, node: str, vpc: str) -> Iterator[tuple[str, str, Body, int]]:
    """(wire type, id, body, revision_number) of what `node` holds of a VPC's shared state (its
    record, subnets, ports, gateways: what the VPC's chain carries), for a VPC snapshot. The
    node's own ports come in their local variant, as the node holds them."""
    if vpc not in t.vpcs_of.get(node, {}):
        return
    src = t.res["network"].get(vpc)
    if src is not None:
        yield "vpc", vpc, vpc_body(t, vpc, src), int(src.get("revision_number") or 0)
    for id in sorted(t.subnets_by_vpc.get(vpc, ())):
        s = t.res["subnet"][id]
        yield "subnet", id, subnet_body(t, id, s), int(s.get("revision_number") or 0)
    for id in sorted(t.ports_by_vpc.get(vpc, ())):
        p = t.res["port"][id]
        host = t.port_node(id)
        yield "port", id, t.port_view(id, p, host, host == node), int(p.get("revision_number") or 0)
    for id in sorted(t.gateways_by_vpc.get(vpc, ())):
        g = t.res["gateway"][id]
        yield "gateway", id, gateway_body(id, g), int(g.get("revision_number") or 0)


def node_digest(t: Topology, node: str) -> str:
    """`digest(goal_state(t, node))`, from the topology's cached port shares."""
    total = 0
    for wtype, id, body, _ in goal_entries(t, node):
        share = t.port_hash(id, body) if wtype == "port" else resource_hash(wtype, id, body)
        total = combine(total, share)
    return hex_digest(total)


def goal_state(t: Topology, node: str) -> dict[str, Any]:
    """The node's goal state in the agent model's shape (docs/wire.md)."""
    goal: dict[str, Any] = {"node_id": node}
    for w in WIRE_TYPES:
        goal[w] = {}
    for wtype, id, body, _ in goal_entries(t, node):
        goal[wtype][id] = body
    return goal


def _per_source(memo: dict[str, tuple[Body, Body]], id: str, src: Body,
                make: Callable[[str, Body], Body]) -> Body:
    """`make(id, src)`, kept while the source body is the same object (a change replaces it)."""
    c = memo.get(id)
    if c is not None and c[0] is src:
        return c[1]
    body = make(id, src)
    memo[id] = (src, body)
    return body
