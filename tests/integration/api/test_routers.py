"""Routers over HTTP: interfaces by subnet and by port, routes, external gateway, in-use rules."""


async def two_subnets(ctl):
    n = await ctl.create("network", "/v2.0/networks")
    s1 = await ctl.create("subnet", "/v2.0/subnets", network_id=n["id"], cidr="10.0.1.0/24", ip_version=4)
    s2 = await ctl.create("subnet", "/v2.0/subnets", network_id=n["id"], cidr="10.0.2.0/24", ip_version=4)
    return n, s1, s2


async def test_interface_by_subnet_and_port(ctl):
    n, s1, s2 = await two_subnets(ctl)
    r = await ctl.create("router", "/v2.0/routers", name="r1")
    assert r["external_gateway_info"] is None and r["routes"] == [] and r["status"] == "ACTIVE"
    res = await ctl.put(f"/v2.0/routers/{r['id']}/add_router_interface", {"subnet_id": s1["id"]})
    assert res.status == 200, res.body
    info = res.body
    assert info["subnet_id"] == s1["id"] and info["id"] == r["id"] and info["network_id"] == n["id"]
    port = (await ctl.get(f"/v2.0/ports/{info['port_id']}")).body["port"]
    assert port["device_owner"] == "network:router_interface" and port["device_id"] == r["id"]
    assert port["fixed_ips"] == [{"subnet_id": s1["id"], "ip_address": "10.0.1.1"}]
    again = await ctl.put(f"/v2.0/routers/{r['id']}/add_router_interface", {"subnet_id": s1["id"]})
    assert again.status == 400
    p = await ctl.create("port", "/v2.0/ports", network_id=n["id"],
                         fixed_ips=[{"subnet_id": s2["id"], "ip_address": "10.0.2.5"}])
    res = await ctl.put(f"/v2.0/routers/{r['id']}/add_router_interface", {"port_id": p["id"]})
    assert res.status == 200 and res.body["port_id"] == p["id"]
    assert (await ctl.get(f"/v2.0/routers/{r['id']}")).body["router"]["revision_number"] == 3
    # A router interface port cannot be deleted through the port API, nor the router while attached.
    d = await ctl.delete(f"/v2.0/ports/{info['port_id']}")
    assert d.status == 409
    d = await ctl.delete(f"/v2.0/routers/{r['id']}")
    assert d.status == 409 and d.error["type"] == "RouterInUse"
    d = await ctl.delete(f"/v2.0/subnets/{s1['id']}")
    assert d.status == 409
    res = await ctl.put(f"/v2.0/routers/{r['id']}/remove_router_interface", {"subnet_id": s1["id"]})
    assert res.status == 200
    assert (await ctl.get(f"/v2.0/ports/{info['port_id']}")).status == 404
    res = await ctl.put(f"/v2.0/routers/{r['id']}/remove_router_interface", {"port_id": p["id"]})
    assert res.status == 200
    assert (await ctl.delete(f"/v2.0/routers/{r['id']}")).status == 204


async def test_interface_errors(ctl):
    n, s1, _ = await two_subnets(ctl)
    r = await ctl.create("router", "/v2.0/routers")
    base = f"/v2.0/routers/{r['id']}"
    assert (await ctl.put(base + "/add_router_interface", {})).status == 400
    assert (await ctl.put(base + "/add_router_interface", {"subnet_id": s1["id"], "port_id": s1["id"]})).status == 400
    nogw = await ctl.create("subnet", "/v2.0/subnets", network_id=n["id"], cidr="10.0.9.0/24",
                            ip_version=4, gateway_ip=None)
    assert (await ctl.put(base + "/add_router_interface", {"subnet_id": nogw["id"]})).status == 400
    used = await ctl.create("port", "/v2.0/ports", network_id=n["id"], device_id="vm-1")
    res = await ctl.put(base + "/add_router_interface", {"port_id": used["id"]})
    assert res.status == 409 and res.error["type"] == "PortInUse"
    res = await ctl.put(base + "/remove_router_interface", {"subnet_id": s1["id"]})
    assert res.status == 404
    res = await ctl.put("/v2.0/routers/0b9c9a5e-0000-4000-8000-000000000000/add_router_interface",
                        {"subnet_id": s1["id"]})
    assert res.status == 404 and res.error["type"] == "RouterNotFound"


async def test_routes_need_a_connected_nexthop(ctl):
    _, s1, _ = await two_subnets(ctl)
    r = await ctl.create("router", "/v2.0/routers")
    bad = await ctl.put(f"/v2.0/routers/{r['id']}", {"router": {"routes": [
        {"destination": "192.168.0.0/16", "nexthop": "10.0.1.50"}]}})
    assert bad.status == 400 and bad.error["type"] == "InvalidRoutes"
    await ctl.put(f"/v2.0/routers/{r['id']}/add_router_interface", {"subnet_id": s1["id"]})
    ok = await ctl.put(f"/v2.0/routers/{r['id']}", {"router": {"routes": [
        {"destination": "192.168.0.7/16", "nexthop": "10.0.1.50"}]}})
    assert ok.status == 200 and ok.body["router"]["routes"] == [
        {"destination": "192.168.0.0/16", "nexthop": "10.0.1.50"}]
    res = await ctl.put(f"/v2.0/routers/{r['id']}/remove_router_interface", {"subnet_id": s1["id"]})
    assert res.status == 409 and res.error["type"] == "RouterInterfaceInUseByRoute"


async def test_external_gateway_only_on_an_external_network(ctl):
    plain = await ctl.create("network", "/v2.0/networks")
    r = await ctl.post("/v2.0/routers", {"router": {"external_gateway_info": {"network_id": plain["id"]}}})
    assert r.status == 400
    r = await ctl.create("router", "/v2.0/routers", external_gateway_info=None)
    assert r["external_gateway_info"] is None
    res = await ctl.put(f"/v2.0/routers/{r['id']}", {"router": {"external_gateway_info": {
        "network_id": plain["id"]}}})
    assert res.status == 400
    assert (await ctl.get(f"/v2.0/ports?device_id={r['id']}")).body["ports"] == []
