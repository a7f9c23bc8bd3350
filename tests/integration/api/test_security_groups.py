"""Security groups and rules over HTTP: the default group, Neutron's rule validation, duplicates."""

from alcor.db.backends import StoreModule


async def test_default_group_per_project(ctl):
    t = ctl.as_project("p1")
    groups = (await t.get("/v2.0/security-groups")).body["security_groups"]
    assert [g["name"] for g in groups] == ["default"]
    rules = groups[0]["security_group_rules"]
    assert sorted((r["direction"], r["ethertype"], r["remote_group_id"] is not None) for r in rules) == [
        ("egress", "IPv4", False), ("egress", "IPv6", False),
        ("ingress", "IPv4", True), ("ingress", "IPv6", True)]
    assert all(r["remote_group_id"] in (None, groups[0]["id"]) for r in rules)
    again = (await t.get("/v2.0/security-groups")).body["security_groups"]
    assert len(again) == 1
    d = await t.delete(f"/v2.0/security-groups/{groups[0]['id']}")
    assert d.status == 409
    u = await t.put(f"/v2.0/security-groups/{groups[0]['id']}", {"security_group": {"name": "x"}})
    assert u.status == 409


async def test_listing_rules_makes_the_projects_default_group_as_listing_groups_does(ctl):
    """Neutron makes the default group when a project first lists its rules, too: what it counts
    then is what counts against its rule quota (neutron-tempest-plugin's rule quota tests)."""
    t = ctl.as_project("p2")
    rules = (await t.get("/v2.0/security-group-rules?project_id=p2")).body["security_group_rules"]
    assert len(rules) == 4 and {r["project_id"] for r in rules} == {"p2"}
    assert (await ctl.get("/v2.0/quotas/p2/details")).body["quota"]["security_group_rule"]["used"] == 4
    assert len((await t.get("/v2.0/security-group-rules")).body["security_group_rules"]) == 4
    # An admin looking at one project's rules makes that project's group; looking at all, none.
    listed = (await ctl.get("/v2.0/security-group-rules?project_id=p3")).body["security_group_rules"]
    assert len(listed) == 4
    before = ctl.kernel.get(StoreModule).store.changes.last_rev
    await ctl.get("/v2.0/security-group-rules")
    await ctl.get("/v2.0/security-groups")
    assert ctl.kernel.get(StoreModule).store.changes.last_rev == before


async def test_rules_validation_and_duplicates(ctl):
    sg = await ctl.create("security_group", "/v2.0/security-groups", name="web")
    assert len(sg["security_group_rules"]) == 2  # egress v4 and v6
    sid = sg["id"]
    rule = await ctl.create("security_group_rule", "/v2.0/security-group-rules", security_group_id=sid,
                            direction="ingress", protocol="tcp", port_range_min=80, port_range_max=80,
                            remote_ip_prefix="0.0.0.0/0")
    assert rule["ethertype"] == "IPv4" and rule["protocol"] == "tcp"
    dup = await ctl.post("/v2.0/security-group-rules", {"security_group_rule": {
        "security_group_id": sid, "direction": "ingress", "protocol": "6", "port_range_min": 80,
        "port_range_max": 80, "remote_ip_prefix": "0.0.0.0/0"}})
    assert dup.status == 409 and dup.error["type"] == "SecurityGroupRuleExists"
    before = ctl.kernel.get(StoreModule).store.changes.last_rev
    for body in [
        {"direction": "sideways"},
        {"direction": "ingress", "protocol": "tcp", "port_range_min": 90, "port_range_max": 80},
        {"direction": "ingress", "port_range_min": 80, "port_range_max": 80},
        {"direction": "ingress", "protocol": "icmp", "port_range_min": 300},
        {"direction": "ingress", "protocol": "bogus"},
        {"direction": "ingress", "remote_ip_prefix": "::/0"},
        {"direction": "ingress", "remote_ip_prefix": "10.0.0.0/8", "remote_group_id": sid},
        {"direction": "ingress", "protocol": "tcp", "port_range_min": 0, "port_range_max": 10},
        {"direction": "ingress", "protocol": "icmpv6"},
        # no address groups here (no address-group extension): refused, never enforced as "any"
        {"direction": "ingress", "remote_address_group_id": "6e4f5d5c-0000-4000-8000-000000000000"},
    ]:
        r = await ctl.post("/v2.0/security-group-rules", {"security_group_rule": {"security_group_id": sid, **body}})
        assert r.status == 400, (body, r.body)
    r = await ctl.post("/v2.0/security-group-rules", {"security_group_rule": {
        "security_group_id": "1d8d0c5e-0000-4000-8000-000000000000", "direction": "ingress"}})
    assert r.status == 404
    assert ctl.kernel.get(StoreModule).store.changes.last_rev == before
    got = (await ctl.get(f"/v2.0/security-groups/{sid}")).body["security_group"]
    assert rule["id"] in [r["id"] for r in got["security_group_rules"]]
    assert (await ctl.delete(f"/v2.0/security-group-rules/{rule['id']}")).status == 204
    got = (await ctl.get(f"/v2.0/security-groups/{sid}")).body["security_group"]
    assert rule["id"] not in [r["id"] for r in got["security_group_rules"]]


async def test_group_in_use(ctl, net):
    network, _ = net
    sg = await ctl.create("security_group", "/v2.0/security-groups", name="app")
    p = await ctl.create("port", "/v2.0/ports", network_id=network["id"], security_groups=[sg["id"]])
    r = await ctl.delete(f"/v2.0/security-groups/{sg['id']}")
    assert r.status == 409 and r.error["type"] == "SecurityGroupInUse"
    await ctl.put(f"/v2.0/ports/{p['id']}", {"port": {"security_groups": []}})
    assert (await ctl.delete(f"/v2.0/security-groups/{sg['id']}")).status == 204


async def test_other_projects_groups_invisible(ctl):
    sg = await ctl.as_project("a").create("security_group", "/v2.0/security-groups", name="mine")
    b = ctl.as_project("b")
    assert (await b.get(f"/v2.0/security-groups/{sg['id']}")).status == 404
    r = await b.post("/v2.0/security-group-rules", {"security_group_rule": {
        "security_group_id": sg["id"], "direction": "ingress"}})
    assert r.status == 404
