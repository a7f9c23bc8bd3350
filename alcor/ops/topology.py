"""The operator's picture: VPCs → subnets → ports → hosts, each host with its sync state.

One pure function (`build`) turns resource bodies and the southbound's per-node sync into the JSON
that the topology page draws and `alcor status` prints; `gather` collects those inputs from the
kernel's modules. `host_state` names a node's sync state the same way everywhere.

    >>> host_state({"goal_rev": 12, "applied_rev": 9, "in_sync": False, "digest_match": None,
    ...             "snapshot_pending": False})
    ('lagging', 3)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from alcor.context import Context
from alcor.db.backends import StoreModule
from alcor.ops.metrics import dispatcher_of
from alcor.resources.base import Manager
from alcor.resources.networks import Networks
from alcor.resources.nodes import Nodes
from alcor.resources.ports import Ports
from alcor.resources.routers import Routers
from alcor.resources.subnets import Subnets

if TYPE_CHECKING:
    from alcor.kernel import Kernel

ADMIN = Context("", True)
Body = dict[str, Any]


def host_state(sync: Mapping[str, Any] | None) -> tuple[str, int | None]:
    """(state, lag in revs): in sync, lagging, snapshot pending, digest mismatch, checking,
    no report (the agent never answered) or unknown (no southbound in this process)."""
    if not sync:
        return "unknown", None
    applied = sync.get("applied_rev")
    goal = sync.get("goal_rev") or 0
    lag = None if applied is None else max(0, goal - applied)
    if sync.get("snapshot_pending"):
        return "snapshot pending", lag
    if applied is None:
        return "no report", None
    if lag:
        return "lagging", lag
    if sync.get("digest_match") is False:
        return "digest mismatch", 0
    if sync.get("in_sync"):
        return "in sync", 0
    return "checking", 0


def _port(p: Body) -> Body:
    ips = [f.get("ip_address") for f in p.get("fixed_ips") or []]
    return {"id": p["id"], "name": p.get("name", ""), "ips": ips, "mac_address": p.get("mac_address"),
            "status": p.get("status", "DOWN"), "host": p.get("binding:host_id", ""),
            "vif_type": p.get("binding:vif_type", ""), "device_owner": p.get("device_owner", ""),
            "device_id": p.get("device_id", "")}


def build(networks: Iterable[Body], subnets: Iterable[Body], ports: Iterable[Body],
          routers: Iterable[Body], nodes: Iterable[Body],
          sync: Callable[[str], Mapping[str, Any] | None], *, rev: int,
          watermark: int | None) -> Body:
    """The topology document (see module docstring); sorted by name so the page does not jump."""
    by_net: dict[str, Body] = {}
    for n in sorted(networks, key=lambda n: (n.get("name", ""), n["id"])):
        by_net[n["id"]] = {"id": n["id"], "name": n.get("name", ""), "project_id": n.get("project_id"),
                           "vni": n.get("provider:segmentation_id"), "status": n.get("status"),
                           "shared": n.get("shared", False), "subnets": [], "unaddressed_ports": []}
    by_subnet: dict[str, Body] = {}
    for s in sorted(subnets, key=lambda s: (s.get("name", ""), s["id"])):
        entry = {"id": s["id"], "name": s.get("name", ""), "cidr": s.get("cidr"),
                 "gateway_ip": s.get("gateway_ip"), "ip_version": s.get("ip_version"), "ports": []}
        by_subnet[s["id"]] = entry
        if s.get("network_id") in by_net:
            by_net[s["network_id"]]["subnets"].append(entry)
    hosts: dict[str, Body] = {}
    for node in sorted(nodes, key=lambda n: n.get("node_name", "")):
        state, lag = host_state(sync(node["node_id"]))
        hosts[node["node_name"]] = {"node_id": node["node_id"], "node_name": node["node_name"],
                                    "local_ip": node.get("local_ip"), "registered": True,
                                    "state": state, "lag": lag, "sync": sync(node["node_id"]) or {},
                                    "ports": 0, "active": 0}
    for p in sorted(ports, key=lambda p: (p.get("name", ""), p["id"])):
        entry = _port(p)
        host = entry["host"]
        if host:
            h = hosts.setdefault(host, {"node_id": None, "node_name": host, "local_ip": None,
                                        "registered": False, "state": "unregistered", "lag": None,
                                        "sync": {}, "ports": 0, "active": 0})
            h["ports"] += 1
            h["active"] += entry["status"] == "ACTIVE"
        first = (p.get("fixed_ips") or [{}])[0].get("subnet_id")
        if first in by_subnet:
            by_subnet[first]["ports"].append(entry)
        elif p.get("network_id") in by_net:
            by_net[p["network_id"]]["unaddressed_ports"].append(entry)
    router_list = [{"id": r["id"], "name": r.get("name", ""), "status": r.get("status")}
                   for r in sorted(routers, key=lambda r: (r.get("name", ""), r["id"]))]
    return {"rev": rev, "watermark": watermark, "generated_at": time.time(),
            "vpcs": list(by_net.values()), "routers": router_list, "hosts": list(hosts.values())}


async def gather(kernel: Kernel) -> Body:
    """Read every manager the topology needs (as admin) and build the document."""
    async def listed(cls: type[Manager]) -> list[Body]:
        return await kernel.get(cls).list_all(ADMIN) if kernel.has(cls) else []

    d = dispatcher_of(kernel)

    def sync(node_id: str) -> Mapping[str, Any] | None:
        return d.node_sync(node_id) if d is not None else None

    store = kernel.get(StoreModule).store
    return build(await listed(Networks), await listed(Subnets), await listed(Ports),
                 await listed(Routers), await listed(Nodes), sync,
                 rev=store.changes.last_rev, watermark=None if d is None else d.watermark)


def goal_summary(kernel: Kernel, node_id: str) -> Body | None:
    """What the controller holds as the node's goal state, counted per wire type; None without a
    southbound in this process."""
    d = dispatcher_of(kernel)
    if d is None:
        return None
    from alcor.southbound.goalstate import goal_state

    goal = goal_state(d.topology, node_id)
    counts = {t: len(v) for t, v in goal.items() if isinstance(v, dict)}
    ports = goal.get("port", {})
    local = sorted(pid for pid, body in ports.items() if body.get("node_id") == node_id)
    return {"node_id": node_id, "rev": d.watermark, "counts": counts, "local_ports": local,
            "neighbours": len(ports) - len(local), "vpcs": sorted(goal.get("vpc", {})),
            "sync": d.node_sync(node_id)}
