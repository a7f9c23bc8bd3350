"""Behaviours OpenStack's own API tests (Tempest, neutron-tempest-plugin) found different from
Neutron's, each checked over HTTP the way those tests and real clients send it."""

import pytest

from alcor.db.backends import StoreModule

UUID_NOBODY = "1d8d0c5e-0000-4000-8000-000000000000"


async def rule(c, sg_id, **attrs):
    return await c.post("/v2.0/security-group-rules", {"security_group_rule": {
        "security_group_id": sg_id, "direction": "ingress", **attrs}})


# Routers ------------------------------------------------------------------------------------------

async def test_empty_external_gateway_info_means_no_gateway(ctl):
    """Tempest's router helper (and Horizon) send `external_gateway_info: {}` for "no gateway"."""
    r = await ctl.post("/v2.0/routers", {"router": {"name": "r", "external_gateway_info": {}}})
    assert r.status == 201, r.body
    router = r.body["router"]
    assert router["external_gateway_info"] is None
    u = await ctl.put(f"/v2.0/routers/{router['id']}", {"router": {"external_gateway_info": {}}})
    assert u.status == 200 and u.body["router"]["external_gateway_info"] is None
    # A gateway dict still needs its network.
    bad = await ctl.put(f"/v2.0/routers/{router['id']}",
                        {"router": {"external_gateway_info": {"enable_snat": False}}})
    assert bad.status == 400


async def test_gateway_to_a_network_that_is_not_there_is_404(ctl):
    r = await ctl.create("router", "/v2.0/routers", name="r")
    missing = await ctl.put(f"/v2.0/routers/{r['id']}", {"router": {"external_gateway_info": {
        "network_id": r["id"]}}})  # Tempest's way of naming no network
    assert missing.status == 404 and missing.error["type"] == "NetworkNotFound", missing.body
    plain = await ctl.create("network", "/v2.0/networks")
    internal = await ctl.put(f"/v2.0/routers/{r['id']}", {"router": {"external_gateway_info": {
        "network_id": plain["id"]}}})
    assert internal.status == 400
    # Another project's network is not there for a tenant either.
    t = ctl.as_project("p1")
    mine = await t.create("router", "/v2.0/routers", name="mine")
    r2 = await t.put(f"/v2.0/routers/{mine['id']}", {"router": {"external_gateway_info": {
        "network_id": plain["id"]}}})
    assert r2.status == 404


async def test_null_routes_clear_them(ctl):
    """Tempest clears a router's extra routes with `routes: null` (Neutron: an empty list)."""
    net = await ctl.create("network", "/v2.0/networks")
    sub = await ctl.create("subnet", "/v2.0/subnets", network_id=net["id"], cidr="10.0.0.0/24",
                           ip_version=4)
    r = await ctl.create("router", "/v2.0/routers", name="r")
    await ctl.put(f"/v2.0/routers/{r['id']}/add_router_interface", {"subnet_id": sub["id"]})
    route = {"destination": "10.9.0.0/16", "nexthop": "10.0.0.7"}
    u = await ctl.put(f"/v2.0/routers/{r['id']}", {"router": {"routes": [route]}})
    assert u.status == 200 and u.body["router"]["routes"] == [route]
    cleared = await ctl.put(f"/v2.0/routers/{r['id']}", {"router": {"routes": None}})
    assert cleared.status == 200 and cleared.body["router"]["routes"] == []
    gone = await ctl.put(f"/v2.0/routers/{r['id']}/remove_router_interface", {"subnet_id": sub["id"]})
    assert gone.status == 200


# Security groups ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["default", "Default", "DEFAULT"])
async def test_no_second_group_named_default(ctl, name):
    t = ctl.as_project("p1")
    made = await t.post("/v2.0/security-groups", {"security_group": {"name": name}})
    assert made.status == 409 and made.error["type"] == "SecurityGroupDefaultAlreadyExists"
    sg = (await t.post("/v2.0/security-groups", {"security_group": {"name": "web"}})).body["security_group"]
    renamed = await t.put(f"/v2.0/security-groups/{sg['id']}", {"security_group": {"name": name}})
    assert renamed.status == 409 and renamed.error["type"] == "SecurityGroupDefaultAlreadyExists"
    got = (await t.get(f"/v2.0/security-groups/{sg['id']}")).body["security_group"]
    assert got["name"] == "web"
    names = [g["name"] for g in (await t.get("/v2.0/security-groups")).body["security_groups"]]
    assert sorted(names) == ["default", "web"]


async def test_default_group_keeps_its_name_but_not_other_fields(ctl):
    t = ctl.as_project("p1")
    default = (await t.get("/v2.0/security-groups")).body["security_groups"][0]
    same = await t.put(f"/v2.0/security-groups/{default['id']}", {"security_group": {"name": "default"}})
    assert same.status == 409
    other = await t.put(f"/v2.0/security-groups/{default['id']}", {"security_group": {"name": "mine"}})
    assert other.status == 409 and other.error["type"] == "SecurityGroupCannotUpdateDefault"
    desc = await t.put(f"/v2.0/security-groups/{default['id']}",
                       {"security_group": {"description": "ours"}})
    assert desc.status == 200 and desc.body["security_group"]["description"] == "ours"


@pytest.mark.parametrize("remote", ["bad_group_id", UUID_NOBODY])
async def test_remote_group_that_names_no_group_is_404(ctl, remote):
    sg = await ctl.create("security_group", "/v2.0/security-groups", name="web")
    r = await rule(ctl, sg["id"], protocol="tcp", remote_group_id=remote)
    assert r.status == 404 and r.error["type"] == "SecurityGroupNotFound", r.body
    assert (await rule(ctl, "not-a-group", protocol="tcp")).status == 404


@pytest.mark.parametrize(("protocol", "lo", "hi", "text"), [
    # Tempest's cases (test_create_security_group_rule_with_invalid_ports), Neutron's words.
    ("tcp", -16, 80, "Invalid value for port -16"),
    ("tcp", 80, 79, "port_range_min must be <= port_range_max"),
    ("tcp", 80, 65536, "Invalid value for port 65536"),
    ("tcp", None, 6, "port_range_min must be <= port_range_max"),
    ("tcp", -16, 65536, "Invalid value for port"),
    ("tcp", 0, 10, "Invalid value for port 0"),
    ("tcp", "abc", 10, "Invalid value for port abc"),
    ("icmp", 1, 256, "Invalid value for ICMP code (port_range_max) 256. It must be 0 to 255."),
    ("icmp", -1, 25, "Invalid value"),
    ("icmp", None, 6, "ICMP code (port-range-max) 6 is provided but ICMP type (port-range-min) is missing."),
    ("icmp", 300, 1, "Invalid value for ICMP type (port_range_min) 300. It must be 0 to 255."),
    ("gre", 1, 2, "Ports cannot be specified for protocol 47."),
    (None, 80, 80, "Must also specify protocol if port range is given."),
])
async def test_port_range_errors_in_neutrons_words(ctl, protocol, lo, hi, text):
    sg = await ctl.create("security_group", "/v2.0/security-groups", name="web")
    before = ctl.kernel.get(StoreModule).store.changes.last_rev
    r = await rule(ctl, sg["id"], protocol=protocol, port_range_min=lo, port_range_max=hi)
    assert r.status == 400 and text in r.error["message"], r.body
    assert ctl.kernel.get(StoreModule).store.changes.last_rev == before


async def test_rule_normal_forms(ctl):
    sg = await ctl.create("security_group", "/v2.0/security-groups", name="web")
    full = await rule(ctl, sg["id"], protocol="tcp", port_range_min=1, port_range_max=65535)
    assert (full.body["security_group_rule"]["port_range_min"],
            full.body["security_group_rule"]["port_range_max"]) == (None, None)
    v6 = await rule(ctl, sg["id"], protocol="icmp", ethertype="ipv6")
    assert v6.status == 201, v6.body
    assert (v6.body["security_group_rule"]["protocol"], v6.body["security_group_rule"]["ethertype"]) == \
        ("ipv6-icmp", "IPv6")
    host = await rule(ctl, sg["id"], protocol="udp", remote_ip_prefix="10.1.2.3")
    assert host.body["security_group_rule"]["remote_ip_prefix"] == "10.1.2.3/32"
    bad = await rule(ctl, sg["id"], protocol="ipv6-icmp", ethertype="IPv4")
    assert bad.status == 400 and bad.error["type"] == "SecurityGroupEthertypeConflictWithProtocol"


# Subnets ----------------------------------------------------------------------------------------------

async def v6_subnet(c, network_id, **attrs):
    return await c.post("/v2.0/subnets", {"subnet": {"network_id": network_id, "ip_version": 6,
                                                     "cidr": "2001:db8:1::/64", **attrs}})


@pytest.mark.parametrize("mode", ["slaac"])  # DHCPv6 modes are refused here (no DHCPv6 server)
async def test_auto_address_subnet_deleted_under_its_ports(ctl, mode):
    network = await ctl.create("network", "/v2.0/networks", name="n6")
    v4 = await ctl.create("subnet", "/v2.0/subnets", network_id=network["id"], cidr="10.0.0.0/24",
                          ip_version=4)
    made = await v6_subnet(ctl, network["id"], ipv6_ra_mode=mode, ipv6_address_mode=mode)
    assert made.status == 201, made.body
    v6 = made.body["subnet"]
    port = await ctl.create("port", "/v2.0/ports", network_id=network["id"])
    assert {f["subnet_id"] for f in port["fixed_ips"]} == {v4["id"], v6["id"]}
    # The port's address was never asked for, so it does not hold the subnet (Neutron).
    assert (await ctl.delete(f"/v2.0/subnets/{v6['id']}")).status == 204
    after = (await ctl.get(f"/v2.0/ports/{port['id']}")).body["port"]
    assert [f["subnet_id"] for f in after["fixed_ips"]] == [v4["id"]]
    assert after["revision_number"] == port["revision_number"] + 1
    assert (await ctl.get(f"/v2.0/subnets/{v6['id']}")).status == 404
    # The v4 subnet's address was handed out from its pool: that one holds.
    held = await ctl.delete(f"/v2.0/subnets/{v4['id']}")
    assert held.status == 409 and held.error["type"] == "SubnetInUse"


async def test_stateful_v6_subnet_and_router_interfaces_still_hold(ctl):
    network = await ctl.create("network", "/v2.0/networks", name="n6")
    stateful = (await v6_subnet(ctl, network["id"])).body["subnet"]  # addresses from its pool
    await ctl.create("port", "/v2.0/ports", network_id=network["id"])
    assert (await ctl.delete(f"/v2.0/subnets/{stateful['id']}")).status == 409
    other = await ctl.create("network", "/v2.0/networks", name="n7")
    slaac = (await v6_subnet(ctl, other["id"], ipv6_ra_mode="slaac",
                             ipv6_address_mode="slaac")).body["subnet"]
    router = await ctl.create("router", "/v2.0/routers", name="r")
    r = await ctl.put(f"/v2.0/routers/{router['id']}/add_router_interface", {"subnet_id": slaac["id"]})
    assert r.status == 200, r.body
    assert (await ctl.delete(f"/v2.0/subnets/{slaac['id']}")).status == 409


@pytest.mark.parametrize(("ra", "addr", "cidr", "ok"), [
    ("slaac", "slaac", "2001:db8:1::/64", True),
    (None, "slaac", "2001:db8:1::/64", True),
    ("slaac", None, "2001:db8:1::/64", False),   # Neutron takes it; here RAs need the address mode
    ("slaac", "slaac", "2001:db8:1::/80", False),
    (None, "slaac", "2001:db8:1::/96", False),
    # No DHCPv6 server here: the DHCPv6 modes are refused rather than stored and not honoured.
    ("dhcpv6-stateful", "dhcpv6-stateful", "2001:db8:1::/64", False),
    (None, "dhcpv6-stateless", "2001:db8:1::/64", False),
])
async def test_ipv6_mode_pairs(ctl, ra, addr, cidr, ok):
    network = await ctl.create("network", "/v2.0/networks", name="n6")
    attrs = {k: v for k, v in (("ipv6_ra_mode", ra), ("ipv6_address_mode", addr)) if v}
    r = await v6_subnet(ctl, network["id"], cidr=cidr, **attrs)
    assert (r.status == 201) == ok, r.body
    if not ok:
        assert r.status == 400 and r.error["type"] in ("InvalidInput", "HTTPBadRequest")


async def test_ipv6_modes_need_dhcp(ctl):
    network = await ctl.create("network", "/v2.0/networks", name="n6")
    r = await v6_subnet(ctl, network["id"], ipv6_ra_mode="slaac", ipv6_address_mode="slaac",
                        enable_dhcp=False)
    assert r.status == 400
    s = (await v6_subnet(ctl, network["id"], ipv6_ra_mode="slaac",
                         ipv6_address_mode="slaac")).body["subnet"]
    u = await ctl.put(f"/v2.0/subnets/{s['id']}", {"subnet": {"enable_dhcp": False}})
    assert u.status == 400 and "Cannot disable enable_dhcp" in u.error["message"]


async def test_subnets_filter_on_their_networks_shared(ctl):
    pub = await ctl.create("network", "/v2.0/networks", name="pub", shared=True)
    own = await ctl.create("network", "/v2.0/networks", name="own")
    a = await ctl.create("subnet", "/v2.0/subnets", network_id=pub["id"], cidr="10.0.0.0/24", ip_version=4)
    b = await ctl.create("subnet", "/v2.0/subnets", network_id=own["id"], cidr="10.1.0.0/24", ip_version=4)

    async def ids(c, query):
        r = await c.get(f"/v2.0/subnets?{query}")
        assert r.status == 200, r.body
        return {s["id"] for s in r.body["subnets"]}

    assert await ids(ctl, "shared=False") == {b["id"]}
    assert await ids(ctl, "shared=true") == {a["id"]}
    assert await ids(ctl, "shared=true&shared=false") == {a["id"], b["id"]}
    assert (await ctl.get("/v2.0/subnets?shared=perhaps")).status == 400
    # A tenant sees a shared network's subnets (it may put ports there), not another project's.
    t = ctl.as_project("p1")
    assert await ids(t, "") == {a["id"]}
    assert (await t.get(f"/v2.0/subnets/{a['id']}")).status == 200
    assert (await t.get(f"/v2.0/subnets/{b['id']}")).status == 404
    assert (await t.delete(f"/v2.0/subnets/{a['id']}")).status == 403


# Pagination --------------------------------------------------------------------------------------------

async def test_pagination_links_as_neutron_gives_them(ctl):
    for i in range(5):
        await ctl.create("network", "/v2.0/networks", name=f"n{i}")

    async def page(path):
        r = await ctl.get(path.replace(ctl.base, ""))
        assert r.status == 200, r.body
        links = {link["rel"]: link["href"] for link in r.body.get("networks_links", [])}
        return [n["name"] for n in r.body["networks"]], links

    names, links = await page("/v2.0/networks?limit=2&sort_key=name&sort_dir=asc")
    assert names == ["n0", "n1"] and set(links) == {"next", "previous"}
    names, links = await page(links["next"])
    assert names == ["n2", "n3"]
    names, last = await page(links["next"])
    assert names == ["n4"] and set(last) == {"previous"}
    assert (await page(last["previous"]))[0] == ["n2", "n3"]
    # Walking backwards from the end, as neutron-tempest-plugin's page_reverse tests do.
    names, links = await page("/v2.0/networks?limit=2&sort_key=name&sort_dir=asc&page_reverse=True")
    assert names == ["n3", "n4"] and set(links) == {"next", "previous"}
    names, links = await page(links["previous"])
    assert names == ["n1", "n2"]
    names, links = await page(links["previous"])
    assert names == ["n0"] and set(links) == {"next"}
    # A full last page: the page after it is empty and has no next.
    names, links = await page("/v2.0/networks?limit=5&sort_key=name")
    assert len(names) == 5 and "next" in links
    names, links = await page(links["next"])
    assert names == [] and "next" not in links
