"""`/v2.0/agents` over HTTP: what an admin may change on an agent, deleting one, and what others
see (the gateway placement an L3 agent's admin_state_up steers is in
tests/integration/southbound/test_gateways.py)."""

from alcor.db.backends import StoreModule

NOBODY = "00000000-0000-0000-0000-000000000000"


def last_rev(ctl):
    return ctl.kernel.get(StoreModule).store.changes.last_rev


async def nodes(ctl):
    gw = await ctl.create("node", "/v2.0/alcor/nodes", node_name="gw-1", local_ip="172.16.0.31",
                          bridge_mappings={"physnet1": "br-ex"})
    c = await ctl.create("node", "/v2.0/alcor/nodes", node_name="c-1", local_ip="172.16.0.32")
    l3 = (await ctl.get("/v2.0/agents?agent_type=L3+agent")).body["agents"][0]
    return gw, c, l3


async def test_an_admin_sets_descriptions_and_turns_an_l3_agent_off(ctl):
    gw, c, l3 = await nodes(ctl)
    r = await ctl.put(f"/v2.0/agents/{c['node_id']}", {"agent": {"description": "rack 4"}})
    assert r.status == 200 and r.body["agent"]["description"] == "rack 4"
    assert r.body["agent"]["admin_state_up"] is True and r.body["agent"]["host"] == "c-1"
    assert (await ctl.get(f"/v2.0/agents/{c['node_id']}")).body["agent"]["description"] == "rack 4"
    r = await ctl.put(f"/v2.0/agents/{l3['id']}", {"agent": {"admin_state_up": False}})
    assert r.status == 200 and r.body["agent"]["admin_state_up"] is False
    # Each agent of a node keeps its own settings; the node's record shows them.
    ovs = (await ctl.get(f"/v2.0/agents/{gw['node_id']}")).body["agent"]
    assert ovs["admin_state_up"] is True and ovs["description"] is None
    node = (await ctl.get(f"/v2.0/alcor/nodes/{gw['node_id']}")).body["node"]
    assert node["agents"] == {"L3 agent": {"admin_state_up": False}}
    assert node["revision_number"] == gw["revision_number"] + 1
    listed = (await ctl.get("/v2.0/agents?admin_state_up=false")).body["agents"]
    assert [a["id"] for a in listed] == [l3["id"]]
    # Setting what is already set writes nothing.
    before = last_rev(ctl)
    r = await ctl.put(f"/v2.0/agents/{l3['id']}", {"agent": {"admin_state_up": False}})
    assert r.status == 200 and last_rev(ctl) == before
    r = await ctl.put(f"/v2.0/agents/{l3['id']}", {"agent": {"admin_state_up": True,
                                                            "description": None}})
    assert r.body["agent"]["admin_state_up"] is True and r.body["agent"]["description"] is None
    # The settings survive a restart of the indexes (they are the node's record).
    await ctl.kernel.named("nodes").reload()
    again = (await ctl.get(f"/v2.0/agents/{c['node_id']}")).body["agent"]
    assert again["description"] == "rack 4"


async def test_bad_agent_updates_are_refused_and_write_nothing(ctl):
    gw, c, l3 = await nodes(ctl)
    before = last_rev(ctl)
    for body, status in [
        ({"agent": {"admin_state_up": False}}, 400),   # an Open vSwitch agent: nothing would honour it
        ({"agent": {"host": "elsewhere"}}, 400),        # read-only
        ({"agent": {"colour": "red"}}, 400),
        ({"agent": {"description": "x" * 256}}, 400),
        ({"agent": {"admin_state_up": "maybe"}}, 400),
        ({"agents": {}}, 400),
    ]:
        r = await ctl.put(f"/v2.0/agents/{c['node_id']}", body)
        assert r.status == status, (body, r.body)
        assert set(r.body) == {"NeutronError"}
    assert (await ctl.put(f"/v2.0/agents/{NOBODY}", {"agent": {"description": "x"}})).status == 404
    assert last_rev(ctl) == before


async def test_deleting_agents(ctl, net):
    gw, c, l3 = await nodes(ctl)
    assert (await ctl.delete(f"/v2.0/agents/{NOBODY}")).status == 404
    r = await ctl.delete(f"/v2.0/agents/{l3['id']}")
    assert r.status == 409 and r.error["type"] == "AgentInUse"
    network, _ = net
    port = await ctl.create("port", "/v2.0/ports", network_id=network["id"],
                            **{"binding:host_id": "c-1"})
    r = await ctl.delete(f"/v2.0/agents/{c['node_id']}")
    assert r.status == 409 and r.error["type"] == "NodeInUse"
    assert (await ctl.delete(f"/v2.0/ports/{port['id']}")).status == 204
    # An Open vSwitch agent is its node: both go.
    assert (await ctl.delete(f"/v2.0/agents/{c['node_id']}")).status == 204
    assert (await ctl.get(f"/v2.0/agents/{c['node_id']}")).status == 404
    assert (await ctl.get(f"/v2.0/alcor/nodes/{c['node_id']}")).status == 404
    assert {a["host"] for a in (await ctl.get("/v2.0/agents")).body["agents"]} == {"gw-1"}


async def test_only_admins_see_or_change_agents(ctl):
    gw, c, l3 = await nodes(ctl)
    who = ctl.as_project("tenant")
    r = await who.get("/v2.0/agents")
    assert r.status == 200 and r.body["agents"] == []
    # 404, not 403: a non-admin learns nothing of which agents exist.
    assert (await who.get(f"/v2.0/agents/{c['node_id']}")).status == 404
    r = await who.put(f"/v2.0/agents/{c['node_id']}", {"agent": {"description": "mine"}})
    assert r.status == 404
    assert (await who.delete(f"/v2.0/agents/{c['node_id']}")).status == 404
    assert (await ctl.get(f"/v2.0/agents/{c['node_id']}")).body["agent"]["description"] is None
