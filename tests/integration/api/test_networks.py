"""Networks over HTTP: Neutron's shape, VNI allocation, policy, bad input leaves nothing written."""

from alcor.db.backends import StoreModule


def last_rev(ctl):
    return ctl.kernel.get(StoreModule).store.changes.last_rev


async def test_create_shows_neutron_shape_and_unique_vni(ctl):
    a = await ctl.create("network", "/v2.0/networks", name="a")
    b = await ctl.create("network", "/v2.0/networks", name="b")
    for n in (a, b):
        assert n["provider:network_type"] == "vxlan"
        assert n["status"] == "ACTIVE" and n["subnets"] == [] and n["shared"] is False
        assert n["router:external"] is False and n["port_security_enabled"] is True
        assert n["mtu"] == 1450 and n["revision_number"] == 1
        assert n["project_id"] == n["tenant_id"] == "admin"
        assert n["created_at"].endswith("Z") and n["updated_at"]
    assert a["provider:segmentation_id"] != b["provider:segmentation_id"]
    assert 1000 <= a["provider:segmentation_id"] <= 16000000


async def test_explicit_vni_in_use_is_409(ctl):
    a = await ctl.create("network", "/v2.0/networks", **{"provider:segmentation_id": 5000})
    assert a["provider:segmentation_id"] == 5000
    before = last_rev(ctl)
    r = await ctl.post("/v2.0/networks", {"network": {"provider:segmentation_id": 5000}})
    assert r.status == 409 and r.error["type"] == "TunnelIdInUse"
    assert last_rev(ctl) == before


async def test_vni_freed_on_delete_and_reused_range(tmp_path, backend):
    from tests.support.controller import running_controller
    async with running_controller(tmp_path, backend, network__vni_min=10, network__vni_max=11) as (_, c):
        a = await c.create("network", "/v2.0/networks")
        await c.create("network", "/v2.0/networks")
        r = await c.post("/v2.0/networks", {"network": {}})
        assert r.status == 503 and r.error["type"] == "NoNetworkAvailable"
        assert (await c.delete(f"/v2.0/networks/{a['id']}")).status == 204
        c2 = await c.create("network", "/v2.0/networks")
        assert c2["provider:segmentation_id"] == a["provider:segmentation_id"]


async def test_tenant_cannot_set_provider_or_shared(ctl):
    t = ctl.as_project("tenant-a")
    r = await t.post("/v2.0/networks", {"network": {"provider:segmentation_id": 77}})
    assert r.status == 403 and r.error["type"] == "PolicyNotAuthorized"
    r = await t.post("/v2.0/networks", {"network": {"shared": True}})
    assert r.status == 403


async def test_update_bumps_revision_and_if_match(ctl):
    n = await ctl.create("network", "/v2.0/networks", name="x")
    r = await ctl.put(f"/v2.0/networks/{n['id']}", {"network": {"name": "y"}},
                      headers={"If-Match": "revision_number=1"})
    assert r.status == 200 and r.body["network"]["name"] == "y"
    assert r.body["network"]["revision_number"] == 2
    before = last_rev(ctl)
    r = await ctl.put(f"/v2.0/networks/{n['id']}", {"network": {"name": "z"}},
                      headers={"If-Match": "revision_number=1"})
    assert r.status == 412 and r.error["type"] == "RevisionNumberConstraintFailed"
    r = await ctl.delete(f"/v2.0/networks/{n['id']}", headers={"If-Match": "revision_number=1"})
    assert r.status == 412
    assert last_rev(ctl) == before
    assert (await ctl.get(f"/v2.0/networks/{n['id']}")).body["network"]["name"] == "y"


async def test_bad_input(ctl):
    before = last_rev(ctl)
    cases = [
        (b'{"network": ', 400, "MalformedRequestBody"),
        (b'{"network": {"name": 5}}', 400, "HTTPBadRequest"),
        (b'{"network": {"admin_state_up": "maybe"}}', 400, "HTTPBadRequest"),
        (b'{"network": {"colour": "red"}}', 400, "HTTPBadRequest"),
        (b'{"netwrk": {}}', 400, "HTTPBadRequest"),
        (b'[1, 2]', 400, "HTTPBadRequest"),
        (b'{"network": {"mtu": -1}}', 400, "HTTPBadRequest"),
        (b'{"network": {"status": "DOWN"}}', 400, "HTTPBadRequest"),
        (b'', 400, "HTTPBadRequest"),
    ]
    for raw, status, kind in cases:
        r = await ctl.post("/v2.0/networks", raw=raw)
        assert r.status == status, (raw, r.body)
        assert r.error["type"] == kind, (raw, r.body)
        assert r.error["message"]
    assert last_rev(ctl) == before
    assert (await ctl.get("/v2.0/networks")).body["networks"] == []


async def test_oversized_body_is_413(ctl):
    r = await ctl.post("/v2.0/networks", raw=b'{"network": {"name": "' + b"x" * 2_000_000 + b'"}}')
    assert r.status == 413 and "NeutronError" in r.body


async def test_unknown_id_and_route_are_neutron_404(ctl):
    r = await ctl.get("/v2.0/networks/6a6e2a8e-0000-4000-8000-000000000000")
    assert r.status == 404 and r.error["type"] == "NetworkNotFound"
    r = await ctl.get("/v2.0/nothing-here")
    assert r.status == 404 and "NeutronError" in r.body
    r = await ctl.request("PATCH", "/v2.0/networks")
    assert r.status == 405 and "NeutronError" in r.body


async def test_tenants_see_only_their_own_and_shared(ctl):
    a, b = ctl.as_project("tenant-a"), ctl.as_project("tenant-b")
    na = await a.create("network", "/v2.0/networks", name="a-net")
    shared = await ctl.create("network", "/v2.0/networks", name="pub", shared=True)
    names = {n["name"] for n in (await b.get("/v2.0/networks")).body["networks"]}
    assert names == {"pub"}
    assert (await b.get(f"/v2.0/networks/{na['id']}")).status == 404
    assert (await b.put(f"/v2.0/networks/{na['id']}", {"network": {"name": "x"}})).status == 404
    assert (await b.delete(f"/v2.0/networks/{na['id']}")).status == 404
    # Seen but not owned: Neutron's 403 (a resource the caller cannot see is a 404).
    assert (await b.delete(f"/v2.0/networks/{shared['id']}")).status == 403
    all_names = {n["name"] for n in (await ctl.get("/v2.0/networks")).body["networks"]}
    assert {"a-net", "pub"} <= all_names
    r = await a.post("/v2.0/networks", {"network": {"project_id": "tenant-b"}})
    assert r.status == 400


async def test_delete_network_with_ports_is_409_then_cascades_subnets(ctl, net):
    network, subnet = net
    port = await ctl.create("port", "/v2.0/ports", network_id=network["id"])
    r = await ctl.delete(f"/v2.0/networks/{network['id']}")
    assert r.status == 409 and r.error["type"] == "NetworkInUse"
    assert (await ctl.delete(f"/v2.0/ports/{port['id']}")).status == 204
    assert (await ctl.delete(f"/v2.0/networks/{network['id']}")).status == 204
    assert (await ctl.get(f"/v2.0/subnets/{subnet['id']}")).status == 404


async def test_bulk_create_is_atomic(ctl):
    before = last_rev(ctl)
    r = await ctl.post("/v2.0/networks", {"networks": [{"name": "ok"}, {"name": 7}]})
    assert r.status == 400
    r = await ctl.post("/v2.0/networks", {"networks": [
        {"name": "ok"}, {"provider:segmentation_id": 4000}, {"provider:segmentation_id": 4000}]})
    assert r.status == 409
    assert last_rev(ctl) == before
    assert (await ctl.get("/v2.0/networks")).body["networks"] == []
    r = await ctl.post("/v2.0/networks", {"networks": [{"name": "a"}, {"name": "b"}]})
    assert r.status == 201 and [n["name"] for n in r.body["networks"]] == ["a", "b"]


async def test_mtu_defaults_to_the_overlay_maximum(tmp_path):
    from tests.support.controller import running_controller
    async with running_controller(tmp_path) as (_, c):
        assert (await c.create("network", "/v2.0/networks"))["mtu"] == 1450  # 1500 - VXLAN's 50
    async with running_controller(tmp_path / "jumbo", network__underlay_mtu=9000) as (_, c):
        assert (await c.create("network", "/v2.0/networks"))["mtu"] == 8950
        assert (await c.create("network", "/v2.0/networks", mtu=1500))["mtu"] == 1500


async def test_mtu_above_the_overlay_maximum_is_neutrons_400(ctl):
    before = last_rev(ctl)
    for mtu in (1451, 1500, 9000):
        r = await ctl.post("/v2.0/networks", {"network": {"mtu": mtu}})
        assert r.status == 400 and r.error["type"] == "InvalidInput", r.body
        assert r.error["message"] == "Invalid input for operation: Requested MTU is too big, maximum is 1450."
    assert last_rev(ctl) == before and (await ctl.get("/v2.0/networks")).body["networks"] == []
    n = await ctl.create("network", "/v2.0/networks", mtu=1450)
    assert n["mtu"] == 1450
    assert (await ctl.create("network", "/v2.0/networks", mtu=1280))["mtu"] == 1280


async def test_mtu_is_writable_within_the_maximum(ctl):
    n = await ctl.create("network", "/v2.0/networks")
    r = await ctl.put(f"/v2.0/networks/{n['id']}", {"network": {"mtu": 1400}})
    assert r.status == 200 and r.body["network"]["mtu"] == 1400
    before = last_rev(ctl)
    r = await ctl.put(f"/v2.0/networks/{n['id']}", {"network": {"mtu": 1451}})
    assert r.status == 400 and r.error["type"] == "InvalidInput"
    assert last_rev(ctl) == before
    assert (await ctl.get(f"/v2.0/networks/{n['id']}")).body["network"]["mtu"] == 1400


async def test_a_subnet_needs_its_ip_versions_minimum_mtu(ctl):
    """As in Neutron: a network may have any MTU, but an IPv4 subnet needs 68 and an IPv6 one
    1280 (409 NetworkMTUSubnetConflict), on creation and when the network's MTU goes down."""
    tiny = await ctl.create("network", "/v2.0/networks", mtu=67)
    assert tiny["mtu"] == 67
    before = last_rev(ctl)
    r = await ctl.post("/v2.0/subnets", {"subnet": {"network_id": tiny["id"], "ip_version": 4,
                                                    "cidr": "10.8.0.0/24"}})
    assert r.status == 409 and r.error["type"] == "NetworkMTUSubnetConflict"
    assert "68" in r.error["message"]
    small = await ctl.create("network", "/v2.0/networks", mtu=1279)
    r = await ctl.post("/v2.0/subnets", {"subnet": {"network_id": small["id"], "ip_version": 6,
                                                    "cidr": "2001:db8::/64"}})
    assert r.status == 409 and r.error["type"] == "NetworkMTUSubnetConflict"
    assert "1280" in r.error["message"]
    assert last_rev(ctl) == before + 1  # only the second network: no subnet was written
    await ctl.create("subnet", "/v2.0/subnets", network_id=small["id"], ip_version=4, cidr="10.9.0.0/24")
    r = await ctl.put(f"/v2.0/networks/{small['id']}", {"network": {"mtu": 67}})
    assert r.status == 409 and "68" in r.error["message"]
    assert (await ctl.put(f"/v2.0/networks/{small['id']}", {"network": {"mtu": 68}})).status == 200
    n = await ctl.create("network", "/v2.0/networks")
    await ctl.create("subnet", "/v2.0/subnets", network_id=n["id"], ip_version=6, cidr="2001:db8::/64")
    r = await ctl.put(f"/v2.0/networks/{n['id']}", {"network": {"mtu": 1279}})
    assert r.status == 409 and "1280" in r.error["message"]
    r = await ctl.put(f"/v2.0/networks/{n['id']}", {"network": {"mtu": 1280}})
    assert r.status == 200
    # Without subnets, any MTU goes.
    assert (await ctl.put(f"/v2.0/networks/{tiny['id']}", {"network": {"mtu": 0}})).status == 200


async def test_what_no_host_could_carry_out_is_refused(ctl):
    before = last_rev(ctl)
    r = await ctl.post("/v2.0/networks", {"network": {"provider:physical_network": "physnet1"}})
    assert r.status == 400 and r.error["type"] == "InvalidInput"
    r = await ctl.post("/v2.0/networks", {"network": {"provider:network_type": "vlan"}})
    assert r.status == 400
    assert last_rev(ctl) == before
