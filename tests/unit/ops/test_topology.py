"""The topology document and the sync-state names the page and `alcor status` share."""

from __future__ import annotations

from typing import Any

from alcor.ops.topology import build, host_state


def sync(goal: int, applied: int | None, *, match: bool | None = True, pending: bool = False) -> dict[str, Any]:
    return {"goal_rev": goal, "applied_rev": applied, "digest_match": match,
            "in_sync": applied == goal and bool(match) and not pending, "snapshot_pending": pending}


def test_host_states() -> None:
    assert host_state(None) == ("unknown", None)
    assert host_state(sync(10, None, match=None)) == ("no report", None)
    assert host_state(sync(10, 7)) == ("lagging", 3)
    assert host_state(sync(10, 10, pending=True))[0] == "snapshot pending"
    assert host_state(sync(10, 10, match=False)) == ("digest mismatch", 0)
    assert host_state(sync(10, 10)) == ("in sync", 0)
    assert host_state(sync(10, 10, match=None)) == ("checking", 0)


def test_ports_sit_under_their_subnet_and_hosts_count_them() -> None:
    nets = [{"id": "n1", "name": "blue", "provider:segmentation_id": 1001}]
    subnets = [{"id": "s1", "network_id": "n1", "cidr": "10.0.0.0/24", "gateway_ip": "10.0.0.1"}]
    ports = [
        {"id": "p1", "network_id": "n1", "name": "web", "status": "ACTIVE", "binding:host_id": "h1",
         "fixed_ips": [{"subnet_id": "s1", "ip_address": "10.0.0.5"}]},
        {"id": "p2", "network_id": "n1", "name": "db", "status": "DOWN", "binding:host_id": "ghost",
         "fixed_ips": []},
    ]
    nodes = [{"node_id": "u1", "node_name": "h1", "local_ip": "172.16.0.1"}]
    t = build(nets, subnets, ports, [], nodes, lambda nid: sync(5, 5), rev=9, watermark=9)
    (vpc,) = t["vpcs"]
    assert vpc["vni"] == 1001
    assert [p["name"] for p in vpc["subnets"][0]["ports"]] == ["web"]
    assert [p["name"] for p in vpc["unaddressed_ports"]] == ["db"]
    hosts = {h["node_name"]: h for h in t["hosts"]}
    assert hosts["h1"]["state"] == "in sync" and hosts["h1"]["active"] == 1
    # A port bound to a name no node has shows its host as unregistered, not silently dropped.
    assert hosts["ghost"]["state"] == "unregistered" and hosts["ghost"]["ports"] == 1
