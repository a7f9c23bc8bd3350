"""Ports over HTTP: MACs, fixed_ips rules, security groups, binding, status, concurrency."""

import asyncio

from alcor.db.backends import StoreModule
from alcor.resources.ports import Ports


def last_rev(ctl):
    return ctl.kernel.get(StoreModule).store.changes.last_rev


async def test_defaults(ctl, net):
    network, subnet = net
    p = await ctl.create("port", "/v2.0/ports", network_id=network["id"], name="vm1")
    assert p["mac_address"].startswith("fa:16:3e:")
    assert p["fixed_ips"] == [{"subnet_id": subnet["id"], "ip_address": "10.0.0.2"}]
    assert p["status"] == "DOWN"
    assert p["binding:vif_type"] == "unbound" and p["binding:host_id"] == ""
    assert len(p["security_groups"]) == 1
    sg = (await ctl.get(f"/v2.0/security-groups/{p['security_groups'][0]}")).body["security_group"]
    assert sg["name"] == "default"
    for key in ("device_id", "device_owner", "allowed_address_pairs", "admin_state_up",
                "port_security_enabled", "revision_number", "created_at", "project_id", "tenant_id"):
        assert key in p


async def test_fixed_ips_request_semantics(ctl, net):
    network, subnet = net
    nid, sid = network["id"], subnet["id"]
    p = await ctl.create("port", "/v2.0/ports", network_id=nid, fixed_ips=[{"subnet_id": sid}])
    assert p["fixed_ips"][0]["subnet_id"] == sid
    p = await ctl.create("port", "/v2.0/ports", network_id=nid, fixed_ips=[{"ip_address": "10.0.0.77"}])
    assert p["fixed_ips"] == [{"subnet_id": sid, "ip_address": "10.0.0.77"}]
    p = await ctl.create("port", "/v2.0/ports", network_id=nid,
                         fixed_ips=[{"subnet_id": sid, "ip_address": "10.0.0.78"}])
    assert p["fixed_ips"][0]["ip_address"] == "10.0.0.78"
    p = await ctl.create("port", "/v2.0/ports", network_id=nid, fixed_ips=[])
    assert p["fixed_ips"] == []
    before = last_rev(ctl)
    for fixed, status, kind in [
        ([{"ip_address": "10.0.0.77"}], 409, "IpAddressInUse"),
        ([{"ip_address": "10.5.0.7"}], 400, "InvalidInput"),
        ([{"subnet_id": sid, "ip_address": "10.0.1.7"}], 400, "InvalidInput"),
        ([{"subnet_id": "2b1f0e4c-0000-4000-8000-000000000000"}], 400, "InvalidInput"),
        ([{"ip_address": "10.0.0.1"}], 400, "InvalidInput"),  # the gateway
        ([{"ip_address": "10.0.0.255"}], 400, "InvalidInput"),  # broadcast
        ([{"ip_address": "nope"}], 400, "HTTPBadRequest"),
        ([{"bogus": 1}], 400, "HTTPBadRequest"),
    ]:
        r = await ctl.post("/v2.0/ports", {"port": {"network_id": nid, "fixed_ips": fixed}})
        assert (r.status, r.error["type"]) == (status, kind), (fixed, r.body)
    assert last_rev(ctl) == before


async def test_mac_rules(ctl, net):
    network, _ = net
    p = await ctl.create("port", "/v2.0/ports", network_id=network["id"], mac_address="FA:16:3E:00:00:01")
    assert p["mac_address"] == "fa:16:3e:00:00:01"
    before = last_rev(ctl)
    r = await ctl.post("/v2.0/ports", {"port": {"network_id": network["id"], "mac_address": "fa:16:3e:00:00:01"}})
    assert r.status == 409 and r.error["type"] == "MacAddressInUse"
    for bad in ("zz:16:3e:00:00:01", "01:00:5e:00:00:01", "fa:16:3e:00:01", 5):
        r = await ctl.post("/v2.0/ports", {"port": {"network_id": network["id"], "mac_address": bad}})
        assert r.status == 400, bad
    assert last_rev(ctl) == before
    # The same MAC on another network is fine.
    other = await ctl.create("network", "/v2.0/networks")
    await ctl.create("port", "/v2.0/ports", network_id=other["id"], mac_address="fa:16:3e:00:00:01")


async def test_exhausted_subnet(ctl):
    n = await ctl.create("network", "/v2.0/networks")
    await ctl.create("subnet", "/v2.0/subnets", network_id=n["id"], cidr="10.3.0.0/29", ip_version=4)
    ips = set()
    for _ in range(5):  # .2 … .6
        ips.add((await ctl.create("port", "/v2.0/ports", network_id=n["id"]))["fixed_ips"][0]["ip_address"])
    assert len(ips) == 5
    before = last_rev(ctl)
    r = await ctl.post("/v2.0/ports", {"port": {"network_id": n["id"]}})
    assert r.status == 409 and r.error["type"] == "IpAddressGenerationFailure"
    assert last_rev(ctl) == before


async def test_update_fixed_ips_releases_and_takes(ctl, net):
    network, subnet = net
    p = await ctl.create("port", "/v2.0/ports", network_id=network["id"])
    r = await ctl.put(f"/v2.0/ports/{p['id']}", {"port": {"fixed_ips": [{"ip_address": "10.0.0.99"}]}})
    assert r.status == 200 and r.body["port"]["fixed_ips"][0]["ip_address"] == "10.0.0.99"
    q = await ctl.create("port", "/v2.0/ports", network_id=network["id"],
                         fixed_ips=[{"ip_address": p["fixed_ips"][0]["ip_address"]}])
    assert q["fixed_ips"][0]["ip_address"] == p["fixed_ips"][0]["ip_address"]
    r = await ctl.put(f"/v2.0/ports/{q['id']}", {"port": {"fixed_ips": [{"ip_address": "10.0.0.99"}]}})
    assert r.status == 409


async def test_concurrent_creates_never_share_ip_or_mac(ctl):
    n = await ctl.create("network", "/v2.0/networks")
    await ctl.create("subnet", "/v2.0/subnets", network_id=n["id"], cidr="10.4.0.0/26", ip_version=4)

    async def one():
        r = await ctl.post("/v2.0/ports", {"port": {"network_id": n["id"]}})
        return r

    results = await asyncio.gather(*(one() for _ in range(80)))
    ok = [r.body["port"] for r in results if r.status == 201]
    failed = [r for r in results if r.status != 201]
    assert len(ok) == 61  # a /26 has 62 usable addresses, one is the gateway
    assert all(r.status == 409 and r.error["type"] == "IpAddressGenerationFailure" for r in failed)
    assert len({p["fixed_ips"][0]["ip_address"] for p in ok}) == 61
    assert len({p["mac_address"] for p in ok}) == 61


async def test_binding_to_node_and_unknown_host(ctl, net):
    network, _ = net
    await ctl.create("node", "/v2.0/alcor/nodes", node_name="host1", local_ip="172.16.0.1")
    p = await ctl.create("port", "/v2.0/ports", network_id=network["id"], **{"binding:host_id": "host1"})
    assert p["binding:vif_type"] == "ovs"
    q = await ctl.create("port", "/v2.0/ports", network_id=network["id"], **{"binding:host_id": "nohost"})
    assert q["binding:vif_type"] == "binding_failed"
    r = await ctl.put(f"/v2.0/ports/{q['id']}", {"port": {"binding:host_id": "host1"}})
    assert r.body["port"]["binding:vif_type"] == "ovs"
    t = ctl.as_project("tenant-a")
    tn = await t.create("network", "/v2.0/networks")
    r = await t.post("/v2.0/ports", {"port": {"network_id": tn["id"], "binding:host_id": "host1"}})
    assert r.status == 403
    tp = await t.create("port", "/v2.0/ports", network_id=tn["id"])
    r = await t.put(f"/v2.0/ports/{tp['id']}", {"port": {"binding:host_id": "host1"}})
    assert r.status == 403


async def test_status_is_set_by_agent_feedback(ctl, net):
    network, _ = net
    p = await ctl.create("port", "/v2.0/ports", network_id=network["id"], **{"binding:host_id": "host1"})
    ports = ctl.kernel.get(Ports)
    # Another node cannot speak for the port; unknown ids are ignored.
    await ports.set_statuses({p["id"]: ("ACTIVE", "host2"), "unknown-id": ("ACTIVE", "host1")})
    assert (await ctl.get(f"/v2.0/ports/{p['id']}")).body["port"]["status"] == "DOWN"
    await ports.set_statuses({p["id"]: ("ACTIVE", "host1")})
    got = (await ctl.get(f"/v2.0/ports/{p['id']}")).body["port"]
    assert got["status"] == "ACTIVE" and got["revision_number"] == 2
    r = await ctl.put(f"/v2.0/ports/{p['id']}", {"port": {"status": "DOWN"}})
    assert r.status == 400


async def test_security_groups_and_port_security(ctl, net):
    network, _ = net
    r = await ctl.post("/v2.0/ports", {"port": {"network_id": network["id"],
                                                "security_groups": ["5b5e0f5e-0000-4000-8000-000000000000"]}})
    assert r.status == 404 and r.error["type"] == "SecurityGroupNotFound"
    p = await ctl.create("port", "/v2.0/ports", network_id=network["id"], port_security_enabled=False)
    assert p["security_groups"] == []
    r = await ctl.put(f"/v2.0/ports/{p['id']}", {"port": {"allowed_address_pairs": [{"ip_address": "10.0.0.200"}]}})
    assert r.status == 409
    q = await ctl.create("port", "/v2.0/ports", network_id=network["id"],
                         allowed_address_pairs=[{"ip_address": "10.0.0.0/28", "mac_address": "fa:16:3e:aa:bb:cc"}])
    assert q["allowed_address_pairs"][0]["ip_address"] == "10.0.0.0/28"


async def test_port_security_and_security_groups_go_together(ctl, net):
    """Neutron's rules (ML2): no security groups, and no address pairs, without port security."""
    network, _ = net
    sg = await ctl.create("security_group", "/v2.0/security-groups", name="web")
    before = ctl.kernel.get(StoreModule).store.changes.last_rev
    r = await ctl.post("/v2.0/ports", {"port": {"network_id": network["id"], "port_security_enabled": False,
                                                "security_groups": [sg["id"]]}})
    assert r.status == 409 and r.error["type"] == "PortSecurityAndIPRequiredForSecurityGroups"
    r = await ctl.post("/v2.0/ports", {"port": {"network_id": network["id"], "port_security_enabled": False,
                                                "allowed_address_pairs": [{"ip_address": "10.0.0.9"}]}})
    assert r.status == 409 and r.error["type"] == "AddressPairAndPortSecurityRequired"
    assert ctl.kernel.get(StoreModule).store.changes.last_rev == before  # nothing half-written
    # a port in a group cannot drop port security while it keeps the group...
    p = await ctl.create("port", "/v2.0/ports", network_id=network["id"], security_groups=[sg["id"]])
    r = await ctl.put(f"/v2.0/ports/{p['id']}", {"port": {"port_security_enabled": False}})
    assert r.status == 409 and r.error["type"] == "PortSecurityPortHasSecurityGroup"
    r = await ctl.put(f"/v2.0/ports/{p['id']}", {"port": {"port_security_enabled": False,
                                                         "security_groups": [sg["id"]]}})
    assert r.status == 409 and r.error["type"] == "PortSecurityAndIPRequiredForSecurityGroups"
    got = (await ctl.get(f"/v2.0/ports/{p['id']}")).body["port"]
    assert got["port_security_enabled"] is True and got["security_groups"] == [sg["id"]]
    # ...and can when it gives the groups up in the same request
    r = await ctl.put(f"/v2.0/ports/{p['id']}", {"port": {"port_security_enabled": False,
                                                         "security_groups": []}})
    assert r.status == 200 and r.body["port"]["port_security_enabled"] is False
    # a port without port security cannot join a group
    r = await ctl.put(f"/v2.0/ports/{p['id']}", {"port": {"security_groups": [sg["id"]]}})
    assert r.status == 409 and r.error["type"] == "PortSecurityAndIPRequiredForSecurityGroups"
    # a port created on a network without port security has none, and no default group
    open_net = await ctl.create("network", "/v2.0/networks", port_security_enabled=False)
    q = await ctl.create("port", "/v2.0/ports", network_id=open_net["id"])
    assert q["port_security_enabled"] is False and q["security_groups"] == []


async def test_a_port_is_not_in_stateful_and_stateless_groups_at_once(ctl, net):
    network, _ = net
    full = await ctl.create("security_group", "/v2.0/security-groups", name="full")
    bare = await ctl.create("security_group", "/v2.0/security-groups", name="bare", stateful=False)
    assert full["stateful"] is True and bare["stateful"] is False
    r = await ctl.post("/v2.0/ports", {"port": {"network_id": network["id"],
                                                "security_groups": [full["id"], bare["id"]]}})
    assert r.status == 409 and r.error["type"] == "SecurityGroupConflict"
    p = await ctl.create("port", "/v2.0/ports", network_id=network["id"], security_groups=[bare["id"]])
    r = await ctl.put(f"/v2.0/ports/{p['id']}", {"port": {"security_groups": [bare["id"], full["id"]]}})
    assert r.status == 409 and r.error["type"] == "SecurityGroupConflict"
    # a group in use keeps its statefulness; an unused one may change it
    r = await ctl.put(f"/v2.0/security-groups/{bare['id']}", {"security_group": {"stateful": True}})
    assert r.status == 409 and r.error["type"] == "SecurityGroupInUse"
    r = await ctl.put(f"/v2.0/security-groups/{full['id']}", {"security_group": {"stateful": False}})
    assert r.status == 200 and r.body["security_group"]["stateful"] is False


async def test_tenant_ports_isolated_and_shared_network(ctl):
    pub = await ctl.create("network", "/v2.0/networks", shared=True)
    await ctl.create("subnet", "/v2.0/subnets", network_id=pub["id"], cidr="10.6.0.0/24", ip_version=4)
    a, b = ctl.as_project("ta"), ctl.as_project("tb")
    pa = await a.create("port", "/v2.0/ports", network_id=pub["id"])
    assert pa["project_id"] == "ta"
    assert (await b.get(f"/v2.0/ports/{pa['id']}")).status == 404
    assert (await b.get("/v2.0/ports")).body["ports"] == []
    assert len((await a.get("/v2.0/ports")).body["ports"]) == 1
    private = await a.create("network", "/v2.0/networks")
    r = await b.post("/v2.0/ports", {"port": {"network_id": private["id"]}})
    assert r.status == 404


async def test_delete_releases_ip_and_mac(ctl, net):
    network, _ = net
    p = await ctl.create("port", "/v2.0/ports", network_id=network["id"], mac_address="fa:16:3e:11:22:33",
                         fixed_ips=[{"ip_address": "10.0.0.9"}])
    assert (await ctl.delete(f"/v2.0/ports/{p['id']}")).status == 204
    assert (await ctl.get(f"/v2.0/ports/{p['id']}")).status == 404
    await ctl.create("port", "/v2.0/ports", network_id=network["id"], mac_address="fa:16:3e:11:22:33",
                     fixed_ips=[{"ip_address": "10.0.0.9"}])


async def test_state_survives_restart(tmp_path, backend):
    from tests.support.controller import running_controller
    from tests.support.stores import store_settings
    async with store_settings(backend, tmp_path) as store:
        async with running_controller(tmp_path, store=store) as (_, c):
            n = await c.create("network", "/v2.0/networks")
            await c.create("subnet", "/v2.0/subnets", network_id=n["id"], cidr="10.7.0.0/24", ip_version=4)
            p = await c.create("port", "/v2.0/ports", network_id=n["id"])
        await _after_restart(tmp_path, store, n, p)


async def _after_restart(tmp_path, store, n, p):
    from tests.support.controller import running_controller
    async with running_controller(tmp_path, store=store) as (k, c):
        r = await c.post("/v2.0/ports", {"port": {"network_id": n["id"], "mac_address": p["mac_address"]}})
        assert r.status == 409
        q = await c.create("port", "/v2.0/ports", network_id=n["id"])
        assert q["fixed_ips"][0]["ip_address"] != p["fixed_ips"][0]["ip_address"]
        assert k.get(StoreModule).store.changes.last_rev >= 4


async def test_port_bound_before_its_node_exists_binds_when_it_registers(ctl, net):
    network, _ = net
    p = await ctl.create("port", "/v2.0/ports", network_id=network["id"], **{"binding:host_id": "late"})
    assert p["binding:vif_type"] == "binding_failed"
    await ctl.create("node", "/v2.0/alcor/nodes", node_name="late", local_ip="172.16.0.9")
    got = (await ctl.get(f"/v2.0/ports/{p['id']}")).body["port"]
    assert got["binding:vif_type"] == "ovs" and got["revision_number"] == 2


async def test_only_normal_vnic_ports_bind(ctl, net):
    # The agent plugs taps into its bridge; SR-IOV, macvtap or bare-metal ports it cannot serve.
    network, _ = net
    await ctl.create("node", "/v2.0/alcor/nodes", node_name="host1", local_ip="172.16.0.1")
    p = await ctl.create("port", "/v2.0/ports", network_id=network["id"],
                         **{"binding:host_id": "host1", "binding:vnic_type": "direct"})
    assert p["binding:vif_type"] == "binding_failed" and p["binding:vif_details"] == {}
    r = await ctl.put(f"/v2.0/ports/{p['id']}", {"port": {"binding:vnic_type": "normal"}})
    assert r.status == 200 and r.body["port"]["binding:vif_type"] == "ovs"
    r = await ctl.put(f"/v2.0/ports/{p['id']}", {"port": {"binding:vnic_type": "macvtap"}})
    assert r.status == 200 and r.body["port"]["binding:vif_type"] == "binding_failed"
    # a node registering later binds only its normal ports
    q = await ctl.create("port", "/v2.0/ports", network_id=network["id"],
                         **{"binding:host_id": "host2", "binding:vnic_type": "baremetal"})
    await ctl.create("node", "/v2.0/alcor/nodes", node_name="host2", local_ip="172.16.0.2")
    q2 = (await ctl.get(f"/v2.0/ports/{q['id']}")).body["port"]
    assert q2["binding:vif_type"] == "binding_failed" and q2["revision_number"] == q["revision_number"]


async def test_vif_details_are_what_os_vif_plugs_from(ctl, net):
    """Nova hands binding:vif_type/vif_details to os-vif, which plugs tap<port[:11]> into
    `bridge_name` with `datapath_type`; they are the node's, as its agent is configured."""
    network, _ = net
    node = await ctl.create("node", "/v2.0/alcor/nodes", node_name="cmp1", local_ip="172.16.0.3",
                            datapath_type="netdev", bridge_name="br-alcor")
    assert (node["bridge_name"], node["datapath_type"]) == ("br-alcor", "netdev")
    p = await ctl.create("port", "/v2.0/ports", network_id=network["id"], device_owner="compute:nova",
                         **{"binding:host_id": "cmp1"})
    assert p["binding:vif_type"] == "ovs" and p["binding:vnic_type"] == "normal"
    assert p["binding:vif_details"] == {"port_filter": True, "ovs_hybrid_plug": False,
                                        "connectivity": "l2", "bridge_name": "br-alcor",
                                        "datapath_type": "netdev"}
    # The operator moves the host to the kernel datapath: its bound ports follow.
    r = await ctl.put(f"/v2.0/alcor/nodes/{node['node_id']}", {"node": {"datapath_type": "system"}})
    assert r.status == 200
    got = (await ctl.get(f"/v2.0/ports/{p['id']}")).body["port"]
    assert got["binding:vif_details"]["datapath_type"] == "system"
    assert got["revision_number"] == p["revision_number"] + 1
    bad = await ctl.put(f"/v2.0/alcor/nodes/{node['node_id']}", {"node": {"datapath_type": "dpdk"}})
    assert bad.status == 400
    # Only the normal vnic type binds here: no SR-IOV, no hardware offload.
    d = await ctl.create("port", "/v2.0/ports", network_id=network["id"],
                         **{"binding:host_id": "cmp1", "binding:vnic_type": "direct"})
    assert d["binding:vif_type"] == "binding_failed" and d["binding:vif_details"] == {}
    u = await ctl.put(f"/v2.0/ports/{d['id']}", {"port": {"binding:vnic_type": "normal"}})
    assert u.body["port"]["binding:vif_type"] == "ovs"
    # Defaults for a node registered without them: Neutron's br-int on the kernel datapath.
    await ctl.create("node", "/v2.0/alcor/nodes", node_name="cmp2", local_ip="172.16.0.4")
    q = await ctl.create("port", "/v2.0/ports", network_id=network["id"], **{"binding:host_id": "cmp2"})
    assert (q["binding:vif_details"]["bridge_name"], q["binding:vif_details"]["datapath_type"]) == \
        ("br-int", "system")


async def test_extra_dhcp_opts_validated_stored_and_merged(ctl, net):
    """Neutron's extra_dhcp_opt: options the agents' DHCP can send are stored (the agent test
    tests/integration/agent/test_dhcp.py sees them in a client's lease), the rest are a 400."""
    network, _ = net
    opts = [{"opt_name": "bootfile-name", "opt_value": "pxelinux.0"},
            {"opt_name": "tftp-server", "opt_value": "10.0.0.9"},
            {"opt_name": "server-ip-address", "opt_value": "10.0.0.9"}]
    p = await ctl.create("port", "/v2.0/ports", network_id=network["id"], extra_dhcp_opts=opts)
    assert p["extra_dhcp_opts"] == [{**o, "ip_version": 4} for o in opts]
    # An update replaces options of the same name, removes those given a null value, keeps others.
    r = await ctl.put(f"/v2.0/ports/{p['id']}", {"port": {"extra_dhcp_opts": [
        {"opt_name": "bootfile-name", "opt_value": "ipxe.efi"},
        {"opt_name": "tftp-server", "opt_value": None},
        {"opt_name": "tftp-server", "opt_value": "2001:db8::9", "ip_version": 6}]}})
    assert r.status == 200, r.body
    got = {(o["opt_name"], o["ip_version"]): o["opt_value"] for o in r.body["port"]["extra_dhcp_opts"]}
    assert got == {("bootfile-name", 4): "ipxe.efi", ("server-ip-address", 4): "10.0.0.9",
                   ("tftp-server", 6): "2001:db8::9"}
    before = last_rev(ctl)
    for bad in ([{"opt_name": "no-such-option", "opt_value": "x"}],
                [{"opt_name": "ntp-server", "opt_value": "not-an-address"}],
                [{"opt_name": "mtu", "opt_value": "70000"}],
                [{"opt_name": "53", "opt_value": "1"}],          # the server's own message type
                [{"opt_name": "router", "opt_value": "10.0.0.1", "colour": "red"}],
                [{"opt_value": "10.0.0.1"}],
                [{"opt_name": "router", "opt_value": "10.0.0.1", "ip_version": 5}],
                [{"opt_name": "router", "opt_value": "10.0.0.1"}, {"opt_name": "router", "opt_value": "10.0.0.2"}],
                ["router"]):
        r = await ctl.post("/v2.0/ports", {"port": {"network_id": network["id"], "extra_dhcp_opts": bad}})
        assert r.status == 400 and "NeutronError" in r.body, (bad, r.body)
        r = await ctl.put(f"/v2.0/ports/{p['id']}", {"port": {"extra_dhcp_opts": bad}})
        assert r.status == 400, bad
    assert last_rev(ctl) == before
