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

Rules are conjunctive matches (OVS `conjunction`), one per *class*: a group's rules of one
direction, ethertype and remote group. A class's clauses are (1) the ports filtered by the
group (one flow per local port, listing every class of its groups), (2) its rules' protocol,
port and prefix matches (one flow per rule and port-range mask), and, for a remote group,
(3) the group's member addresses (one flow per address of a member, local or neighbour). So
N local ports, M rules and K members cost N + M + K flows, not N x M x K, and a member that
joins or leaves a group changes only its own address flows. Flows with the same match from
different groups or members are one flow listing all their conjunctions (the compiler merges
them). All accept actions of a table are the same, so OVS may pick any of several complete
conjunctions at one priority: overlapping rules cannot change the verdict.

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
    T_EGRESS_CT,
    T_EGRESS_RULES,
    T_INGRESS_CT,
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
    cookie_for,
    match,
)
from alcor.wire import Body, protocol_number

INGRESS, EGRESS = "ingress", "egress"
RULES_TABLE = {INGRESS: T_INGRESS_RULES, EGRESS: T_EGRESS_RULES}

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

    @property
    def clauses(self) -> int:
        return 3 if self.remote_group else 2


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

    def __bool__(self) -> bool:
        return bool(self.groups or self.filtered_by or self.remotes)


class SecurityIndex:
    """The goal state's security groups, parsed, with their classes' conjunction ids and, per
    remote group, the classes that name it. `update` takes the goal's groups and says what
    changed; everything else here reads it. Pure data, no I/O."""

    def __init__(self) -> None:
        self.bodies: Mapping[str, Body] = {}
        self.groups: dict[str, SecurityGroup] = {}
        self.conj: dict[ClassKey, int] = {}
        self.by_remote: dict[str, tuple[ClassKey, ...]] = {}
        # the clause-3 conjunctions of a port in these groups, by (direction, ethertype)
        self._member_conj: dict[tuple[str, ...], dict[tuple[str, int], tuple[Action, ...]]] = {}

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
        for g in set(new_remote) | set(self.by_remote):
            if new_remote.get(g) != self.by_remote.get(g) or any(k in moved for k in new_remote[g]):
                change.remotes.add(g)
        self.by_remote = new_remote
        self._member_conj.clear()
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
            for key in self.by_remote.get(sid, ()):
                conj.setdefault((key.direction, key.ethertype), set()).add(
                    Conjunction(self.conj[key], 3, 3)
                )
        out: dict[tuple[str, int], tuple[Action, ...]] = {
            k: tuple(sorted(v, key=_conj_order)) for k, v in conj.items()
        }
        self._member_conj[group_ids] = out
        return out

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
        clause = (Conjunction(cid, 2, key.clauses),)
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
        by_dir[key.direction].append(Conjunction(index.conj[key], 1, key.clauses))
    flows = [Flow(T_INGRESS_CT, P_HAIRPIN, match(in_port=ofport, **{REG_PORT: ofport}), cookie=c)]
    if by_dir[INGRESS]:
        m = match(**{REG_PORT: ofport})
        flows.append(Flow(T_INGRESS_RULES, P_RULE, m, tuple(by_dir[INGRESS]), cookie=c))
    if by_dir[EGRESS]:
        m = match(in_port=ofport)
        flows.append(Flow(T_EGRESS_RULES, P_RULE, m, tuple(by_dir[EGRESS]), cookie=c))
    return flows


def member_flows(index: SecurityIndex, pid: str, body: Body) -> list[Flow]:
    """A port's addresses as clause 3 of every class whose remote group it is a member of (the
    port's "member" cookie): the source of what reaches a local port, the destination of what
    one sends."""
    conj = index.member_conjunctions(tuple(body.get("security_group_ids") or ()))
    if not conj:
        return []
    c = cookie_for("member", pid)
    flows: list[Flow] = []
    for version, host, net in portsec.host_addresses(body):
        ethertype = ETH_IP if version == 4 else ETH_IPV6
        for direction in (INGRESS, EGRESS):
            actions = conj.get((direction, ethertype))
            if not actions:
                continue
            side = "src" if direction == INGRESS else "dst"
            if net is None:  # an IPv4 host address: match() of one field, by hand
                m: Match = (("eth_type", ETH_IP), (f"ipv4_{side}", host))
            else:
                m = match(eth_type=ethertype, **_prefix(f"ipv{version}_{side}", net))
            flows.append(Flow(RULES_TABLE[direction], P_RULE, m, actions, cookie=c))
    return flows


def zone_register(zone: int, stateless: bool) -> int:
    """What a filtered port's packets carry in REG_ZONE."""
    return zone | (ZONE_UNTRACKED if stateless else 0)


def base_flows() -> list[Flow]:
    """The CT and rules tables' flows shared by every port (pipeline cookie)."""
    flows: list[Flow] = []
    untracked = match(**{REG_ZONE: (ZONE_UNTRACKED, ZONE_UNTRACKED)})
    for direction, ct_table in ((EGRESS, T_EGRESS_CT), (INGRESS, T_INGRESS_CT)):
        rules = RULES_TABLE[direction]
        if direction == EGRESS:
            bypass = _bypass(EGRESS)
            flows += [Flow(ct_table, P_BYPASS, m, goto_table=T_RESPOND) for m in bypass]
            flows.append(Flow(ct_table, P_DEFAULT, (), goto_table=T_RESPOND))  # ARP
        else:
            bypass = _bypass(INGRESS)
            flows += [Flow(ct_table, P_BYPASS, m, (OutputReg(REG_PORT),)) for m in bypass]
            flows.append(Flow(ct_table, P_DEFAULT, ()))  # nothing but IP, ARP and ND gets in
        flows.append(Flow(ct_table, P_UNTRACKED, untracked, goto_table=rules))
        for ethertype in (ETH_IP, ETH_IPV6):
            m = match(eth_type=ethertype)
            flows.append(Flow(ct_table, P_TRACK, m, (Ct(table=rules),)))
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
