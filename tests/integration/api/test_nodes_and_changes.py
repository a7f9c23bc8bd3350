"""Nodes (admin only) and the operator's view of the change log."""

from alcor.db.backends import StoreModule


async def test_node_crud_and_mq_defaults(ctl):
    n = await ctl.create("node", "/v2.0/alcor/nodes", node_name="compute-1", local_ip="172.16.0.11",
                         mac_address="52:54:00:12:34:56")
    assert n["node_id"] and n["mq_url"].startswith("amqp://") and n["mq_vhost"] == "/"
    assert n["mq_exchange"] == "alcor" and n["mq_queue"] == f"alcor.node.{n['node_id']}"
    assert "id" not in n
    got = (await ctl.get(f"/v2.0/alcor/nodes/{n['node_id']}")).body["node"]
    assert got["local_ip"] == "172.16.0.11"
    lst = (await ctl.get("/v2.0/alcor/nodes?node_name=compute-1")).body["nodes"]
    assert [x["node_id"] for x in lst] == [n["node_id"]]
    dup = await ctl.post("/v2.0/alcor/nodes", {"node": {"node_name": "compute-1", "local_ip": "172.16.0.12"}})
    assert dup.status == 409
    bad = await ctl.post("/v2.0/alcor/nodes", {"node": {"node_name": "c2", "local_ip": "300.1.1.1"}})
    assert bad.status == 400
    own = await ctl.create("node", "/v2.0/alcor/nodes", node_name="c3", local_ip="172.16.0.13",
                           mq_url="amqp://guest:guest@10.1.1.1:5672/", mq_vhost="east")
    assert own["mq_vhost"] == "east"
    u = await ctl.put(f"/v2.0/alcor/nodes/{n['node_id']}", {"node": {"local_ip": "172.16.0.21"}})
    assert u.status == 200 and u.body["node"]["revision_number"] == 2
    assert (await ctl.delete(f"/v2.0/alcor/nodes/{own['node_id']}")).status == 204


async def test_tenant_cannot_touch_nodes(ctl):
    n = await ctl.create("node", "/v2.0/alcor/nodes", node_name="h", local_ip="172.16.0.1")
    t = ctl.as_project("tenant")
    assert (await t.get("/v2.0/alcor/nodes")).status == 403
    assert (await t.get(f"/v2.0/alcor/nodes/{n['node_id']}")).status == 403
    assert (await t.post("/v2.0/alcor/nodes", {"node": {"node_name": "x", "local_ip": "1.1.1.1"}})).status == 403
    assert (await t.delete(f"/v2.0/alcor/nodes/{n['node_id']}")).status == 403
    assert (await t.get("/v2.0/alcor/changes")).status == 403


async def test_node_with_bound_ports_cannot_go(ctl, net):
    network, _ = net
    n = await ctl.create("node", "/v2.0/alcor/nodes", node_name="h1", local_ip="172.16.0.1")
    await ctl.create("port", "/v2.0/ports", network_id=network["id"], **{"binding:host_id": "h1"})
    r = await ctl.delete(f"/v2.0/alcor/nodes/{n['node_id']}")
    assert r.status == 409


async def test_change_log_is_gap_free_and_paged(ctl, net):
    network, subnet = net
    p = await ctl.create("port", "/v2.0/ports", network_id=network["id"])
    await ctl.delete(f"/v2.0/ports/{p['id']}")
    body = (await ctl.get("/v2.0/alcor/changes?since=0")).body
    revs = [c["rev"] for c in body["changes"]]
    assert revs == list(range(1, len(revs) + 1)) and body["last_rev"] == revs[-1]
    kinds = [(c["type"], c["op"]) for c in body["changes"]]
    assert ("network", "create") in kinds and ("subnet", "create") in kinds
    assert ("port", "create") in kinds and kinds[-1] == ("port", "delete")
    port_row = next(c for c in body["changes"] if c["type"] == "port" and c["op"] == "create")
    assert port_row["vpc_id"] == network["id"] and port_row["revision_number"] == 1
    assert port_row["body"]["mac_address"] == p["mac_address"] and port_row["project_id"] == "admin"
    assert body["changes"][-1]["body"] is None
    page = (await ctl.get("/v2.0/alcor/changes?since=1&limit=2")).body
    assert [c["rev"] for c in page["changes"]] == [2, 3] and "changes_links" in page
    assert (await ctl.get("/v2.0/alcor/changes?since=x")).status == 400


async def test_change_log_wait_and_compaction(ctl):
    import asyncio
    changes = ctl.kernel.get(StoreModule).store.changes
    start = changes.last_rev
    waiter = asyncio.create_task(changes.wait(start, timeout=5))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await ctl.create("network", "/v2.0/networks")
    assert await asyncio.wait_for(waiter, 2) == start + 1
    for _ in range(5):
        await ctl.create("network", "/v2.0/networks")
    removed = await changes.compact(changes.last_rev - 2)
    assert removed >= 3
    assert changes.horizon == changes.last_rev - 3
    rows = await changes.read(0)
    assert rows[0].rev == changes.last_rev - 2
    body = (await ctl.get("/v2.0/alcor/changes?since=0")).body
    assert body["horizon"] == changes.horizon
