"""North-south over HTTP: flat provider networks, router:external seen by every project, bridge
mappings in node records, router gateway ports and /v2.0/agents (without agents reporting:
tests/integration/southbound/test_gateways.py has liveness and failover)."""

from alcor.db.backends import StoreModule


def last_rev(ctl):
    return ctl.kernel.get(StoreModule).store.changes.last_rev


async def external(ctl, physnet="physnet1", cidr="203.0.113.0/24"):
    net = await ctl.create("network", "/v2.0/networks", name="public", **{
        "router:external": True, "provider:network_type": "flat",
        "provider:physical_network": physnet})
    sub = await ctl.create("subnet", "/v2.0/subnets", network_id=net["id"], cidr=cidr,
                           ip_version=4, enable_dhcp=False)
    return net, sub


async def test_flat_provider_network_as_neutron_shows_it(ctl):
    net, _ = await external(ctl)
    assert net["provider:network_type"] == "flat"
    assert net["provider:physical_network"] == "physnet1"
    assert net["provider:segmentation_id"] is None and net["router:external"] is True
    assert net["mtu"] == 1500  # no encapsulation on the physical network
    before = last_rev(ctl)
    r = await ctl.post("/v2.0/networks", {"network": {"provider:network_type": "flat"}})
    assert r.status == 400 and "physical_network" in r.error["message"]
    r = await ctl.post("/v2.0/networks", {"network": {
        "provider:network_type": "flat", "provider:physical_network": "physnet1"}})
    assert r.status == 409 and r.error["type"] == "FlatNetworkInUse"
    r = await ctl.post("/v2.0/networks", {"network": {
        "provider:network_type": "flat", "provider:physical_network": "physnet2",
        "provider:segmentation_id": 7}})
    assert r.status == 400
    r = await ctl.post("/v2.0/networks", {"network": {"provider:network_type": "vlan"}})
    assert r.status == 400  # no host tags VLANs
    assert last_rev(ctl) == before
    r = await ctl.put(f"/v2.0/networks/{net['id']}", {"network": {
        "provider:physical_network": "physnet2"}})
    assert r.status == 400
    # The VNI range is untouched: the next overlay network still gets one.
    overlay = await ctl.create("network", "/v2.0/networks")
    assert overlay["provider:network_type"] == "vxlan" and overlay["provider:segmentation_id"]
    assert (await ctl.delete(f"/v2.0/networks/{net['id']}")).status == 204
    again = await ctl.create("network", "/v2.0/networks", **{
        "provider:network_type": "flat", "provider:physical_network": "physnet1"})
    assert again["provider:segmentation_id"] is None


async def test_external_networks_are_visible_to_every_project_read_only(ctl):
    net, sub = await external(ctl)
    tenant = ctl.as_project("tenant-a")
    seen = (await tenant.get("/v2.0/networks")).body["networks"]
    assert [n["id"] for n in seen] == [net["id"]]
    assert (await tenant.get(f"/v2.0/networks/{net['id']}")).status == 200
    r = await tenant.put(f"/v2.0/networks/{net['id']}", {"network": {"name": "mine"}})
    assert r.status in (403, 404)
    assert (await tenant.delete(f"/v2.0/networks/{net['id']}")).status in (403, 404)
    r = await tenant.post("/v2.0/networks", {"network": {"router:external": True}})
    assert r.status == 403
    # An admin may turn an overlay network external and back.
    n = await ctl.create("network", "/v2.0/networks")
    r = await ctl.put(f"/v2.0/networks/{n['id']}", {"network": {"router:external": True}})
    assert r.status == 200 and r.body["network"]["router:external"] is True


async def test_node_bridge_mappings(ctl):
    n = await ctl.create("node", "/v2.0/alcor/nodes", node_name="gw-1", local_ip="172.16.0.31",
                         bridge_mappings={"physnet1": "br-ex"})
    assert n["bridge_mappings"] == {"physnet1": "br-ex"}
    plain = await ctl.create("node", "/v2.0/alcor/nodes", node_name="c-1", local_ip="172.16.0.32")
    assert plain["bridge_mappings"] == {}
    r = await ctl.put(f"/v2.0/alcor/nodes/{plain['node_id']}", {"node": {
        "bridge_mappings": ["physnet1:br-ex", "physnet2:br-eth1"]}})
    assert r.status == 200
    assert r.body["node"]["bridge_mappings"] == {"physnet1": "br-ex", "physnet2": "br-eth1"}
    for bad in (["physnet1"], {"physnet1": "a-bridge-name-too-long"}, ["p:br", "p:br2"],
                {"a": "br-ex", "b": "br-ex"}, 7):
        r = await ctl.put(f"/v2.0/alcor/nodes/{plain['node_id']}", {"node": {"bridge_mappings": bad}})
        assert r.status == 400, bad


async def test_router_gateway_port_on_the_external_network(ctl, net):
    _, tenant_sub = net
    ext, ext_sub = await external(ctl)
    plain = await ctl.create("network", "/v2.0/networks")
    r = await ctl.post("/v2.0/routers", {"router": {"external_gateway_info": {"network_id": plain["id"]}}})
    assert r.status == 400  # not external
    router = await ctl.create("router", "/v2.0/routers", external_gateway_info={"network_id": ext["id"]})
    gw = router["external_gateway_info"]
    assert gw["network_id"] == ext["id"] and gw["enable_snat"] is True
    assert gw["external_fixed_ips"][0]["subnet_id"] == ext_sub["id"]
    ports = (await ctl.get(f"/v2.0/ports?device_id={router['id']}")).body["ports"]
    assert [p["device_owner"] for p in ports] == ["network:router_gateway"]
    # No gateway node maps physnet1 yet: the port waits unbound and DOWN.
    assert ports[0]["status"] == "DOWN" and ports[0]["binding:host_id"] == ""
    fixed = await ctl.put(f"/v2.0/routers/{router['id']}", {"router": {"external_gateway_info": {
        "network_id": ext["id"], "enable_snat": False,
        "external_fixed_ips": [{"ip_address": "203.0.113.77"}]}}})
    assert fixed.status == 200
    assert fixed.body["router"]["external_gateway_info"]["enable_snat"] is False
    assert fixed.body["router"]["external_gateway_info"]["external_fixed_ips"][0]["ip_address"] == "203.0.113.77"
    other = await ctl.post("/v2.0/routers", {"router": {"external_gateway_info": {
        "network_id": ext["id"], "external_fixed_ips": [{"ip_address": "203.0.113.77"}]}}})
    assert other.status == 409
    tenant = ctl.as_project("tenant-b")
    mine = await tenant.post("/v2.0/routers", {"router": {"external_gateway_info": {"network_id": ext["id"]}}})
    assert mine.status == 201
    denied = await tenant.post("/v2.0/routers", {"router": {"external_gateway_info": {
        "network_id": ext["id"], "enable_snat": False}}})
    assert denied.status == 403  # ext-gw-mode's enable_snat is the admin's
    cleared = await ctl.put(f"/v2.0/routers/{router['id']}", {"router": {"external_gateway_info": {}}})
    assert cleared.status == 200 and cleared.body["router"]["external_gateway_info"] is None
    assert (await ctl.get(f"/v2.0/ports?device_id={router['id']}")).body["ports"] == []


async def test_agents_from_the_node_records(ctl):
    gw = await ctl.create("node", "/v2.0/alcor/nodes", node_name="gw-1", local_ip="172.16.0.31",
                          bridge_mappings={"physnet1": "br-ex"})
    c = await ctl.create("node", "/v2.0/alcor/nodes", node_name="c-1", local_ip="172.16.0.32")
    agents = (await ctl.get("/v2.0/agents")).body["agents"]
    by = {(a["host"], a["agent_type"]) for a in agents}
    assert by == {("gw-1", "Open vSwitch agent"), ("gw-1", "L3 agent"), ("c-1", "Open vSwitch agent")}
    ovs = next(a for a in agents if a["id"] == c["node_id"])
    assert ovs["configurations"]["tunneling_ip"] == "172.16.0.32"
    assert ovs["binary"] == "alcor-agent" and ovs["admin_state_up"] is True
    assert set(ovs) >= {"id", "agent_type", "binary", "topic", "host", "admin_state_up", "alive",
                        "availability_zone", "configurations", "created_at", "started_at",
                        "heartbeat_timestamp", "description"}
    l3 = (await ctl.get("/v2.0/agents?agent_type=L3+agent")).body["agents"]
    assert [a["host"] for a in l3] == ["gw-1"]
    assert l3[0]["configurations"]["bridge_mappings"] == {"physnet1": "br-ex"}
    one = (await ctl.get(f"/v2.0/agents/{gw['node_id']}?fields=host&fields=alive")).body["agent"]
    assert set(one) == {"host", "alive"}
    assert (await ctl.get("/v2.0/agents/00000000-0000-0000-0000-000000000000")).status == 404
    assert (await ctl.get("/v2.0/agents?colour=red")).status == 400
    # Only admins see agents: Neutron's policy filters every row out for anyone else.
    r = await ctl.as_project("tenant").get("/v2.0/agents")
    assert r.status == 200 and r.body["agents"] == []
