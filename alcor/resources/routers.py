"""Routers: distributed L3 between the subnets they join, their interfaces, routes and external gateway.

An interface is a port owned `network:router_interface` holding the subnet's gateway IP (or the IP of
a port the tenant brought). Adding or removing one is an update of the router in the change log, so
every member node re-derives which subnets route to each other.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from alcor.context import Context
from alcor.db.store import Tx
from alcor.errors import BadRequest, Conflict, NeutronError, NotFound, not_found
from alcor.resources.base import Manager
from alcor.resources.schema import (
    Attr,
    Invalid,
    Resource,
    boolean,
    cidr,
    described,
    dict_of,
    ip_address,
    json_schema_of,
    list_of,
    nullable,
    standard,
    string,
    uuid_str,
)
from alcor.wire import ROUTER_GATEWAY, ROUTER_INTERFACE

ROUTE = dict_of({"destination": (cidr, True), "nexthop": (ip_address, True)})
EXT_IP = dict_of({"subnet_id": (uuid_str, False), "ip_address": (ip_address, False)})
_GATEWAY = nullable(dict_of({"network_id": (uuid_str, True), "enable_snat": (boolean, False),
                             "external_fixed_ips": (list_of(EXT_IP), False)}))


def gateway_info(value: Any) -> dict[str, Any] | None:
    """Neutron reads `{}` as "no gateway", like null (Tempest's and Horizon's router helpers send it)."""
    return None if value == {} else _GATEWAY(value)


described(gateway_info, json_schema_of(_GATEWAY) or {})
_ROUTES = list_of(ROUTE)


def routes(value: Any) -> list[dict[str, str]]:
    """A router's routes; null clears them, as in Neutron (Tempest's cleanup sends it)."""
    return [] if value is None else _ROUTES(value)


described(routes, json_schema_of(_ROUTES) or {})
INTERFACE = dict_of({"subnet_id": (uuid_str, False), "port_id": (uuid_str, False)})

ROUTER = standard(Resource("router", "routers", "Router")).add(
    Attr("admin_state_up", boolean, default=True, put=True, kind="boolean"),
    Attr("status", string(), post=False),
    Attr("external_gateway_info", gateway_info, default=None, put=True, kind="object", filterable=False),
    Attr("routes", routes, default=list, put=True, kind="array", filterable=False),
    Attr("tags", list_of(string()), post=False, kind="array"),
)


def _same_port(port: dict[str, Any], info: dict[str, Any]) -> bool:
    """Whether a gateway request is satisfied by the router's gateway port as it is."""
    if info["network_id"] != port["network_id"]:
        return False
    wanted = info.get("external_fixed_ips")
    if wanted is None:
        return True
    have = [(f["subnet_id"], f["ip_address"]) for f in port["fixed_ips"]]
    return len(wanted) == len(have) and all(
        any((w.get("subnet_id") in (None, s)) and (w.get("ip_address") in (None, ip))
            for s, ip in have) for w in wanted)


class Routers(Manager):
    res = ROUTER
    type = "router"
    requires = ("store", "networks", "subnets", "ports")

    def vpc_of(self, body: dict[str, Any]) -> str | None:
        return None  # a router may join several networks

    def attr_actions(self, given: dict[str, Any]) -> list[str]:
        out = super().attr_actions(given)
        gw = given.get("external_gateway_info")
        if isinstance(gw, dict) and gw:
            out += [f"external_gateway_info:{k}" for k in ("enable_snat", "external_fixed_ips") if k in gw]
        elif "external_gateway_info" in out:
            out.remove("external_gateway_info")  # clearing the gateway is a plain update
        return out

    async def create(self, ctx: Context, given: dict[str, Any], tx: Tx) -> dict[str, Any]:
        body = self.new_body(ctx, given)
        body.update(status="ACTIVE", tags=[])
        if body["routes"]:
            raise BadRequest("Invalid format for routes: a new router has no interface to reach "
                             "a nexthop", type="InvalidRoutes")
        body["external_gateway_info"] = await self._gateway(ctx, tx, body, given.get("external_gateway_info"))
        await self.insert(tx, body)
        return body

    async def _gateway(self, ctx: Context, tx: Tx, router: dict[str, Any],
                       info: dict[str, Any] | None, old_port: dict[str, Any] | None = None
                       ) -> dict[str, Any] | None:
        """Create the router's port on an external network (after dropping the old one)."""
        ports = self.peers.ports
        if old_port is not None:
            await ports.drop(tx, old_port)
        if info is None:
            return None
        network = self.peers.networks.index.get(info["network_id"])
        if network is None or not self.peers.networks.visible(ctx, network):
            raise not_found("Network", info["network_id"])  # Neutron: 404, not a format error
        if not network.get("router:external"):
            raise BadRequest(f"Bad router request: Network {info['network_id']} is not an external "
                             f"network.", type="BadRequest")
        admin = Context(router["project_id"], True)
        requested = info.get("external_fixed_ips")
        port = await ports.create(admin, {
            "network_id": network["id"], "device_owner": ROUTER_GATEWAY, "device_id": router["id"],
            "name": "", "description": "", "admin_state_up": True, "fixed_ips": requested,
            "security_groups": [], "allowed_address_pairs": [], "binding:host_id": "",
            "binding:profile": {}, "binding:vnic_type": "normal", "extra_dhcp_opts": [],
            "port_security_enabled": False,
        } if requested is not None else {
            "network_id": network["id"], "device_owner": ROUTER_GATEWAY, "device_id": router["id"],
            "name": "", "description": "", "admin_state_up": True, "security_groups": [],
            "allowed_address_pairs": [], "binding:host_id": "", "binding:profile": {},
            "binding:vnic_type": "normal", "extra_dhcp_opts": [], "port_security_enabled": False,
        }, tx)
        return {"network_id": network["id"], "enable_snat": info.get("enable_snat", True),
                "external_fixed_ips": port["fixed_ips"]}

    async def _ports(self, tx: Tx, router_id: str, owner: str) -> list[dict[str, Any]]:
        ports = self.peers.ports
        rows = await tx.fetchall(
            f"SELECT id FROM resources WHERE type = 'port' AND {self.store.dialect.text('device_id')} = ?",
            (router_id,))
        out = []
        for (pid,) in rows:
            p = await ports.fetch(pid, tx)
            if p is not None and p["device_owner"] == owner:
                out.append(p)
        return out

    async def update(self, ctx: Context, current: dict[str, Any], changes: dict[str, Any],
                     tx: Tx) -> dict[str, Any]:
        if "routes" in changes:
            interfaces = await self._ports(tx, current["id"], ROUTER_INTERFACE)
            self._check_routes(changes["routes"], interfaces)
        if "external_gateway_info" in changes:
            old = await self._ports(tx, current["id"], ROUTER_GATEWAY)
            info = changes["external_gateway_info"]
            if old and (info is None or info["network_id"] != old[0]["network_id"]) \
                    and await self._floating_ips(tx, current["id"]):
                raise Conflict(f"Gateway cannot be updated for router {current['id']}, since a "
                               f"gateway to external network {old[0]['network_id']} is required "
                               f"by one or more floating IPs.",
                               type="RouterExternalGatewayInUseByFloatingIp")
            if old and info is not None and _same_port(old[0], info):
                # Only enable_snat changes: the gateway port (its address, its placement) stays,
                # as in Neutron.
                changes["external_gateway_info"] = {
                    "network_id": old[0]["network_id"],
                    "enable_snat": info.get("enable_snat", True),
                    "external_fixed_ips": old[0]["fixed_ips"]}
            else:
                changes["external_gateway_info"] = await self._gateway(
                    ctx, tx, current, info, old[0] if old else None)
        return await self.replace(tx, current, changes)

    def _check_routes(self, routes: list[dict[str, str]], interfaces: list[dict[str, Any]]) -> None:
        subnets = self.peers.subnets
        own = {f["ip_address"] for p in interfaces for f in p["fixed_ips"]}
        nets = [subnets.allocators[f["subnet_id"]].net for p in interfaces for f in p["fixed_ips"]
                if f["subnet_id"] in subnets.allocators]
        for r in routes:
            hop = ipaddress.ip_address(r["nexthop"])
            if r["nexthop"] in own or not any(hop.version == n.version and hop in n for n in nets):
                raise BadRequest(f"Invalid format for routes: {[r]}, the nexthop is not connected "
                                 f"with router", type="InvalidRoutes")

    async def delete(self, ctx: Context, current: dict[str, Any], tx: Tx) -> None:
        if await self._ports(tx, current["id"], ROUTER_INTERFACE):
            raise Conflict(f"Router {current['id']} still has ports", type="RouterInUse")
        for gw in await self._ports(tx, current["id"], ROUTER_GATEWAY):
            await self.peers.ports.drop(tx, gw)
        await self.remove(tx, current)

    async def _floating_ips(self, tx: Tx, router_id: str) -> list[dict[str, Any]]:
        if not self.kernel.has_named("floatingips"):
            return []
        return await self.peers.floatingips.on_router(tx, router_id)

    async def subnet_attached(self, tx: Tx, subnet_id: str) -> bool:
        row = await tx.fetchone(
            "SELECT 1 FROM ip_allocations a JOIN resources r ON r.type = 'port' AND r.id = a.port_id "
            f"WHERE a.subnet_id = ? AND {self.store.dialect.text('device_owner', 'r.body')} = ? LIMIT 1",
            (subnet_id, ROUTER_INTERFACE))
        return row is not None

    # Interfaces -------------------------------------------------------------------------------

    def _interface_body(self, body: Any) -> dict[str, Any]:
        try:
            info = INTERFACE(body)
        except Invalid as e:
            raise BadRequest(f"Invalid input for operation: {e}.", type="InvalidInput") from None
        if ("subnet_id" in info) == ("port_id" in info):
            raise BadRequest("Invalid input for operation: Either subnet_id or port_id must be "
                             "specified.", type="InvalidInput")
        return info

    async def add_interface(self, ctx: Context, router_id: str, body: Any) -> dict[str, Any]:
        info = self._interface_body(body)
        ports = self.peers.ports
        subnets = self.peers.subnets
        async with self.store.transaction() as tx:
            router = await self.get(ctx, router_id, tx)
            self.check_write(ctx, "add_router_interface", router)
            existing = await self._ports(tx, router_id, ROUTER_INTERFACE)
            attached = {f["subnet_id"] for p in existing for f in p["fixed_ips"]}
            if "subnet_id" in info:
                subnet = await subnets.get(ctx, info["subnet_id"], tx)
                if not subnet.get("gateway_ip"):
                    raise BadRequest(f"Bad router request: Subnet {subnet['id']} does not have a "
                                     f"gateway IP.")
                self._check_overlap(subnet, attached, subnet["id"], router_id)
                port = await ports.create(Context(router["project_id"], True), {
                    "network_id": subnet["network_id"], "device_owner": ROUTER_INTERFACE,
                    "device_id": router_id, "name": "", "description": "", "admin_state_up": True,
                    "fixed_ips": [{"subnet_id": subnet["id"], "ip_address": subnet["gateway_ip"]}],
                    "allowed_address_pairs": [], "binding:host_id": "", "binding:profile": {},
                    "binding:vnic_type": "normal", "extra_dhcp_opts": [],
                }, tx)
            else:
                port = await ports.get(ctx, info["port_id"], tx)
                if port["device_id"] or port["device_owner"]:
                    raise Conflict(f"Port {port['id']} is in use by {port['device_owner'] or 'a device'} "
                                   f"{port['device_id']}.", type="PortInUse")
                if not port["fixed_ips"]:
                    raise BadRequest("Bad router request: Router port must have at least one fixed IP.")
                sids = {f["subnet_id"] for f in port["fixed_ips"]}
                if len(sids) > 1:
                    raise BadRequest("Bad router request: Cannot have multiple IPv4 subnets on router port.")
                subnet = await subnets.get(Context("", True), next(iter(sids)), tx)
                self._check_overlap(subnet, attached, subnet["id"], router_id)
                port = await ports.replace(tx, port, {
                    "device_owner": ROUTER_INTERFACE, "device_id": router_id, "status": "ACTIVE",
                    "security_groups": [], "port_security_enabled": False})
            router = await self.replace(tx, router, {})
        return self._interface_info(router, port, attached | {subnet["id"]})

    def _check_overlap(self, subnet: dict[str, Any], attached: set[str], sid: str, router_id: str) -> None:
        subnets = self.peers.subnets
        if sid in attached:
            raise BadRequest(f"Bad router request: Router already has a port on subnet {sid}.")
        net = ipaddress.ip_network(subnet["cidr"])
        for other in attached:
            alloc = subnets.allocators.get(other)
            if alloc is not None and alloc.net.version == net.version and alloc.net.overlaps(net):
                raise BadRequest(f"Bad router request: Cidr {net} of subnet {sid} overlaps with cidr "
                                 f"{alloc.net} of subnet {other}.")

    def _interface_info(self, router: dict[str, Any], port: dict[str, Any],
                        subnet_ids: set[str]) -> dict[str, Any]:
        return {"id": router["id"], "tenant_id": router["project_id"],
                "project_id": router["project_id"], "port_id": port["id"],
                "network_id": port["network_id"], "subnet_id": port["fixed_ips"][0]["subnet_id"],
                "subnet_ids": [f["subnet_id"] for f in port["fixed_ips"]]}

    async def remove_interface(self, ctx: Context, router_id: str, body: Any) -> dict[str, Any]:
        info = self._interface_body(body)
        ports = self.peers.ports
        async with self.store.transaction() as tx:
            router = await self.get(ctx, router_id, tx)
            self.check_write(ctx, "remove_router_interface", router)
            existing = await self._ports(tx, router_id, ROUTER_INTERFACE)
            if "port_id" in info:
                found = [p for p in existing if p["id"] == info["port_id"]]
                if not found:
                    raise NotFound(f"Router {router_id} does not have an interface with id "
                                   f"{info['port_id']}", type="RouterInterfaceNotFound")
            else:
                found = [p for p in existing if any(f["subnet_id"] == info["subnet_id"]
                                                     for f in p["fixed_ips"])]
                if not found:
                    raise NotFound(f"Router {router_id} has no interface on subnet {info['subnet_id']}",
                                   type="RouterInterfaceNotFoundForSubnet")
            port = found[0]
            sids = {f["subnet_id"] for f in port["fixed_ips"]}
            for fip in await self._floating_ips(tx, router_id):
                fixed = await ports.fetch(fip["port_id"], tx) if fip.get("port_id") else None
                if fixed and any(f["subnet_id"] in sids for f in fixed["fixed_ips"]
                                 if f["ip_address"] == fip["fixed_ip_address"]):
                    raise Conflict(f"Router interface for subnet {sorted(sids)[0]} on router "
                                   f"{router_id} cannot be deleted, as it is required by one or "
                                   f"more floating IPs.", type="RouterInterfaceInUseByFloatingIP")
            remaining = [p for p in existing if p["id"] != port["id"]]
            try:
                self._check_routes(router["routes"], remaining)
            except BadRequest:
                raise NeutronError(f"Router interface for subnet {port['fixed_ips'][0]['subnet_id']} "
                                   f"on router {router_id} cannot be deleted, as it is required by "
                                   f"one or more routes.", type="RouterInterfaceInUseByRoute",
                                   status=409) from None
            await ports.drop(tx, port)
            router = await self.replace(tx, router, {})
        return self._interface_info(router, port, set())

