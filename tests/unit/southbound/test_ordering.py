"""The ordering rule (docs/architecture.md, "Revisions") under an adversarial network, as property tests.

A node's stream is built the way the dispatcher builds it (placement, random batch boundaries,
ops compressed per resource), then a controller crash re-batches the unconfirmed tail from the
last committed point, and the network duplicates, loses and reorders messages. Whatever happens:
- whenever the agent is not waiting for a snapshot, its model IS the node's goal state at its
  applied_rev (never a mix, never stale);
- with nothing lost or reordered, it ends at the final goal state;
- otherwise it ends there too or it has asked for a snapshot, and the snapshot brings it there.
"""

from __future__ import annotations

import json
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alcor.agent.model import AgentModel, MalformedMessage, Outcome, parse_message
from alcor.southbound.goalstate import Topology, goal_entries, goal_state
from alcor.southbound.placement import place
from alcor.wire import digest
from tests.support.world import KINDS, World

NODE = "node-0001"


def build_history(
    acts: list[tuple[str, int, int]],
) -> tuple[list[int], dict[int, list[Any]], dict[int, Any], Topology]:
    """All change revs, the node's ops per rev, and its goal state after every rev."""
    w, t = World(), Topology()
    changes = [w.add_node("host-0"), w.add_node("host-1"), w.add_network(), w.add_sg()]
    changes.append(w.add_subnet(changes[2].id))
    sub = w.res["subnet"][changes[-1].id]
    changes.append(w.add_port(sub, "host-0", []))
    for kind, a, b in acts:
        changes += w.act(kind, a, b)
    revs, ops, goals = [0], {}, {0: goal_state(t, NODE)}
    for c in changes:
        ops[c.rev] = place(t, c).get(NODE, [])
        revs.append(c.rev)
        goals[c.rev] = goal_state(t, NODE)
    return revs, ops, goals, t


def batch(
    revs: list[int], ops: dict[int, list[Any]], prev: int, start: int, cuts: random.Random
) -> list[bytes]:
    """The messages the dispatcher would send this node for revs after `start`, randomly batched."""
    out: list[bytes] = []
    pending: dict[tuple[str, str], Any] = {}
    for r in [r for r in revs if r > start]:
        for op in ops[r]:
            pending[(op["type"], op["id"])] = op
        if cuts.random() < 0.4 or r == revs[-1]:
            if pending:
                out.append(message("delta", prev, r, list(pending.values())))
                prev = r
            pending = {}
    return out


def message(kind: str, prev: int, rev: int, ops: list[Any]) -> bytes:
    return json.dumps(
        {"v": 2, "node_id": NODE, "kind": kind, "prev_rev": prev, "rev": rev, "ops": ops}
    ).encode()


def snapshot(t: Topology, prev: int, rev: int) -> bytes:
    ops = [
        {"rev": rev, "type": ty, "id": i, "op": "upsert", "revision_number": rn, "body": b}
        for ty, i, b, rn in goal_entries(t, NODE)
    ]
    return message("snapshot", prev, rev, ops)


def strip(goal: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in goal.items() if v}


acts_st = st.lists(
    st.tuples(st.sampled_from(KINDS), st.integers(0, 40), st.integers(0, 40)), max_size=40
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    acts=acts_st,
    seed=st.integers(0, 2**32),
    dup=st.floats(0, 0.5),
    loss=st.sampled_from([0.0, 0.0, 0.1, 0.3]),
    swap=st.sampled_from([0.0, 0.0, 0.2]),
)
def test_stream_converges_or_asks_for_snapshot(
    acts: list[tuple[str, int, int]], seed: int, dup: float, loss: float, swap: float
) -> None:
    rnd = random.Random(seed)
    revs, ops, goals, t = build_history(acts)
    # First delivery: batched one way; the controller crashes after publishing some of it and
    # before committing, then re-batches everything after its last committed message.
    first = batch(revs, ops, 0, 0, rnd)
    published = first[: rnd.randint(0, len(first))]
    committed = rnd.randint(0, len(published))
    restart_prev = 0 if committed == 0 else json.loads(published[committed - 1])["rev"]
    second = batch(revs, ops, restart_prev, restart_prev, rnd)
    stream = [snapshot(Topology(), 0, 0)] + published + second

    deliveries: list[bytes] = []
    for m in stream:
        if rnd.random() < loss:
            continue
        deliveries.append(m)
        if rnd.random() < dup:
            deliveries.insert(rnd.randint(len(deliveries) - 1, len(deliveries)), m)
    for i in range(len(deliveries) - 1):
        if rnd.random() < swap:
            deliveries[i], deliveries[i + 1] = deliveries[i + 1], deliveries[i]

    agent = AgentModel(NODE)
    asked = False
    for raw in deliveries:
        outcome = agent.receive(parse_message(raw))
        asked |= outcome is Outcome.GAP
        if not agent.awaiting_snapshot:
            # Safety: never a state that was not the goal at some rev.
            assert strip(agent.goal()) == strip(goals[agent.applied_rev])
            assert agent.digest() == digest(goals[agent.applied_rev])

    final = revs[-1]
    clean = loss == 0.0 and swap == 0.0
    if clean:
        assert not asked
    if not asked and not agent.awaiting_snapshot and agent.applied_rev == final:
        assert strip(agent.goal()) == strip(goals[final])
    else:
        # Something was lost or came out of order: a snapshot request, or a tail still owed.
        assert asked or agent.awaiting_snapshot or not clean or agent.applied_rev < final
        agent.receive(parse_message(snapshot(t, 0, final)))
        assert strip(agent.goal()) == strip(goals[final])
        assert agent.applied_rev == final and not agent.awaiting_snapshot


def test_fresh_agent_drops_deltas_until_snapshot() -> None:
    agent = AgentModel(NODE)
    assert agent.receive(parse_message(message("delta", 0, 3, []))) is Outcome.WAITING
    assert agent.receive(parse_message(message("snapshot", 2, 5, []))) is Outcome.SNAPSHOT
    assert agent.receive(parse_message(message("delta", 4, 6, []))) is Outcome.APPLIED
    assert agent.receive(parse_message(message("delta", 4, 6, []))) is Outcome.DUPLICATE
    assert agent.receive(parse_message(message("delta", 8, 9, []))) is Outcome.GAP
    assert agent.receive(parse_message(message("delta", 6, 9, []))) is Outcome.WAITING
    # A repair snapshot at the same rev is taken; an old redelivered one is not.
    agent.receive(parse_message(message("snapshot", 0, 9, [])))
    assert agent.receive(parse_message(message("snapshot", 0, 9, []))) is Outcome.SNAPSHOT
    assert agent.receive(parse_message(message("snapshot", 0, 8, []))) is Outcome.DUPLICATE


def test_stale_revision_ignored_and_tombstone_holds() -> None:
    agent = AgentModel(NODE)
    agent.receive(parse_message(message("snapshot", 0, 1, [])))
    up = {
        "rev": 2,
        "type": "port",
        "id": "p",
        "op": "upsert",
        "revision_number": 3,
        "body": {"a": 1},
    }
    old = {**up, "rev": 3, "revision_number": 2, "body": {"a": 0}}
    dele = {"rev": 4, "type": "port", "id": "p", "op": "delete", "revision_number": 4, "body": None}
    late = {**up, "rev": 5, "revision_number": 3}
    agent.receive(parse_message(message("delta", 1, 3, [up, old])))
    assert agent.resources["port"]["p"] == {"a": 1} and agent.stale_ops == 1
    agent.receive(parse_message(message("delta", 3, 5, [dele, late])))
    assert "p" not in agent.resources["port"] and agent.stale_ops == 2


def test_malformed_messages_are_refused() -> None:
    bad = [
        b"not json",
        b"[]",
        b'{"v":1,"node_id":"n","kind":"delta","prev_rev":0,"rev":1,"ops":[]}',
        b'{"v":2,"vpc_id":"v","node_id":"n","kind":"delta","prev_rev":0,"rev":1,"ops":[]}',
        b'{"v":2,"vpc_id":"v","kind":"snapshot","prev_rev":0,"rev":1,"ops":[]}',
        b'{"v":2,"vpc_id":"v","kind":"delta","prev_rev":0,"rev":1,"vpcs":{"v":1},"ops":[]}',
        b'{"v":2,"vpc_id":"v","kind":"delta","prev_rev":0,"rev":2,"ops":[{"rev":1,"type":"node","id":"a","op":"upsert","body":{}}]}',
        b'{"v":2,"node_id":"n","kind":"snapshot","prev_rev":0,"rev":1,"vpcs":{"v":null},"ops":[]}',
        b'{"v":2,"node_id":"n","kind":"delta","prev_rev":0,"rev":1,"vpcs":{"v":-1},"ops":[]}',
        b'{"v":2,"node_id":"n","kind":"nope","prev_rev":0,"rev":1,"ops":[]}',
        b'{"v":2,"node_id":"n","kind":"delta","prev_rev":5,"rev":1,"ops":[]}',
        b'{"v":2,"node_id":"n","kind":"delta","prev_rev":0,"rev":1,"ops":[{"rev":9}]}',
        b'{"v":2,"node_id":"n","kind":"delta","prev_rev":0,"rev":2,"ops":[{"rev":1,"type":"x","id":"a","op":"upsert","body":{}}]}',
        b'{"v":2,"node_id":"n","kind":"snapshot","prev_rev":0,"rev":2,"ops":[{"rev":1,"type":"port","id":"a","op":"delete","body":null}]}',
        b'{"v":2,"node_id":"n","kind":"delta","prev_rev":0,"rev":2,"ops":[{"rev":1,"type":"port","id":"a","op":"upsert","body":3}]}',
        # the fields a host's variant adds: only on a VPC's chain, on a bound port's upsert,
        # never overriding the neighbour body
        b'{"v":2,"node_id":"n","kind":"delta","prev_rev":0,"rev":2,"ops":[{"rev":1,"type":"port","id":"a","op":"upsert","body":{"node_id":"n"},"local":{"admin_state_up":true}}]}',
        b'{"v":2,"vpc_id":"v","kind":"delta","prev_rev":0,"rev":2,"ops":[{"rev":1,"type":"port","id":"a","op":"upsert","body":{"node_id":"n"},"local":{"node_id":"m"}}]}',
        b'{"v":2,"vpc_id":"v","kind":"delta","prev_rev":0,"rev":2,"ops":[{"rev":1,"type":"port","id":"a","op":"upsert","body":{"node_id":null},"local":{"admin_state_up":true}}]}',
        b'{"v":2,"vpc_id":"v","kind":"delta","prev_rev":0,"rev":2,"ops":[{"rev":1,"type":"subnet","id":"a","op":"upsert","body":{},"local":{}}]}',
        b'{"v":2,"vpc_id":"v","kind":"delta","prev_rev":0,"rev":2,"ops":[{"rev":1,"type":"port","id":"a","op":"delete","body":null,"local":{"admin_state_up":true}}]}',
        b'{"v":2,"vpc_id":"v","kind":"delta","prev_rev":0,"rev":2,"ops":[{"rev":1,"type":"port","id":"a","op":"upsert","body":{"node_id":"n"},"local":[]}]}',
    ]
    for raw in bad:
        try:
            parse_message(raw)
        except MalformedMessage:
            continue
        raise AssertionError(f"accepted {raw!r}")


def _from(epoch: int, kind: str, prev: int, rev: int) -> bytes:
    d = json.loads(message(kind, prev, rev, []))
    return json.dumps({**d, "epoch": epoch}).encode()


def test_a_deposed_leaders_messages_are_refused() -> None:
    agent = AgentModel(NODE)
    assert agent.receive(parse_message(_from(3, "snapshot", 0, 5))) is Outcome.SNAPSHOT
    # The next leader (epoch 4) continues the chain from what was committed.
    assert agent.receive(parse_message(_from(4, "delta", 5, 8))) is Outcome.APPLIED
    # The old leader, resumed after a stall, still sends: refused, whatever its revs say.
    assert agent.receive(parse_message(_from(3, "delta", 8, 12))) is Outcome.DEPOSED
    assert agent.receive(parse_message(_from(3, "snapshot", 0, 20))) is Outcome.DEPOSED
    assert agent.applied_rev == 8 and agent.epoch == 4
    assert agent.receive(parse_message(_from(4, "delta", 8, 9))) is Outcome.APPLIED
    # A message without an epoch (a controller that sends none) counts as epoch 0.
    assert agent.receive(parse_message(message("delta", 9, 10, []))) is Outcome.DEPOSED
    try:
        parse_message(_from(-1, "delta", 0, 1))
    except MalformedMessage:
        pass
    else:
        raise AssertionError("a negative epoch was accepted")


def test_a_broken_vpc_chain_is_never_forgotten() -> None:
    """A node whose VPC chain has a gap applies nothing of that chain until the VPC's state
    comes; a node-chain message that would start or stop the chain without it costs a snapshot
    (what the node holds of the VPC may be stale), never a silent gap."""

    def vpc_msg(prev: int, rev: int) -> bytes:
        return json.dumps({"v": 2, "vpc_id": "v1", "kind": "delta", "prev_rev": prev, "rev": rev,
                           "ops": []}).encode()

    def node_msg(prev: int, rev: int, vpcs: dict[str, Any], replace: list[str]) -> bytes:
        return json.dumps({"v": 2, "node_id": NODE, "kind": "delta", "prev_rev": prev,
                           "rev": rev, "ops": [], "vpcs": vpcs, "replace_vpcs": replace}).encode()

    for stop in ({"v1": None}, {"v1": 9}):
        m = AgentModel(NODE)
        m.receive(parse_message(message("snapshot", 0, 3, [])))
        assert m.receive(parse_message(node_msg(3, 4, {"v1": 4}, []))) is Outcome.APPLIED
        assert m.receive(parse_message(vpc_msg(5, 6))) is Outcome.VPC_GAP  # 4 → 5 lost
        assert m.broken == {"v1"} and not m.awaiting_snapshot
        assert m.receive(parse_message(vpc_msg(6, 7))) is Outcome.WAITING
        assert m.receive(parse_message(node_msg(4, 9, stop, []))) is Outcome.GAP
        assert m.awaiting_snapshot
    m = AgentModel(NODE)
    m.receive(parse_message(message("snapshot", 0, 3, [])))
    m.receive(parse_message(node_msg(3, 4, {"v1": 4}, [])))
    m.receive(parse_message(vpc_msg(5, 6)))
    assert m.receive(parse_message(node_msg(4, 9, {"v1": 9}, ["v1"]))) is Outcome.APPLIED
    assert not m.broken and m.chains == {"v1": 9}
    assert m.receive(parse_message(vpc_msg(7, 10))) is Outcome.APPLIED


def _vpc(prev: int, rev: int, ops: list[dict[str, Any]]) -> bytes:
    return json.dumps({"v": 2, "vpc_id": "v1", "kind": "delta", "prev_rev": prev, "rev": rev,
                       "ops": ops}).encode()


def _node(prev: int, rev: int, ops: list[dict[str, Any]], vpcs: dict[str, Any],
          since: int = 0) -> bytes:
    d = {"v": 2, "node_id": NODE, "kind": "delta", "prev_rev": prev, "rev": rev, "ops": ops,
         "vpcs": vpcs}
    if since:
        d["since"] = since
    return json.dumps(d).encode()


def _port(rev: int, pid: str, rn: int, op: str = "upsert", **body: Any) -> dict[str, Any]:
    return {"rev": rev, "type": "port", "id": pid, "op": op, "revision_number": rn,
            "body": None if op == "delete" else {"id": pid, "network_id": "v1", **body}}


def test_since_is_read_on_a_nodes_chain_only() -> None:
    assert parse_message(_node(0, 1, [], {"v1": 1}, since=1764580323112)).since == 1764580323112
    bad = json.dumps({"v": 2, "vpc_id": "v1", "kind": "delta", "prev_rev": 0, "rev": 1,
                      "ops": [], "since": 5}).encode()
    for raw in (bad, _node(0, 1, [], {}, since=-1)):
        try:
            parse_message(raw)
        except MalformedMessage:
            continue
        raise AssertionError(f"accepted {raw!r}")


def test_two_sources_an_older_op_is_stale_whichever_chain_brings_it() -> None:
    """With the VPC chain on a stream, the node's chain and the VPC's arrive in no order
    between them: of two ops of one resource at the same revision_number, the one of the later
    change-log rev stays, in either order of arrival."""
    for order in ("node first", "vpc first"):
        m = AgentModel(NODE)
        m.receive(parse_message(message("snapshot", 0, 3, [])))
        m.receive(parse_message(_node(3, 4, [], {"v1": 4})))
        node_op = _node(4, 10, [_port(10, "p1", 2, mac="old")], {})
        vpc_op = _vpc(4, 12, [_port(12, "p1", 2, mac="new")])
        for raw in ((node_op, vpc_op) if order == "node first" else (vpc_op, node_op)):
            assert m.receive(parse_message(raw)) is Outcome.APPLIED
        assert m.resources["port"]["p1"]["mac"] == "new", order


def test_a_leave_behind_its_vpc_stream_drops_what_the_stream_ran_ahead_with() -> None:
    """The VPC's stream delivered the batch the node leaves in (and a later one) before the
    node's chain brought the leave: the leave's deletes do not cover what was created there,
    so the node drops the VPC's shared state, which a node that is no longer a member holds
    none of. A leave the stream did not run ahead of keeps the node's state as the deletes
    leave it."""
    m = AgentModel(NODE)
    m.receive(parse_message(message("snapshot", 0, 3, [])))
    m.receive(parse_message(_node(3, 4, [_port(4, "p1", 1)], {"v1": 4})))
    assert m.receive(parse_message(_vpc(4, 9, [_port(9, "p2", 1)]))) is Outcome.APPLIED
    assert m.receive(parse_message(_vpc(9, 11, [_port(11, "p3", 1)]))) is Outcome.APPLIED
    leave = _node(4, 9, [_port(9, "p1", 1, "delete")], {"v1": None})
    assert m.receive(parse_message(leave)) is Outcome.APPLIED
    assert m.resources["port"] == {} and m.chains == {}
    assert m.receive(parse_message(_vpc(11, 12, [_port(12, "p4", 1)]))) is Outcome.DUPLICATE
    # In step: the leave's deletes alone; what else the node holds stays.
    m = AgentModel(NODE)
    m.receive(parse_message(message("snapshot", 0, 3, [])))
    m.receive(parse_message(_node(3, 4, [_port(4, "p1", 1), _port(4, "p2", 1)], {"v1": 4})))
    m.receive(parse_message(_node(4, 9, [_port(9, "p1", 1, "delete")], {"v1": None})))
    assert set(m.resources["port"]) == {"p2"}
