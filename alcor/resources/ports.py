"""Ports: a MAC unique in its network, fixed IPs by Neutron's request rules, security groups, binding.

A port is bound by `binding:host_id` to a node's `node_name`; bound to a name no node has, it gets
`binding:vif_type` `binding_failed`, as in Neutron. `status` stays DOWN until the node's agent reports
the port programmed (`set_statuses`).
"""

from __future__ import annotations

import ipaddress
import json
import random
from typing import Any

from alcor import dhcp_options
from alcor.context import Context
from alcor.db.changelog import Change
from alcor.db.store import Tx
from alcor.errors import BadRequest, Conflict, NeutronError, invalid_input
from alcor.resources import ipam
from alcor.resources import query as q
from alcor.resources.base import OTHER, Manager
from alcor.resources.schema import (
    Attr,
    Invalid,
    Resource,
    any_dict,
    boolean,
    described,
    dict_of,
    ip_address,
    ip_or_cidr,
    json_schema_of,
    list_of,
    mac_address,
    nullable,
    one_of,
    standard,
    string,
    uuid_str,
)
from alcor.resources.subnets import network_target
from alcor.wire import ROUTER_GATEWAY, ROUTER_INTERFACE

# binding:vif_details port_filter: the host's datapath applies the port's security groups (the
# agent's flows, alcor/agent/secgroups.py), so Nova and os-vif need not (no hybrid plug).
PORT_FILTER = True
MISSING_NODE: Any = object()
MAX_FIXED_IPS = 5

FIXED_IP = dict_of({"subnet_id": (uuid_str, False), "ip_address": (ip_address, False)})
ADDRESS_PAIR = dict_of({"ip_address": (ip_or_cidr, True), "mac_address": (mac_address, False)})
def _dhcp_opt(value: Any) -> dict[str, Any]:
    """One of `extra_dhcp_opts`: {opt_name, opt_value (None: remove it, on update), ip_version}."""
    opt = _DHCP_OPT_KEYS(value)
    name, text, version = opt["opt_name"], opt.get("opt_value"), opt.get("ip_version", 4)
    if not isinstance(name, str) or not name.strip():
        raise Invalid(f"'{name}' is not a valid DHCP option name")
    if text is not None:
        if not isinstance(text, str) or not text:
            raise Invalid(f"'{text}' is not a valid DHCP option value")
        try:
            dhcp_options.check(name, text, version)
        except dhcp_options.BadOption as e:
            raise Invalid(str(e)) from None
    return {"opt_name": name, "opt_value": text, "ip_version": version}


_DHCP_OPT_KEYS = dict_of({"opt_name": (string(64), True), "opt_value": (nullable(string(255)), True),
                          "ip_version": (one_of(4, 6), False)})
DHCP_OPT = described(_dhcp_opt, json_schema_of(_DHCP_OPT_KEYS) or {})

VNIC_TYPES = ("normal", "direct", "macvtap", "baremetal", "direct-physical", "virtio-forwarder",
              "smart-nic", "remote-managed")


def fixed_ip_filter(value: str) -> str:
    """`?fixed_ips=ip_address=…` (or subnet_id=…, ip_address_substr=…): kept as text here and
    matched against the list by `query.filter_sql`."""
    return value


PORT = standard(Resource("port", "ports", "Port", parent_field="network_id")).add(
    Attr("network_id", uuid_str, optional=False),
    Attr("admin_state_up", boolean, default=True, put=True, kind="boolean"),
    Attr("mac_address", mac_address, put=True),
    Attr("fixed_ips", list_of(FIXED_IP), put=True, kind="array", filter=fixed_ip_filter),
    Attr("device_id", string(255), default="", put=True),
    Attr("device_owner", string(255), default="", put=True),
    Attr("status", string(), post=False),
    Attr("security_groups", list_of(uuid_str, unique=True), put=True, kind="array"),
    Attr("allowed_address_pairs", list_of(ADDRESS_PAIR), default=list, put=True, kind="array"),
    Attr("port_security_enabled", boolean, put=True, kind="boolean"),
    Attr("binding:host_id", string(255), default="", put=True, admin_only=True),
    Attr("binding:profile", any_dict, default=dict, put=True, admin_only=True, kind="object",
         filterable=False),
    Attr("binding:vnic_type", one_of(*VNIC_TYPES), default="normal", put=True),
    Attr("binding:vif_type", string(), post=False),
    Attr("binding:vif_details", any_dict, post=False, kind="object", filterable=False),
    Attr("extra_dhcp_opts", list_of(DHCP_OPT), default=list, put=True, kind="array", filterable=False),
    Attr("tags", list_of(string()), post=False, kind="array"),
)


def in_use(kind: str, network_id: str, value: str) -> Conflict:
    label = "IP address" if kind == "IpAddressInUse" else "mac address"
    return Conflict(f"Unable to complete operation for network {network_id}. The {label} {value} "
                    f"is in use.", type=kind)


class Ports(Manager):
    res = PORT
    type = "port"
    requires = ("store", "networks", "subnets", "security_groups", "nodes")

    def __init__(self, seed: int | None = None) -> None:
        super().__init__()
        self.macs: dict[str, set[str]] = {}
        # port → (network, MAC, ((subnet, IP), …)), on a shared store only (see `followed`).
        self.held: dict[str, tuple[str, str, tuple[tuple[str, str], ...]]] = {}
        self.rng = random.Random(seed)

    async def load(self) -> None:
        for nid, mac, pid in await self.store.fetchall(
                "SELECT network_id, mac_address, port_id FROM mac_allocations"):
            self.macs.setdefault(nid, set()).add(mac)
            if self.store.shared:
                self.held[pid] = (nid, mac, ())
        if self.store.shared:
            for sid, ip, pid in await self.store.fetchall(
                    "SELECT subnet_id, ip_address, port_id FROM ip_allocations"):
                if pid in self.held:
                    nid, mac, ips = self.held[pid]
                    self.held[pid] = (nid, mac, (*ips, (sid, ip)))

    def reset(self) -> None:
        self.macs.clear()
        self.held.clear()

    # A shared store: other controllers' port changes arrive as change-log rows, and a delete's row
    # has no body, so what each port holds is kept to release it then.

    def _hold(self, body: dict[str, Any]) -> None:
        self.held[body["id"]] = (body["network_id"], body["mac_address"],
                                 tuple((f["subnet_id"], f["ip_address"]) for f in body["fixed_ips"]))

    def _unhold(self, port_id: str) -> None:
        self.held.pop(port_id, None)

    def followed(self, change: Change) -> None:
        nid_mac_ips = self.held.pop(change.id, None)
        subnets = self.peers.subnets
        if nid_mac_ips is not None:
            nid, mac, ips = nid_mac_ips
            self.macs.get(nid, set()).discard(mac)
            for sid, ip in ips:
                if sid in subnets.allocators:
                    subnets.allocators[sid].release(int(ipaddress.ip_address(ip)))
        if change.body is None:
            return
        body = change.body
        self.macs.setdefault(body["network_id"], set()).add(body["mac_address"])
        for f in body["fixed_ips"]:
            alloc = subnets.allocators.get(f["subnet_id"])
            if alloc is not None:
                alloc.take(int(ipaddress.ip_address(f["ip_address"])))
        self._hold(body)

    async def insert(self, tx: Tx, body: dict[str, Any]) -> None:
        await super().insert(tx, body)
        if self.store.shared:
            tx.after_commit(lambda: self._hold(body))

    async def replace(self, tx: Tx, body: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
        new = await super().replace(tx, body, changes)
        if body.get("device_owner") == ROUTER_GATEWAY and self.kernel.has_named("floatingips") and (
            (body.get("status") == "ACTIVE" and new.get("status") != "ACTIVE")
            or body.get("binding:host_id") != new.get("binding:host_id")
        ):
            # the NAT of its floating IPs is gone from the datapath (or not yet on the new node)
            await self.peers.floatingips.gateway_changed(tx, str(body.get("device_id")))
        if self.store.shared:
            tx.after_commit(lambda: self._hold(new))
        return new

    async def remove(self, tx: Tx, body: dict[str, Any]) -> None:
        await super().remove(tx, body)
        if self.store.shared:
            tx.after_commit(lambda: self._unhold(body["id"]))

    # Policy: who sees a port (get_port) is its project, its network's owner and services; the
    # binding:* attributes only admins and services (Nova) read.

    field_rules = ("binding:vif_type", "binding:vif_details", "binding:host_id", "binding:profile")

    def target(self, body: dict[str, Any]) -> dict[str, Any]:
        t = network_target(self.peers, body)
        t["network_device"] = str(body.get("device_owner") or "").startswith("network:")
        return t

    async def create_target(self, ctx: Context, given: dict[str, Any]) -> dict[str, Any]:
        self.peers.networks.lookup(ctx, given["network_id"])  # 404 before any 403
        project = given.get("project_id") or given.get("tenant_id") or ctx.project_id
        return self.target({**given, "project_id": project})

    def target_classes(self, ctx: Context) -> list[dict[str, Any]]:
        return [{"project_id": p, "tenant_id": p, "network:project_id": n, "shared": sh,
                 "network_device": dev}
                for p in (ctx.project_id, OTHER) for n in (ctx.project_id, OTHER)
                for sh in (False, True) for dev in (False, True)]

    def attr_actions(self, given: dict[str, Any]) -> list[str]:
        out = [k for k in given if k in self.res.attrs and k != "fixed_ips"]
        for entry in given.get("fixed_ips") or []:
            if isinstance(entry, dict):
                out += [f"fixed_ips:{k}" for k in ("ip_address", "subnet_id") if k in entry]
        return list(dict.fromkeys(out))

    def scope(self, ctx: Context, sql: q.SQL) -> None:
        def may(project: str, net_project: str) -> bool:
            return ctx.allowed("get_port", {"project_id": project, "tenant_id": project,
                                            "network:project_id": net_project, "shared": False,
                                            "network_device": False})
        if may(OTHER, OTHER):
            return
        ors, params = [], []
        if may(ctx.project_id, OTHER):
            ors.append("project_id = ?")
            params.append(ctx.project_id)
        if may(OTHER, ctx.project_id):
            own = [n["id"] for n in self.peers.networks.index.values()
                   if n.get("project_id") == ctx.project_id]
            if own:
                ors.append(f"parent_id IN ({','.join('?' * len(own))})")
                params.extend(own)
        sql.add("(" + " OR ".join(ors) + ")" if ors else "FALSE", *params)

    def vpc_of(self, body: dict[str, Any]) -> str | None:
        return body["network_id"]

    # Create ------------------------------------------------------------------------------------

    async def create(self, ctx: Context, given: dict[str, Any], tx: Tx) -> dict[str, Any]:
        given["extra_dhcp_opts"] = merge_dhcp_opts([], given.get("extra_dhcp_opts") or [])
        network = self.peers.networks.lookup(ctx, given["network_id"])
        nid = network["id"]
        body = self.new_body(ctx, given)
        if "port_security_enabled" not in given:
            body["port_security_enabled"] = network.get("port_security_enabled", True)
        body["mac_address"] = self._take_mac(tx, nid, given.get("mac_address"))
        owner = body["device_owner"]
        body["fixed_ips"] = self._take_ips(tx, network, given.get("fixed_ips"), owner, body["mac_address"])
        self._check_port_security(body, given)
        body["security_groups"] = await self._security_groups(ctx, tx, body, given.get("security_groups"))
        body.update(self.binding_for(body))
        body["status"] = "ACTIVE" if owner == ROUTER_INTERFACE else "DOWN"
        body["tags"] = []
        await self.insert(tx, body)
        await self._write_ips(tx, body)
        await tx.insert("mac_allocations(network_id, mac_address, port_id)",
                        [(nid, body["mac_address"], body["id"])])
        return body

    def _take_mac(self, tx: Tx, network_id: str, wanted: str | None) -> str:
        taken = self.macs.setdefault(network_id, set())
        if wanted is not None:
            if wanted in taken:
                raise in_use("MacAddressInUse", network_id, wanted)
            mac = wanted
        else:
            for _ in range(16):
                mac = ipam.random_mac(self.rng)
                if mac not in taken:
                    break
            else:
                raise NeutronError("Unable to generate unique mac on network.",
                                   type="MacAddressGenerationFailure", status=503)
        taken.add(mac)
        tx.after_rollback(lambda: taken.discard(mac))
        return mac

    def _take_ips(self, tx: Tx, network: dict[str, Any], requested: list[dict[str, str]] | None,
                  owner: str, mac: str, keep: frozenset[tuple[str, str]] = frozenset()
                  ) -> list[dict[str, str]]:
        """Neutron's fixed_ips rules. `keep` holds (subnet, ip) pairs the port already has."""
        subnets = self.peers.subnets
        nid = network["id"]
        on_net = subnets.on_network(nid)
        result: list[dict[str, str]] = []
        taken: list[tuple[ipam.SubnetAllocator, int]] = []

        def undo() -> None:
            for alloc, ip in taken:
                alloc.release(ip)
        tx.after_rollback(undo)

        def take(alloc: ipam.SubnetAllocator, ip: int) -> None:
            if (alloc.subnet_id, str(ipaddress.ip_address(ip))) in keep:
                return
            if not alloc.take(ip):
                raise in_use("IpAddressInUse", nid, str(ipaddress.ip_address(ip)))
            taken.append((alloc, ip))

        def allocate(alloc: ipam.SubnetAllocator) -> int:
            if alloc.net.version == 6 and alloc.slaac:
                ip = int(eui64(alloc.net, mac))
                take(alloc, ip)
                return ip
            ip = alloc.allocate()
            taken.append((alloc, ip))
            return ip

        if requested is None:
            v4 = [a for a in on_net if a.net.version == 4]
            for alloc in v4:
                if alloc.free > 0:
                    result.append(fixed(alloc, allocate(alloc)))
                    break
            else:
                if v4:
                    raise ipam.IpExhausted(f"No more IP addresses available on network {nid}.")
            for alloc in (a for a in on_net if a.net.version == 6):
                if alloc.slaac or alloc.free > 0:
                    result.append(fixed(alloc, allocate(alloc)))
                    break
            return result

        if len(requested) > MAX_FIXED_IPS:
            raise BadRequest(f"Exceeded maximum amount of fixed ips per port ({MAX_FIXED_IPS}).")
        by_id = {a.subnet_id: a for a in on_net}
        seen: set[tuple[str, str]] = set()
        for entry in requested:
            sid, ip_s = entry.get("subnet_id"), entry.get("ip_address")
            if sid is None and ip_s is None:
                raise invalid_input("fixed_ips entries need a subnet_id or an ip_address")
            if sid is not None:
                found = by_id.get(sid)
                if found is None:
                    raise invalid_input(f"Failed to create port on network {nid}, because fixed_ips "
                                        f"included invalid subnet {sid}")
                alloc = found
            else:
                assert ip_s is not None  # checked above: one of the two is given
                addr = ipaddress.ip_address(ip_s)
                match = [a for a in on_net if a.net.version == addr.version and addr in a.net]
                if not match:
                    raise invalid_input(f"IP address {ip_s} is not a valid IP for any subnet on "
                                        f"network {nid}")
                alloc = match[0]
            if ip_s is None:
                result.append(fixed(alloc, allocate(alloc)))
                continue
            ip = int(ipaddress.ip_address(ip_s))
            if not alloc.contains(ip):
                raise invalid_input(f"IP address {ip_s} is not a valid IP for the specified subnet")
            lo, hi = ipam.usable_range(alloc.net)
            if not lo <= ip <= hi:
                raise invalid_input(f"IP address {ip_s} is not a valid IP for the specified subnet")
            if ip == alloc.gateway and owner != ROUTER_INTERFACE:
                raise invalid_input(f"IP address {ip_s} is the gateway IP of subnet {alloc.subnet_id}")
            key = (alloc.subnet_id, str(ipaddress.ip_address(ip)))
            if key in seen:
                raise invalid_input(f"Duplicate IP address {ip_s} in fixed_ips")
            seen.add(key)
            take(alloc, ip)
            result.append(fixed(alloc, ip))
        return result

    async def _security_groups(self, ctx: Context, tx: Tx, body: dict[str, Any],
                               given: list[str] | None) -> list[str]:
        sgs = self.peers.security_groups
        if given is not None:
            await sgs.check_ids(ctx, tx, given, body["project_id"], port_id=body["id"])
            return given
        if body["device_owner"].startswith("network:") or not body["port_security_enabled"]:
            return []
        return [await sgs.default_for(tx, body["project_id"])]

    def _check_port_security(self, merged: dict[str, Any], asked: dict[str, Any],
                             current: dict[str, Any] | None = None) -> None:
        """Neutron's rules (ML2): without port security a port has no security groups and no
        allowed address pairs. `asked` is the request (a create's body or an update's changes),
        `current` the port before an update."""
        if merged["port_security_enabled"]:
            return
        if asked.get("security_groups"):
            raise Conflict("Port security must be enabled and port must have an IP address in "
                           "order to use security groups.",
                           type="PortSecurityAndIPRequiredForSecurityGroups")
        if current is not None and "security_groups" not in asked and current["security_groups"]:
            raise Conflict("Port has security group associated. Cannot disable port security or ip "
                           "address until security group is removed",
                           type="PortSecurityPortHasSecurityGroup")
        if merged["allowed_address_pairs"]:
            raise Conflict("Port Security must be enabled in order to have allowed address pairs on "
                           "a port.", type="AddressPairAndPortSecurityRequired")

    def binding_for(self, port: dict[str, Any], node: dict[str, Any] | None = MISSING_NODE
                    ) -> dict[str, Any]:
        """binding:vif_type and vif_details for a port (its host is a node's name, or none).

        What os-vif reads to plug the VM's tap into the host's integration bridge, as Neutron's
        OVS mechanism driver gives it: vif_type `ovs`, the node's `bridge_name` and
        `datapath_type`, no hybrid plug (no Linux bridge in between), L2 connectivity. Only the
        `normal` vnic type binds (no SR-IOV or hardware offload here)."""
        host = port["binding:host_id"]
        if not host:
            return {"binding:vif_type": "unbound", "binding:vif_details": {}}
        if node is MISSING_NODE:
            node = self.peers.nodes.by_name(host)
        if node is None or port.get("binding:vnic_type", "normal") != "normal":
            return {"binding:vif_type": "binding_failed", "binding:vif_details": {}}
        return {"binding:vif_type": "ovs",
                "binding:vif_details": {"port_filter": PORT_FILTER, "ovs_hybrid_plug": False,
                                        "connectivity": "l2",
                                        "bridge_name": node.get("bridge_name", "br-int"),
                                        "datapath_type": node.get("datapath_type", "system")}}

    async def _write_ips(self, tx: Tx, body: dict[str, Any],
                         skip: frozenset[tuple[str, str]] = frozenset()) -> None:
        rows = [(f["subnet_id"], f["ip_address"], body["id"]) for f in body["fixed_ips"]
                if (f["subnet_id"], f["ip_address"]) not in skip]
        await tx.insert("ip_allocations(subnet_id, ip_address, port_id)", rows)

    # Update ------------------------------------------------------------------------------------

    async def update(self, ctx: Context, current: dict[str, Any], changes: dict[str, Any],
                     tx: Tx) -> dict[str, Any]:
        if "extra_dhcp_opts" in changes:
            changes["extra_dhcp_opts"] = merge_dhcp_opts(current.get("extra_dhcp_opts") or [],
                                                         changes["extra_dhcp_opts"])
        nid = current["network_id"]
        if "mac_address" in changes and changes["mac_address"] != current["mac_address"]:
            if current["binding:vif_type"] not in ("unbound", "binding_failed"):
                raise Conflict(f"Port {current['id']} is bound; its MAC address cannot be updated.",
                               type="PortBound")
            self._take_mac(tx, nid, changes["mac_address"])
            old_mac = current["mac_address"]
            await tx.execute("UPDATE mac_allocations SET mac_address = ? WHERE network_id = ? AND "
                             "mac_address = ?", (changes["mac_address"], nid, old_mac))
            tx.after_commit(lambda: self.macs[nid].discard(old_mac))
        merged = {**current, **changes}
        if "fixed_ips" in changes:
            network = self.peers.networks.lookup(Context("", True), nid)
            have = frozenset((f["subnet_id"], f["ip_address"]) for f in current["fixed_ips"])
            new_ips = self._take_ips(tx, network, changes["fixed_ips"], merged["device_owner"],
                                     merged["mac_address"], keep=have)
            wanted = frozenset((f["subnet_id"], f["ip_address"]) for f in new_ips)
            gone = have - wanted
            if gone:
                await tx.executemany("DELETE FROM ip_allocations WHERE subnet_id = ? AND ip_address = ?",
                                     list(gone))
                subnets = self.peers.subnets

                def release() -> None:
                    for s, i in gone:
                        if s in subnets.allocators:
                            subnets.allocators[s].release(int(ipaddress.ip_address(i)))
                tx.after_commit(release)
            changes["fixed_ips"] = new_ips
            merged["fixed_ips"] = new_ips
            await self._write_ips(tx, merged, skip=have)
        if any(k in changes for k in ("port_security_enabled", "security_groups", "allowed_address_pairs")):
            self._check_port_security(merged, changes, current)
        if "security_groups" in changes:
            await self.peers.security_groups.check_ids(
                ctx, tx, changes["security_groups"], current["project_id"], port_id=current["id"])
        if "binding:host_id" in changes or "binding:vnic_type" in changes:
            changes.update(self.binding_for(merged))
            if merged["binding:host_id"] != current["binding:host_id"] and \
                    current["device_owner"] != ROUTER_INTERFACE:
                changes["status"] = "DOWN"
        return await self.replace(tx, current, changes)

    # Delete ------------------------------------------------------------------------------------

    async def delete(self, ctx: Context, current: dict[str, Any], tx: Tx) -> None:
        owner = current["device_owner"]
        if owner in (ROUTER_INTERFACE, ROUTER_GATEWAY, "network:floatingip"):
            raise Conflict(f"Port {current['id']} cannot be deleted directly via the port API: has "
                           f"device owner {owner}.", type="ServicePortInUse")
        if self.kernel.has_named("floatingips"):
            await self.peers.floatingips.port_deleted(tx, current["id"])
        await self.drop(tx, current)

    async def drop(self, tx: Tx, body: dict[str, Any]) -> None:
        """Remove a port and its allocations (routers use this for their interface ports)."""
        await tx.execute("DELETE FROM ip_allocations WHERE port_id = ?", (body["id"],))
        if self.kernel.has_named("port_bindings"):
            # its inactive bindings (binding-extended), owned by alcor/resources/port_bindings.py
            await self.kernel.named("port_bindings").drop_all(tx, body["id"])
        await tx.execute("DELETE FROM mac_allocations WHERE network_id = ? AND mac_address = ?",
                         (body["network_id"], body["mac_address"]))
        await self.remove(tx, body)
        subnets = self.peers.subnets

        def release() -> None:
            self.macs.get(body["network_id"], set()).discard(body["mac_address"])
            for f in body["fixed_ips"]:
                alloc = subnets.allocators.get(f["subnet_id"])
                if alloc is not None:
                    alloc.release(int(ipaddress.ip_address(f["ip_address"])))
        tx.after_commit(release)

    # Asked by other modules -------------------------------------------------------------------

    async def count_on_network(self, tx: Tx, network_id: str) -> int:
        row = await tx.fetchone("SELECT COUNT(*) FROM resources WHERE type = 'port' AND parent_id = ?",
                                (network_id,))
        return int(row[0])

    async def forget_subnet(self, tx: Tx, subnet_id: str) -> None:
        """A subnet goes away: its addresses leave the ports that hold one (each an update of its
        port, so hosts see the address go). The subnet's allocator goes with the subnet."""
        rows = await tx.fetchall("SELECT DISTINCT port_id FROM ip_allocations WHERE subnet_id = ?",
                                 (subnet_id,))
        for (pid,) in rows:
            body = await self.fetch(pid, tx)
            if body is not None:
                await self.replace(tx, body, {"fixed_ips": [f for f in body["fixed_ips"]
                                                            if f["subnet_id"] != subnet_id]})
        await tx.execute("DELETE FROM ip_allocations WHERE subnet_id = ?", (subnet_id,))

    async def set_statuses(self, statuses: dict[str, tuple[str, str]]) -> None:
        """Agent feedback: {port id: (ACTIVE/ERROR/DOWN, the reporting node's name)}. A node only
        speaks for the ports bound to it; unknown ids are ignored."""
        ids = list(statuses)
        async with self.store.transaction() as tx:
            # Agents report ports by the thousand: read them in chunks, not one query each.
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                # Most reports change nothing (an agent's full report after a snapshot): SQLite
                # compares status and host, and only the ports that change are decoded.
                d = self.store.dialect
                rows = await tx.fetchall(
                    f"SELECT id, {d.text('status')}, {d.text('binding:host_id')}, body "
                    f"FROM resources WHERE type = 'port' AND id IN ({','.join('?' * len(chunk))})",
                    chunk)
                for pid, held, bound, text in rows:
                    status, host = statuses[pid]
                    if bound == host and held != status:
                        await self.replace(tx, json.loads(text), {"status": status})


def fixed(alloc: ipam.SubnetAllocator, ip: int) -> dict[str, str]:
    return {"subnet_id": alloc.subnet_id, "ip_address": str(ipaddress.ip_address(ip))}


def eui64(net: ipaddress.IPv6Network | ipaddress.IPv4Network, mac: str) -> ipaddress.IPv6Address:
    """The SLAAC address a host with this MAC takes in a /64."""
    b = bytearray(int(x, 16) for x in mac.split(":"))
    iid = bytes([b[0] ^ 0x02, b[1], b[2], 0xFF, 0xFE, b[3], b[4], b[5]])
    return ipaddress.IPv6Address(int(net.network_address) | int.from_bytes(iid, "big"))


def merge_dhcp_opts(current: list[dict[str, Any]], given: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Neutron's rules: an option given replaces the one of the same name and IP version, one
    given with `opt_value` null is removed, the others stay. One name twice in a request is a 400."""
    keys = [(o["opt_name"], o["ip_version"]) for o in given]
    if len(set(keys)) != len(keys):
        raise invalid_input("Duplicate DHCP option names in extra_dhcp_opts")
    out = {(o["opt_name"], o["ip_version"]): o for o in current}
    for o, key in zip(given, keys, strict=True):
        if o["opt_value"] is None:
            out.pop(key, None)
        else:
            out[key] = o
    return list(out.values())
