"""Security groups as OpenFlow: stateful filtering with conntrack, rules as conjunctive matches (pure).

Neutron's semantics: a port with port security accepts what a rule of one of its groups allows
and nothing else, in each direction (the default group: all egress, ingress from its own
members); replies of an accepted connection pass; a rule that goes stops its connections, new
and established alike. Four tables (alcor/agent/ir.py), between port security and forwarding:

    2  EGRESS_CT      IP -> ct(zone=REG_ZONE, table=EGRESS_RULES); ND, DHCP client, ARP: straight
                      to RESPOND. Stateless ports (every group stateful=false): no ct.
    3  EGRESS_RULES   invalid or revoked (ct_mark=1): drop; replies and related: pass;
                      otherwise the sender's egress rules: accepted -> ct(commit) if new, RESPOND;
                      an established connection no rule accepts any more is marked revoked.
    40 INGRESS_CT     like 2, in the receiver's zone (L2 loaded REG_ZONE and REG_PORT).
    41 INGRESS_RULES  like 3 with the receiver's ingress rules; accepted -> output:REG_PORT.

    4  EGRESS_REMOTE  the destination's remote groups as bits of REMOTE_REGS, then 3.
    42 INGRESS_REMOTE the source's, then 41.

Rules are conjunctive matches (OVS `conjunction`), one per *class*: a group's rules of one
direction, ethertype and remote group. A class's clauses are (1) the ports filtered by the
group (one flow per local port, listing every class of its groups) and (2) its rules'
protocol, port and prefix matches (one flow per rule and port-range mask). A remote group
has a bit (`remote_bits`, REMOTE_BITS of them): each member address has one flow in the
REMOTE table loading the bits of all its groups the rules name, and the class's clause-2
flows also match the bit. So N local ports, M rules and K members cost N + M + K flows, not
N x M x K; a member that joins or leaves a group changes only its own address flow, and a
rule naming a group already named needs no member's flow at all. Two exceptions keep the
semantics exact: a member's address that is a prefix (an address pair's CIDR) cannot be one
exact lookup, so it adds clause-2 flows of its own (each rule match narrowed to the prefix);
and a group beyond the bit budget is clause (3) of its classes, one flow per member address
listing the conjunctions (as Neutron's OVS firewall does it). Flows with the same match from
different groups or members are one flow listing all their conjunctions, or all their bits
(the compiler merges them). All accept actions of a table are the same, so OVS may pick any
of several complete conjunctions at one priority: overlapping rules cannot change the verdict.

    >>> index = SecurityIndex()
    >>> change = index.update({"sg1": {"id": "sg1", "rules": [{"direction": "ingress",
    ...     "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 22,
    ...     "port_range_max": 22, "remote_ip_prefix": None, "remote_group_id": None}]}})
    >>> sorted(change.groups), [f.match for f in group_flows(index, "sg1")][0]
    (['sg1'], (('eth_type', 2048), ('ip_proto', 6), ('tcp_dst', 22)))
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from alcor.agent import portsec
from alcor.agent.ir import (
    CT_EST,
    CT_INV,
    CT_NEW,
    CT_REL,
    CT_RPL,
    CT_TRK,
    ETH_ARP,
    ETH_IP,
    ETH_IPV6,
    IPPROTO_ICMPV6,
    IPPROTO_UDP,
    P_DEFAULT,
    PIPELINE_COOKIE,
    REG_PORT,
    REG_ZONE,
    REMOTE_REGS,
    T_EGRESS_CT,
    T_EGRESS_REMOTE,
    T_EGRESS_RULES,
    T_INGRESS_CT,
    T_INGRESS_REMOTE,
    T_INGRESS_RULES,
    T_RESPOND,
    ZONE_UNTRACKED,
    Action,
    Conjunction,
    Ct,
    Flow,
    Match,
    MatchValue,
    OutputReg,
    Resubmit,
    SetField,
    cookie_for,
    match,
)
from alcor.wire import Body, protocol_number

INGRESS, EGRESS = "ingress", "egress"
RULES_TABLE = {INGRESS: T_INGRESS_RULES, EGRESS: T_EGRESS_RULES}
REMOTE_TABLE = {INGRESS: T_INGRESS_REMOTE, EGRESS: T_EGRESS_REMOTE}
REMOTE_SIDE = {INGRESS: "src", EGRESS: "dst"}  # where the other end's address is
REMOTE_BITS = 32 * len(REMOTE_REGS[INGRESS])  # remote groups with a bit; the rest: clause 3

# Priorities in the CT tables (2, 40)
P_HAIRPIN = 300  # a port's own flooded packet coming back to it
P_BYPASS = 200  # ARP, neighbour discovery, DHCP: never filtered by rules (as in Neutron)
P_UNTRACKED = 150
P_TRACK = 100
# ... and in the rules tables (3, 41)
P_CT_INVALID = 200
P_CT_REVOKED = 190
P_CT_REPLY = 180
P_RULE_NEW = 101  # conj_id of a new connection: commit it
P_RULE = 100  # every clause of every class, and conj_id of the rest
P_CT_REVOKE = 10

REVOKED_MARK = 1  # ct_mark of a connection whose rule went away: its packets are dropped

# Neighbour discovery and MLD (RFC 4861, 3810): let through in both directions, as Neutron does.
# Port security already checked what a VM sends; router advertisements from VMs never get here.
ND_TYPES = (130, 131, 132, 133, 134, 135, 136, 143)

_PORTED = {6: "tcp_dst", 17: "udp_dst", 132: "sctp_dst"}  # OVS matches no dccp/udplite ports
_ANY_PORT = (1, 65535)


class ClassKey(NamedTuple):
    """One conjunctive match: a group's rules of one direction, ethertype and remote group."""

    group: str
    direction: str
    ethertype: int
    remote_group: str  # "" when the rules name no remote group


@dataclass(frozen=True)
class SecurityGroup:
    """A group as the flows need it: its classes and their rule matches (clause 2)."""

    id: str
    stateful: bool
    classes: Mapping[ClassKey, tuple[Match, ...]]


# --- rules -------------------------------------------------------------------------------------


def rule_matches(rule: Body) -> tuple[str, int, str, list[Match]] | None:
    """(direction, ethertype, remote group or "", the matches a packet meets the rule by), or
    None for a rule that can match nothing (an unknown direction or ethertype, a prefix of the
    other IP version)."""
    direction = rule.get("direction")
    ethertype = {"IPv4": ETH_IP, "IPv6": ETH_IPV6}.get(str(rule.get("ethertype") or "IPv4"))
    if direction not in (INGRESS, EGRESS) or ethertype is None:
        return None
    v6 = ethertype == ETH_IPV6
    fields: dict[str, MatchValue] = {"eth_type": ethertype}
    proto = protocol_number(rule.get("protocol"))
    if proto == 1 and v6:
        proto = IPPROTO_ICMPV6  # Neutron reads "icmp" in an IPv6 rule as ICMPv6
    if rule.get("protocol") not in (None, "", "any") and proto is None:
        return None
    if proto is not None:
        fields["ip_proto"] = proto
    prefix = rule.get("remote_ip_prefix")
    if prefix:
        try:
            net = ipaddress.ip_network(str(prefix), strict=False)
        except ValueError:
            return None
        if net.version != (6 if v6 else 4):
            return None
        side = "src" if direction == INGRESS else "dst"
        fields.update(_prefix(f"ipv{net.version}_{side}", net))
    lo, hi = rule.get("port_range_min"), rule.get("port_range_max")
    variants: list[Mapping[str, MatchValue]] = [{}]
    if proto in _PORTED and lo is not None:
        hi = lo if hi is None else hi
        if (int(lo), int(hi)) != _ANY_PORT:  # every valid port: no need to match one
            variants = [{_PORTED[proto]: v} for v in port_masks(int(lo), int(hi))]
    elif proto in (1, IPPROTO_ICMPV6) and lo is not None:
        kind = "icmpv6" if proto == IPPROTO_ICMPV6 else "icmpv4"
        variants = [
            {f"{kind}_type": int(lo), **({f"{kind}_code": int(hi)} if hi is not None else {})}
        ]
    remote = str(rule.get("remote_group_id") or "")
    return direction, ethertype, remote, [match(**fields, **v) for v in variants]


def port_masks(lo: int, hi: int) -> list[int | tuple[int, int]]:
    """The fewest value/mask pairs covering [lo, hi] of a 16-bit port (exact values as ints)."""
    out: list[int | tuple[int, int]] = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16  # the largest aligned block starting at lo...
        while size > hi - lo + 1:  # ...that fits in what is left
            size >>= 1
        mask = 0xFFFF & ~(size - 1)
        out.append(lo if mask == 0xFFFF else (lo, mask))
        lo += size
    return out


def parse_group(sid: str, body: Body) -> SecurityGroup:
    classes: dict[ClassKey, list[Match]] = {}
    for rule in body.get("rules") or ():
        parsed = rule_matches(rule)
        if parsed is None:
            continue
        direction, ethertype, remote, matches = parsed
        key = ClassKey(sid, direction, ethertype, remote)
        have = classes.setdefault(key, [])
        have.extend(m for m in matches if m not in have)
    return SecurityGroup(
        id=sid,
        stateful=body.get("stateful", True) is not False,
        classes={k: tuple(v) for k, v in sorted(classes.items())},
    )


def remote_bits(groups: Iterable[str]) -> dict[str, int]:
    """A bit per remote group, from a hash of its id (so the same groups get the same bits
    after an agent restart, and one group coming or going moves no other's bit but by a
    collision), probing past collisions in the groups' order. Beyond REMOTE_BITS groups, the
    last ones in that order get none (their classes keep clause 3)."""
    out: dict[str, int] = {}
    used: set[int] = set()
    for g in sorted(groups):
        if len(used) == REMOTE_BITS:
            break
        bit = _bit_hash(g)
        while bit in used:
            bit = (bit + 1) % REMOTE_BITS
        used.add(bit)
        out[g] = bit
    return out


@functools.lru_cache(maxsize=1 << 14)
def _bit_hash(group: str) -> int:
    digest = hashlib.blake2b(group.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % REMOTE_BITS


def bit_match(direction: str, bit: int) -> tuple[str, MatchValue]:
    """The masked register match of one remote group's bit."""
    v = 1 << (bit % 32)
    return (REMOTE_REGS[direction][bit // 32], (v, v))


def conj_ids(keys: Iterable[ClassKey]) -> dict[ClassKey, int]:
    """A conjunction id per class, from a hash of the class (so the same classes get the same
    ids after an agent restart, and one class coming or going moves no other), probing past
    collisions in the classes' order. Never 0, the conj_id of every packet no conjunction met."""
    out: dict[ClassKey, int] = {}
    used: set[int] = set()
    for key in sorted(keys):
        cid = _conj_hash(key)
        while cid in used:
            cid = cid % 0xFFFFFFFF + 1
        used.add(cid)
        out[key] = cid
    return out


@functools.lru_cache(maxsize=1 << 14)
def _conj_hash(key: ClassKey) -> int:
    digest = hashlib.blake2b(repr(tuple(key)).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") or 1


# --- the index the flows are built from -------------------------------------------------------


@dataclass
class IndexChange:
    """What an update of the groups changed, so the compiler reflows only that."""

    groups: set[str] = field(default_factory=set)  # groups whose own flows must be rebuilt
    filtered_by: set[str] = field(default_factory=set)  # groups whose ports' filters changed
    remotes: set[str] = field(default_factory=set)  # groups whose members' flows changed
    # groups with a bit whose classes' rules changed: only their members' prefix addresses
    # (clause-2 flows of their own) are reflowed, the exact addresses' lookups stay
    remote_rules: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.groups or self.filtered_by or self.remotes or self.remote_rules)


class SecurityIndex:
    """The goal state's security groups, parsed, with their classes' conjunction ids and, per
    remote group, the classes that name it. `update` takes the goal's groups and says what
    changed; everything else here reads it. Pure data, no I/O."""

    def __init__(self) -> None:
        self.bodies: Mapping[str, Body] = {}
        self.groups: dict[str, SecurityGroup] = {}
        self.conj: dict[ClassKey, int] = {}
        self.by_remote: dict[str, tuple[ClassKey, ...]] = {}
        self.bits: dict[str, int] = {}  # remote group -> its bit in REMOTE_REGS
        # what a group's members' flows are built from (but the prefixes' own clause flows)
        self._member_inputs: dict[str, tuple[Any, ...]] = {}
        # the clause-3 conjunctions of a port in these groups, by (direction, ethertype)
        self._member_conj: dict[tuple[str, ...], dict[tuple[str, int], tuple[Action, ...]]] = {}
        # the bits of a port in these groups, by (direction, ethertype)
        self._member_bits: dict[tuple[str, ...], dict[tuple[str, int], int]] = {}

    def update(self, bodies: Mapping[str, Body]) -> IndexChange:
        change = IndexChange()
        old = self.bodies
        if bodies is old:
            return change
        changed = [s for s, b in bodies.items() if old.get(s) is not b and old.get(s) != b]
        changed += [s for s in old if s not in bodies]
        self.bodies = bodies
        if not changed:
            return change
        before = {s: self.groups.get(s) for s in changed}
        for sid in changed:
            if sid in bodies:
                self.groups[sid] = parse_group(sid, bodies[sid])
            else:
                self.groups.pop(sid, None)
        conj = conj_ids(k for g in self.groups.values() for k in g.classes)
        moved = {k for k, cid in conj.items() if self.conj.get(k, cid) != cid}
        self.conj = conj
        by_remote: dict[str, list[ClassKey]] = {}
        for k in sorted(conj):
            if k.remote_group:
                by_remote.setdefault(k.remote_group, []).append(k)
        new_remote = {g: tuple(ks) for g, ks in by_remote.items()}
        bits = remote_bits(new_remote)
        member_inputs: dict[str, tuple[Any, ...]] = {}
        for g, ks in new_remote.items():
            bit = bits.get(g)
            if bit is None:  # clause 3: every member lists the classes' conjunctions
                member_inputs[g] = (None, tuple((k, conj[k]) for k in ks))
            else:  # a lookup per member, for the (direction, ethertype)s the rules name it in
                member_inputs[g] = (bit, frozenset((k.direction, k.ethertype) for k in ks))
        for g in member_inputs.keys() | self._member_inputs.keys():
            if member_inputs.get(g) != self._member_inputs.get(g):
                change.remotes.add(g)
        # the remote groups of the classes that changed (their prefixes' clauses narrow those
        # classes' rules), or whose conjunction moved: more than needed at worst
        for sid in changed:
            for grp in (before[sid], self.groups.get(sid)):
                if grp is not None:
                    change.remote_rules.update(k.remote_group for k in grp.classes if k.remote_group)
        change.remote_rules.update(k.remote_group for k in moved if k.remote_group)
        change.remote_rules -= change.remotes
        for g in bits.keys() | self.bits.keys():
            old_bit, new_bit = self.bits.get(g), bits.get(g)
            if old_bit != new_bit:  # the clause-2 flows of the classes naming it match its bit
                change.groups.update(k.group for k in new_remote.get(g, ()))
                if (old_bit is None) != (new_bit is None):  # and their number of clauses
                    change.filtered_by.update(k.group for k in new_remote.get(g, ()))
        self.by_remote = new_remote
        self.bits = bits
        self._member_inputs = member_inputs
        self._member_conj.clear()
        self._member_bits.clear()
        change.groups.update(changed)
        change.groups.update(k.group for k in moved)
        for sid in changed:
            old_g, new_g = before[sid], self.groups.get(sid)
            if (
                old_g is None
                or new_g is None
                or old_g.stateful != new_g.stateful
                or list(old_g.classes) != list(new_g.classes)
            ):
                change.filtered_by.add(sid)
        change.filtered_by.update(k.group for k in moved)
        return change

    def member_conjunctions(
        self, group_ids: tuple[str, ...]
    ) -> dict[tuple[str, int], tuple[Action, ...]]:
        """The clause-3 conjunctions of a member of these groups, by (direction, ethertype):
        computed once per set of groups (10,000 neighbours share a few)."""
        hit = self._member_conj.get(group_ids)
        if hit is not None:
            return hit
        conj: dict[tuple[str, int], set[Conjunction]] = {}
        for sid in group_ids:
            if sid in self.bits:
                continue
            for key in self.by_remote.get(sid, ()):
                conj.setdefault((key.direction, key.ethertype), set()).add(
                    Conjunction(self.conj[key], 3, 3)
                )
        out: dict[tuple[str, int], tuple[Action, ...]] = {
            k: tuple(sorted(v, key=_conj_order)) for k, v in conj.items()
        }
        self._member_conj[group_ids] = out
        return out

    def member_bits(self, group_ids: tuple[str, ...]) -> dict[tuple[str, int], int]:
        """The bits of a member of these groups, by (direction, ethertype) where rules name
        them: computed once per set of groups."""
        hit = self._member_bits.get(group_ids)
        if hit is not None:
            return hit
        out: dict[tuple[str, int], int] = {}
        for sid in group_ids:
            bit = self.bits.get(sid)
            if bit is None:
                continue
            for key in self.by_remote.get(sid, ()):
                k = (key.direction, key.ethertype)
                out[k] = out.get(k, 0) | 1 << bit
        self._member_bits[group_ids] = out
        return out

    def clauses(self, key: ClassKey) -> int:
        """A class's number of clauses: 3 for a remote group without a bit."""
        return 3 if key.remote_group and key.remote_group not in self.bits else 2

    def classes_of(self, group_ids: Iterable[str]) -> list[ClassKey]:
        out: list[ClassKey] = []
        for sid in group_ids:
            g = self.groups.get(sid)
            if g is not None:
                out.extend(g.classes)
        return out

    def stateless(self, group_ids: Iterable[str]) -> bool:
        """Whether a port in these groups is filtered without conntrack: all of them stateless."""
        groups = [self.groups[s] for s in group_ids if s in self.groups]
        return bool(groups) and not any(g.stateful for g in groups)


# --- flows -------------------------------------------------------------------------------------


def group_flows(index: SecurityIndex, sid: str) -> list[Flow]:
    """A group's own flows (its cookie): each class's rule clause and its accept flows."""
    group = index.groups.get(sid)
    if group is None:
        return []
    c = cookie_for("security_group", sid)
    flows: list[Flow] = []
    for key, matches in group.classes.items():
        cid = index.conj[key]
        table = RULES_TABLE[key.direction]
        clause = (Conjunction(cid, 2, index.clauses(key)),)
        bit = index.bits.get(key.remote_group) if key.remote_group else None
        if bit is not None:  # and the other end is a member: its bit is set
            reg = bit_match(key.direction, bit)
            matches = tuple(tuple(sorted((*m, reg))) for m in matches)
        flows.extend(Flow(table, P_RULE, m, clause, cookie=c) for m in matches)
        accepted = match(conj_id=cid, eth_type=key.ethertype)
        new = match(
            conj_id=cid, eth_type=key.ethertype, ct_state=(CT_NEW | CT_TRK, CT_NEW | CT_TRK)
        )
        flows.append(_accept(key.direction, P_RULE_NEW, new, c, commit=True))
        flows.append(_accept(key.direction, P_RULE, accepted, c))
    return flows


def filter_flows(
    index: SecurityIndex, pid: str, ofport: int, group_ids: Iterable[str]
) -> list[Flow]:
    """A filtered local port's clause 1 in each direction, and the drop of its own floods."""
    c = cookie_for("port", pid)
    by_dir: dict[str, list[Action]] = {INGRESS: [], EGRESS: []}
    for key in sorted(set(index.classes_of(group_ids))):
        by_dir[key.direction].append(Conjunction(index.conj[key], 1, index.clauses(key)))
    flows = [Flow(T_INGRESS_CT, P_HAIRPIN, match(in_port=ofport, **{REG_PORT: ofport}), cookie=c)]
    if by_dir[INGRESS]:
        m = match(**{REG_PORT: ofport})
        flows.append(Flow(T_INGRESS_RULES, P_RULE, m, tuple(by_dir[INGRESS]), cookie=c))
    if by_dir[EGRESS]:
        m = match(in_port=ofport)
        flows.append(Flow(T_EGRESS_RULES, P_RULE, m, tuple(by_dir[EGRESS]), cookie=c))
    return flows


def member_flows(index: SecurityIndex, pid: str, body: Body) -> list[Flow]:
    """A port's addresses as a member of the remote groups rules name (the port's "member"
    cookie), as the source of what reaches a local port and the destination of what one
    sends: per exact address one lookup flow loading its groups' bits; per prefix, clause-2
    flows of its own; for groups without a bit, clause 3."""
    groups = tuple(body.get("security_group_ids") or ())
    bits = index.member_bits(groups)
    conj = index.member_conjunctions(groups)
    if not conj and not bits:
        return []
    c = cookie_for("member", pid)
    flows: list[Flow] = []
    for version, host, net in portsec.host_addresses(body):
        ethertype = ETH_IP if version == 4 else ETH_IPV6
        for direction in (INGRESS, EGRESS):
            b, actions = bits.get((direction, ethertype)), conj.get((direction, ethertype))
            if not b and not actions:
                continue
            side = REMOTE_SIDE[direction]
            if net is None:  # an IPv4 host address: match() of one field, by hand
                m: Match = (("eth_type", ETH_IP), (f"ipv4_{side}", host))
            else:
                m = match(eth_type=ethertype, **_prefix(f"ipv{version}_{side}", net))
            if b:
                if net is None or net.prefixlen == net.max_prefixlen:
                    flows.append(
                        Flow(REMOTE_TABLE[direction], P_RULE, m, _load(direction, b), cookie=c)
                    )
                else:
                    flows += _prefix_clauses(index, groups, direction, ethertype, net, c)
            if actions:
                flows.append(Flow(RULES_TABLE[direction], P_RULE, m, actions, cookie=c))
    return flows


def has_prefix(body: Body | None) -> bool:
    """Whether a port owns an address that is a prefix, not one host (an address pair's CIDR;
    a fixed IP is always one address)."""
    if body is None or not body.get("allowed_address_pairs"):
        return False
    return any(
        net is not None and net.prefixlen != net.max_prefixlen
        for _, _, net in portsec.host_addresses(body)
    )


def merge_loads(flows: Iterable[Flow]) -> Flow:
    """One lookup flow for an address several members own: the union of their bits."""
    flows = list(flows)
    values: dict[str, int] = {}
    for f in flows:
        for a in f.actions:
            if isinstance(a, SetField):
                values[a.field] = values.get(a.field, 0) | int(a.value)
    first = flows[0]
    direction = INGRESS if first.table == T_INGRESS_REMOTE else EGRESS
    bits = sum(values.get(r, 0) << 32 * i for i, r in enumerate(REMOTE_REGS[direction]))
    return Flow(
        first.table, first.priority, first.match, _load(direction, bits), cookie=first.cookie
    )


def is_load(f: Flow) -> bool:
    """Whether a flow is a member address's lookup (flows of one address merge: merge_loads)."""
    return f.table in (T_INGRESS_REMOTE, T_EGRESS_REMOTE) and f.priority == P_RULE


@functools.lru_cache(maxsize=1 << 12)
def _load(direction: str, bits: int) -> tuple[Action, ...]:
    regs = REMOTE_REGS[direction]
    loads = [SetField(r, bits >> 32 * i & 0xFFFFFFFF) for i, r in enumerate(regs)]
    return (*(a for a in loads if a.value), Resubmit(RULES_TABLE[direction]))


def _prefix_clauses(
    index: SecurityIndex,
    groups: tuple[str, ...],
    direction: str,
    ethertype: int,
    net: Any,
    cookie: int,
) -> list[Flow]:
    """A member's prefix as clause 2 of the classes naming its groups: each rule match narrowed
    to the prefix, so the prefix's addresses meet the rule whatever the lookup found for them
    (a lookup flow of a prefix would hide the bits of the exact addresses inside it)."""
    field_name = f"ipv{net.version}_{REMOTE_SIDE[direction]}"
    out: list[Flow] = []
    for sid in groups:
        if sid not in index.bits:
            continue
        for key in index.by_remote.get(sid, ()):
            if key.direction != direction or key.ethertype != ethertype:
                continue
            clause = (Conjunction(index.conj[key], 2, 2),)
            for m in index.groups[key.group].classes[key]:
                narrowed = _narrow(m, field_name, net)
                if narrowed is not None:
                    table = RULES_TABLE[direction]
                    out.append(Flow(table, P_RULE, narrowed, clause, cookie=cookie))
    return out


def _narrow(m: Match, field_name: str, net: Any) -> Match | None:
    """A match narrowed to the addresses of `net` in `field_name` (None: nothing in common)."""
    fields = dict(m)
    have = fields.get(field_name)
    if have is not None:  # the rule has a prefix of its own: the smaller of the two, if nested
        text = f"{have[0]}/{have[1]}" if isinstance(have, tuple) else str(have)
        own = ipaddress.ip_network(text, strict=False)
        if own.subnet_of(net):
            return m
        if not net.subnet_of(own):
            return None
        del fields[field_name]
    fields.update(_prefix(field_name, net))
    return match(**fields)


def zone_register(zone: int, stateless: bool) -> int:
    """What a filtered port's packets carry in REG_ZONE."""
    return zone | (ZONE_UNTRACKED if stateless else 0)


def base_flows() -> list[Flow]:
    """The CT and rules tables' flows shared by every port (pipeline cookie)."""
    flows: list[Flow] = []
    untracked = match(**{REG_ZONE: (ZONE_UNTRACKED, ZONE_UNTRACKED)})
    for direction, ct_table in ((EGRESS, T_EGRESS_CT), (INGRESS, T_INGRESS_CT)):
        rules, remote = RULES_TABLE[direction], REMOTE_TABLE[direction]
        # an address no remote group's rules name: no bits, straight on to the rules
        flows.append(Flow(remote, P_DEFAULT, (), (Resubmit(rules),)))
        if direction == EGRESS:
            bypass = _bypass(EGRESS)
            flows += [Flow(ct_table, P_BYPASS, m, goto_table=T_RESPOND) for m in bypass]
            flows.append(Flow(ct_table, P_DEFAULT, (), goto_table=T_RESPOND))  # ARP
        else:
            bypass = _bypass(INGRESS)
            flows += [Flow(ct_table, P_BYPASS, m, (OutputReg(REG_PORT),)) for m in bypass]
            flows.append(Flow(ct_table, P_DEFAULT, ()))  # nothing but IP, ARP and ND gets in
        flows.append(Flow(ct_table, P_UNTRACKED, untracked, goto_table=remote))
        for ethertype in (ETH_IP, ETH_IPV6):
            m = match(eth_type=ethertype)
            flows.append(Flow(ct_table, P_TRACK, m, (Ct(table=remote),)))
            # an established connection that no rule accepts any more: revoke it
            est = match(eth_type=ethertype, ct_state=(CT_EST | CT_TRK, CT_EST | CT_TRK))
            flows.append(Flow(rules, P_CT_REVOKE, est, (Ct(commit=True, mark=REVOKED_MARK),)))
        flows.append(Flow(rules, P_CT_INVALID, match(ct_state=(CT_INV | CT_TRK, CT_INV | CT_TRK))))
        flows.append(Flow(rules, P_CT_REVOKED, match(ct_mark=REVOKED_MARK)))
        reply = (CT_TRK | CT_EST | CT_RPL, CT_TRK | CT_EST | CT_REL | CT_RPL)
        related = (CT_TRK | CT_REL, CT_TRK | CT_REL | CT_NEW | CT_EST | CT_INV)
        for state in (reply, related):
            flows.append(_accept(direction, P_CT_REPLY, match(ct_state=state, ct_mark=0)))
        flows.append(Flow(rules, P_DEFAULT, ()))
    return flows


# --- helpers ----------------------------------------------------------------------------------


def _accept(
    direction: str, priority: int, m: Match, cookie: int = PIPELINE_COOKIE, commit: bool = False
) -> Flow:
    table = RULES_TABLE[direction]
    ct: tuple[Action, ...] = (Ct(commit=True),) if commit else ()
    if direction == EGRESS:
        return Flow(table, priority, m, ct, goto_table=T_RESPOND, cookie=cookie)
    return Flow(table, priority, m, (*ct, OutputReg(REG_PORT)), cookie=cookie)


def _bypass(direction: str) -> list[Match]:
    icmp6 = {"eth_type": ETH_IPV6, "ip_proto": IPPROTO_ICMPV6}
    out = [match(**icmp6, icmpv6_type=t) for t in ND_TYPES]
    if direction == EGRESS:  # DHCP client requests
        out.append(match(eth_type=ETH_IP, ip_proto=IPPROTO_UDP, udp_src=68, udp_dst=67))
        out.append(match(eth_type=ETH_IPV6, ip_proto=IPPROTO_UDP, udp_src=546, udp_dst=547))
    else:  # DHCP server replies, and ARP
        out.append(match(eth_type=ETH_IP, ip_proto=IPPROTO_UDP, udp_src=67, udp_dst=68))
        out.append(match(eth_type=ETH_IPV6, ip_proto=IPPROTO_UDP, udp_src=547, udp_dst=546))
        out.append(match(eth_type=ETH_ARP))
    return out


_prefix = portsec.prefix


def _conj_order(a: Any) -> tuple[int, int]:
    return (a.id, a.clause)
