"""The plan of one batch: change-log rows in, each node's ops out. No I/O.

`plan` places the changes one by one (placement.py), moving the topology on, and keeps per node
only the last state of each resource (a message carries a resource at most once). It stops at the
change that makes the batch reach `max_ops` node-ops, so a batch's messages stay bounded. Nodes
come out **host first**: those that get a port of their own in this batch lead, so the broker
hands the host its port (and the agent reports it ACTIVE) before the neighbour fan-out of the
same batch.

**Joins.** A node whose first port in a VPC is in the batch needs the VPC's whole state. Placement
leaves that to the plan (`placements(..., joins=)`), which gives all of a VPC's joiners its state
as it is at the batch's end, one op per key and variant (ops of the batch's rev), instead of each
joiner the state at its own join as ops of its own (a fleet's first ports: O(members²) ops made
and serialised per VPC). Ops that leave their nodes holding the same thing are one op (`_same`),
serialised once. A batch with `multicast_nodes` joins of a multicast VPC ends before that VPC's
next port on a host already in it: that port then goes once on the chain in the next batch,
not once to every joiner in its own message (`_after_joins`).

**Channels.** A VPC whose member nodes reach `Channels.multicast_nodes` is served on its
multicast chain (one message per batch, copied by the broker to every member's queue) until
they fall to `unicast_nodes` or fewer (hysteresis: a VPC at the threshold does not flap). On a
multicast VPC, an op that every member following the chain would get alike (a neighbour's port,
a subnet, the VPC, a gateway) moves from the members' node messages to the VPC's message; the
rest stays on the node chains. A port's own variant rides on the chain's op with it
(`local`: the fields the host's variant adds, which only the host applies) when its host follows the
chain and gets nothing else of its own in the batch, so a batch of port creates in a big VPC
is one publish, not one more per host; otherwise the host gets its variant on its own chain,
with the rest of what it gets (and skips the neighbour variant of its own port on the chain).
A node that starts following the chain in
this batch (its first port in the VPC, or the VPC's switch to multicast) gets all of the batch's
ops for it on its node chain with `vpcs: {vpc: rev}` (follow from `rev` on; what the chain
carries up to `rev` is dropped). A node that stops following gets `vpcs: {vpc: null}` (with the
deletes if it left the VPC). The dispatcher binds the followers' queues before it publishes,
and unbinds those that stop. When the members would not all get the chain's op alike (several
changes of one batch moving a node in and out), the key stays unicast for everyone.

    >>> from alcor.db.changelog import Change
    >>> from alcor.southbound.goalstate import Topology
    >>> node = {"node_id": "n1", "node_name": "h1", "local_ip": "10.0.0.1", "revision_number": 1}
    >>> p = plan(Topology(), [Change(7, 0.0, "node", "n1", "create", None, None, 1, node)], 6)
    >>> (p.rev, p.used, list(p.per_node), p.touched)
    (7, 1, ['n1'], [('node', 'n1')])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any, Protocol

from alcor.southbound.goalstate import WIRE_TYPE, Key, Topology, info
from alcor.southbound.placement import ChangeLike, Grant, Joins, Op, make_op, placements


class TimedChange(ChangeLike, Protocol):
    @property
    def ts(self) -> float: ...


@dataclass(frozen=True)
class Channels:
    """When a VPC is served on a multicast chain ([southbound] multicast_nodes / unicast_nodes)."""

    multicast_nodes: int = 16  # 0: never
    unicast_nodes: int = 8

    def multicast(self, was: bool, members: int) -> bool:
        if self.multicast_nodes <= 0 or members == 0:
            return False
        return members > self.unicast_nodes if was else members >= self.multicast_nodes


# Wire types whose body every member of their VPC holds alike (a port's host excepted).
_SHARED = frozenset(("port", "subnet", "vpc", "gateway"))


@dataclass
class BatchPlan:
    rev: int  # the rev the batch ends at (the start rev when no change was used)
    used: int = 0  # changes consumed from the front of the input
    ops: int = 0  # node-ops placed (before the per-message compression)
    # node → its ops by (wire type, id), the last state of each; host-first order
    per_node: dict[str, dict[Key, Op]] = field(default_factory=dict)
    hosts: set[str] = field(default_factory=set)  # nodes getting a port of their own
    touched: list[tuple[str, str]] = field(default_factory=list)  # (type, id) placed, in order
    first_ts: list[float] = field(default_factory=list)  # commit time of each change used
    # VPC → its chain's ops (multicast VPCs only)
    per_vpc: dict[str, dict[Key, Op]] = field(default_factory=dict)
    multicast: set[str] = field(default_factory=set)  # multicast VPCs after this batch
    # node → {vpc: rev (follow its chain from rev on) | None (stop following)}
    follow: dict[str, dict[str, int | None]] = field(default_factory=dict)
    binds: list[tuple[str, str]] = field(default_factory=list)  # (node, vpc) to bind first
    unbinds: list[tuple[str, str]] = field(default_factory=list)  # (node, vpc) to unbind first



def _gather(by_key: dict[Key, list[Grant]], again: set[Key],
            placed: Mapping[Key, list[Grant]]) -> None:
    """Add a change's (or the joins') grants to the batch's, noting the keys placed twice:
    their grants may overlap, and each node's last state is resolved once at the end."""
    for key, grants in placed.items():
        held = by_key.get(key)
        if held is None:
            by_key[key] = grants
        else:
            held.extend(grants)
            again.add(key)

def plan(
    t: Topology,
    changes: Sequence[TimedChange],
    start_rev: int,
    max_ops: int = 200_000,
    multicast: Set[str] = frozenset(),
    channels: Channels | None = None,
) -> BatchPlan:
    """Place `changes` (in rev order, after `start_rev`) into `t` and return the batch's ops.

    `multicast`: the VPCs on a multicast chain before the batch; `channels`: when to switch
    (None: every VPC unicast, as in a plan without chains).

    Work is per key, not per node: placement hands over each key's ops with the set of nodes
    getting each (grants); the last state per node is resolved once per key for the whole
    batch, a key served on a VPC's chain goes there without a copy per member, and only what
    stays on the nodes' own chains is spread into per-node buckets.
    """
    out = BatchPlan(start_rev)
    by_key: dict[Key, list[Grant]] = {}
    again: set[Key] = set()  # keys placed by more than one change (grants may overlap)
    touched: dict[tuple[str, str], None] = {}
    moved: dict[str, set[str]] = {}
    gone: dict[Key, str] = {}  # deleted keys → their VPC
    followers = {v: set(t.members.get(v, ())) for v in multicast}
    joiners: dict[str, set[str]] = {}  # VPC → nodes whose first port in it is in this batch
    joins = Joins({})  # the VPCs each node joined: their state at the batch's end, below
    for c in changes:
        if joiners and out.used and channels is not None and _after_joins(
                t, c, joiners, multicast, channels):
            break
        if c.type in WIRE_TYPE:
            if c.op == "delete" and WIRE_TYPE[c.type] in _SHARED:
                old = t.get(c.type, c.id)
                if old is not None:
                    gone[(WIRE_TYPE[c.type], c.id)] = _vpc_of(WIRE_TYPE[c.type], c.id, old) or ""
            placed = placements(t, c, moved, joins)
            _gather(by_key, again, placed)
            for grants in placed.values():
                for g in grants:
                    out.ops += len(g.nodes)
            if c.type == "port":
                host = t.port_node(c.id)  # it got the port in its own variant, if anything
                if host is not None and any(host in g.nodes for gs in placed.values() for g in gs):
                    out.hosts.add(host)
                if host is not None and c.body is not None:
                    v = str(c.body.get("network_id"))
                    if v in moved.get(host, ()) and v in t.vpcs_of.get(host, {}):
                        joiners.setdefault(v, set()).add(host)
            touched[(c.type, c.id)] = None
        out.used += 1
        out.rev = c.rev
        out.first_ts.append(c.ts)
        if out.ops + joins.ops >= max_ops:
            break
    out.ops += joins.ops
    _gather(by_key, again, _joined(t, joins, out.rev))
    final = {key: _last(grants) if key in again else grants for key, grants in by_key.items()}
    if channels is not None:
        _split(t, out, final, followers, moved, gone, channels)
    per_node: dict[str, dict[Key, Op]] = {}
    for key, grants in final.items():
        for g in grants:
            for n in g.nodes:
                per_node.setdefault(n, {})[key] = g.op
    for n in out.follow:
        per_node.setdefault(n, {})  # a message even without ops: it changes what n follows
    order = sorted(per_node, key=lambda n: (n not in out.hosts, n))
    out.per_node = {n: per_node[n] for n in order}
    out.touched = list(touched)
    return out


def _joined(t: Topology, joins: Joins, rev: int) -> dict[Key, list[Grant]]:
    """What the nodes that joined a VPC in the batch (and are still in it) lack of it: its keys
    as they are at the batch's end, one op per key and variant for all of its joiners (the
    host of a port its local variant, a node's own record left out: it holds it). Placed after
    everything else, so it is each joiner's last state of those keys; `rev` (the batch's) is a
    valid op rev in each joiner's message."""
    by_vpc: dict[str, set[str]] = {}
    for n, vpcs in joins.nodes.items():
        held = t.vpcs_of.get(n, {})
        for v in vpcs:
            if v in held:
                by_vpc.setdefault(v, set()).add(n)
    out: dict[Key, list[Grant]] = {}
    for v in sorted(by_vpc):
        nodes = frozenset(by_vpc[v])
        for key in sorted(t.vpc_keys(v)):
            if key[0] == "node":
                # A member's record: every other member of the VPC holds it (the audience of a
                # record, its node's peers, is not built here: O(members) per record).
                src = t.res["node"].get(key[1])
                js = nodes - {key[1]}
                if src is not None and js:
                    rn = int(src.get("revision_number") or 0)
                    out.setdefault(key, []).append(
                        Grant(make_op(rev, key, t.node_view(key[1], src), rn), js))
                continue
            i = info(t, key)
            if i.neighbour is None:
                continue
            js = nodes & i.audience
            if not js:
                continue
            grants = out.setdefault(key, [])
            if i.host is not None and i.host in js:
                grants.append(Grant(make_op(rev, key, i.local, i.revision_number),
                                    frozenset((i.host,))))
                js -= {i.host}
            if js:
                grants.append(Grant(make_op(rev, key, i.neighbour, i.revision_number), js))
    return out


def _after_joins(t: Topology, c: TimedChange, joiners: dict[str, set[str]], multicast: Set[str],
                 channels: Channels) -> bool:
    """Should the batch end before `c`: a port of a multicast VPC on a host that is a member
    already, after at least `multicast_nodes` nodes joined that VPC in this batch (a fleet's
    first ports)? Each joiner gets the VPC's resources on its own chain, so in this batch the
    port would go to every joiner in a message of its own; in the next one, it goes once, on the
    VPC's chain."""
    if c.type != "port" or c.body is None or c.op == "delete" or channels.multicast_nodes <= 0:
        return False
    v = str(c.body.get("network_id"))
    js = joiners.get(v)
    if js is None or len(js) < channels.multicast_nodes:
        return False
    if not channels.multicast(v in multicast, len(t.members.get(v, ()))):
        return False
    node = t.node_named(str(c.body.get("binding:host_id") or ""))
    return node is not None and v in t.vpcs_of.get(node, {})


def _last(grants: list[Grant]) -> list[Grant]:
    """Each node's last op of a key in the batch (a message carries a resource at most once),
    with the grants that leave their nodes holding the same thing made one (`_same`)."""
    if len(grants) == 1:
        return grants
    seen: set[str] = set()
    out = []
    for g in reversed(grants):
        nodes = g.nodes - seen if seen else g.nodes
        if nodes:
            out.append(Grant(g.op, nodes))
        seen |= g.nodes
    out.reverse()
    return _same(out) if len(out) > 1 else out


def _same(grants: list[Grant]) -> list[Grant]:
    """Merge the grants of one key whose ops leave a node holding the same (verb, revision and
    body): nodes joining a VPC in a batch each get its resources from their join's change, as
    ops of their own, which are the members' op but for `rev`. One op for all of them is then
    serialised once (and can move onto the VPC's chain). Its `rev` is the op of the largest
    grant's: every op of the batch is newer than any of its messages' `prev_rev`, so it is a
    valid `rev` for each of those nodes (docs/wire.md)."""
    groups: list[list[Grant]] = []
    for g in grants:
        op = g.op
        for group in groups:
            o = group[0].op
            if (o["op"] == op["op"] and o["revision_number"] == op["revision_number"]
                    and (o["body"] is op["body"] or o["body"] == op["body"])
                    and o.get("local") == op.get("local")):
                group.append(g)
                break
        else:
            groups.append([g])
    if len(groups) == len(grants):
        return grants
    out = []
    for group in groups:
        if len(group) == 1:
            out.append(group[0])
            continue
        main = max(group, key=lambda g: len(g.nodes))
        out.append(Grant(main.op, frozenset().union(*(g.nodes for g in group))))
    return out


def _vpc_of(wtype: str, id: str, body: Mapping[str, Any] | None) -> str | None:
    """The VPC a shared key belongs to, from its (wire or source) body."""
    if wtype == "vpc":
        return id
    if body is None:
        return None
    v = body.get("vpc_id") if wtype == "gateway" else body.get("network_id")
    return str(v) if v else None


def _split(
    t: Topology,
    out: BatchPlan,
    final: dict[Key, list[Grant]],
    before: dict[str, set[str]],
    moved: dict[str, set[str]],
    gone: dict[Key, str],
    channels: Channels,
) -> None:
    """Choose each VPC's channel after the batch, who starts and stops following which chain,
    and move the ops every follower gets alike onto the VPC's chain (out of `final`)."""
    vpcs = set(before) | {v for vs in moved.values() for v in vs}
    vpcs |= {v for v, members in t.members.items() if members}
    after: dict[str, frozenset[str]] = {}
    joined: dict[str, set[str]] = {}
    for v in sorted(vpcs):
        members = t.member_set(v)
        was = v in before
        if not channels.multicast(was, len(members)):
            for n in sorted(before.get(v, ())):
                out.follow.setdefault(n, {})[v] = None
                out.unbinds.append((n, v))
            continue
        out.multicast.add(v)
        after[v] = members
        subs_before = before.get(v, set())
        new = set(members - subs_before if was else members)
        new |= {n for n in members if v in moved.get(n, ())}
        joined[v] = new
        for n in sorted(new):
            out.follow.setdefault(n, {})[v] = out.rev
            out.binds.append((n, v))
        for n in sorted(subs_before - members):
            out.follow.setdefault(n, {})[v] = None
            out.unbinds.append((n, v))
    if not after:
        return
    riders: list[tuple[str, Key, int, str]] = []  # (VPC, key, grant index, host)
    for key, grants in final.items():
        if key[0] not in _SHARED:
            continue
        kv = next((x for g in grants if (x := _vpc_of(key[0], key[1], g.op["body"]))), None)
        v = kv or gone.get(key) or ""
        if v not in after:
            continue
        i, best = max(enumerate(grants), key=lambda x: len(x[1].nodes))
        body = best.op["body"]
        host = str(body.get("node_id")) if key[0] == "port" and body is not None else ""
        skip = {host} if host else set()
        chain = after[v] - joined[v] - skip  # who will apply the chain's op
        got = best.nodes
        # Every follower applying the chain's op got exactly it; the other followers drop it
        # (joined: it is at or below their start; the host: its own port) and keep theirs;
        # nodes that stop following are unbound before it is published.
        if not chain or not chain <= got or not (got - chain) & after[v] <= joined[v] | skip:
            continue  # not every follower alike: this key stays on the node chains
        out.per_vpc.setdefault(v, {})[key] = best.op
        grants[i] = Grant(best.op, got - chain)
        if host in after[v] and host not in joined[v]:
            j = _own(best.op, grants, i, host)
            if j is not None:
                riders.append((v, key, j, host))
    _carry_local(out, final, riders)


def _own(op: Op, grants: list[Grant], i: int, host: str) -> int | None:
    """The index of the host's grant of the same change as the chain's op (same rev and
    revision, an upsert), if it has one."""
    for j, g in enumerate(grants):
        if j != i and host in g.nodes:
            own = g.op
            if (len(g.nodes) == 1 and own["op"] == "upsert" and own["rev"] == op["rev"]
                    and own["revision_number"] == op["revision_number"]):
                return j
            return None
    return None


def _carry_local(out: BatchPlan, final: dict[Key, list[Grant]],
                 riders: list[tuple[str, Key, int, str]]) -> None:
    """Move a port's own variant onto its VPC's chain (`local` on the chain's op: the fields
    its host's variant adds to the neighbour body, applied by the host only) when that is all its host would get on its
    own chain in this batch: a batch of port creates in a big VPC is then one publish, not one
    more per host, and "host first" holds because the host's state is in that one message. A
    host that gets a message of its own anyway (a join, its node record, a security group)
    keeps its ports there, so what it gets from one batch is applied together."""
    if not riders:
        return
    mine = {(key, j) for _, key, j, _ in riders}
    busy = set(out.follow)
    for key, grants in final.items():
        for j, g in enumerate(grants):
            if (key, j) not in mine:
                busy |= g.nodes
    for v, key, j, host in riders:
        if host in busy:
            continue
        grants = final[key]
        own = grants[j]
        chain = out.per_vpc[v]
        body, mine_ = chain[key]["body"], own.op["body"]
        # Only what the host's variant adds (admin state, port security, DHCP options): the
        # other followers skip `local`, so it costs them a few bytes, not a second body.
        extra = {k: x for k, x in mine_.items() if k not in body}
        if {**body, **extra} != mine_:
            continue  # not the neighbour body plus fields: it stays on the host's chain
        chain[key] = {**chain[key], "local": extra}
        grants[j] = Grant(own.op, own.nodes - {host})
    for key in {key for _, key, _, _ in riders}:
        grants = final[key]
        grants[:] = [g for g in grants if g.nodes]
