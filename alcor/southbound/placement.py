"""Placement: one change-log entry in, the ops each node needs out. No I/O.

The rule is a diff of views. For every key the change can touch, compare what each node holds
before and after the change (`goalstate.info`): a node that gains or sees a new body gets an
`upsert`, a node that loses it gets a `delete`, everyone else gets nothing. So a port goes in full to
its host and as a neighbour to the other members; a node whose first port lands in a VPC (a join)
gets the VPC's whole state in the same message; a node that leaves gets the deletes; a rebound port
moves; and a change invisible on the wire (a port's `status`) costs no message at all.

The property that makes it trustworthy, tested in tests/unit/southbound: applying `place`'s ops
for every change, in order, yields exactly `goal_state(topology, node)` for every node.

    >>> from alcor.db.changelog import Change
    >>> t = Topology()
    >>> node = {"node_id": "n1", "node_name": "h1", "local_ip": "10.0.0.1", "revision_number": 1}
    >>> sorted(place(t, Change(1, 0.0, "node", "n1", "create", None, None, 1, node)))
    ['n1']
"""

from __future__ import annotations

from typing import Any, Protocol

from alcor.southbound.goalstate import (
    WIRE_TYPE,
    Body,
    Info,
    Key,
    Topology,
    info,
    slim_port,
    view_of,
)
from alcor.wire import ROUTER_GATEWAY, ROUTER_INTERFACE

Op = dict[str, Any]  # {"rev", "type", "id", "op", "revision_number", "body"}


class ChangeLike(Protocol):
    @property
    def rev(self) -> int: ...
    @property
    def type(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def op(self) -> str: ...
    @property
    def body(self) -> dict[str, Any] | None: ...


def scope(t: Topology, type: str, id: str, other: Body | None) -> tuple[set[Key], set[str]]:
    """Keys whose body or audience this resource can affect, and nodes whose VPCs or security
    groups it can change ("movers": they may join or leave), in the topology's current state.
    `other` is the resource's body in the other state (before or after), for node names."""
    wtype = WIRE_TYPE[type]
    keys: set[Key] = {(wtype, id)}
    movers: set[str] = set()
    body = t.res[type].get(id)
    if type == "node":
        if body is not None:
            movers.add(id)
        for b in (body, other):
            name = str(b.get("node_name") or "") if b else ""
            keys.update(("port", p) for p in t.ports_by_host.get(name, ()))
            # a gateway port's node is in its router's body, and holds its floating IPs
            for p in t.ports_by_host.get(name, ()):
                if t.res["port"][p].get("device_owner") == ROUTER_GATEWAY:
                    rid = str(t.res["port"][p].get("device_id"))
                    keys.add(("router", rid))
                    keys.update(("floating_ip", f) for f in t.fips_by_router.get(rid, ()))
            # Names should be unique, but if two nodes claim one, its ports move between them.
            owner = t.node_named(name)
            if owner:
                movers.add(owner)
        return keys, movers
    if body is None:
        return keys, movers
    if type == "port":
        node = t.port_node(id)
        if node:
            movers.add(node)
            keys.add(("node", node))
        keys.update(("security_group", g) for g in body.get("security_groups") or ())
        if body.get("device_owner") == ROUTER_INTERFACE:
            rid = str(body.get("device_id"))
            keys.add(("router", rid))
            keys.update(("subnet", str(f.get("subnet_id"))) for f in body.get("fixed_ips") or ())
            # the router's gateway node joins or leaves this VPC with the interface
            for g in t.gateways_by_router.get(rid, ()):
                gw_node = t.port_node(g)
                if gw_node:
                    movers.add(gw_node)
        elif body.get("device_owner") == ROUTER_GATEWAY:
            rid = str(body.get("device_id"))
            keys.add(("router", rid))
            keys.update(("floating_ip", f) for f in t.fips_by_router.get(rid, ()))
    elif type == "gateway":
        keys.add(("vpc", str(body.get("vpc_id"))))
    return keys, movers


def _op(rev: int, key: Key, body: Body | None, revision_number: int) -> Op:
    return {
        "rev": rev,
        "type": key[0],
        "id": key[1],
        "op": "delete" if body is None else "upsert",
        "revision_number": revision_number,
        "body": body,
    }


def _memberships(t: Topology, node: str) -> tuple[frozenset[str], frozenset[str]]:
    return frozenset(t.vpcs_of.get(node, ())), frozenset(t.sgs_of.get(node, ()))


def place(
    t: Topology, change: ChangeLike, moved: dict[str, set[str]] | None = None
) -> dict[str, list[Op]]:
    """Apply `change` to `t` and return {node id: ops}, ops in a stable order.

    Op dicts are shared between nodes that receive the same body, so an encoder can serialise
    each once (a neighbour's port goes to dozens of nodes). `moved`, if given, collects the
    VPCs each node joined or left (node → VPC ids).
    """
    if change.type not in WIRE_TYPE:
        return {}
    new = None if change.op == "delete" else change.body
    if change.type == "port" and new is not None:
        new = slim_port(new)
        if t.restate_port(change.id, new):
            return {}  # an agent's status report, a rename: nothing on the wire changes
    old = t.get(change.type, change.id)
    if old is None and new is None:
        return {}

    # Evaluate "before" and "after" by flipping the one resource in place: cheaper than copying
    # the topology, and every index stays exact in both states.
    keys_b, movers_b = scope(t, change.type, change.id, new)
    mem_b = {n: _memberships(t, n) for n in movers_b}
    t.put(change.type, change.id, new)
    keys_a, movers_a = scope(t, change.type, change.id, old)
    keys = keys_b | keys_a
    movers = movers_b | movers_a
    mem_a = {n: _memberships(t, n) for n in movers}
    after = {k: info(t, k) for k in keys}
    # A mover that joined or left a VPC, or started or stopped using a security group, must also
    # get (or drop) everything that comes with it; those keys concern that node alone.
    extra: dict[str, set[Key]] = {}
    t.put(change.type, change.id, old)
    for n in movers:
        mem_b.setdefault(n, _memberships(t, n))
        (vb, sb), (va, sa) = mem_b[n], mem_a[n]
        if vb == va and sb == sa:
            continue
        ek: set[Key] = set()
        for vpc in vb ^ va:
            ek |= t.vpc_keys(vpc)
        if moved is not None and vb != va:
            moved.setdefault(n, set()).update(vb ^ va)
        ek.update(("security_group", g) for g in sb ^ sa)
        ek -= keys
        if ek:
            extra[n] = ek
    before = {k: info(t, k) for k in keys}
    extra_b = {n: {k: view_of(t, n, k) for k in ek} for n, ek in extra.items()}
    t.put(change.type, change.id, new)
    extra_a = {n: {k: view_of(t, n, k) for k in ek} for n, ek in extra.items()}

    out: dict[str, list[Op]] = {}
    rev = change.rev
    for key in sorted(keys):
        _diff_key(rev, key, before[key], after[key], out)
    for n in sorted(extra):
        for key in sorted(extra[n]):
            va_n, rn_a = extra_a[n][key]
            vb_n, rn_b = extra_b[n][key]
            if va_n is not None and va_n != vb_n:
                out.setdefault(n, []).append(_op(rev, key, va_n, rn_a))
            elif va_n is None and vb_n is not None:
                out.setdefault(n, []).append(_op(rev, key, None, rn_b))
    return out


def _diff_key(rev: int, key: Key, b: Info, a: Info, out: dict[str, list[Op]]) -> None:
    same_neighbour = b.neighbour == a.neighbour
    same_local = b.local == a.local and b.host == a.host
    if same_neighbour and same_local:
        # Only nodes entering or leaving the audience see anything.
        nodes = b.audience ^ a.audience
    else:
        nodes = b.audience | a.audience
    if not nodes:
        return
    shared: dict[int, Op] = {}
    deleted: Op | None = None
    for n in sorted(nodes):
        va = a.view(n)
        vb = b.view(n)
        if va is not None:
            if va == vb:
                continue
            op = shared.get(id(va))
            if op is None:
                op = shared[id(va)] = _op(rev, key, va, a.revision_number)
            out.setdefault(n, []).append(op)
        elif vb is not None:
            if deleted is None:
                deleted = _op(rev, key, None, b.revision_number)
            out.setdefault(n, []).append(deleted)
