"""Floating IPs: an address of an external network, mapped 1:1 to a port's fixed IP (Neutron's).

A floating IP holds its address through a port of its own on the external network (`device_owner`
`network:floatingip`, `device_id` the floating IP's id), so IPAM has one owner and an address in
use is the ports' 409. Associating it with a port (`port_id`, `fixed_ip_address`) needs a router
that has an interface on that fixed IP's subnet and its gateway on the floating IP's network
(`router_id`, derived; otherwise Neutron's 404 `ExternalGatewayForFloatingIPNotFound`). The router's
gateway node does the NAT (alcor/agent/gateway.py); the southbound carries the floating IP there.

`status` is the datapath's, as Neutron's L3 agent reports it: DOWN when associated, ACTIVE once
the node carrying the router's gateway reports the NAT on its switch (ERROR if it cannot), DOWN
again when that gateway port stops being ACTIVE or moves to another node (until the new one
reports), and DOWN when disassociated.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from alcor.context import Context
from alcor.db.store import Tx
from alcor.errors import BadRequest, Conflict, NeutronError, not_found
from alcor.resources.base import Manager
from alcor.resources.schema import (
    Attr,
    Resource,
    ip_address,
    list_of,
    nullable,
    standard,
    string,
    uuid_str,
)
from alcor.wire import ROUTER_GATEWAY, ROUTER_INTERFACE

FLOATINGIP_OWNER = "network:floatingip"

FLOATINGIP = standard(Resource("floatingip", "floatingips", "FloatingIP"), named=False).add(
    Attr("floating_network_id", uuid_str, optional=False),
    Attr("floating_ip_address", ip_address, default=None),
    Attr("subnet_id", nullable(uuid_str), default=None),
    Attr("port_id", nullable(uuid_str), default=None, put=True),
    Attr("fixed_ip_address", nullable(ip_address), default=None, put=True),
    Attr("router_id", nullable(uuid_str), post=False),
    Attr("status", string(), post=False),
    Attr("port_details", nullable(string()), post=False, filterable=False, kind="object"),
    Attr("tags", list_of(string()), post=False, kind="array"),
)


class FloatingIps(Manager):
    res = FLOATINGIP
    type = "floatingip"
    requires = ("store", "networks", "subnets", "ports", "routers")

    def vpc_of(self, body: dict[str, Any]) -> str | None:
        return None

    async def create(self, ctx: Context, given: dict[str, Any], tx: Tx) -> dict[str, Any]:
        networks = self.peers.networks
        net = networks.index.get(given["floating_network_id"])
        if net is None or not networks.visible(ctx, net):
            raise not_found("Network", given["floating_network_id"])
        if not net.get("router:external"):
            raise BadRequest(f"Bad floatingip request: Network {net['id']} is not a valid "
                             f"external network.", type="BadRequest")
        body = self.new_body(ctx, {k: v for k, v in given.items()
                                   if k not in ("floating_ip_address", "subnet_id")})
        wanted: dict[str, Any] = {}
        if given.get("subnet_id"):
            wanted["subnet_id"] = given["subnet_id"]
        if given.get("floating_ip_address"):
            wanted["ip_address"] = given["floating_ip_address"]
        if wanted.get("subnet_id"):
            sub = await self.peers.subnets.fetch(wanted["subnet_id"], tx)
            if sub is None or sub["network_id"] != net["id"]:
                raise BadRequest(f"Bad floatingip request: Subnet {wanted['subnet_id']} is not on "
                                 f"network {net['id']}.", type="BadRequest")
        # The address's port belongs to no project (as in Neutron): tenants neither see nor
        # delete it; the floating IP's owner does both through the floating IP.
        port = await self.peers.ports.create(Context("", True), {
            "network_id": net["id"], "device_owner": FLOATINGIP_OWNER, "device_id": body["id"],
            "project_id": "", "name": "", "description": "", "admin_state_up": True,
            "security_groups": [],
            "allowed_address_pairs": [], "binding:host_id": "", "binding:profile": {},
            "binding:vnic_type": "normal", "extra_dhcp_opts": [], "port_security_enabled": False,
            "fixed_ips": [wanted] if wanted else [{"subnet_id": s} for s in self._v4_subnets(net)][:1],
        }, tx)
        fixed = port["fixed_ips"][0]
        body.update(floating_ip_address=fixed["ip_address"], subnet_id=fixed["subnet_id"],
                    port_id=None, fixed_ip_address=None, router_id=None, status="DOWN",
                    port_details=None, tags=[])
        body.update(await self._association(ctx, tx, body, given.get("port_id"),
                                            given.get("fixed_ip_address")))
        await self.insert(tx, body)
        return body

    def _v4_subnets(self, net: dict[str, Any]) -> list[str]:
        allocs = self.peers.subnets.allocators
        return [s for s in net.get("subnets", []) if s in allocs and allocs[s].net.version == 4]

    async def _association(self, ctx: Context, tx: Tx, fip: dict[str, Any], port_id: str | None,
                           fixed: str | None) -> dict[str, Any]:
        """The association fields for `port_id` (None: none), checked as Neutron checks them."""
        none = {"port_id": None, "fixed_ip_address": None, "router_id": None, "status": "DOWN",
                "port_details": None}
        if port_id is None:
            if fixed is not None:
                raise BadRequest("Invalid input for operation: fixed_ip_address cannot be "
                                 "specified without a port_id.", type="InvalidInput")
            return none
        port = await self.peers.ports.get(ctx, port_id, tx)
        if port.get("project_id") != fip["project_id"] and not ctx.is_admin:
            # The network's owner sees others' ports on it, but may not map its address to them.
            raise BadRequest(f"Bad floatingip request: Cannot process floating IP association "
                             f"with Port {port_id}, since that port is owned by a different "
                             f"project.", type="BadRequest")
        if str(port.get("device_owner") or "").startswith("network:"):
            raise BadRequest(f"Bad floatingip request: Port {port_id} is a network device "
                             f"({port['device_owner']}) and cannot have a floating IP.",
                             type="BadRequest")
        v4 = [f for f in port["fixed_ips"] if ipaddress.ip_address(f["ip_address"]).version == 4]
        if fixed is not None:
            chosen = [f for f in v4 if f["ip_address"] == fixed]
            if not chosen:
                raise BadRequest(f"Bad floatingip request: Port {port_id} does not have fixed ip "
                                 f"{fixed}.", type="BadRequest")
        elif len(v4) > 1:
            raise BadRequest(f"Bad floatingip request: Port {port_id} has multiple fixed IPv4 "
                             f"addresses. Must provide a specific IPv4 address when assigning a "
                             f"floating IP.", type="BadRequest")
        else:
            chosen = v4
        if not chosen:
            raise BadRequest(f"Bad floatingip request: Port {port_id} does not have any IPv4 "
                             f"address.", type="BadRequest")
        f = chosen[0]
        router = await self._router_for(tx, f["subnet_id"], fip["floating_network_id"])
        if router is None:
            raise NeutronError(
                f"External network {fip['floating_network_id']} is not reachable from subnet "
                f"{f['subnet_id']}. Therefore, cannot associate Port {port_id} with a Floating IP.",
                type="ExternalGatewayForFloatingIPNotFound", status=404)
        d = self.store.dialect
        rows = await tx.fetchall(
            f"SELECT id FROM resources WHERE type = 'floatingip' AND {d.text('port_id')} = ? "
            f"AND {d.text('fixed_ip_address')} = ? AND id != ?",
            (port_id, f["ip_address"], fip["id"]))
        if rows:
            raise Conflict(f"Cannot associate floating IP {fip['floating_ip_address']} "
                           f"({fip['id']}) with port {port_id} using fixed IP {f['ip_address']}, "
                           f"as that fixed IP already has a floating IP on external network "
                           f"{fip['floating_network_id']}.", type="FloatingIPPortAlreadyAssociated")
        return {"port_id": port_id, "fixed_ip_address": f["ip_address"], "router_id": router,
                "status": "ACTIVE" if fip.get("status") == "ACTIVE" and
                fip.get("port_id") == port_id and fip.get("fixed_ip_address") == f["ip_address"]
                else "DOWN",  # until the gateway node reports this NAT
                "port_details": {k: port.get(k) for k in (
                    "name", "network_id", "mac_address", "admin_state_up", "status", "device_id",
                    "device_owner")}}

    async def _router_for(self, tx: Tx, subnet_id: str, network_id: str) -> str | None:
        """A router with an interface on the subnet and its gateway on the network."""
        d = self.store.dialect
        rows = await tx.fetchall(
            f"SELECT {d.text('device_id', 'r.body')} FROM ip_allocations a JOIN resources r "
            f"ON r.type = 'port' AND r.id = a.port_id WHERE a.subnet_id = ? "
            f"AND {d.text('device_owner', 'r.body')} = ?", (subnet_id, ROUTER_INTERFACE))
        for (rid,) in sorted(rows):
            router = await self.peers.routers.fetch(rid, tx)
            gw = (router or {}).get("external_gateway_info") or {}
            if gw.get("network_id") == network_id:
                return str(rid)
        return None

    async def update_one(self, ctx: Context, id: str, body: Any, if_match: int | None) -> dict[str, Any]:
        # Neutron's oldest clients disassociate with an empty update (a floating IP had nothing
        # else to change then); any other update without port_id keeps the association.
        if body == {}:
            body = {"port_id": None}
        return await super().update_one(ctx, id, body, if_match)

    async def update(self, ctx: Context, current: dict[str, Any], changes: dict[str, Any],
                     tx: Tx) -> dict[str, Any]:
        if "port_id" in changes or "fixed_ip_address" in changes:
            port_id = changes.get("port_id", current["port_id"])
            fixed = changes.get("fixed_ip_address")
            if "port_id" in changes and changes["port_id"] is None:
                fixed = None
            changes.update(await self._association(ctx, tx, current, port_id, fixed))
        return await self.replace(tx, current, changes)

    async def delete(self, ctx: Context, current: dict[str, Any], tx: Tx) -> None:
        port = await self._own_port(tx, current["id"])
        if port is not None:
            await self.peers.ports.drop(tx, port)
        await self.remove(tx, current)

    async def _own_port(self, tx: Tx, fip_id: str) -> dict[str, Any] | None:
        d = self.store.dialect
        row = await tx.fetchone(
            f"SELECT id FROM resources WHERE type = 'port' AND {d.text('device_id')} = ? "
            f"AND {d.text('device_owner')} = ?", (fip_id, FLOATINGIP_OWNER))
        return await self.peers.ports.fetch(row[0], tx) if row else None

    # What other managers ask (a port or a router's gateway or interface going) ----------------

    async def on_router(self, tx: Tx, router_id: str) -> list[dict[str, Any]]:
        d = self.store.dialect
        rows = await tx.fetchall(
            f"SELECT id FROM resources WHERE type = 'floatingip' AND {d.text('router_id')} = ?",
            (router_id,))
        out = []
        for (fid,) in rows:
            body = await self.fetch(fid, tx)
            if body is not None:
                out.append(body)
        return out

    async def set_statuses(self, statuses: dict[str, tuple[str, str]]) -> None:
        """Agent feedback: {id: (ACTIVE/ERROR/DOWN, the reporting node's name)}; ids that name no
        floating IP are ignored. Only the node that carries the router's gateway port speaks for
        its floating IPs, and only for associated ones."""
        d = self.store.dialect
        ids = list(statuses)
        async with self.store.transaction() as tx:
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                rows = await tx.fetchall(
                    f"SELECT f.body, {d.text('binding:host_id', 'g.body')} FROM resources f "
                    f"JOIN resources g ON g.type = 'port' "
                    f"AND {d.text('device_id', 'g.body')} = {d.text('router_id', 'f.body')} "
                    f"AND {d.text('device_owner', 'g.body')} = ? "
                    f"WHERE f.type = 'floatingip' AND f.id IN ({','.join('?' * len(chunk))})",
                    (ROUTER_GATEWAY, *chunk))
                for text, host in rows:
                    fip = json.loads(text)
                    status, node = statuses[fip["id"]]
                    if host == node and fip.get("port_id") and fip.get("status") != status:
                        await self.replace(tx, fip, {"status": status})

    async def gateway_changed(self, tx: Tx, router_id: str) -> None:
        """The router's gateway port stopped being ACTIVE or moved: its floating IPs are DOWN
        until the node that carries it now reports them."""
        for fip in await self.on_router(tx, router_id):
            if fip.get("status") != "DOWN":
                await self.replace(tx, fip, {"status": "DOWN"})

    async def network_deleted(self, tx: Tx, network_id: str) -> None:
        """An external network going takes its floating IPs that map nothing with it (Neutron's
        delete_disassociated_floatingips); an associated one keeps the network (409 NetworkInUse)."""
        rows = await tx.fetchall(
            f"SELECT id FROM resources WHERE type = 'floatingip' AND "
            f"{self.store.dialect.text('floating_network_id')} = ?", (network_id,))
        for (fid,) in rows:
            body = await self.fetch(fid, tx)
            if body is not None and body.get("port_id") is None:
                await self.delete(Context(body["project_id"], True), body, tx)

    async def port_deleted(self, tx: Tx, port_id: str) -> None:
        """Neutron disassociates the floating IPs of a port that goes."""
        d = self.store.dialect
        rows = await tx.fetchall(
            f"SELECT id FROM resources WHERE type = 'floatingip' AND {d.text('port_id')} = ?",
            (port_id,))
        for (fid,) in rows:
            body = await self.fetch(fid, tx)
            if body is not None:
                await self.replace(tx, body, {"port_id": None, "fixed_ip_address": None,
                                              "router_id": None, "status": "DOWN",
                                              "port_details": None})
