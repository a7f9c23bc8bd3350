"""Gateway placement and liveness as pure functions of the topology (alcor/southbound/gateways.py)."""

from alcor.southbound.gateways import candidates, down_nodes, schedule
from alcor.southbound.goalstate import Topology


def world(gateways=4, routers=40):
    t = Topology()
    for i in range(gateways):
        t.put("node", f"gw{i}", {"node_id": f"gw{i}", "node_name": f"gw-{i}", "local_ip": f"10.0.0.{i}",
                                 "bridge_mappings": {"physnet1": "br-ex"}})
    t.put("node", "c", {"node_id": "c", "node_name": "compute", "local_ip": "10.0.1.1"})
    t.put("network", "ext", {"id": "ext", "provider:network_type": "flat",
                             "provider:physical_network": "physnet1", "router:external": True})
    t.put("network", "overlay", {"id": "overlay", "provider:network_type": "vxlan"})
    for r in range(routers):
        t.put("port", f"p{r}", {"id": f"p{r}", "network_id": "ext", "device_id": f"r{r}",
                                "device_owner": "network:router_gateway", "binding:host_id": "",
                                "fixed_ips": []})
    return t


def bind(t, moves):
    for pid, host in moves.items():
        t.put("port", pid, {**t.res["port"][pid], "binding:host_id": host})


def test_unbound_gateways_spread_over_the_gateway_nodes_and_never_on_a_compute_node():
    t = world()
    moves = schedule(t, set())
    assert set(moves) == {f"p{r}" for r in range(40)}
    hosts = list(moves.values())
    assert "compute" not in hosts
    assert all(hosts.count(f"gw-{i}") >= 4 for i in range(4))  # spread, not all on one
    bind(t, moves)
    assert schedule(t, set()) == {}  # placed: nothing moves


def test_only_the_routers_of_a_down_node_move_and_nothing_moves_back():
    t = world()
    bind(t, schedule(t, set()))
    before = {p: b["binding:host_id"] for p, b in t.res["port"].items()}
    moves = schedule(t, {"gw1"})
    assert set(moves) == {p for p, h in before.items() if h == "gw-1"}
    assert "gw-1" not in moves.values()
    for pid, host in moves.items():  # each to its own next candidate
        rid = t.res["port"][pid]["device_id"]
        ranked = [n for n in candidates(t.res["node"], "physnet1", rid) if n != "gw1"]
        assert host == t.res["node"][ranked[0]]["node_name"]
    bind(t, moves)
    assert schedule(t, set()) == {}  # gw1 is back: its routers stay where they went


def test_no_live_candidate_leaves_the_port_where_it_is():
    t = world(gateways=1, routers=1)
    bind(t, schedule(t, set()))
    assert schedule(t, {"gw0"}) == {}
    t.put("node", "gw0", {**t.res["node"]["gw0"], "bridge_mappings": {}})
    assert schedule(t, set()) == {}  # no node maps physnet1 any more
    t.put("port", "q", {"id": "q", "network_id": "overlay", "device_id": "r9",
                        "device_owner": "network:router_gateway", "binding:host_id": ""})
    assert "q" not in schedule(t, set())  # not a physical network: nothing to place


def test_an_l3_agent_turned_off_hosts_no_gateway_and_its_gateways_move():
    t = world(gateways=2, routers=20)
    bind(t, schedule(t, set()))
    on_gw0 = {p for p, b in t.res["port"].items() if b["binding:host_id"] == "gw-0"}
    assert on_gw0
    off = {"L3 agent": {"admin_state_up": False, "description": "maintenance"}}
    t.put("node", "gw0", {**t.res["node"]["gw0"], "agents": off})
    moves = schedule(t, set())
    assert set(moves) == on_gw0 and set(moves.values()) == {"gw-1"}
    bind(t, moves)
    # Turned on again: nothing moves back (as when a node comes back), new routers may go there.
    t.put("node", "gw0", {**t.res["node"]["gw0"], "agents": {"L3 agent": {"admin_state_up": True}}})
    assert schedule(t, set()) == {}
    assert "gw0" in candidates(t.res["node"], "physnet1", "r-new")
    # Its Open vSwitch agent's settings are no gateway matter.
    t.put("node", "gw1", {**t.res["node"]["gw1"], "agents": {"Open vSwitch agent": {"description": "x"}}})
    assert "gw1" in candidates(t.res["node"], "physnet1", "r-new")


def test_a_node_is_down_when_silent_longer_than_the_timeout_counted_from_the_start():
    reports = {"a": 95.0, "b": 80.0, "never": None}
    assert down_nodes(reports, now=100.0, started=0.0, timeout=10.0) == {"b", "never"}
    # A controller that just started gives every node the timeout from its own start.
    assert down_nodes(reports, now=100.0, started=95.0, timeout=10.0) == set()


def test_the_gateway_node_joins_the_vpcs_behind_its_router():
    from alcor.southbound.goalstate import goal_state

    t = world(gateways=1, routers=0)
    t.put("network", "v", {"id": "v", "provider:network_type": "vxlan", "provider:segmentation_id": 5})
    t.put("subnet", "s", {"id": "s", "network_id": "v", "cidr": "10.0.0.0/24", "gateway_ip": "10.0.0.1"})
    t.put("port", "vm", {"id": "vm", "network_id": "v", "binding:host_id": "compute",
                         "device_owner": "compute:nova", "fixed_ips": [{"subnet_id": "s", "ip_address": "10.0.0.5"}]})
    t.put("port", "if", {"id": "if", "network_id": "v", "device_owner": "network:router_interface",
                         "device_id": "r", "fixed_ips": [{"subnet_id": "s", "ip_address": "10.0.0.1"}]})
    t.put("router", "r", {"id": "r", "external_gateway_info": {"network_id": "ext"}})
    t.put("port", "gw", {"id": "gw", "network_id": "ext", "device_owner": "network:router_gateway",
                         "device_id": "r", "binding:host_id": "gw-0", "mac_address": "fa:16:3e:00:00:09",
                         "fixed_ips": [{"subnet_id": "e", "ip_address": "203.0.113.5"}]})
    g = goal_state(t, "gw0")
    assert "vm" in g["port"] and "v" in g["vpc"] and "c" in g["node"]
    assert g["router"]["r"]["gateway"]["node_id"] == "gw0"
    assert g["router"]["r"]["gateway"]["ip_address"] == "203.0.113.5"
    c = goal_state(t, "c")  # the compute host knows where the gateway is
    assert c["router"]["r"]["gateway"]["node_id"] == "gw0" and "gw0" in c["node"]
    t.put("port", "if", None)  # the interface goes: so does the VPC from the gateway node
    assert "v" not in goal_state(t, "gw0")["vpc"]
