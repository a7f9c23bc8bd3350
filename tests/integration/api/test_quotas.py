"""Quotas per project (Neutron's quotas and quota_details): limits an admin sets, counted on create,
409 OverQuota with nothing written."""

from tests.support.controller import running_controller
from tests.support.stores import store_settings


async def test_a_project_over_its_network_quota_gets_409_and_nothing_is_written(ctl):
    tenant = ctl.as_project("tenant-q")
    r = await ctl.put("/v2.0/quotas/tenant-q", {"quota": {"network": 2, "port": 1}})
    assert r.status == 200 and r.body["quota"]["network"] == 2 and r.body["quota"]["subnet"] == -1
    for i in range(2):
        await tenant.create("network", "/v2.0/networks", name=f"q{i}")
    last = (await ctl.get("/v2.0/alcor/changes?since=0&limit=10000")).body["last_rev"]
    r = await tenant.post("/v2.0/networks", {"network": {"name": "one-too-many"}})
    assert r.status == 409 and r.error["type"] == "OverQuota"
    assert r.error["message"] == "Quota exceeded for resources: ['network']."
    assert (await ctl.get("/v2.0/alcor/changes?since=0&limit=10000")).body["last_rev"] == last
    # A bulk create that would cross the limit creates none of its items.
    await ctl.put("/v2.0/quotas/tenant-q", {"quota": {"network": 3}})
    r = await tenant.post("/v2.0/networks", {"networks": [{"name": "a"}, {"name": "b"}]})
    assert r.status == 409
    assert len((await tenant.get("/v2.0/networks")).body["networks"]) == 2
    # Other projects, and the admin's, keep the default (unlimited here).
    for i in range(4):
        await ctl.create("network", "/v2.0/networks", name=f"admin{i}")
    # Ports count per project as well.
    net = (await tenant.get("/v2.0/networks")).body["networks"][0]
    await tenant.create("port", "/v2.0/ports", network_id=net["id"])
    r = await tenant.post("/v2.0/ports", {"port": {"network_id": net["id"]}})
    assert r.status == 409 and r.error["message"] == "Quota exceeded for resources: ['port']."
    r = await ctl.get("/v2.0/quotas/tenant-q/details")
    assert r.body["quota"]["network"] == {"limit": 3, "used": 2, "reserved": 0}
    assert r.body["quota"]["port"] == {"limit": 1, "used": 1, "reserved": 0}
    # Reset: the defaults again, and the project may create again.
    assert (await ctl.delete("/v2.0/quotas/tenant-q")).status == 204
    assert (await ctl.get("/v2.0/quotas/tenant-q")).body["quota"]["network"] == -1
    assert (await tenant.post("/v2.0/networks", {"network": {"name": "again"}})).status == 201


async def test_a_new_security_groups_own_rules_count_against_the_rule_quota(ctl):
    tenant = ctl.as_project("tenant-sgq")
    await tenant.get("/v2.0/security-groups")  # the project's default group (2 + 2 rules)
    used = (await ctl.get("/v2.0/quotas/tenant-sgq/details")).body["quota"]["security_group_rule"]["used"]
    await ctl.put("/v2.0/quotas/tenant-sgq", {"quota": {"security_group_rule": used + 1}})
    r = await tenant.post("/v2.0/security-groups", {"security_group": {"name": "web"}})
    assert r.status == 409 and r.error["type"] == "OverQuota"
    assert [g["name"] for g in (await tenant.get("/v2.0/security-groups")).body["security_groups"]] == ["default"]
    await ctl.put("/v2.0/quotas/tenant-sgq", {"quota": {"security_group_rule": used + 2}})
    assert (await tenant.post("/v2.0/security-groups", {"security_group": {"name": "web"}})).status == 201


async def test_floating_ips_count_against_their_projects_quota(ctl):
    ext = await ctl.create("network", "/v2.0/networks", **{"router:external": True})
    await ctl.create("subnet", "/v2.0/subnets", network_id=ext["id"], cidr="203.0.113.0/24",
                     ip_version=4, enable_dhcp=False)
    tenant = ctl.as_project("tenant-fq")
    await ctl.put("/v2.0/quotas/tenant-fq", {"quota": {"floatingip": 1, "port": 0}})
    one = await tenant.create("floatingip", "/v2.0/floatingips", floating_network_id=ext["id"])
    # The address's own port is nobody's (as in Neutron): the port quota of 0 does not stop it.
    assert one["project_id"] == "tenant-fq"
    before = (await ctl.get("/v2.0/alcor/changes?since=0&limit=10000")).body["last_rev"]
    r = await tenant.post("/v2.0/floatingips", {"floatingip": {"floating_network_id": ext["id"]}})
    assert r.status == 409 and r.error["message"] == "Quota exceeded for resources: ['floatingip']."
    assert (await ctl.get("/v2.0/alcor/changes?since=0&limit=10000")).body["last_rev"] == before
    details = (await ctl.get("/v2.0/quotas/tenant-fq/details")).body["quota"]
    assert details["floatingip"] == {"limit": 1, "used": 1, "reserved": 0}
    assert details["port"]["used"] == 0


async def test_quota_api_rules_and_bad_input(ctl):
    tenant = ctl.as_project("tenant-r")
    # Neutron's clients send `force` (quota-check-limit): taken, not stored.
    r = await ctl.put("/v2.0/quotas/tenant-r", {"quota": {"router": 1, "force": True}})
    assert r.status == 200 and "force" not in r.body["quota"]
    r = await tenant.get("/v2.0/quotas/tenant-r")
    assert r.status == 200 and r.body["quota"]["router"] == 1
    assert set(r.body["quota"]) == {"network", "subnet", "port", "router", "floatingip",
                                    "security_group", "security_group_rule"}
    assert (await tenant.get("/v2.0/quotas/tenant-r/default")).body["quota"]["router"] == -1
    assert (await tenant.get("/v2.0/quotas/someone-else")).status == 403
    assert (await tenant.put("/v2.0/quotas/tenant-r", {"quota": {"router": 9}})).status == 403
    assert (await tenant.delete("/v2.0/quotas/tenant-r")).status == 403
    assert (await tenant.get("/v2.0/quotas")).status == 403
    listed = (await ctl.get("/v2.0/quotas")).body["quotas"]
    assert [(q["project_id"], q["router"]) for q in listed] == [("tenant-r", 1)]
    for bad in ({"quota": {"router": -2}}, {"quota": {"router": "many"}}, {"quota": {"widget": 1}},
                {"quotas": {"router": 1}}, {"quota": [1]}, {"quota": {"force": "maybe"}}):
        r = await ctl.put("/v2.0/quotas/tenant-r", bad)
        assert r.status == 400 and "NeutronError" in r.body, bad
    assert (await ctl.get("/v2.0/quotas/tenant-r")).body["quota"]["router"] == 1
    # check_limit (quota-check-limit): no limit below what is in use, unless forced
    await tenant.create("network", "/v2.0/networks", name="n1")
    r = await ctl.put("/v2.0/quotas/tenant-r", {"quota": {"network": 0, "check_limit": True}})
    assert r.status == 400 and r.error["type"] == "InvalidQuotaValue"
    r = await ctl.put("/v2.0/quotas/tenant-r", {"quota": {"network": 1, "check_limit": True}})
    assert r.status == 200
    await tenant.create("router", "/v2.0/routers", name="r1")
    r = await tenant.post("/v2.0/routers", {"router": {"name": "r2"}})
    assert r.status == 409 and r.error["type"] == "OverQuota"


async def test_defaults_from_config_and_limits_survive_a_restart(tmp_path, backend):
    async with store_settings(backend, tmp_path) as store:
        await _before_and_after_a_restart(tmp_path, store)


async def _before_and_after_a_restart(tmp_path, store):
    async with running_controller(tmp_path, store=store, quotas__quota_security_group=1) as (_, c):
        t = c.as_project("tenant-s")
        assert (await t.get("/v2.0/quotas/tenant-s")).body["quota"]["security_group"] == 1
        await c.put("/v2.0/quotas/tenant-s", {"quota": {"subnet": 0}})
        # Neutron's count: the default group made on the way is not asked for...
        r = await t.post("/v2.0/security-groups", {"security_group": {"name": "g"}})
        assert r.status == 201, r.body
        # ...but it is in use from then on
        r = await t.post("/v2.0/security-groups", {"security_group": {"name": "g2"}})
        assert r.status == 409 and r.error["type"] == "OverQuota", r.body
    async with running_controller(tmp_path, store=store, quotas__quota_security_group=1) as (_, c):
        t = c.as_project("tenant-s")
        assert (await t.get("/v2.0/quotas/tenant-s")).body["quota"]["subnet"] == 0
        net = await t.create("network", "/v2.0/networks", name="n")
        r = await t.post("/v2.0/subnets", {"subnet": {"network_id": net["id"], "cidr": "10.9.0.0/24",
                                                      "ip_version": 4}})
        assert r.status == 409 and r.error["message"] == "Quota exceeded for resources: ['subnet']."
