"""A port's bindings (Neutron's binding-extended) as Nova's live migration drives them: an inactive
binding for the destination, activated (the port moves, the old binding goes inactive), the
leftover deleted."""


async def test_live_migration_of_a_port_between_two_hosts(ctl, net):
    network, _ = net
    for name, ip in (("src", "172.16.0.1"), ("dst", "172.16.0.2")):
        await ctl.create("node", "/v2.0/alcor/nodes", node_name=name, local_ip=ip)
    p = await ctl.create("port", "/v2.0/ports", network_id=network["id"], device_owner="compute:nova",
                         **{"binding:host_id": "src"})
    url = f"/v2.0/ports/{p['id']}/bindings"
    listed = (await ctl.get(url)).body["bindings"]
    assert [(b["host"], b["status"], b["vif_type"]) for b in listed] == [("src", "ACTIVE", "ovs")]
    r = await ctl.post(url, {"binding": {"host": "dst", "profile": {"migrating_to": "dst"}}})
    assert r.status == 201, r.body
    b = r.body["binding"]
    assert (b["host"], b["status"], b["vif_type"], b["vnic_type"]) == ("dst", "INACTIVE", "ovs", "normal")
    assert b["vif_details"]["bridge_name"] == "br-int" and b["profile"] == {"migrating_to": "dst"}
    # The port is still where it was until the binding is activated.
    assert (await ctl.get(f"/v2.0/ports/{p['id']}")).body["port"]["binding:host_id"] == "src"
    assert (await ctl.post(url, {"binding": {"host": "dst"}})).status == 409
    assert (await ctl.post(url, {"binding": {"host": "src"}})).error["type"] == "PortBindingAlreadyExists"
    r = await ctl.put(f"{url}/dst", {"binding": {"profile": {"k": "v"}}})
    assert r.status == 200 and r.body["binding"]["profile"] == {"k": "v"}
    last = (await ctl.get("/v2.0/alcor/changes?since=0&limit=10000")).body["last_rev"]
    r = await ctl.put(f"{url}/dst/activate")
    assert r.status == 200 and (r.body["binding"]["host"], r.body["binding"]["status"]) == ("dst", "ACTIVE")
    port = (await ctl.get(f"/v2.0/ports/{p['id']}")).body["port"]
    assert (port["binding:host_id"], port["binding:profile"], port["status"]) == ("dst", {"k": "v"}, "DOWN")
    # The move is a change of the port (what placement moves the port's flows by).
    changes = (await ctl.get(f"/v2.0/alcor/changes?since={last}")).body["changes"]
    moved = [c for c in changes if c["type"] == "port"]
    assert len(moved) == 1 and moved[0]["body"]["binding:host_id"] == "dst"
    listed = {b["host"]: b["status"] for b in (await ctl.get(url)).body["bindings"]}
    assert listed == {"dst": "ACTIVE", "src": "INACTIVE"}
    r = await ctl.put(f"{url}/dst/activate")
    assert r.status == 409 and r.error["type"] == "PortBindingAlreadyActive"
    assert (await ctl.delete(f"{url}/src")).status == 204
    assert (await ctl.get(f"{url}/src")).error["type"] == "PortBindingNotFound"
    assert (await ctl.delete(f"{url}/src")).status == 404
    assert (await ctl.put(f"{url}/nowhere/activate")).status == 404
    assert [b["host"] for b in (await ctl.get(url)).body["bindings"]] == ["dst"]
    # An inactive binding goes with its port.
    await ctl.post(url, {"binding": {"host": "src"}})
    assert (await ctl.delete(f"/v2.0/ports/{p['id']}")).status == 204
    assert (await ctl.get(url)).status == 404


async def test_an_unbound_ports_first_binding_is_active_and_members_may_not(ctl, net):
    network, _ = net
    await ctl.create("node", "/v2.0/alcor/nodes", node_name="h1", local_ip="172.16.0.1")
    p = await ctl.create("port", "/v2.0/ports", network_id=network["id"])
    url = f"/v2.0/ports/{p['id']}/bindings"
    assert (await ctl.get(url)).body["bindings"] == []
    r = await ctl.post(url, {"binding": {"host": "h1"}})
    assert r.status == 201 and r.body["binding"]["status"] == "ACTIVE"
    assert (await ctl.get(f"/v2.0/ports/{p['id']}")).body["port"]["binding:host_id"] == "h1"
    for bad in ({"binding": {}}, {"binding": {"host": ""}}, {"binding": {"host": "h2", "colour": 1}},
                {"binding": {"host": "h2", "vnic_type": "quantum"}}, {"host": "h2"}):
        r = await ctl.post(url, bad)
        assert r.status == 400 and "NeutronError" in r.body, bad
    tenant = ctl.as_project("tenant-m")
    tn = await tenant.create("network", "/v2.0/networks", name="t")
    tp = await tenant.create("port", "/v2.0/ports", network_id=tn["id"])
    turl = f"/v2.0/ports/{tp['id']}/bindings"
    assert (await tenant.get(turl)).status == 403
    assert (await tenant.post(turl, {"binding": {"host": "h1"}})).status == 403
    assert (await tenant.get(url)).status == 404  # not its port
