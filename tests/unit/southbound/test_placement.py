"""Placement: incremental ops, applied in order, always equal each node's goal state from scratch."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alcor.agent.model import AgentModel, parse_message
from alcor.db.changelog import Change
from alcor.southbound.encode import encode_snapshot
from alcor.southbound.goalstate import (
    WIRE_TYPE,
    WIRE_TYPES,
    Topology,
    goal_state,
    info,
    node_digest,
    view_of,
    views_of,
)
from alcor.southbound.placement import place, placements
from alcor.wire import digest
from tests.support.world import KINDS, World

Held = dict[str, dict[tuple[str, str], Any]]


def apply_ops(held: Held, ops_by_node: dict[str, list[dict[str, Any]]]) -> None:
    for node, ops in ops_by_node.items():
        model = held.setdefault(node, {})
        for op in ops:
            key = (op["type"], op["id"])
            if op["op"] == "upsert":
                model[key] = op["body"]
            else:
                assert key in model, f"delete of {key} that {node} does not hold"
                del model[key]


def two_nodes_one_subnet() -> tuple[World, Topology, Held, tuple[Change, Change], Change]:
    """Nodes ha and hb, one network with one subnet, placed and applied: what most cases start from."""
    w, t, held = World(), Topology(), {}
    a, b = w.add_node("ha"), w.add_node("hb")
    net = w.add_network()
    sub = w.add_subnet(net.id)
    for ch in (a, b, net, sub):
        apply_ops(held, place(t, ch))
    return w, t, held, (a, b), sub


def as_goal(node: str, model: dict[tuple[str, str], Any]) -> dict[str, Any]:
    goal: dict[str, Any] = {"node_id": node, **{t: {} for t in WIRE_TYPES}}
    for (t, i), body in model.items():
        goal[t][i] = body
    return goal


def check_converged(t: Topology, held: Held, nodes: set[str]) -> None:
    every = {(WIRE_TYPE[ty], i) for ty, items in t.res.items() for i in items}
    for n in nodes | set(held):
        goal = goal_state(t, n)
        assert as_goal(n, held.get(n, {})) == goal, n
        # The snapshot encoder (cached JSON) carries exactly the same goal state.
        agent = AgentModel(n)
        agent.receive(parse_message(encode_snapshot(t, n, 0, 7)[0]))
        assert agent.goal() == goal and agent.digest() == digest(goal)
        # The dispatcher's digest from cached port shares, after any history of changes.
        assert node_digest(t, n) == digest(goal)
        for key in every:
            assert view_of(t, n, key)[0] == info(t, key).view(n), (n, key)
        # ... and many keys at once, as a joining node's are looked at.
        assert views_of(t, n, every) == {k: view_of(t, n, k) for k in every}, n


actions = st.lists(
    st.tuples(st.sampled_from(KINDS), st.integers(0, 50), st.integers(0, 50)),
    min_size=1,
    max_size=60,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions)
def test_incremental_ops_equal_goal_state(acts: list[tuple[str, int, int]]) -> None:
    w = World()
    t = Topology()
    held: Held = {}
    nodes: set[str] = set()
    # A seed topology so most random actions hit something.
    seed = [w.add_node("host-0"), w.add_node("host-1"), w.add_network(), w.add_sg()]
    seed.append(w.add_subnet(seed[2].id))
    for c in seed:
        apply_ops(held, place(t, c))
    for kind, a, b in acts:
        for c in w.act(kind, a, b):
            apply_ops(held, place(t, c))
            nodes |= set(w.res["node"])
        check_converged(t, held, nodes)


def _ports_on(held: Held, node: str) -> dict[str, Any]:
    return {i: b for (t, i), b in held.get(node, {}).items() if t == "port"}


def test_port_goes_full_to_host_and_as_neighbour_elsewhere() -> None:
    w, t, held = World(), Topology(), {}
    a, b, c = w.add_node("ha"), w.add_node("hb"), w.add_node("hc")
    net = w.add_network(1234)
    sub = w.add_subnet(net.id)
    for ch in (a, b, c, net, sub):
        apply_ops(held, place(t, ch))
    p1 = w.add_port(w.res["subnet"][sub.id], "ha", [])
    ops = place(t, p1)
    # Only ha is a member: it gets the VPC's whole state with its first port (a join).
    assert set(ops) == {a.id}
    kinds = {(o["type"], o["id"]) for o in ops[a.id]}
    assert {("vpc", net.id), ("subnet", sub.id), ("port", p1.id)} <= kinds
    apply_ops(held, ops)
    p2 = w.add_port(w.res["subnet"][sub.id], "hb", [])
    ops = place(t, p2)
    apply_ops(held, ops)
    assert set(ops) == {a.id, b.id}
    assert "admin_state_up" in _ports_on(held, b.id)[p2.id]  # local: in full
    assert "admin_state_up" not in _ports_on(held, a.id)[p2.id]  # neighbour
    assert _ports_on(held, a.id)[p2.id]["node_id"] == b.id
    # ha learns hb's tunnel endpoint, hb learns ha's.
    assert ("node", b.id) in held[a.id] and ("node", a.id) in held[b.id]
    assert c.id not in ops
    check_converged(t, held, {a.id, b.id, c.id})


def test_status_update_costs_no_message() -> None:
    w, t, held = World(), Topology(), {}
    for ch in (w.add_node("ha"), w.add_network()):
        apply_ops(held, place(t, ch))
    sub = w.add_subnet(next(iter(w.res["network"])))
    apply_ops(held, place(t, sub))
    p = w.add_port(w.res["subnet"][sub.id], "ha", [])
    apply_ops(held, place(t, p))
    assert place(t, w.update("port", w.res["port"][p.id], status="ACTIVE")) == {}


def test_a_subnets_dhcp_settings_reach_its_members() -> None:
    w, t, held, (a, b), sub = two_nodes_one_subnet()
    apply_ops(held, place(t, w.add_port(w.res["subnet"][sub.id], "ha", [])))
    body = held[a.id][("subnet", sub.id)]
    assert (body["enable_dhcp"], body["dns_nameservers"], body["host_routes"]) == (True, [], [])
    routes = [
        {"destination": "192.168.0.0/16", "nexthop": "10.0.0.9"},
        {"destination": "172.16.0.0/12", "nexthop": "10.0.0.8"},
    ]
    change = w.update(
        "subnet", w.res["subnet"][sub.id], dns_nameservers=["10.0.0.3", "10.0.0.2"],
        host_routes=routes, enable_dhcp=False,
    )  # fmt: skip
    ops = place(t, change)
    assert set(ops) == {a.id}  # hb hosts nothing of the VPC
    apply_ops(held, ops)
    body = held[a.id][("subnet", sub.id)]
    assert body["enable_dhcp"] is False
    assert body["dns_nameservers"] == ["10.0.0.3", "10.0.0.2"]  # the tenant's order
    assert body["host_routes"] == sorted(routes, key=lambda r: r["destination"])
    check_converged(t, held, {a.id, b.id})


def test_a_ports_dhcp_options_reach_its_host_only() -> None:
    w, t, held, (a, b), sub = two_nodes_one_subnet()
    p = w.add_port(w.res["subnet"][sub.id], "ha", [])
    apply_ops(held, place(t, p))
    apply_ops(held, place(t, w.add_port(w.res["subnet"][sub.id], "hb", [])))
    assert "extra_dhcp_opts" not in _ports_on(held, a.id)[p.id]  # none: the body as before
    opts = [{"opt_name": "tftp-server", "opt_value": "10.0.0.9", "ip_version": 4},
            {"opt_name": "tftp-server", "opt_value": "2001:db8::9", "ip_version": 6}]
    ops = place(t, w.update("port", w.res["port"][p.id], extra_dhcp_opts=opts))
    assert set(ops) == {a.id}  # the neighbour's view of the port did not change
    apply_ops(held, ops)
    assert _ports_on(held, a.id)[p.id]["extra_dhcp_opts"] == [
        {"opt_name": "tftp-server", "opt_value": "10.0.0.9"}]  # DHCPv4's only
    assert "extra_dhcp_opts" not in _ports_on(held, b.id)[p.id]
    check_converged(t, held, {a.id, b.id})


def test_rebind_moves_port_and_leaving_node_gets_deletes() -> None:
    w, t, held, (a, b), sub = two_nodes_one_subnet()
    p = w.add_port(w.res["subnet"][sub.id], "ha", [])
    apply_ops(held, place(t, p))
    ops = place(t, w.update("port", w.res["port"][p.id], **{"binding:host_id": "hb"}))
    apply_ops(held, ops)
    # ha hosted the VPC's only port: it leaves and drops everything of the VPC.
    assert [o["op"] for o in ops[a.id]] == ["delete"] * len(ops[a.id])
    assert not any(t_ in ("vpc", "subnet", "port") for t_, _ in held[a.id])
    assert _ports_on(held, b.id)[p.id]["node_id"] == b.id
    check_converged(t, held, {a.id, b.id})


def test_digest_is_order_independent() -> None:
    g1 = {"node_id": "n", "port": {"a": {"x": 1}, "b": {"y": 2}}}
    g2 = {"node_id": "n", "port": {"b": {"y": 2}, "a": {"x": 1}}}
    assert digest(g1) == digest(g2)
    assert digest(g1) != digest({"node_id": "n", "port": {"a": {"x": 1}}})


def test_a_change_no_node_can_see_keeps_the_cached_views() -> None:
    """An agent's status report (or a rename) only swaps the port's body: no ops, and the views,
    their JSON and digest shares stay cached."""
    w = World()
    t = Topology()
    changes = [w.add_node("h1", ip=1), w.add_node("h2", ip=2)]
    net = w.add_network(2000)
    sub = w.add_subnet(net.id)
    changes += [net, sub]
    port = w.add_port(w.res["subnet"][sub.id], "h1", [])
    changes += [port, w.add_port(w.res["subnet"][sub.id], "h2", [])]
    for c in changes:
        place(t, c)
    h1 = t.port_node(port.id)
    assert h1 is not None
    before = t.port_view(port.id, t.res["port"][port.id], h1, False)
    share = t.port_hash(port.id, before)
    status = w.update("port", w.res["port"][port.id], status="ACTIVE", name="web")
    assert place(t, status) == {}
    held = t.res["port"][port.id]
    assert held["status"] == "ACTIVE" and "name" not in held  # only what placement reads
    assert t.port_view(port.id, held, h1, False) is before
    assert t.port_hash(port.id, before) == share
    moved = w.update("port", w.res["port"][port.id], **{"binding:host_id": "h2"})
    assert place(t, moved)  # a change the nodes see still goes through placement


def test_a_port_beside_its_hosts_others_changes_its_own_key_only() -> None:
    """The commonest change (a port created on a host already in its VPC, with security groups
    the host uses already) is placed without looking at the host's record or its groups: they
    change for nobody. The result is the one the diff of goal states gives."""
    w, t, held, (a, b), sub = two_nodes_one_subnet()
    s = w.res["subnet"][sub.id]
    sg = w.add_sg()
    apply_ops(held, place(t, sg))
    for ch in (w.add_port(s, "ha", [sg.id]), w.add_port(s, "hb", [sg.id])):
        apply_ops(held, place(t, ch))  # both join: records and the group come with it
    before = {n: goal_state(t, n) for n in (a.id, b.id)}
    c = w.add_port(s, "ha", [sg.id])
    out = placements(t, c)
    assert list(out) == [("port", c.id)]
    grants = {g.nodes: g.op for g in out[("port", c.id)]}
    assert grants[frozenset((a.id,))]["body"]["admin_state_up"] is True  # its host: in full
    assert "admin_state_up" not in grants[frozenset((b.id,))]["body"]  # the other: a neighbour
    for n in (a.id, b.id):
        after = goal_state(t, n)
        assert {k for k in after["port"] if k not in before[n]["port"]} == {c.id}
        assert {w_: v for w_, v in after.items() if w_ != "port"} == {
            w_: v for w_, v in before[n].items() if w_ != "port"}
    # A port with a group new to its host is not that case: the group comes with it.
    sg2 = w.add_sg()
    apply_ops(held, place(t, sg2))
    c2 = w.add_port(s, "hb", [sg2.id])
    assert ("security_group", sg2.id) in placements(t, c2)


def test_a_nodes_record_is_one_object_while_its_body_is() -> None:
    w, t, held, (a, b), sub = two_nodes_one_subnet()
    src = t.res["node"][a.id]
    assert t.node_view(a.id, src) is t.node_view(a.id, src)
    place(t, w.update("node", w.res["node"][a.id], local_ip="172.16.9.9"))
    assert t.node_view(a.id, t.res["node"][a.id])["local_ip"] == "172.16.9.9"
