"""The agent's flow IR: OpenFlow 1.3 flows as plain, hashable data, and the names they are built from.

Tables, priorities, the cookie of each resource and the OVS name of a port's tap live here, so that
every module that writes or reads flows (the pipeline rules, the compiler, Zeta, the codec, the
reconciler, the ops view) shares one vocabulary and none of them imports another's logic. Nothing
here knows os-ken or the goal state.

    >>> f = Flow(T_L2, P_HOST, match(metadata=100, eth_dst="fa:16:3e:00:00:01"), (Output(3),))
    >>> f.key
    (30, 100, (('eth_dst', 'fa:16:3e:00:00:01'), ('metadata', 100)))
    >>> hex(cookie_for("port", "p1") >> 48), tap_name("0123456789abcdef")
    ('0xa1c0', 'tap0123456789a')
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

# --- tables and priorities -------------------------------------------------------------------

T_CLASSIFY = 0
T_PORT_SECURITY = 1  # what a local port may send (alcor/agent/portsec.py)
T_EGRESS_CT = 2  # conntrack in the sending port's zone (alcor/agent/secgroups.py)
T_EGRESS_RULES = 3  # the sending port's egress rules
T_EGRESS_REMOTE = 4  # the destination's remote groups into REMOTE_REGS, then RULES
T_RESPOND = 10
T_ND_REPLY = 11  # the second step of a neighbour advertisement built from a solicitation
T_ARP_PROXY = 12  # a port's ARP reply, to an asker in a subnet routed to its own: the gateway's MAC
T_L3 = 20
T_L2 = 30
T_FLOOD = 31  # a flood too long for one flow goes on here, a part per flow
T_INGRESS_CT = 40  # conntrack in the receiving port's zone
T_INGRESS_RULES = 41  # the receiving port's ingress rules, then out to it
T_INGRESS_REMOTE = 42  # the source's remote groups into REMOTE_REGS, then RULES
# North-south on a gateway node (alcor/agent/gateway.py)
T_SNAT = 50  # traffic routed to a router's gateway: SNAT (conntrack, the router's zone)
T_SNAT_OUT = 51  # translated: out to the physical network's bridge, to the next hop
T_EXT_IN = 52  # from a physical network's bridge: ARP for gateway IPs, traffic to them
T_EXT_CT = 53  # un-NAT in the router's zone, then routed into the VPC (L3)
TABLES = (
    T_CLASSIFY,
    T_PORT_SECURITY,
    T_EGRESS_CT,
    T_EGRESS_RULES,
    T_EGRESS_REMOTE,
    T_RESPOND,
    T_ND_REPLY,
    T_ARP_PROXY,
    T_L3,
    T_L2,
    T_FLOOD,
    T_INGRESS_CT,
    T_INGRESS_RULES,
    T_INGRESS_REMOTE,
    T_SNAT,
    T_SNAT_OUT,
    T_EXT_IN,
    T_EXT_CT,
)

P_DEFAULT = 0
P_FLOOD = 10
P_HOST = 100  # exact MAC / exact IP
P_OWN_IP = 200  # beats the responder: a port asking for its own IP gets no answer
P_ND_NO_ANSWER = 250  # solicitations never answered by the datapath (DAD, no link-layer option)
P_PROXY_ARP = 150  # L3 neighbour, asked from another VPC's subnet: answered with the gateway MAC
P_ROUTE_BASE = 20  # + prefix length, so longer prefixes win; stays below P_HOST
P_GATEWAY_DROP = 1
P_DHCP = 300  # table 0: a local port's DHCP requests go to the agent, before classification

# OpenFlow's reserved "send back where it came from" port; output to the ingress port by number
# is silently dropped by OVS, which also gives split horizon on the VXLAN port for free.
OFPP_IN_PORT = 0xFFFFFFF8
OFPP_CONTROLLER = 0xFFFFFFFD  # a packet-in to the agent

ETH_IP = 0x0800
ETH_ARP = 0x0806
ETH_IPV6 = 0x86DD
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY = 128, 129
ICMPV6_NS, ICMPV6_NA = 135, 136

# Registers a filtered local port's packets carry through the pipeline. REG_ZONE holds the
# conntrack zone of the port being filtered (the sender's from CLASSIFY on, the receiver's from
# L2 on) in bits 0-15, and ZONE_UNTRACKED when its groups are stateless; REG_PORT holds the
# ofport a packet is delivered to once the receiver's ingress rules accept it.
REG_ZONE = "reg6"
REG_PORT = "reg7"
REG_FLOOD = "reg5"  # which part of a long flood (pipeline.vpc_flows) comes next
REG_ROUTER = "reg4"  # a router's tag on its gateway node, through SNAT's conntrack recirculation
ZONE_UNTRACKED = 1 << 16
# The remote groups the other end of a filtered packet belongs to, as a bitmap (a bit per group
# that local rules name as a remote group, alcor/agent/secgroups.py): the destination's on the
# way out (EGRESS_REMOTE), the source's on the way in (INGRESS_REMOTE). Apart per direction, so
# the ingress lookup never reads the bits the egress lookup of the same packet wrote.
REMOTE_REGS = {
    "egress": ("reg8", "reg9", "reg10", "reg11"),
    "ingress": ("reg12", "reg13", "reg14", "reg15"),
}

# ct_state bits (OVS: +new, +est, +rel, +rpl, +inv, +trk)
CT_NEW, CT_EST, CT_REL, CT_RPL, CT_INV, CT_TRK = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
METADATA_MASK = 0xFFFFFFFFFFFFFFFF  # metadata holds the VPC's VNI, written whole

# --- cookies ---------------------------------------------------------------------------------

# Top 16 bits mark a flow as ours (read-back filters on them), 4 bits name the resource type,
# 44 bits are a hash of its id: collisions among 10^5 resources are ~1e-4 likely, and a collision
# only merges two resources' attribution, never the flows' identity (table, priority, match).
COOKIE_TAG = 0xA1C0 << 48
COOKIE_TAG_MASK = 0xFFFF << 48
# A new kind of resource that owns flows gets the next code here (16 at most).
COOKIE_TYPES = {
    "pipeline": 0,
    "port": 1,
    "subnet": 2,
    "vpc": 3,
    "router": 4,
    "node": 5,
    "gateway": 6,
    "security_group": 7,
    # a port's addresses as members of remote groups (alcor/agent/secgroups.py member_flows):
    # apart from the port's own flows, so a rule naming a new remote group reflows only these
    "member": 8,
    # a router's north-south flows: its gateway on every host, SNAT on its gateway node
    "nat": 9,
}


@functools.lru_cache(maxsize=1 << 17)  # asked once per flow a resource owns
def cookie_for(rtype: str, rid: str) -> int:
    """The cookie of every flow that belongs to resource (rtype, rid); stable across restarts."""
    digest = hashlib.blake2b(rid.encode(), digest_size=8).digest()
    return (
        COOKIE_TAG | (COOKIE_TYPES[rtype] << 44) | (int.from_bytes(digest, "big") & (1 << 44) - 1)
    )


PIPELINE_COOKIE = cookie_for("pipeline", "base")


def cookie_type(cookie: int) -> str | None:
    """The resource type a cookie of ours names (None: not one of ours)."""
    if cookie & COOKIE_TAG_MASK != COOKIE_TAG:
        return None
    return _TYPE_BY_CODE.get((cookie >> 44) & 0xF)


_TYPE_BY_CODE = {code: name for name, code in COOKIE_TYPES.items()}


def tap_name(port_id: str) -> str:
    """The OVS interface name of a VM port (Neutron's and ACA's convention)."""
    return "tap" + port_id[:11]


# --- flows -----------------------------------------------------------------------------------

MatchValue = int | str | tuple[str, str] | tuple[int, int]
Match = tuple[tuple[str, MatchValue], ...]


@dataclass(frozen=True, slots=True)
class Output:
    port: int


@dataclass(frozen=True, slots=True)
class SetField:
    field: str
    value: int | str


@dataclass(frozen=True, slots=True)
class Move:
    """NXAST_REG_MOVE of a whole field (OVS: move:SRC[]->DST[])."""

    src: str
    dst: str
    n_bits: int


@dataclass(frozen=True, slots=True)
class DecTtl:
    pass


@dataclass(frozen=True, slots=True)
class Group:
    group_id: int


@dataclass(frozen=True, slots=True)
class Ct:
    """NXAST_CT in the zone held by REG_ZONE[0..15]: `table` set, the tracked packet continues
    there (a clone: the actions after this one see the packet untracked); `commit` stores the
    connection, with `mark` written to its ct_mark when given. `nat`: NXAST_NAT inside it,
    ("src", ip) or ("dst", ip) to translate a new connection to that address, ("", "") to apply
    the translation an existing connection already has (and reverse it on its replies)."""

    commit: bool = False
    table: int | None = None
    mark: int | None = None
    nat: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Conjunction:
    """NXAST_CONJUNCTION: this flow is clause `clause` (1..n_clauses) of conjunctive match `id`."""

    id: int
    clause: int
    n_clauses: int


@dataclass(frozen=True, slots=True)
class Resubmit:
    """NXAST_RESUBMIT_TABLE to `table`, then on with the next action."""

    table: int


@dataclass(frozen=True, slots=True)
class OutputReg:
    """NXAST_OUTPUT_REG: output to the port whose number is in register `reg` (all 32 bits)."""

    reg: str


@dataclass(frozen=True, slots=True)
class Opaque:
    """An action read back from the switch that the compiler never emits (so never "equal")."""

    text: str


Action = (
    Output | SetField | Move | DecTtl | Group | Ct | Conjunction | Resubmit | OutputReg | Opaque
)


@dataclass(frozen=True, slots=True)
class Flow:
    """One OpenFlow 1.3 flow. Its identity on the switch is `key` (table, priority, match)."""

    table: int
    priority: int
    match: Match
    actions: tuple[Action, ...] = ()
    write_metadata: tuple[int, int] | None = None
    goto_table: int | None = None
    cookie: int = PIPELINE_COOKIE
    idle_timeout: int = 0
    hard_timeout: int = 0
    meter: int | None = None  # OpenFlow 1.3 meter instruction: applied before the actions
    # its hash, computed once: a compile puts every flow in several sets and dicts, and hashing
    # a flow hashes its whole match and actions
    _hash: int = field(default=0, init=False, compare=False, repr=False)

    def __hash__(self) -> int:
        h = self._hash
        if not h:
            h = hash(
                (self.table, self.priority, self.match, self.actions, self.write_metadata,
                 self.goto_table, self.cookie, self.idle_timeout, self.hard_timeout, self.meter)
            ) or 1  # fmt: skip
            object.__setattr__(self, "_hash", h)
        return h

    @property
    def key(self) -> tuple[int, int, Match]:
        return (self.table, self.priority, self.match)


def match(**fields: MatchValue) -> Match:
    """A canonical match: fields sorted by name, so equal matches compare and hash equal."""
    return tuple(sorted(fields.items()))


Key = tuple[int, int, Match]  # a flow's identity on the switch: (table, priority, match)


# Replies built in place from the request, for answers given in the datapath (the pipeline's
# responders and the gateway types').
_MOVE_ETH = Move("eth_src", "eth_dst", 48)
_ARP_REPLY_OP = SetField("arp_op", 2)
_MOVE_SHA = Move("arp_sha", "arp_tha", 48)
_MOVE_SPA = Move("arp_spa", "arp_tpa", 32)
_TO_IN_PORT = Output(OFPP_IN_PORT)


_TO_ARP_PROXY = Resubmit(T_ARP_PROXY)


def arp_reply_actions(mac: str, ip: str, proxied: bool = False) -> tuple[Action, ...]:
    """Turn an ARP request into the reply for (ip is-at mac), in place (docs/architecture.md, "The agent's datapath").

    `proxied`: the reply goes through ARP_PROXY rather than straight back, which gives the
    gateway's MAC instead of `mac` to an asker in a subnet routed to ip's (pipeline.py)."""
    return (
        _MOVE_ETH,
        SetField("eth_src", mac),
        _ARP_REPLY_OP,
        _MOVE_SHA,
        _MOVE_SPA,
        SetField("arp_sha", mac),
        SetField("arp_spa", ip),
        _TO_ARP_PROXY if proxied else _TO_IN_PORT,
    )


def icmp_echo_reply_actions(mac: str, ip: str) -> tuple[Action, ...]:
    """Turn an ICMP echo request to a gateway IP into its reply (OVS fixes the checksums)."""
    return (
        Move("eth_src", "eth_dst", 48),
        SetField("eth_src", mac),
        Move("ipv4_src", "ipv4_dst", 32),
        SetField("ipv4_src", ip),
        SetField("icmpv4_type", 0),
        Output(OFPP_IN_PORT),
    )
