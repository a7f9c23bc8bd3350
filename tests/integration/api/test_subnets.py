"""Subnets over HTTP: canonical CIDR, gateway and pools, overlaps, in-use."""

from alcor.db.backends import StoreModule


def last_rev(ctl):
    return ctl.kernel.get(StoreModule).store.changes.last_rev


async def test_defaults_and_canonical_cidr(ctl):
    n = await ctl.create("network", "/v2.0/networks")
    s = await ctl.create("subnet", "/v2.0/subnets", network_id=n["id"], cidr="192.168.7.77/24",
                         ip_version=4)
    assert s["cidr"] == "192.168.7.0/24"
    assert s["gateway_ip"] == "192.168.7.1"
    assert s["allocation_pools"] == [{"start": "192.168.7.2", "end": "192.168.7.254"}]
    assert s["enable_dhcp"] is True and s["dns_nameservers"] == [] and s["host_routes"] == []
    net = (await ctl.get(f"/v2.0/networks/{n['id']}")).body["network"]
    assert net["subnets"] == [s["id"]] and net["revision_number"] == 2


async def test_gateway_explicit_null_and_in_middle(ctl):
    n = await ctl.create("network", "/v2.0/networks")
    s = await ctl.create("subnet", "/v2.0/subnets", network_id=n["id"], cidr="10.1.0.0/24",
                         ip_version=4, gateway_ip=None)
    assert s["gateway_ip"] is None
    assert s["allocation_pools"] == [{"start": "10.1.0.1", "end": "10.1.0.254"}]
    s2 = await ctl.create("subnet", "/v2.0/subnets", network_id=n["id"], cidr="10.2.0.0/24",
                          ip_version=4, gateway_ip="10.2.0.100")
    assert s2["allocation_pools"] == [{"start": "10.2.0.1", "end": "10.2.0.99"},
                                      {"start": "10.2.0.101", "end": "10.2.0.254"}]


async def test_ipv6_subnet(ctl):
    n = await ctl.create("network", "/v2.0/networks")
    s = await ctl.create("subnet", "/v2.0/subnets", network_id=n["id"], cidr="2001:db8::/64",
                         ip_version=6)
    assert s["gateway_ip"] == "2001:db8::1"
    assert s["allocation_pools"][0]["start"] == "2001:db8::2"


async def test_bad_subnets_write_nothing(ctl):
    n = await ctl.create("network", "/v2.0/networks")
    await ctl.create("subnet", "/v2.0/subnets", network_id=n["id"], cidr="10.0.0.0/16", ip_version=4)
    nid = n["id"]
    before = last_rev(ctl)
    cases = [
        ({"network_id": nid, "cidr": "10.0.5.0/24", "ip_version": 4}, 400, "InvalidInput"),  # overlap
        ({"network_id": nid, "cidr": "300.0.0.0/24", "ip_version": 4}, 400, "HTTPBadRequest"),
        ({"network_id": nid, "cidr": "10.9.0.0", "ip_version": 4}, 400, "HTTPBadRequest"),
        ({"network_id": nid, "cidr": "10.9.0.0/24", "ip_version": 6}, 400, "InvalidInput"),
        ({"network_id": nid, "cidr": "10.9.0.0/24", "ip_version": 5}, 400, "HTTPBadRequest"),
        ({"network_id": nid, "cidr": "10.9.0.0/24"}, 400, "HTTPBadRequest"),
        ({"network_id": nid, "cidr": "10.9.0.0/24", "ip_version": 4, "gateway_ip": "10.8.0.1"},
         400, "InvalidInput"),
        ({"network_id": nid, "cidr": "10.9.0.0/24", "ip_version": 4, "gateway_ip": "10.9.0.5",
          "allocation_pools": [{"start": "10.9.0.2", "end": "10.9.0.20"}]},
         409, "GatewayConflictWithAllocationPools"),
        ({"network_id": nid, "cidr": "10.9.0.0/24", "ip_version": 4,
          "allocation_pools": [{"start": "10.9.0.2", "end": "10.9.0.20"},
                               {"start": "10.9.0.10", "end": "10.9.0.30"}]},
         409, "OverlappingAllocationPools"),
        ({"network_id": nid, "cidr": "10.9.0.0/24", "ip_version": 4,
          "allocation_pools": [{"start": "10.9.0.2", "end": "10.9.1.20"}]},
         400, "OutOfBoundsAllocationPool"),
        ({"network_id": nid, "cidr": "10.9.0.0/24", "ip_version": 4,
          "allocation_pools": [{"start": "10.9.0.2"}]}, 400, "HTTPBadRequest"),
        ({"network_id": nid, "cidr": "10.9.0.0/24", "ip_version": 4,
          "dns_nameservers": ["8.8.8.8", "8.8.8.8"]}, 400, "HTTPBadRequest"),
        ({"network_id": nid, "cidr": "10.9.0.0/24", "ip_version": 4,
          "dns_nameservers": [f"10.9.0.{i}" for i in range(2, 8)]}, 400, "DNSNameServersExhausted"),
        ({"network_id": nid, "cidr": "10.9.0.0/24", "ip_version": 4,
          "host_routes": [{"destination": f"192.168.{i}.0/24", "nexthop": "10.9.0.9"}
                          for i in range(21)]}, 400, "HostRoutesExhausted"),
        ({"network_id": "8d3b4b4e-0000-4000-8000-000000000000", "cidr": "10.9.0.0/24",
          "ip_version": 4}, 404, "NetworkNotFound"),
        ({"network_id": "not-a-uuid", "cidr": "10.9.0.0/24", "ip_version": 4}, 400, "HTTPBadRequest"),
    ]
    for body, status, kind in cases:
        r = await ctl.post("/v2.0/subnets", {"subnet": body})
        assert (r.status, r.error["type"]) == (status, kind), (body, r.body)
    assert last_rev(ctl) == before


async def test_foreign_network_is_404_for_tenant(ctl):
    n = await ctl.as_project("a").create("network", "/v2.0/networks")
    r = await ctl.as_project("b").post("/v2.0/subnets", {"subnet": {
        "network_id": n["id"], "cidr": "10.0.0.0/24", "ip_version": 4}})
    assert r.status == 404


async def test_update_pools_and_gateway(ctl, net):
    _, s = net
    r = await ctl.put(f"/v2.0/subnets/{s['id']}", {"subnet": {
        "allocation_pools": [{"start": "10.0.0.50", "end": "10.0.0.60"}], "name": "renamed"}})
    assert r.status == 200, r.body
    assert r.body["subnet"]["allocation_pools"] == [{"start": "10.0.0.50", "end": "10.0.0.60"}]
    r = await ctl.put(f"/v2.0/subnets/{s['id']}", {"subnet": {"gateway_ip": "10.0.0.55"}})
    assert r.status == 409
    r = await ctl.put(f"/v2.0/subnets/{s['id']}", {"subnet": {"cidr": "10.0.1.0/24"}})
    assert r.status == 400
    p = await ctl.create("port", "/v2.0/ports", network_id=s["network_id"])
    assert p["fixed_ips"][0]["ip_address"] == "10.0.0.50"


async def test_subnet_in_use(ctl, net):
    network, s = net
    p = await ctl.create("port", "/v2.0/ports", network_id=network["id"])
    r = await ctl.delete(f"/v2.0/subnets/{s['id']}")
    assert r.status == 409 and r.error["type"] == "SubnetInUse"
    await ctl.delete(f"/v2.0/ports/{p['id']}")
    assert (await ctl.delete(f"/v2.0/subnets/{s['id']}")).status == 204
    n = (await ctl.get(f"/v2.0/networks/{network['id']}")).body["network"]
    assert n["subnets"] == []


async def test_ipv6_modes(ctl):
    n = await ctl.create("network", "/v2.0/networks")
    nid = n["id"]
    before = last_rev(ctl)
    bad = [
        # no DHCPv6 server answers on this cloud's networks
        {"cidr": "2001:db8:1::/64", "ipv6_ra_mode": "dhcpv6-stateful",
         "ipv6_address_mode": "dhcpv6-stateful"},
        {"cidr": "2001:db8:1::/64", "ipv6_address_mode": "dhcpv6-stateless"},
        # Neutron's rules: equal when both are set; SLAAC's EUI-64 needs a /64
        {"cidr": "2001:db8:1::/64", "ipv6_ra_mode": "slaac"},
        {"cidr": "2001:db8:1::/80", "ipv6_ra_mode": "slaac", "ipv6_address_mode": "slaac"},
        {"cidr": "2001:db8:1::/56", "ipv6_address_mode": "slaac"},
    ]  # fmt: skip
    for body in bad:
        r = await ctl.post("/v2.0/subnets", {"subnet": {"network_id": nid, "ip_version": 6, **body}})
        assert r.status == 400, (body, r.body)
        assert r.error["type"] in ("InvalidInput", "HTTPBadRequest")
    assert last_rev(ctl) == before
    s = await ctl.create("subnet", "/v2.0/subnets", network_id=nid, ip_version=6,
                         cidr="2001:db8:1::/64", ipv6_ra_mode="slaac", ipv6_address_mode="slaac")
    assert (s["ipv6_ra_mode"], s["ipv6_address_mode"]) == ("slaac", "slaac")
    # a port takes the EUI-64 address of its MAC, what the VM autoconfigures from the RA
    p = await ctl.create("port", "/v2.0/ports", network_id=nid, mac_address="fa:16:3e:12:34:56")
    assert p["fixed_ips"] == [{"subnet_id": s["id"], "ip_address": "2001:db8:1:0:f816:3eff:fe12:3456"}]


async def test_dns_and_host_route_limits_on_update(ctl):
    n = await ctl.create("network", "/v2.0/networks")
    s = await ctl.create("subnet", "/v2.0/subnets", network_id=n["id"], cidr="10.3.0.0/24",
                         ip_version=4, dns_nameservers=[f"10.3.0.{i}" for i in range(2, 7)])
    assert len(s["dns_nameservers"]) == 5
    before = last_rev(ctl)
    r = await ctl.put(f"/v2.0/subnets/{s['id']}", {"subnet": {
        "dns_nameservers": [f"10.3.0.{i}" for i in range(2, 8)]}})
    assert (r.status, r.error["type"]) == (400, "DNSNameServersExhausted")
    r = await ctl.put(f"/v2.0/subnets/{s['id']}", {"subnet": {"host_routes": [
        {"destination": f"192.168.{i}.0/24", "nexthop": "10.3.0.9"} for i in range(21)]}})
    assert (r.status, r.error["type"]) == (400, "HostRoutesExhausted")
    assert last_rev(ctl) == before
