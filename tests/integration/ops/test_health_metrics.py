"""/healthz, /readyz, /metrics, the topology and goal-state views, on a running controller."""

from __future__ import annotations

import re
from pathlib import Path

from alcor.db.backends import StoreModule
from tests.integration.ops.conftest import NODE, dev_controller, small_cloud
from tests.support.controller import running_controller
from tests.support.wait import eventually


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


async def metrics(c) -> str:  # type: ignore[no-untyped-def]
    async with c.session.get(c.base + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        return await r.text()


async def test_health_and_readiness(tmp_path: Path) -> None:
    async with running_controller(tmp_path) as (kernel, c):
        r = await c.get("/healthz")
        assert r.status == 200 and r.body["status"] == "ok"
        r = await c.get("/readyz")
        assert r.status == 200
        assert r.body["checks"]["store"] == {"ok": True, "detail": "writable"}
        assert r.body["checks"]["api"]["ok"] is True
        # A store that cannot take a write makes the controller unready (503), not dead.
        store = kernel.get(StoreModule).store
        writer, store._writer = store._writer, None
        try:
            r = await c.get("/readyz")
            assert r.status == 503
            assert r.body["status"] == "failing"
            assert r.body["checks"]["store"]["ok"] is False
            assert (await c.get("/healthz")).status == 200
        finally:
            store._writer = writer


async def test_api_latency_by_route_and_status(tmp_path: Path) -> None:
    async with running_controller(tmp_path) as (_, c):
        await c.create("network", "/v2.0/networks", name="n")
        await c.get("/v2.0/networks/00000000-0000-0000-0000-000000000000")
        text = await metrics(c)
        assert sample(text, "alcor_api_request_duration_seconds_count", method="POST",
                      route="/v2.0/networks", status="201") == 1
        # The route's template, not the URL: one series per route whatever the ids.
        assert sample(text, "alcor_api_request_duration_seconds_count", method="GET",
                      route="/v2.0/networks/{id}", status="404") == 1
        assert sample(text, "alcor_changelog_rev") == 1
        assert sample(text, "process_resident_memory_bytes") is not None


async def test_sync_metrics_follow_the_node(tmp_path: Path) -> None:
    async with dev_controller(tmp_path) as (kernel, c):
        cloud = await small_cloud(c)
        nid = cloud["node"]["node_id"]

        async def active() -> bool:
            r = await c.get(f"/v2.0/ports/{cloud['pear']['id']}")
            return r.body["port"]["status"] == "ACTIVE"
        await eventually(active)

        async def synced() -> str | None:
            text = await metrics(c)
            return text if sample(text, "alcor_southbound_node_in_sync", node_id=nid) == 1 else None
        text = await eventually(synced)
        goal = sample(text, "alcor_southbound_node_goal_rev", node_id=nid, node_name=NODE)
        assert goal is not None and goal > 0
        assert sample(text, "alcor_southbound_node_applied_rev", node_id=nid) == goal
        assert sample(text, "alcor_southbound_node_lag_revs", node_id=nid) == 0
        assert sample(text, "alcor_agent_applied_rev") == goal
        assert sample(text, "alcor_southbound_snapshots_total") >= 1
        assert sample(text, "alcor_agent_stream_messages_total", outcome="received") >= 1

        r = await c.get("/v2.0/alcor/topology")
        t = r.body["topology"]
        host = {h["node_name"]: h for h in t["hosts"]}[NODE]
        assert host["state"] == "in sync" and host["ports"] == 2 and host["active"] == 2
        ports = t["vpcs"][0]["subnets"][0]["ports"]
        assert {p["name"] for p in ports} == {"pear", "plum", "quince"}

        r = await c.get(f"/v2.0/alcor/nodes/{nid}/goal_state")
        g = r.body["goal_state"]
        assert sorted(g["local_ports"]) == sorted([cloud["pear"]["id"], cloud["plum"]["id"]])
        assert g["counts"]["vpc"] == 1 and g["counts"]["subnet"] == 1


async def test_topology_long_poll_returns_on_a_change(tmp_path: Path) -> None:
    async with running_controller(tmp_path) as (_, c):
        first = (await c.get("/v2.0/alcor/topology")).body["topology"]
        import asyncio

        waiter = asyncio.ensure_future(c.get(f"/v2.0/alcor/topology?after={first['rev']}&wait=20"))
        await asyncio.sleep(0.2)
        assert not waiter.done()
        await c.create("network", "/v2.0/networks", name="late")
        r = await asyncio.wait_for(waiter, 5)
        assert [v["name"] for v in r.body["topology"]["vpcs"]] == ["late"]


async def test_ops_views_are_for_admins(tmp_path: Path) -> None:
    async with running_controller(tmp_path) as (_, c):
        tenant = c.as_project("acme")
        assert (await tenant.get("/v2.0/alcor/topology")).status == 403
        assert (await tenant.get("/healthz")).status == 200  # probes need no credentials
