"""The plan of a batch: changes in, per-node ops out (host first, last state per resource). No I/O."""

from __future__ import annotations

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from alcor.agent.model import AgentModel, Outcome, parse_message
from alcor.db.changelog import Change
from alcor.southbound.encode import encode_delta, encode_snapshot, vpc_snapshot
from alcor.southbound.goalstate import Topology, goal_state
from alcor.southbound.placement import place
from alcor.southbound.plan import Channels, plan
from alcor.wire import WIRE_TYPES
from tests.support.world import KINDS, World


def scene(hosts: int = 4) -> tuple[World, Topology, dict[str, str], dict]:  # type: ignore[type-arg]
    """A VPC with a port on each of `hosts` nodes, placed into a topology."""
    w, t = World(), Topology()
    nodes = {}
    changes = []
    for i in range(hosts):
        c = w.add_node(f"host-{i}", ip=i)
        nodes[f"host-{i}"] = c.id
        changes.append(c)
    net = w.add_network()
    changes.append(net)
    sub = w.add_subnet(net.id)
    changes.append(sub)
    for i in range(hosts):
        changes.append(w.add_port(w.res["subnet"][sub.id], f"host-{i}", []))
    for c in changes:
        place(t, c)
    return w, t, nodes, w.res["subnet"][sub.id]


def test_the_ports_hosts_come_first_then_the_neighbours() -> None:
    w, t, nodes, sub = scene(6)
    # Ports on the last hosts (by id, the order placement lists nodes in), one batch.
    changes = [w.add_port(sub, "host-5", []), w.add_port(sub, "host-4", [])]
    p = plan(t, changes, changes[0].rev - 1)
    order = list(p.per_node)
    assert p.hosts == {nodes["host-5"], nodes["host-4"]}
    assert set(order[:2]) == p.hosts and len(order) == 6
    # The host holds its own port in its local variant (with admin_state_up); the others, the
    # neighbour variant.
    host_op = p.per_node[nodes["host-5"]][("port", changes[0].id)]
    assert host_op["body"]["node_id"] == nodes["host-5"] and "admin_state_up" in host_op["body"]
    other = p.per_node[nodes["host-0"]][("port", changes[0].id)]
    assert "admin_state_up" not in other["body"]
    assert (p.rev, p.used, p.ops) == (changes[-1].rev, 2, 12)


def test_a_resource_appears_once_per_node_in_its_last_state() -> None:
    w, t, nodes, sub = scene(3)
    c1 = w.add_port(sub, "host-0", [])
    c2 = w.update("port", w.res["port"][c1.id], allowed_address_pairs=[
        {"ip_address": "10.9.9.9", "mac_address": "fa:16:3e:00:00:99"}])
    p = plan(t, [c1, c2], c1.rev - 1)
    for node in nodes.values():
        op = p.per_node[node][("port", c1.id)]
        assert op["rev"] == c2.rev and op["body"]["allowed_address_pairs"]
    assert p.touched == [("port", c1.id)] and p.first_ts == [c1.ts, c2.ts]


def test_a_batch_stops_at_the_change_that_reaches_max_ops() -> None:
    w, t, nodes, sub = scene(4)
    changes = [w.add_port(sub, "host-1", []) for _ in range(5)]
    p = plan(t, changes, changes[0].rev - 1, max_ops=8)  # 4 node-ops per port
    assert (p.used, p.ops, p.rev) == (2, 8, changes[1].rev)
    # The rest is planned by the next batch, on the topology this one moved on.
    q = plan(t, changes[p.used:], p.rev, max_ops=8)
    assert q.used == 2 and q.rev == changes[3].rev


def test_changes_outside_the_wire_move_the_rev_and_nothing_else() -> None:
    w, t, nodes, sub = scene(2)
    c = Change(w.rev + 1, 0.0, "quota", "proj", "update", "proj", None, 1, {"port": 10})
    p = plan(t, [c], c.rev - 1)
    assert (p.rev, p.used, p.ops, p.per_node, p.touched) == (c.rev, 1, 0, {}, [])


def test_planned_ops_applied_per_node_equal_the_goal_state() -> None:
    """A short history through plan (several changes per batch) lands every node on its goal."""
    w, t = World(), Topology()
    held: dict[str, dict[tuple[str, str], object]] = {}
    history = [w.add_node("host-0"), w.add_node("host-1", ip=2), w.add_network()]
    history.append(w.add_subnet(history[2].id))
    sub = w.res["subnet"][history[3].id]
    history += [w.add_port(sub, f"host-{i % 2}", []) for i in range(4)]
    history.append(w.delete("port", history[4].id))
    history.append(w.update("port", w.res["port"][history[5].id], **{"binding:host_id": "host-0"}))
    rev = 0
    for i in range(0, len(history), 3):
        p = plan(t, history[i:i + 3], rev)
        rev = p.rev
        for node, bucket in p.per_node.items():
            model = held.setdefault(node, {})
            for key, op in bucket.items():
                if op["op"] == "upsert":
                    model[key] = op["body"]
                else:
                    model.pop(key, None)
    for node in t.res["node"]:
        goal = goal_state(t, node)
        got = {ty: {} for ty in WIRE_TYPES}  # type: dict[str, dict[str, object]]
        for (ty, i), body in held.get(node, {}).items():
            got[ty][i] = body
        assert {"node_id": node, **got} == goal


def test_nodes_joining_a_vpc_in_one_batch_share_its_ops() -> None:
    """Each joiner gets the VPC's resources from its own join's change; the ops that leave them
    holding the same thing are one op (serialised once), whose rev is valid for every one."""
    w, t, nodes, sub = scene(2)
    for i in (2, 3, 4):
        place(t, w.add_node(f"host-{i}", ip=i))
    start = w.rev
    changes = [w.add_port(sub, f"host-{i}", []) for i in (2, 3, 4)]
    p = plan(t, changes, start)
    joiners = [n for n in t.res["node"] if t.res["node"][n]["node_name"] in ("host-2", "host-3",
                                                                          "host-4")]
    old_port = next(i for i in t.res["port"] if i not in {c.id for c in changes}
                    and t.port_node(i) == nodes["host-0"])
    ops = [p.per_node[n][("port", old_port)] for n in joiners]
    assert all(op is ops[0] for op in ops)
    # a member's record too, to every other member (one body object per record)
    rec = [p.per_node[n][("node", nodes["host-1"])] for n in joiners]
    assert all(op is rec[0] for op in rec)
    for bucket in p.per_node.values():
        assert all(start < op["rev"] <= p.rev for op in bucket.values())
    cache: dict[int, bytes] = {}
    for n, bucket in p.per_node.items():
        encode_delta(n, "delta", start, p.rev, bucket.values(), cache, t)
    assert len(cache) == len({id(op) for b in p.per_node.values() for op in b.values()})
    for n in t.res["node"]:
        model = AgentModel(n, awaiting_snapshot=False)
        assert model.receive(parse_message(encode_delta(
            n, "delta", 0, p.rev, p.per_node.get(n, {}).values(), {}, t))) in (
            Outcome.APPLIED, Outcome.DUPLICATE)
        if n in joiners:
            assert model.goal()["port"] == goal_state(t, n)["port"]


def test_joiners_get_the_vpcs_state_at_the_batchs_end() -> None:
    """Joins in a batch are resolved at its end (the VPC's state then, one op per key for all
    its joiners): with the VPC's resources changing around the joins, a node that joins and
    one that joins and leaves again each end at their goal state."""
    w, t, nodes, sub = scene(2)
    for i in (2, 3):
        place(t, w.add_node(f"host-{i}", ip=i))
    held: dict[str, dict[tuple[str, str], object]] = {}
    for n in t.res["node"]:
        held[n] = {(ty, i): b for ty in WIRE_TYPES for i, b in goal_state(t, n)[ty].items()}
    ports = list(t.res["port"])
    first = w.add_port(sub, "host-2", [])
    visit = w.add_port(sub, "host-3", [])
    batch = [first, w.delete("port", ports[0]), visit,
             w.update("port", w.res["port"][ports[1]], allowed_address_pairs=[
                 {"ip_address": "10.9.9.9", "mac_address": "fa:16:3e:00:00:99"}]),
             w.delete("port", visit.id), w.add_port(sub, "host-0", [])]
    p = plan(t, batch, batch[0].rev - 1)
    assert p.used == len(batch)
    for n, bucket in p.per_node.items():
        assert all(batch[0].rev <= op["rev"] <= p.rev for op in bucket.values())
        model = held.setdefault(n, {})
        for key, op in bucket.items():
            if op["op"] == "upsert":
                model[key] = op["body"]
            else:
                model.pop(key, None)
    for n in t.res["node"]:
        got = {ty: {} for ty in WIRE_TYPES}  # type: dict[str, dict[str, object]]
        for (ty, i), body in held[n].items():
            got[ty][i] = body
        assert {"node_id": n, **got} == goal_state(t, n), n


def test_a_batch_ends_after_a_vpcs_joins_before_its_next_port() -> None:
    """A fleet's first ports make every host join its VPC, each with the VPC's resources on its
    own chain: the batch ends before the first port that is not a join, which then goes once,
    on the VPC's chain, instead of once to every joiner."""
    w, t = World(), Topology()
    channels = Channels(3, 1)
    hosts = [w.add_node(f"host-{i}", ip=i) for i in range(4)]
    net = w.add_network()
    sub = w.add_subnet(net.id)
    plan(t, [*hosts, net, sub], 0, channels=channels)
    s = w.res["subnet"][sub.id]
    start = w.rev
    joins = [w.add_port(s, f"host-{i}", []) for i in range(4)]
    more = [w.add_port(s, f"host-{i}", []) for i in range(4)]
    p = plan(t, [*joins, *more], start, channels=channels)
    assert p.used == 4 and p.multicast == {net.id} and set(p.follow) == {h.id for h in hosts}
    q = plan(t, more, p.rev, multicast=p.multicast, channels=channels)
    assert q.used == 4 and set(q.per_vpc[net.id]) == {("port", c.id) for c in more}
    # Through the agents' models, batch after batch: every node at its goal.
    w, t, fleet = World(), Topology(), Fleet()
    history = [*(w.add_node(f"host-{i}", ip=i) for i in range(4)), net := w.add_network()]
    history.append(sub := w.add_subnet(net.id))
    s = w.res["subnet"][sub.id]
    history += [w.add_port(s, f"host-{i % 4}", []) for i in range(10)]
    rev, i, batches = 0, 0, 0
    while i < len(history):
        rev, used = fleet.batch(t, history[i:], rev, channels)
        i, batches = i + used, batches + 1
    assert batches == 2
    for n in t.res["node"]:
        assert fleet.model(n).goal() == goal_state(t, n), n
    # Fewer joiners than make a VPC multicast: one batch, as before.
    w2, t2 = World(), Topology()
    h2 = [w2.add_node(f"host-{i}", ip=i) for i in range(2)]
    n2 = w2.add_network()
    s2 = w2.add_subnet(n2.id)
    plan(t2, [*h2, n2, s2], 0, channels=channels)
    sub2 = w2.res["subnet"][s2.id]
    batch = [w2.add_port(sub2, f"host-{i % 2}", []) for i in range(4)]
    assert plan(t2, batch, batch[0].rev - 1, channels=channels).used == 4


# -- the VPC chains -----------------------------------------------------------------------------


class Fleet:
    """Every node's AgentModel fed the way the broker would: each batch's node messages, then
    each VPC message copied to the queues bound under its key (the dispatcher's bind/unbind)."""

    def __init__(self) -> None:
        self.models: dict[str, AgentModel] = {}
        self.bound: dict[str, set[str]] = {}  # vpc → nodes whose queue is bound
        self.node_prev: dict[str, int] = {}
        self.vpc_prev: dict[str, int] = {}
        self.multicast: set[str] = set()
        self.lost: set[str] = set()  # nodes that missed a VPC message

    def model(self, node: str) -> AgentModel:
        m = self.models.get(node)
        if m is None:
            m = self.models[node] = AgentModel(node)
            m.receive(parse_message(encode_snapshot(Topology(), node, 0, 0)[0]))
        return m

    def batch(self, t: Topology, changes: list[Change], rev: int, channels: Channels,
              lose: frozenset[str] = frozenset()) -> tuple[int, int]:
        """One batch through plan, encode and the agents' models; `lose`: nodes whose copy of
        the batch's VPC messages the broker loses. A node whose VPC chain has a gap gets that
        VPC's state on its own chain, as the dispatcher sends it."""
        p = plan(t, changes, rev, multicast=self.multicast, channels=channels)
        for v in [v for v in self.vpc_prev if v not in p.multicast]:
            del self.vpc_prev[v]
        for v in p.multicast:
            self.vpc_prev.setdefault(v, p.rev)
        self.multicast = set(p.multicast)
        for n, v in p.unbinds:
            self.bound.get(v, set()).discard(n)
        for n, v in p.binds:
            self.bound.setdefault(v, set()).add(n)
        cache: dict[int, bytes] = {}
        broken = [n for n, m in self.models.items() if m.broken and n not in p.per_node]
        for n in [*p.per_node, *broken]:
            ops = dict(p.per_node.get(n, {}))
            follow = dict(p.follow.get(n) or {})
            replace = []
            for v in sorted(self.model(n).broken):
                if v in p.multicast and n in t.members.get(v, {}) and follow.get(v, 0) is not None:
                    ops.update(((o["type"], o["id"]), o) for o in vpc_snapshot(t, n, v, p.rev))
                    follow[v] = p.rev
                    replace.append(v)
                    self.bound.setdefault(v, set()).add(n)
            raw = encode_delta(n, "delta", self.node_prev.get(n, 0), p.rev, ops.values(),
                               cache, t, 0, follow, replace=replace)
            assert self.model(n).receive(parse_message(raw)) is Outcome.APPLIED
            self.node_prev[n] = p.rev
        for v, bucket in p.per_vpc.items():
            raw = encode_delta("", "delta", self.vpc_prev[v], p.rev, bucket.values(), cache, t,
                               0, vpc=v)
            self.vpc_prev[v] = p.rev
            for n in sorted(self.bound.get(v, ())):
                if n in lose:
                    self.lost.add(n)
                    continue
                outcome = self.model(n).receive(parse_message(raw))
                assert outcome is not Outcome.GAP, (n, v)
                assert outcome is not Outcome.VPC_GAP or n in self.lost, (n, v)
        # Followers are exactly the multicast VPCs' members, bound and following.
        for v in p.multicast:
            assert self.bound.get(v, set()) == set(t.members.get(v, ())), v
            for n in t.members.get(v, ()):
                assert v in self.model(n).chains
        return p.rev, p.used

    def whole(self, t: Topology, changes: list[Change], rev: int, channels: Channels,
              lose: frozenset[str] = frozenset()) -> int:
        """`batch`, for changes that make one batch."""
        rev, used = self.batch(t, changes, rev, channels, lose)
        assert used == len(changes)
        return rev


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from(KINDS), st.integers(0, 50), st.integers(0, 50)),
        min_size=1,
        max_size=60,
    ),
    st.integers(1, 6),
    st.sampled_from([(2, 1), (3, 1), (1, 0)]),
)
def test_node_and_vpc_chains_bring_every_node_to_its_goal(
    acts: list[tuple[str, int, int]], per_batch: int, thresholds: tuple[int, int]
) -> None:
    """Random histories, batched, with VPCs switching unicast <-> multicast as nodes join and
    leave: every node's model (its chain and the chains it follows) equals its goal state."""
    w, t = World(), Topology()
    fleet = Fleet()
    channels = Channels(*thresholds)
    history = [w.add_node("host-0"), w.add_node("host-1", ip=2), w.add_node("host-2", ip=3)]
    history += [w.add_network(), w.add_sg()]
    history.append(w.add_subnet(history[3].id))
    for kind, a, b in acts:
        history += w.act(kind, a, b)
        names = [n["node_name"] for n in w.res["node"].values()]
        # Two nodes claiming one name: placement's known blind spot (their node records),
        # with or without VPC chains; tests/unit/southbound/test_placement.py covers it.
        assume(len(names) == len(set(names)))
    rev, i = 0, 0
    while i < len(history):  # a batch may end early (after a VPC's joins), the next go on
        rev, used = fleet.batch(t, history[i : i + per_batch], rev, channels)
        i += used
    for node in set(t.res["node"]) | set(fleet.models):
        goal = goal_state(t, node)
        assert fleet.model(node).goal() == goal, node


def test_a_big_vpcs_neighbour_goes_once_on_its_chain_and_the_host_first() -> None:
    w, t, nodes, sub = scene(6)
    channels = Channels(4, 2)
    first = plan(t, [], w.rev, channels=channels)  # the VPC switches: all six join at this rev
    assert first.multicast and len(first.binds) == 6 and not first.per_vpc
    vpc = next(iter(first.multicast))
    assert all(f == {vpc: w.rev} for f in first.follow.values())
    c = w.add_port(sub, "host-3", [])
    p = plan(t, [c], first.rev, multicast=first.multicast, channels=channels)
    # One message for the batch: the neighbour variant, once, with its host's own variant.
    assert not p.per_node
    assert list(p.per_vpc[vpc]) == [("port", c.id)]
    op = p.per_vpc[vpc][("port", c.id)]
    assert op["body"]["node_id"] == nodes["host-3"] and "admin_state_up" not in op["body"]
    # `local`: only what the host's variant adds to the neighbour body
    assert "node_id" not in op["local"] and "admin_state_up" in op["local"]
    assert {**op["body"], **op["local"]} == goal_state(t, nodes["host-3"])["port"][c.id]
    # Encoded, the host takes its variant and every other follower the neighbour variant.
    raw = encode_delta("", "delta", first.rev, p.rev, p.per_vpc[vpc].values(), {}, t, vpc=vpc)
    for name, n in nodes.items():
        m = AgentModel(n, awaiting_snapshot=False, chains={vpc: first.rev})
        assert m.receive(parse_message(raw)) is Outcome.APPLIED
        assert m.resources["port"][c.id] == goal_state(t, n)["port"][c.id], name
    # A port whose host starts following in this batch (its first port in the VPC) goes to
    # that host on its own chain, with the join.
    fresh = [w.add_node("host-6", ip=7), w.add_port(sub, "host-6", [])]
    q = plan(t, fresh, p.rev, multicast=p.multicast, channels=channels)
    host6 = fresh[0].id
    assert q.follow[host6] == {vpc: q.rev}
    assert "admin_state_up" in q.per_node[host6][("port", fresh[1].id)]["body"]
    assert "local" not in q.per_vpc[vpc][("port", fresh[1].id)]
    p = q
    # The VPC shrinks to the unicast threshold: everyone stops following.
    gone = [w.delete("port", pid) for pid, b in list(w.res["port"].items())
            if b["binding:host_id"] in ("host-0", "host-1", "host-2", "host-3", "host-6")]
    q = plan(t, gone, p.rev, multicast=p.multicast, channels=channels)
    assert not q.multicast and not q.per_vpc
    assert {n for n, v in q.unbinds} == {*nodes.values(), host6}


def test_a_gap_on_a_vpc_chain_costs_that_vpcs_state_only() -> None:
    """A node misses a VPC message: the next one on that chain shows the gap, the node's own
    chain goes on, and the VPC's state on its chain (not a whole snapshot) makes it whole."""
    w, t = World(), Topology()
    fleet = Fleet()
    channels = Channels(2, 1)
    hosts = [w.add_node(f"host-{i}", ip=i) for i in range(3)]
    nets = [w.add_network(), w.add_network(3001)]
    subs = [w.add_subnet(n.id) for n in nets]
    ports = [w.add_port(w.res["subnet"][s.id], f"host-{i}", []) for s in subs for i in range(3)]
    rev = fleet.whole(t, [*hosts, *nets, *subs, *ports], 0, channels)
    assert fleet.multicast == {n.id for n in nets}
    victim = hosts[2].id
    s0, s1 = (w.res["subnet"][s.id] for s in subs)
    # Both VPCs change; the victim's copies of this batch's VPC messages are lost.
    rev = fleet.whole(t, [w.add_port(s0, "host-0", []), w.add_port(s1, "host-1", [])], rev,
                      channels, lose=frozenset({victim}))
    m = fleet.model(victim)
    assert not m.broken  # nothing shows yet: a gap shows on the chain's next message
    # One VPC changes again: its next message shows the gap on that chain only.
    rev = fleet.whole(t, [w.add_port(s0, "host-0", [])], rev, channels)
    assert m.broken == {nets[0].id} and not m.awaiting_snapshot
    assert m.goal() != goal_state(t, victim)
    # The next batch carries that VPC's state on the victim's own chain; no snapshot.
    rev = fleet.whole(t, [w.add_port(s0, "host-1", [])], rev, channels)
    assert not m.broken and not m.awaiting_snapshot
    assert m.resources["port"].keys() >= set(w.res["port"]) - set(t.ports_by_vpc[nets[1].id])
    # The other VPC's chain shows its gap at its next message, and is repaired the same way.
    rev = fleet.whole(t, [w.add_port(s1, "host-0", [])], rev, channels)
    assert m.broken == {nets[1].id}
    fleet.whole(t, [w.add_port(s0, "host-0", [])], rev, channels)
    assert not m.broken and not m.awaiting_snapshot
    assert m.goal() == goal_state(t, victim)
    for n in fleet.models:
        assert fleet.model(n).goal() == goal_state(t, n), n
