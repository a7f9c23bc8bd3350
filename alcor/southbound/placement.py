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

from dataclasses import dataclass
from typing import Any, Protocol

from alcor.southbound.goalstate import (
    NOBODY,
    WIRE_TYPE,
    Body,
    Info,
    Key,
    Topology,
    info,
    slim_port,
    views_of,
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


def make_op(rev: int, key: Key, body: Body | None, revision_number: int) -> Op:
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


@dataclass(frozen=True, slots=True)
class Grant:
    """One op and the nodes that get it: placement's output per key, as sets, so that a
    neighbour's port going to every member of its VPC costs a set operation, not a loop over
    the members (a multicast VPC's members then never get a per-node copy at all)."""

    op: Op
    nodes: frozenset[str]


Placed = dict[Key, list[Grant]]  # per key, grants to disjoint sets of nodes

# Keys a port's scope holds only because the port can move its host (or a gateway node) into or
# out of a VPC or a security group's audience: a node's record (its peers) and a security group.
_MEMBERSHIP_ONLY = frozenset(("node", "security_group"))


@dataclass
class Joins:
    """Joins left to the caller (`placements(..., joins=)`): node → the VPCs it joined, and the
    node-ops placement would have placed for them (the VPCs' keys each joiner lacked)."""

    nodes: dict[str, set[str]]
    ops: int = 0


def placements(
    t: Topology, change: ChangeLike, moved: dict[str, set[str]] | None = None,
    joins: Joins | None = None,
) -> Placed:
    """Apply `change` to `t` and return, per key it changes for anyone, who gets which op.

    An op is shared by every node of its grant (an encoder serialises it once). `moved`, if
    given, collects the VPCs each node joined or left (node → VPC ids). `joins`, if given,
    takes the VPCs a node joins instead of their keys: the caller gives each joiner the VPC's
    state as it is at the end of its batch (plan.py), once for all the batch's joiners, where
    placement would give each the state at its join.
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
    if change.type == "port" and old is None and new is not None:
        added = _port_added(t, change.rev, change.id, new)
        if added is not None:
            return added

    # Evaluate "before" and "after" by flipping the one resource in place: cheaper than copying
    # the topology, and every index stays exact in both states.
    keys_b, movers_b = scope(t, change.type, change.id, new)
    mem_b = {n: _memberships(t, n) for n in movers_b}
    t.put(change.type, change.id, new)
    keys_a, movers_a = scope(t, change.type, change.id, old)
    keys = keys_b | keys_a
    movers = movers_b | movers_a
    mem_a = {n: _memberships(t, n) for n in movers}
    # A mover that joined or left a VPC, or started or stopped using a security group, must also
    # get (or drop) everything that comes with it; those keys concern that node alone.
    extra: dict[str, set[Key]] = {}
    t.put(change.type, change.id, old)
    still = True  # no mover's VPCs or security groups changed
    for n in movers:
        mem_b.setdefault(n, _memberships(t, n))
        (vb, sb), (va, sa) = mem_b[n], mem_a[n]
        if vb == va and sb == sa:
            continue
        still = False
        ek: set[Key] = set()
        for vpc in vb ^ va:
            if joins is not None and vpc in va:
                joins.nodes.setdefault(n, set()).add(vpc)
                joins.ops += len(t.vpc_keys(vpc) - keys)
                continue
            ek |= t.vpc_keys(vpc)
        if moved is not None and vb != va:
            moved.setdefault(n, set()).update(vb ^ va)
        ek.update(("security_group", g) for g in sb ^ sa)
        ek -= keys
        if ek:
            extra[n] = ek
    if still and change.type == "port":
        # A port's host records and security groups are in its scope only for the memberships
        # it can change: their bodies never depend on a port, so with every mover's memberships
        # as they were (a port added to a VPC its host is in already: nearly every port create)
        # their audiences are too, and nobody gets anything for them.
        keys = {k for k in keys if k[0] not in _MEMBERSHIP_ONLY}
    before = {k: info(t, k) for k in keys}
    extra_b = {n: views_of(t, n, ek) for n, ek in extra.items()}
    t.put(change.type, change.id, new)
    after = {k: info(t, k) for k in keys}
    extra_a = {n: views_of(t, n, ek) for n, ek in extra.items()}

    out: Placed = {}
    rev = change.rev
    for key in sorted(keys):
        grants = _diff_key(rev, key, before[key], after[key])
        if grants:
            out[key] = grants
    for n in sorted(extra):
        only = frozenset((n,))
        for key in sorted(extra[n]):
            va_n, rn_a = extra_a[n][key]
            vb_n, rn_b = extra_b[n][key]
            if va_n is not None and va_n is not vb_n and va_n != vb_n:
                out.setdefault(key, []).append(Grant(make_op(rev, key, va_n, rn_a), only))
            elif va_n is None and vb_n is not None:
                out.setdefault(key, []).append(Grant(make_op(rev, key, None, rn_b), only))
    return out


def _port_added(t: Topology, rev: int, id: str, new: Body) -> Placed | None:
    """`placements` of the commonest change, a port created in a VPC its host is in already
    with security groups its host uses already: no node joins or leaves anything, so only the
    port's own key changes (to its host in full, to the other members as a neighbour) and the
    topology needs no flipping back and forth. None (nothing done) for any other port create."""
    if new.get("device_owner") in (ROUTER_INTERFACE, ROUTER_GATEWAY):
        return None
    t.put("port", id, new)
    node = t.port_node(id)
    if node is not None:
        # Counts after the put: at least 2 means the host was in before, by another port (or as
        # a gateway node of the VPC).
        vpcs, sgs = t.vpcs_of.get(node, {}), t.sgs_of.get(node, {})
        if vpcs.get(str(new.get("network_id")), 0) < 2 or any(
            sgs.get(g, 0) < 2 for g in new.get("security_groups") or ()
        ):
            t.put("port", id, None)
            return None
    key: Key = ("port", id)
    grants = _diff_key(rev, key, NOBODY, info(t, key))
    return {key: grants} if grants else {}


def place(
    t: Topology, change: ChangeLike, moved: dict[str, set[str]] | None = None
) -> dict[str, list[Op]]:
    """`placements`, per node: {node id: ops}, in key order (what one node's message carries)."""
    out: dict[str, list[Op]] = {}
    for grants in placements(t, change, moved).values():
        for g in grants:
            for n in sorted(g.nodes):
                out.setdefault(n, []).append(g.op)
    return out


def _diff_key(rev: int, key: Key, b: Info, a: Info) -> list[Grant]:
    """Who gets what for one key, from its info before (b) and after (a): a node whose view
    changed gets the new one (or a delete), everyone else nothing. The hosts of a port (before
    and after) are looked at one by one; every other node holds the neighbour variant or
    nothing, so the rest is set arithmetic."""
    if b.neighbour == a.neighbour and b.local == a.local and b.host == a.host:
        # Only nodes entering or leaving the audience see anything.
        nodes = b.audience ^ a.audience
    else:
        nodes = b.audience | a.audience
    if not nodes:
        return []
    special = {h for h in (a.host, b.host) if h is not None and h in nodes}
    # body id → (body, nodes getting it as their new view)
    upserts: dict[int, tuple[Body, set[str] | frozenset[str]]] = {}
    gone: set[str] | frozenset[str] = frozenset()
    if a.neighbour is not None:
        plain = (nodes & a.audience) - special
        if b.neighbour == a.neighbour:
            plain -= b.audience  # they hold it already
        if plain:
            upserts[id(a.neighbour)] = (a.neighbour, plain)
    if b.neighbour is not None:
        gone = (nodes & b.audience) - special
        if a.neighbour is not None:
            gone -= a.audience
    dels = set(gone)
    for n in sorted(special):
        va, vb = a.view(n), b.view(n)
        if va is not None:
            if va == vb:
                continue
            slot = upserts.get(id(va))
            if slot is None:
                upserts[id(va)] = (va, {n})
            else:
                upserts[id(va)] = (va, set(slot[1]) | {n})
        elif vb is not None:
            dels.add(n)
    out = [Grant(make_op(rev, key, body, a.revision_number), frozenset(ns))
           for body, ns in upserts.values()]
    if dels:
        out.append(Grant(make_op(rev, key, None, b.revision_number), frozenset(dels)))
    return out
