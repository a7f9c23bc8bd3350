"""Subnets: CIDRs of a network, their gateway and allocation pools, and the IP allocators behind ports."""

from __future__ import annotations

import ipaddress
from typing import Any

from alcor.context import Context
from alcor.db.changelog import Change
from alcor.db.store import Tx
from alcor.errors import BadRequest, Conflict, NeutronError, invalid_input, not_found
from alcor.resources import ipam
from alcor.resources import query as q
from alcor.resources.base import OTHER, Manager, Peers
from alcor.resources.networks import min_mtu, mtu_subnet_conflict
from alcor.resources.schema import (
    Attr,
    Invalid,
    Resource,
    boolean,
    cidr,
    dict_of,
    int_one_of,
    integer,
    ip_address,
    list_of,
    nullable,
    one_of,
    standard,
    string,
    uuid_str,
)

POOL = dict_of({"start": (ip_address, True), "end": (ip_address, True)})
ROUTE = dict_of({"destination": (cidr, True), "nexthop": (ip_address, True)})
# Neutron also has dhcpv6-stateful and dhcpv6-stateless; no DHCPv6 server answers on this cloud's
# networks, so those would leave VMs waiting for answers that never come (a 400 instead).
V6_MODES = nullable(one_of("slaac"))

SUBNET = standard(Resource("subnet", "subnets", "Subnet", parent_field="network_id")).add(
    Attr("network_id", uuid_str, optional=False),
    Attr("ip_version", int_one_of(4, 6), optional=False, kind="integer"),
    Attr("cidr", cidr, default=None),  # required unless a subnetpool_id gives it
    Attr("prefixlen", integer(0, 128), default=None, kind="integer", filterable=False,
         sortable=False),  # a request's, for a pool to allocate: never stored
    Attr("gateway_ip", nullable(ip_address), put=True),
    Attr("allocation_pools", list_of(POOL), put=True, kind="array"),
    Attr("dns_nameservers", list_of(ip_address, unique=True), default=list, put=True, kind="array"),
    Attr("host_routes", list_of(ROUTE), default=list, put=True, kind="array"),
    Attr("enable_dhcp", boolean, default=True, put=True, kind="boolean"),
    Attr("ipv6_ra_mode", V6_MODES, default=None),
    Attr("ipv6_address_mode", V6_MODES, default=None),
    Attr("subnetpool_id", nullable(uuid_str), default=None),
    Attr("segment_id", nullable(uuid_str), post=False),
    Attr("service_types", list_of(string()), post=False, kind="array"),
    Attr("tags", list_of(string()), post=False, kind="array"),
)


AUTO_MODES = ("slaac", "dhcpv6-stateless")


def auto_address(body: dict[str, Any]) -> bool:
    """Ports take their address from the prefix (EUI-64), not from the pool (Neutron's
    is_auto_address_subnet): the address mode says so, or, without one, the RA mode."""
    mode = body.get("ipv6_address_mode")
    return mode in AUTO_MODES or (mode is None and body.get("ipv6_ra_mode") in AUTO_MODES)


def check_ipv6_modes(given: dict[str, Any], net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
    """Neutron's rules for ipv6_ra_mode / ipv6_address_mode on create."""
    ra, addr = given.get("ipv6_ra_mode"), given.get("ipv6_address_mode")
    if ra is None and addr is None:
        return
    if net.version == 4:
        raise invalid_input("ipv6_ra_mode or ipv6_address_mode cannot be set when ip_version is 4")
    if not given.get("enable_dhcp", True):
        raise invalid_input("ipv6_ra_mode or ipv6_address_mode cannot be set when enable_dhcp is "
                            "set to False")
    # Neutron lets ipv6_ra_mode stand alone; here the hosts' router advertisements follow it and
    # VMs take the address IPAM gave their port, so an RA mode needs the same address mode.
    if ra is not None and ra != addr:
        raise invalid_input(f"ipv6_ra_mode set to '{ra}' with ipv6_address_mode set to '{addr}' is "
                            f"not valid. If both attributes are set, they must be the same value")
    if auto_address(given) and net.prefixlen != 64:
        raise invalid_input(f"Invalid CIDR {net} for IPv6 address mode. OpenStack uses the EUI-64 "
                            f"address format, which requires the prefix to be /64")


def network_target(peers: Peers, body: dict[str, Any]) -> dict[str, Any]:
    """The policy target of a subnet or port: its project, and its network's project and sharing."""
    project = body.get("project_id") or ""
    network = peers.networks.index.get(body.get("network_id") or "") or {}
    return {"project_id": project, "tenant_id": project,
            "network:project_id": network.get("project_id") or "", "shared": bool(network.get("shared"))}


# Neutron's defaults for max_dns_nameservers and max_subnet_host_routes; they also bound the size
# of the agent's DHCP answers (options 6 and 121).
MAX_DNS_NAMESERVERS = 5
MAX_HOST_ROUTES = 20


class Subnets(Manager):
    res = SUBNET
    type = "subnet"
    requires = ("store", "networks", "subnetpools")

    def __init__(self) -> None:
        super().__init__()
        self.allocators: dict[str, ipam.SubnetAllocator] = {}
        self.by_network: dict[str, list[str]] = {}

    async def load(self) -> None:
        for body in await self.list_all(Context("", True)):
            self._register(body)
        for sid, ip in await self.store.fetchall("SELECT subnet_id, ip_address FROM ip_allocations"):
            alloc = self.allocators.get(sid)
            if alloc is not None:
                alloc.take(int(ipaddress.ip_address(ip)))

    def reset(self) -> None:
        self.allocators.clear()
        self.by_network.clear()

    def followed(self, change: Change) -> None:
        if change.op == "delete":
            alloc = self.allocators.get(change.id)
            if alloc is not None:
                self._forget({"id": change.id, "network_id": alloc.network_id})
            return
        assert change.body is not None
        self._register(change.body)

    def _register(self, body: dict[str, Any]) -> None:
        net = ipaddress.ip_network(body["cidr"])
        gw = int(ipaddress.ip_address(body["gateway_ip"])) if body.get("gateway_ip") else None
        pools = [(int(ipaddress.ip_address(p["start"])), int(ipaddress.ip_address(p["end"])))
                 for p in body["allocation_pools"]]
        old = self.allocators.get(body["id"])
        alloc = ipam.SubnetAllocator(body["id"], body["network_id"], net, pools, gw,
                                     taken=old.taken if old else set(),
                                     slaac=auto_address(body))
        self.allocators[body["id"]] = alloc
        ids = self.by_network.setdefault(body["network_id"], [])
        if body["id"] not in ids:
            ids.append(body["id"])

    def _forget(self, body: dict[str, Any]) -> None:
        self.allocators.pop(body["id"], None)
        ids = self.by_network.get(body["network_id"], [])
        if body["id"] in ids:
            ids.remove(body["id"])

    def has_ipv6(self, network_id: str) -> bool:
        return any(a.net.version == 6 for a in self.on_network(network_id))

    def on_network(self, network_id: str) -> list[ipam.SubnetAllocator]:
        return [self.allocators[s] for s in self.by_network.get(network_id, [])]

    def vpc_of(self, body: dict[str, Any]) -> str | None:
        return body["network_id"]

    # Who sees a subnet (get_subnet): its project, the owner of its network, and everyone when its
    # network is shared. Subnets of an external network stay hidden: Neutron shows them only with
    # the subnet-external-network extension, which this API does not list.

    def _networks_where(self, pred: Any) -> list[str]:
        return [n["id"] for n in self.peers.networks.index.values() if pred(n)]

    def target(self, body: dict[str, Any]) -> dict[str, Any]:
        return network_target(self.peers, body)

    async def create_target(self, ctx: Context, given: dict[str, Any]) -> dict[str, Any]:
        self.peers.networks.lookup(ctx, given["network_id"])  # 404 before any 403
        project = given.get("project_id") or given.get("tenant_id") or ctx.project_id
        return self.target({**given, "project_id": project})

    def target_classes(self, ctx: Context) -> list[dict[str, Any]]:
        return [{"project_id": p, "tenant_id": p, "network:project_id": n, "shared": sh}
                for p in (ctx.project_id, OTHER) for n in (ctx.project_id, OTHER)
                for sh in (False, True)]

    def scope(self, ctx: Context, sql: q.SQL) -> None:
        def may(project: str, net_project: str, shared: bool) -> bool:
            return ctx.allowed("get_subnet", {"project_id": project, "tenant_id": project,
                                              "network:project_id": net_project, "shared": shared})
        if may(OTHER, OTHER, False):
            return
        ors, params = [], []
        if may(ctx.project_id, OTHER, False):
            ors.append("project_id = ?")
            params.append(ctx.project_id)
        for pred, ok in ((lambda n: n.get("project_id") == ctx.project_id, may(OTHER, ctx.project_id, False)),
                         (lambda n: n.get("shared"), may(OTHER, OTHER, True))):
            ids = self._networks_where(pred) if ok else []
            if ids:
                ors.append(f"parent_id IN ({','.join('?' * len(ids))})")
                params.extend(ids)
        sql.add("(" + " OR ".join(ors) + ")" if ors else "FALSE", *params)

    extra_filters = frozenset({"shared"})

    def extra_filter_sql(self, filters: dict[str, list[str]], sql: q.SQL) -> None:
        """A subnet's `shared` is its network's (a hidden filter in Neutron)."""
        for key, values in filters.items():
            wanted = set()
            for v in values:
                try:
                    wanted.add(boolean(v))
                except Invalid:
                    raise BadRequest(f"Invalid input for {key}. Reason: '{v}' cannot be converted "
                                     f"to boolean.") from None
            ids = self._networks_where(lambda n, k=key, w=frozenset(wanted): bool(n.get(k)) in w)
            sql.add(f"parent_id IN ({','.join('?' * len(ids))})" if ids else "1 = 0", *ids)

    async def create(self, ctx: Context, given: dict[str, Any], tx: Tx) -> dict[str, Any]:
        networks = self.peers.networks
        network = networks.lookup(ctx, given["network_id"])
        prefixlen = given.pop("prefixlen", None)
        if given.get("subnetpool_id"):
            project = given.get("project_id") or given.get("tenant_id") or ctx.project_id
            given["cidr"] = await self.peers.subnetpools.allocate(
                ctx, tx, given["subnetpool_id"], project, given["ip_version"], given.get("cidr"),
                prefixlen)
        elif given.get("cidr") is None:
            raise BadRequest("Bad subnets request: a cidr must be specified in the absence of a "
                             "subnet pool")
        elif prefixlen is not None:
            raise invalid_input("prefixlen is for allocating from a subnet pool (subnetpool_id)")
        net = ipaddress.ip_network(given["cidr"])
        if net.version != given["ip_version"]:
            raise invalid_input(f"Cidr {given['cidr']} does not match ip_version {given['ip_version']}")
        check_ipv6_modes(given, net)
        mtu = network.get("mtu")
        if mtu is not None and mtu < min_mtu(given["ip_version"]):
            raise mtu_subnet_conflict(network["id"], min_mtu(given["ip_version"]))
        for other in self.on_network(network["id"]):
            if other.net.version == net.version and other.net.overlaps(net):
                raise invalid_input(f"Requested subnet with cidr: {net} for network: {network['id']} "
                                    f"overlaps with another subnet")
        if "gateway_ip" in given:
            gw = self._ip_in(net, given["gateway_ip"], "gateway_ip")
        else:
            gw = ipam.default_gateway(net)
        if given.get("allocation_pools") is not None and "allocation_pools" in given:
            pools = self._pools(net, given["allocation_pools"])
        else:
            pools = ipam.default_pools(net, gw)
        ipam.check_gateway(net, gw, pools)
        self._check_routes(net, given.get("host_routes", []))
        self._check_limits(str(net), given)
        given["cidr"] = str(net)
        given["gateway_ip"] = None if gw is None else str(ipaddress.ip_address(gw))
        given["allocation_pools"] = ipam.pools_json(pools)
        body = self.new_body(ctx, given)
        body.update({"segment_id": None, "service_types": [], "tags": []})
        await self.insert(tx, body)
        await networks.set_subnets(tx, network["id"], [*network["subnets"], body["id"]])
        tx.after_commit(lambda: self._register(body))
        return body

    def _ip_in(self, net: ipaddress.IPv4Network | ipaddress.IPv6Network, ip: str | None,
               attr: str) -> int | None:
        if ip is None:
            return None
        addr = ipaddress.ip_address(ip)
        if addr.version != net.version:
            raise invalid_input(f"{attr} {ip} does not match the subnet's IP version")
        return int(addr)

    def _pools(self, net: Any, given: list[dict[str, str]]) -> list[ipam.Pool]:
        return ipam.parse_pools(net, given)

    def _check_limits(self, subnet: str, values: dict[str, Any]) -> None:
        if len(values.get("dns_nameservers") or ()) > MAX_DNS_NAMESERVERS:
            raise NeutronError(f"Unable to complete operation for {subnet}. The number of DNS "
                               f"nameservers exceeds the limit {MAX_DNS_NAMESERVERS}.",
                               type="DNSNameServersExhausted", status=400)
        if len(values.get("host_routes") or ()) > MAX_HOST_ROUTES:
            raise NeutronError(f"Unable to complete operation for {subnet}. The number of host "
                               f"routes exceeds the limit {MAX_HOST_ROUTES}.",
                               type="HostRoutesExhausted", status=400)

    def _check_routes(self, net: Any, routes: list[dict[str, str]]) -> None:
        for r in routes:
            if ipaddress.ip_network(r["destination"]).version != net.version or \
                    ipaddress.ip_address(r["nexthop"]).version != net.version:
                raise invalid_input(f"host_routes {r} do not match the subnet's IP version")

    async def update(self, ctx: Context, current: dict[str, Any], changes: dict[str, Any],
                     tx: Tx) -> dict[str, Any]:
        net = ipaddress.ip_network(current["cidr"])
        alloc = self.allocators[current["id"]]
        gw_changed = "gateway_ip" in changes and changes["gateway_ip"] != current["gateway_ip"]
        gw = self._ip_in(net, changes["gateway_ip"], "gateway_ip") if "gateway_ip" in changes else alloc.gateway
        pools = self._pools(net, changes["allocation_pools"]) if "allocation_pools" in changes else alloc.pools
        ipam.check_gateway(net, gw, pools)
        if gw_changed and current["gateway_ip"] is not None:
            if await self.peers.routers.subnet_attached(tx, current["id"]):
                raise NeutronError(f"Gateway {current['gateway_ip']} in subnet {current['id']} is "
                                   f"used by a router interface.", type="GatewayIpInUse", status=409)
        if gw_changed and gw is not None and gw in alloc.taken:
            raise NeutronError(f"Gateway ip {ipaddress.ip_address(gw)} is in use by a port.",
                               type="GatewayIpInUse", status=409)
        self._check_routes(net, changes.get("host_routes", []))
        if changes.get("enable_dhcp") is False and (current.get("ipv6_ra_mode") or
                                                    current.get("ipv6_address_mode")):
            raise invalid_input("Cannot disable enable_dhcp with ipv6 attributes set")
        self._check_limits(current["id"], changes)
        if "allocation_pools" in changes:
            changes["allocation_pools"] = ipam.pools_json(pools)
        new = await self.replace(tx, current, changes)
        tx.after_commit(lambda: self._register(new))
        return new

    async def delete(self, ctx: Context, current: dict[str, Any], tx: Tx) -> None:
        sid = current["id"]
        in_use = Conflict(f"Unable to complete operation on subnet {sid}: One or more ports have "
                          f"an IP allocation from this subnet.", type="SubnetInUse")
        if await self.peers.routers.subnet_attached(tx, sid):
            raise in_use
        # A port's address on an auto-address (SLAAC, DHCPv6-stateless) subnet was never asked
        # for: Neutron takes it off the port with the subnet. Any other address was, so it blocks.
        if not auto_address(current):
            row = await tx.fetchone("SELECT 1 FROM ip_allocations WHERE subnet_id = ? LIMIT 1", (sid,))
            if row is not None:
                raise in_use
        await self.peers.ports.forget_subnet(tx, sid)
        networks = self.peers.networks
        network = await networks.fetch(current["network_id"], tx)
        await self.drop(tx, current)
        if network is not None:
            await networks.set_subnets(tx, network["id"],
                                       [s for s in network["subnets"] if s != current["id"]])

    async def drop(self, tx: Tx, body: dict[str, Any]) -> None:
        """Remove a subnet whose network is going away (no port can be on it)."""
        await tx.execute("DELETE FROM ip_allocations WHERE subnet_id = ?", (body["id"],))
        await self.remove(tx, body)
        tx.after_commit(lambda: self._forget(body))

    def lookup(self, id: str) -> ipam.SubnetAllocator:
        alloc = self.allocators.get(id)
        if alloc is None:
            raise not_found("Subnet", id)
        return alloc
