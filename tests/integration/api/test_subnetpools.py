"""Subnet pools (Neutron's subnet_allocation): subnets carved from a pool's prefixes, checked
against each other and the pool's bounds and quota; prefixes that only grow."""


async def _pool(ctl, **attrs):
    r = await ctl.post("/v2.0/subnetpools", {"subnetpool": {"name": "p", **attrs}})
    assert r.status == 201, r.body
    return r.body["subnetpool"]


async def _subnet(ctl, net, **attrs):
    return await ctl.post("/v2.0/subnets", {"subnet": {"network_id": net["id"], "ip_version": 4,
                                                       **attrs}})


async def test_subnets_are_allocated_from_the_pool_without_overlap(ctl):
    pool = await _pool(ctl, prefixes=["10.11.12.0/24", "10.11.13.0/24"], min_prefixlen=25)
    assert (pool["ip_version"], pool["prefixes"]) == (4, ["10.11.12.0/23"])  # compacted
    # as Neutron shows them: strings
    assert (pool["min_prefixlen"], pool["default_prefixlen"], pool["max_prefixlen"]) == ("25", "25", "32")
    assert pool["shared"] is False and pool["is_default"] is False and pool["tags"] == []
    net = await ctl.create("network", "/v2.0/networks", name="n1")
    other = await ctl.create("network", "/v2.0/networks", name="n2")
    cidrs = []
    for n in (net, other, net, other):  # across networks too: the pool's blocks are unique
        r = await _subnet(ctl, n, subnetpool_id=pool["id"])
        assert r.status == 201, r.body
        assert r.body["subnet"]["subnetpool_id"] == pool["id"] and "prefixlen" not in r.body["subnet"]
        cidrs.append(r.body["subnet"]["cidr"])
    assert cidrs == ["10.11.12.0/25", "10.11.12.128/25", "10.11.13.0/25", "10.11.13.128/25"]
    r = await _subnet(ctl, net, subnetpool_id=pool["id"])
    assert r.status == 400 and r.error["type"] == "SubnetAllocationError"
    # A longer prefix still fits nowhere; a subnet given outside the pool's space is refused.
    third = await ctl.create("network", "/v2.0/networks", name="n3")
    assert (await _subnet(ctl, third, subnetpool_id=pool["id"], prefixlen=28)).status == 400
    assert (await _subnet(ctl, third, subnetpool_id=pool["id"], cidr="10.99.0.0/25")).status == 400
    # The pool can grow, then a given cidr inside it is taken as is.
    r = await ctl.put(f"/v2.0/subnetpools/{pool['id']}", {"subnetpool": {
        "prefixes": ["10.11.12.0/23", "10.11.20.0/24"]}})
    assert r.status == 200 and r.body["subnetpool"]["prefixes"] == ["10.11.12.0/23", "10.11.20.0/24"]
    r = await _subnet(ctl, third, subnetpool_id=pool["id"], cidr="10.11.20.128/26")
    assert r.status == 201 and r.body["subnet"]["cidr"] == "10.11.20.128/26"
    r = await _subnet(ctl, third, subnetpool_id=pool["id"], prefixlen=26)
    assert r.status == 201 and r.body["subnet"]["cidr"] == "10.11.20.0/26"
    # ...and never shrinks; with subnets it cannot go.
    r = await ctl.put(f"/v2.0/subnetpools/{pool['id']}", {"subnetpool": {"prefixes": ["10.11.12.0/24"]}})
    assert r.status == 400 and r.error["type"] == "IllegalSubnetPoolPrefixUpdate"
    r = await ctl.delete(f"/v2.0/subnetpools/{pool['id']}")
    assert r.status == 409 and r.error["type"] == "SubnetPoolInUse"
    # Its subnets gone, the pool may go.
    for n in (net, other, third):
        for sid in (await ctl.get(f"/v2.0/networks/{n['id']}")).body["network"]["subnets"]:
            assert (await ctl.delete(f"/v2.0/subnets/{sid}")).status == 204
    assert (await ctl.delete(f"/v2.0/subnetpools/{pool['id']}")).status == 204


async def test_bounds_versions_and_bad_requests(ctl):
    net = await ctl.create("network", "/v2.0/networks", name="n")
    for bad in ({"prefixes": []}, {"prefixes": ["10.0.0.0/8", "fd00::/48"]},
                {"prefixes": ["10.0.0.0/8"], "min_prefixlen": 24, "max_prefixlen": 16},
                {"prefixes": ["10.0.0.0/8"], "default_prefixlen": 33},
                {"prefixes": ["not-a-cidr"]}, {"name": "no prefixes"},
                {"prefixes": ["10.0.0.0/8"], "ip_version": 4}):
        r = await ctl.post("/v2.0/subnetpools", {"subnetpool": {"name": "x", **bad}})
        assert r.status == 400 and "NeutronError" in r.body, (bad, r.body)
    v6 = await _pool(ctl, prefixes=["fd00:1::/48"])
    assert (v6["ip_version"], v6["min_prefixlen"], v6["default_prefixlen"]) == (6, "64", "64")
    r = await _subnet(ctl, net, subnetpool_id=v6["id"])  # ip_version 4 from an IPv6 pool
    assert r.status == 400
    r = await ctl.post("/v2.0/subnets", {"subnet": {"network_id": net["id"], "ip_version": 6,
                                                    "subnetpool_id": v6["id"]}})
    assert r.status == 201 and r.body["subnet"]["cidr"] == "fd00:1::/64", r.body
    v4 = await _pool(ctl, prefixes=["10.5.0.0/16"], min_prefixlen="24", max_prefixlen=28)
    assert (await _subnet(ctl, net, subnetpool_id=v4["id"], prefixlen=29)).status == 400
    assert (await _subnet(ctl, net, subnetpool_id=v4["id"], prefixlen=28, cidr="10.5.0.0/28")).status == 400
    assert (await _subnet(ctl, net)).status == 400  # neither a cidr nor a pool
    assert (await _subnet(ctl, net, cidr="10.6.0.0/24", prefixlen=24)).status == 400
    missing = "4c5d0f5e-0000-4000-8000-000000000000"
    r = await _subnet(ctl, net, subnetpool_id=missing)
    assert r.status == 404 and r.error["type"] == "SubnetPoolNotFound"
    r = await ctl.put(f"/v2.0/subnetpools/{v4['id']}", {"subnetpool": {"min_prefixlen": 29}})
    assert r.status == 400 and r.error["type"] == "IllegalSubnetPoolPrefixBounds"
    r = await ctl.put(f"/v2.0/subnetpools/{v4['id']}", {"subnetpool": {"shared": True}})
    assert r.status == 400


async def test_sharing_visibility_and_the_per_project_quota(ctl):
    tenant, other = ctl.as_project("tenant-a"), ctl.as_project("tenant-b")
    own = await _pool(tenant, prefixes=["10.20.0.0/16"])
    r = await tenant.post("/v2.0/subnetpools", {"subnetpool": {"name": "s", "prefixes": ["10.30.0.0/16"],
                                                               "shared": True}})
    assert r.status == 403
    shared = await _pool(ctl, prefixes=["10.40.0.0/16"], shared=True, default_quota=512,
                         default_prefixlen=24)
    assert {p["id"] for p in (await other.get("/v2.0/subnetpools")).body["subnetpools"]} == {shared["id"]}
    assert (await other.get(f"/v2.0/subnetpools/{own['id']}")).status == 404
    assert (await other.put(f"/v2.0/subnetpools/{shared['id']}", {"subnetpool": {"name": "mine"}})).status == 403
    net = await other.create("network", "/v2.0/networks", name="b")
    assert (await _subnet(other, net, subnetpool_id=own["id"])).status == 404
    # 512 addresses each: two /24s, then the quota is spent (for this project only).
    for _ in range(2):
        assert (await _subnet(other, net, subnetpool_id=shared["id"])).status == 201
    r = await _subnet(other, net, subnetpool_id=shared["id"])
    assert r.status == 409 and r.error["type"] == "SubnetPoolQuotaExceeded"
    tnet = await tenant.create("network", "/v2.0/networks", name="a")
    r = await _subnet(tenant, tnet, subnetpool_id=shared["id"])
    assert r.status == 201 and r.body["subnet"]["cidr"] == "10.40.2.0/24"
    # Tags and filters work on pools as on every resource.
    assert (await tenant.put(f"/v2.0/subnetpools/{own['id']}/tags/blue")).status == 201
    listed = (await tenant.get("/v2.0/subnetpools?tags=blue")).body["subnetpools"]
    assert [p["id"] for p in listed] == [own["id"]]
