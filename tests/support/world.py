"""A small simulated Neutron for southbound tests and benchmarks: actions in, change-log entries out,
and `write` to commit them into a store the way the core does.

Bodies are shaped as the core's API shows them (docs/wire.md, issue 2), so placement and the
dispatcher are tested against what they will really read. `World.act(kind, a, b)` interprets two
integers against the current state, which lets hypothesis drive it with plain tuples.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Iterable
from typing import Any

from alcor.db.changelog import Change
from alcor.db.store import Store

KINDS = (
    "node",
    "node_update",
    "node_delete",
    "network",
    "subnet",
    "port",
    "port_rebind",
    "port_update",
    "port_status",
    "port_delete",
    "router",
    "router_iface",
    "router_iface_delete",
    "router_routes",
    "router_gateway",
    "floatingip",
    "floatingip_delete",
    "sg",
    "sg_rules",
    "network_delete",
)


class World:
    def __init__(self, uuids: bool = False) -> None:
        self.uuids = uuids  # real UUIDs (benchmarks: realistic message sizes and compression)
        self.rev = 0
        self.res: dict[str, dict[str, dict[str, Any]]] = {
            t: {}
            for t in ("node", "network", "subnet", "port", "router", "security_group", "floatingip")
        }
        self.n = 0
        self.log: list[Change] = []
        # Node MQ settings, so broker tests can isolate their queues and vhosts.
        self.queue_prefix = "alcor.node."
        self.mq_url = "amqp://guest:guest@127.0.0.1:5672/"
        self.vhost = "/"

    # -- primitives ----------------------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        self.n += 1
        if self.uuids:
            return str(uuid.uuid4())
        return f"{prefix}-{self.n:04d}"

    def emit(self, type: str, id: str, op: str, body: dict[str, Any] | None) -> Change:
        self.rev += 1
        vpc = None
        if body is not None and type in ("subnet", "port"):
            vpc = body["network_id"]
        elif type == "network":
            vpc = id
        old = self.res[type].get(id)
        if op == "delete":
            del self.res[type][id]
            rn = old["revision_number"] if old else None
        else:
            assert body is not None
            body = copy.deepcopy(body)
            body["revision_number"] = (old["revision_number"] + 1) if old else 1
            self.res[type][id] = body
            rn = body["revision_number"]
        c = Change(self.rev, time.time(), type, id, op, "proj", vpc, rn, copy.deepcopy(body))
        self.log.append(c)
        return c

    def pick(self, type: str, i: int, where: Any = None) -> dict[str, Any] | None:
        items = [b for _, b in sorted(self.res[type].items()) if where is None or where(b)]
        return items[i % len(items)] if items else None

    # -- Neutron-shaped operations -------------------------------------------------------------

    def add_node(self, name: str | None = None, ip: int = 1) -> Change:
        nid = self._id("node")
        name = name or f"host-{nid}"
        body = {
            "id": nid,
            "node_id": nid,
            "node_name": name,
            "local_ip": f"172.16.0.{ip % 250 + 1}",
            "mac_address": "02:00:00:00:00:01",
            "mq_url": self.mq_url,
            "mq_vhost": self.vhost,
            "mq_exchange": "alcor",
            "mq_queue": f"{self.queue_prefix}{nid}",
        }
        return self.emit("node", nid, "create", body)

    def add_network(self, vni: int = 1000) -> Change:
        nid = self._id("net")
        body = {
            "id": nid,
            "name": nid,
            "project_id": "proj",
            "tenant_id": "proj",
            "provider:segmentation_id": vni,
            "provider:network_type": "vxlan",
            "mtu": 1450,
            "status": "ACTIVE",
        }
        return self.emit("network", nid, "create", body)

    def add_subnet(self, network_id: str, third: int = 0) -> Change:
        sid = self._id("sub")
        body = {
            "id": sid,
            "network_id": network_id,
            "project_id": "proj",
            "cidr": f"10.{third % 250}.{self.n % 250}.0/24",
            "ip_version": 4,
            "gateway_ip": f"10.{third % 250}.{self.n % 250}.1",
            "enable_dhcp": True,
            "dns_nameservers": [],
            "host_routes": [],
        }
        return self.emit("subnet", sid, "create", body)

    def add_sg(self) -> Change:
        gid = self._id("sg")
        body = {
            "id": gid,
            "name": gid,
            "project_id": "proj",
            "security_group_rules": [
                {
                    "id": gid + "-r1",
                    "direction": "egress",
                    "ethertype": "IPv4",
                    "protocol": None,
                    "port_range_min": None,
                    "port_range_max": None,
                    "remote_ip_prefix": None,
                    "remote_group_id": None,
                },
            ],
        }
        return self.emit("security_group", gid, "create", body)

    def add_port(
        self,
        subnet: dict[str, Any],
        host: str,
        sgs: list[str],
        owner: str = "compute:nova",
        device_id: str = "",
        ip_last: int | None = None,
    ) -> Change:
        pid = self._id("port")
        last = ip_last if ip_last is not None else self.n % 250 + 2
        prefix = subnet["cidr"].rsplit(".", 1)[0]
        body = {
            "id": pid,
            "name": "",
            "network_id": subnet["network_id"],
            "project_id": "proj",
            "mac_address": f"fa:16:3e:00:{self.n // 256 % 256:02x}:{self.n % 256:02x}",
            "fixed_ips": [{"subnet_id": subnet["id"], "ip_address": f"{prefix}.{last}"}],
            "binding:host_id": host,
            "device_owner": owner,
            "device_id": device_id,
            "status": "DOWN",
            "admin_state_up": True,
            "security_groups": sgs,
            "allowed_address_pairs": [],
            "port_security_enabled": True,
        }
        return self.emit("port", pid, "create", body)

    def update(self, type: str, body: dict[str, Any], **changes: Any) -> Change:
        new = copy.deepcopy(body)
        new.update(changes)
        return self.emit(type, body["id"], "update", new)

    def delete(self, type: str, id: str) -> Change:
        return self.emit(type, id, "delete", None)

    # -- random actions ------------------------------------------------------------------------

    def act(self, kind: str, a: int, b: int) -> list[Change]:
        """Do one action if it makes sense in the current state; return the changes it made."""
        out: list[Change] = []
        nodes = sorted(self.res["node"].values(), key=lambda x: x["id"])
        names = {n["node_name"] for n in nodes}
        if kind == "node":
            name = f"host-{a % 6}" if b % 2 else None
            if name not in names:  # the API refuses a name in use (409 NodeNameInUse)
                out.append(self.add_node(name, ip=a))
        elif kind == "node_update" and nodes:
            n = nodes[a % len(nodes)]
            out.append(self.update("node", n, local_ip=f"172.17.0.{b % 250 + 1}"))
        elif kind == "node_delete" and nodes:
            n = nodes[a % len(nodes)]
            # ... and the delete of a node that ports are bound to (409 NodeInUse)
            bound = any(p.get("binding:host_id") == n["node_name"]
                        for p in self.res["port"].values())
            if not bound:
                out.append(self.delete("node", n["id"]))
        elif kind == "network":
            out.append(self.add_network(1000 + a))
        elif kind == "subnet" and self.res["network"]:
            net = self.pick("network", a)
            assert net is not None
            out.append(self.add_subnet(net["id"], b))
        elif kind == "port" and self.res["subnet"]:
            sub = self.pick("subnet", a)
            assert sub is not None
            host = f"host-{b % 6}" if b % 5 else ""
            if nodes and b % 3:
                host = nodes[b % len(nodes)]["node_name"]
            sgs = sorted(self.res["security_group"])[: b % 3]
            out.append(self.add_port(sub, host, sgs))
        elif kind == "port_rebind":
            p = self.pick("port", a, lambda p: p["device_owner"] != "network:router_interface")
            if p is not None:
                host = nodes[b % len(nodes)]["node_name"] if nodes and b % 4 else ""
                out.append(self.update("port", p, **{"binding:host_id": host}))
        elif kind == "port_update":
            p = self.pick("port", a, lambda p: p["device_owner"] != "network:router_interface")
            if p is not None:
                sgs = sorted(self.res["security_group"])[b % 3 :][:2]
                out.append(self.update("port", p, security_groups=sgs, admin_state_up=bool(b % 2)))
        elif kind == "port_status":
            p = self.pick("port", a)
            if p is not None:
                out.append(self.update("port", p, status="ACTIVE" if b % 2 else "DOWN"))
        elif kind == "port_delete":
            p = self.pick("port", a, lambda p: p["device_owner"] != "network:router_interface")
            if p is not None:
                out.append(self.delete("port", p["id"]))
        elif kind == "router":
            rid = self._id("router")
            out.append(
                self.emit(
                    "router",
                    rid,
                    "create",
                    {"id": rid, "name": rid, "project_id": "proj", "routes": []},
                )
            )
        elif kind == "router_iface" and self.res["router"] and self.res["subnet"]:
            r = self.pick("router", a)
            s = self.pick("subnet", b)
            assert r is not None and s is not None
            taken = any(
                p["device_owner"] == "network:router_interface"
                and p["fixed_ips"][0]["subnet_id"] == s["id"]
                for p in self.res["port"].values()
            )
            if not taken:
                out.append(
                    self.add_port(
                        s, "", [], owner="network:router_interface", device_id=r["id"], ip_last=1
                    )
                )
        elif kind == "router_iface_delete":
            p = self.pick("port", a, lambda p: p["device_owner"] == "network:router_interface")
            if p is not None:
                out.append(self.delete("port", p["id"]))
        elif kind == "router_routes" and self.res["router"]:
            r = self.pick("router", a)
            assert r is not None
            routes = (
                [{"destination": f"192.168.{b % 9}.0/24", "nexthop": "10.0.0.9"}] if b % 2 else []
            )
            out.append(self.update("router", r, routes=routes))
        elif kind == "router_gateway" and self.res["router"] and self.res["subnet"]:
            # a gateway port, on a gateway node (its router's VPCs follow it there)
            r = self.pick("router", a)
            s = self.pick("subnet", b)
            assert r is not None and s is not None
            has = any(
                p["device_owner"] == "network:router_gateway" and p["device_id"] == r["id"]
                for p in self.res["port"].values()
            )
            if not has:
                host = nodes[b % len(nodes)]["node_name"] if nodes and b % 3 else ""
                out.append(
                    self.add_port(s, host, [], owner="network:router_gateway", device_id=r["id"])
                )
        elif kind == "floatingip" and self.res["router"]:
            # associated with a port through a router (b odd), or not; an existing one moves
            r = self.pick("router", a)
            p = self.pick("port", b)
            assert r is not None
            fips = sorted(self.res["floatingip"])
            assoc = p is not None and b % 2
            body = {
                "id": fips[a % len(fips)] if fips and a % 3 == 0 else self._id("fip"),
                "floating_ip_address": f"203.0.113.{a % 250 + 2}",
                "router_id": r["id"] if assoc else None,
                "port_id": p["id"] if assoc and p else None,
                "fixed_ip_address": p["fixed_ips"][0]["ip_address"] if assoc and p else None,
                "project_id": "proj",
            }
            if body["id"] in self.res["floatingip"]:
                out.append(self.update("floatingip", self.res["floatingip"][body["id"]], **body))
            else:
                out.append(self.emit("floatingip", body["id"], "create", body))
        elif kind == "floatingip_delete" and self.res["floatingip"]:
            f = self.pick("floatingip", a)
            assert f is not None
            out.append(self.delete("floatingip", f["id"]))
        elif kind == "sg":
            out.append(self.add_sg())
        elif kind == "sg_rules" and self.res["security_group"]:
            g = self.pick("security_group", a)
            assert g is not None
            rules = list(g["security_group_rules"]) + [
                {
                    "id": f"{g['id']}-r{b}",
                    "direction": "ingress",
                    "ethertype": "IPv4",
                    "protocol": "tcp",
                    "port_range_min": b % 1000,
                    "port_range_max": b % 1000,
                    "remote_ip_prefix": None,
                    "remote_group_id": None,
                }
            ]
            out.append(self.update("security_group", g, security_group_rules=rules))
        elif kind == "network_delete" and self.res["network"]:
            net = self.pick("network", a)
            assert net is not None
            if not any(p["network_id"] == net["id"] for p in self.res["port"].values()):
                for s in [s for s in self.res["subnet"].values() if s["network_id"] == net["id"]]:
                    out.append(self.delete("subnet", s["id"]))
                out.append(self.delete("network", net["id"]))
        return out


PARENT = {"subnet": "network_id", "port": "network_id"}


async def write(store: Store, changes: Iterable[Change]) -> int:
    """Commit World changes into the store as the core would: rows and change log together."""
    async with store.transaction() as tx:
        for c in changes:
            if c.op == "delete":
                await tx.execute("DELETE FROM resources WHERE type = ? AND id = ?", (c.type, c.id))
            else:
                assert c.body is not None
                text = json.dumps(c.body)
                await tx.execute(
                    "INSERT INTO resources(type, id, project_id, parent_id, body) VALUES (?,?,?,?,?) "
                    "ON CONFLICT(type, id) DO UPDATE SET body = excluded.body",
                    (
                        c.type,
                        c.id,
                        c.project_id,
                        (c.body or {}).get(PARENT.get(c.type, ""), None),
                        text,
                    ),
                )
            # The row's JSON is the change's too, as the core's managers pass it.
            tx.record(
                c.type,
                c.id,
                c.op,
                c.body,
                project_id=c.project_id,
                vpc_id=c.vpc_id,
                revision_number=c.revision_number,
                text=None if c.op == "delete" else text,
            )
    return store.changes.last_rev
