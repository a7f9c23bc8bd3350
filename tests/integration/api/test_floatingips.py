"""Floating IPs over HTTP: Neutron's fields, association rules and errors (the packets are in
tests/integration/agent/test_north_south.py)."""

from alcor.db.backends import StoreModule


def last_rev(ctl):
    return ctl.kernel.get(StoreModule).store.changes.last_rev


async def scene(ctl):
    ext = await ctl.create("network", "/v2.0/networks", name="public", **{
        "router:external": True, "provider:network_type": "flat",
        "provider:physical_network": "physnet1"})
    ext_sub = await ctl.create("subnet", "/v2.0/subnets", network_id=ext["id"],
                               cidr="203.0.113.0/24", ip_version=4, enable_dhcp=False)
    t = ctl.as_project("tenant")
    net = await t.create("network", "/v2.0/networks")
    sub = await t.create("subnet", "/v2.0/subnets", network_id=net["id"], cidr="10.0.0.0/24",
                         ip_version=4)
    router = await t.create("router", "/v2.0/routers", external_gateway_info={"network_id": ext["id"]})
    vm = await t.create("port", "/v2.0/ports", network_id=net["id"])
    return t, ext, ext_sub, net, sub, router, vm


async def test_floating_ip_lifecycle_as_neutron_shows_it(ctl):
    t, ext, ext_sub, net, sub, router, vm = await scene(ctl)
    fip = await t.create("floatingip", "/v2.0/floatingips", floating_network_id=ext["id"],
                         description="web")
    assert fip["floating_network_id"] == ext["id"] and fip["subnet_id"] == ext_sub["id"]
    assert fip["floating_ip_address"].startswith("203.0.113.")
    assert fip["port_id"] is None and fip["fixed_ip_address"] is None and fip["router_id"] is None
    assert fip["status"] == "DOWN" and fip["port_details"] is None
    assert fip["project_id"] == "tenant" and fip["description"] == "web"
    assert fip["revision_number"] == 1 and fip["created_at"]
    # No route from the external network to the port's subnet yet: Neutron's 404.
    r = await t.put(f"/v2.0/floatingips/{fip['id']}", {"floatingip": {"port_id": vm["id"]}})
    assert r.status == 404 and r.error["type"] == "ExternalGatewayForFloatingIPNotFound"
    assert (await t.put(f"/v2.0/routers/{router['id']}/add_router_interface",
                        {"subnet_id": sub["id"]})).status == 200
    r = await t.put(f"/v2.0/floatingips/{fip['id']}", {"floatingip": {"port_id": vm["id"]}})
    assert r.status == 200, r.body
    got = r.body["floatingip"]
    assert got["port_id"] == vm["id"] and got["router_id"] == router["id"]
    assert got["fixed_ip_address"] == vm["fixed_ips"][0]["ip_address"]
    assert got["port_details"]["mac_address"] == vm["mac_address"]
    assert got["port_details"]["network_id"] == net["id"]
    # Filters and the address's own port, which no tenant sees.
    listed = (await t.get(f"/v2.0/floatingips?port_id={vm['id']}")).body["floatingips"]
    assert [f["id"] for f in listed] == [fip["id"]]
    assert (await t.get(f"/v2.0/floatingips?router_id={router['id']}&fields=floating_ip_address"
                        )).body["floatingips"] == [{"floating_ip_address": fip["floating_ip_address"]}]
    assert (await t.get("/v2.0/ports?device_owner=network:floatingip")).body["ports"] == []
    own = (await ctl.get(f"/v2.0/ports?device_id={fip['id']}")).body["ports"]
    assert [p["device_owner"] for p in own] == ["network:floatingip"]
    assert (await ctl.delete(f"/v2.0/ports/{own[0]['id']}")).status == 409
    # A second floating IP for the same fixed IP: 409.
    other = await t.create("floatingip", "/v2.0/floatingips", floating_network_id=ext["id"])
    r = await t.put(f"/v2.0/floatingips/{other['id']}", {"floatingip": {"port_id": vm["id"]}})
    assert r.status == 409 and r.error["type"] == "FloatingIPPortAlreadyAssociated"
    # What a floating IP needs cannot go while it is associated.
    r = await t.put(f"/v2.0/routers/{router['id']}/remove_router_interface", {"subnet_id": sub["id"]})
    assert r.status == 409 and r.error["type"] == "RouterInterfaceInUseByFloatingIP"
    r = await t.put(f"/v2.0/routers/{router['id']}", {"router": {"external_gateway_info": None}})
    assert r.status == 409 and r.error["type"] == "RouterExternalGatewayInUseByFloatingIp"
    # Disassociate by PUT port_id null.
    r = await t.put(f"/v2.0/floatingips/{fip['id']}", {"floatingip": {"port_id": None}})
    assert r.status == 200
    assert r.body["floatingip"]["port_id"] is None and r.body["floatingip"]["router_id"] is None
    assert r.body["floatingip"]["status"] == "DOWN"
    # Created associated, then the port goes: disassociated, as in Neutron.
    third = await t.create("floatingip", "/v2.0/floatingips", floating_network_id=ext["id"],
                           port_id=vm["id"])
    assert third["router_id"] == router["id"]
    assert (await t.delete(f"/v2.0/ports/{vm['id']}")).status == 204
    after = (await t.get(f"/v2.0/floatingips/{third['id']}")).body["floatingip"]
    assert after["port_id"] is None and after["fixed_ip_address"] is None
    for f in (fip, other, third):
        assert (await t.delete(f"/v2.0/floatingips/{f['id']}")).status == 204
    assert (await ctl.get(f"/v2.0/ports?network_id={ext['id']}&device_owner=network:floatingip"
                          )).body["ports"] == []


async def test_floating_ip_errors(ctl):
    t, ext, ext_sub, net, sub, router, vm = await scene(ctl)
    before = last_rev(ctl)
    r = await t.post("/v2.0/floatingips", {"floatingip": {"floating_network_id": net["id"]}})
    assert r.status == 400  # not an external network
    r = await t.post("/v2.0/floatingips", {"floatingip": {
        "floating_network_id": "00000000-0000-0000-0000-000000000000"}})
    assert r.status == 404
    r = await t.post("/v2.0/floatingips", {"floatingip": {}})
    assert r.status == 400
    r = await t.post("/v2.0/floatingips", {"floatingip": {
        "floating_network_id": ext["id"], "floating_ip_address": "203.0.113.50"}})
    assert r.status == 403  # choosing the address is the admin's
    r = await t.post("/v2.0/floatingips", {"floatingip": {
        "floating_network_id": ext["id"], "fixed_ip_address": "10.0.0.9"}})
    assert r.status == 400  # a fixed IP without a port
    r = await t.post("/v2.0/floatingips", {"floatingip": {
        "floating_network_id": ext["id"], "port_id": vm["id"]}})
    assert r.status == 404  # no router joins the subnet to the external network
    assert last_rev(ctl) == before  # nothing half-written: no address taken
    await t.put(f"/v2.0/routers/{router['id']}/add_router_interface", {"subnet_id": sub["id"]})
    r = await t.post("/v2.0/floatingips", {"floatingip": {
        "floating_network_id": ext["id"], "port_id": vm["id"], "fixed_ip_address": "10.0.0.200"}})
    assert r.status == 400  # not the port's address
    mine = await ctl.create("floatingip", "/v2.0/floatingips", floating_network_id=ext["id"],
                            floating_ip_address="203.0.113.50")
    assert mine["floating_ip_address"] == "203.0.113.50"
    r = await ctl.post("/v2.0/floatingips", {"floatingip": {
        "floating_network_id": ext["id"], "floating_ip_address": "203.0.113.50"}})
    assert r.status == 409  # address in use
    other = ctl.as_project("someone-else")
    assert (await other.get(f"/v2.0/floatingips/{mine['id']}")).status == 404
    r = await other.post("/v2.0/floatingips", {"floatingip": {
        "floating_network_id": ext["id"], "port_id": vm["id"]}})
    assert r.status == 404  # not their port


async def test_deleting_an_external_network_takes_its_unassociated_floating_ips(ctl):
    t, ext, ext_sub, net, sub, router, vm = await scene(ctl)
    await t.put(f"/v2.0/routers/{router['id']}/add_router_interface", {"subnet_id": sub["id"]})
    bound = await t.create("floatingip", "/v2.0/floatingips", floating_network_id=ext["id"],
                           port_id=vm["id"])
    free = await t.create("floatingip", "/v2.0/floatingips", floating_network_id=ext["id"])
    # A router's gateway and a floating IP mapping a port are still there: 409, nothing goes.
    before = last_rev(ctl)
    r = await ctl.delete(f"/v2.0/networks/{ext['id']}")
    assert r.status == 409 and r.error["type"] == "NetworkInUse"
    assert last_rev(ctl) == before
    assert (await t.get(f"/v2.0/floatingips/{free['id']}")).status == 200
    # With the association and the router's gateway gone, Neutron deletes the network, its
    # subnets and its floating IPs (and their addresses' ports).
    assert (await t.put(f"/v2.0/floatingips/{bound['id']}", {"floatingip": {"port_id": None}})).status == 200
    assert (await t.put(f"/v2.0/routers/{router['id']}", {"router": {"external_gateway_info": None}})).status == 200
    assert (await ctl.delete(f"/v2.0/networks/{ext['id']}")).status == 204
    assert (await t.get("/v2.0/floatingips")).body["floatingips"] == []
    assert (await ctl.get(f"/v2.0/subnets/{ext_sub['id']}")).status == 404
    assert (await ctl.get(f"/v2.0/ports?network_id={ext['id']}")).body["ports"] == []


async def test_a_port_of_another_project_cannot_take_the_tenants_floating_ip(ctl):
    t, ext, ext_sub, net, sub, router, vm = await scene(ctl)
    await t.put(f"/v2.0/routers/{router['id']}/add_router_interface", {"subnet_id": sub["id"]})
    fip = await t.create("floatingip", "/v2.0/floatingips", floating_network_id=ext["id"])
    # An admin puts another project's port on the tenant's network: the tenant sees it (its
    # network), but Neutron refuses to map the tenant's address to it (400); an admin may.
    theirs = await ctl.create("port", "/v2.0/ports", network_id=net["id"], project_id="other")
    assert (await t.get(f"/v2.0/ports/{theirs['id']}")).status == 200
    before = last_rev(ctl)
    r = await t.put(f"/v2.0/floatingips/{fip['id']}", {"floatingip": {"port_id": theirs["id"]}})
    assert r.status == 400 and "different project" in r.error["message"]
    assert last_rev(ctl) == before
    r = await ctl.put(f"/v2.0/floatingips/{fip['id']}", {"floatingip": {"port_id": theirs["id"]}})
    assert r.status == 200 and r.body["floatingip"]["port_id"] == theirs["id"]


async def test_an_empty_update_disassociates_any_other_keeps_the_association(ctl):
    t, ext, ext_sub, net, sub, router, vm = await scene(ctl)
    await t.put(f"/v2.0/routers/{router['id']}/add_router_interface", {"subnet_id": sub["id"]})
    fip = await t.create("floatingip", "/v2.0/floatingips", floating_network_id=ext["id"],
                         port_id=vm["id"], description="d1")
    r = await t.put(f"/v2.0/floatingips/{fip['id']}", {"floatingip": {"description": "d2"}})
    assert r.status == 200 and r.body["floatingip"]["port_id"] == vm["id"]
    assert r.body["floatingip"]["description"] == "d2"
    r = await t.put(f"/v2.0/floatingips/{fip['id']}", {"floatingip": {}})
    assert r.status == 200 and r.body["floatingip"]["port_id"] is None
    assert r.body["floatingip"]["router_id"] is None and r.body["floatingip"]["description"] == "d2"
    # The fixed IP is free again for another floating IP.
    again = await t.create("floatingip", "/v2.0/floatingips", floating_network_id=ext["id"],
                           port_id=vm["id"])
    assert again["port_id"] == vm["id"]
