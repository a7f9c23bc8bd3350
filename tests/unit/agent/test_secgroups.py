"""Security groups as the pipeline runs them (pure, with tests/support/flowsim.py's conntrack):
Neutron's semantics, conjunctive matches that do not multiply, and incremental changes."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from alcor.agent import secgroups
from alcor.agent.compiler import FlowCompiler, compile_flows
from alcor.agent.ir import (
    REG_ZONE,
    T_EGRESS_RULES,
    T_INGRESS_REMOTE,
    T_INGRESS_RULES,
    ZONE_UNTRACKED,
    Conjunction,
    Ct,
    Flow,
    SetField,
    cookie_for,
)
from tests.support.flowsim import Conntrack, Packet, ipv4, reply, simulate, tcp
from tests.support.goals import (
    IP,
    MAC,
    OFPORTS,
    PA1,
    PA2,
    PA3,
    PB1,
    PB2,
    QA1,
    QB1,
    VX,
    rule,
    secgroup_scene,
)

P1, P2, P3, Q1 = (OFPORTS["tap" + p[:11]] for p in (PA1, PA2, PA3, QA1))


def tunnelled(pkt: Packet, vni: int = 100) -> Packet:
    """A packet from host B as it arrives on the VXLAN port."""
    return {**pkt, "in_port": VX, "tunnel_id": vni}


def to_port(src: str, dst: str, **extra: Any) -> Packet:
    """An ICMP echo from port src to port dst (same subnet), as src's host sees it arrive."""
    pkt = ipv4(OFPORTS.get("tap" + src[:11], VX), MAC[src], MAC[dst], IP[src], IP[dst], **extra)
    return tunnelled(pkt) if src in (PB1, PB2) else pkt


def outs(goal: Any, pkt: Packet, ct: Conntrack | None = None) -> set[int]:
    return {port for port, _ in simulate(compile_flows(goal, OFPORTS), pkt, ct=ct)}


def test_rules_as_matches() -> None:
    m = secgroups.rule_matches
    assert m(rule("ingress", protocol="tcp", port_range_min=22, port_range_max=22)) == (
        "ingress", 0x800, "", [(("eth_type", 0x800), ("ip_proto", 6), ("tcp_dst", 22))]
    )  # fmt: skip
    # a range is masked, every port is no port match at all
    _, _, _, ranged = m(rule("egress", protocol="udp", port_range_min=1000, port_range_max=1999))  # type: ignore[misc]
    assert len(ranged) > 1 and all(dict(x)["udp_dst"] for x in ranged)
    _, _, _, every = m(rule("ingress", protocol="6", port_range_min=1, port_range_max=65535))  # type: ignore[misc]
    assert every == [(("eth_type", 0x800), ("ip_proto", 6))]
    # ICMP type and code; "icmp" in an IPv6 rule is ICMPv6 (as Neutron reads it)
    _, _, _, echo = m(rule("ingress", protocol="icmp", port_range_min=8, port_range_max=0))  # type: ignore[misc]
    assert echo == [(("eth_type", 0x800), ("icmpv4_code", 0), ("icmpv4_type", 8), ("ip_proto", 1))]
    _, eth, _, v6 = m(rule("ingress", "IPv6", protocol="icmp"))  # type: ignore[misc]
    assert eth == 0x86DD and v6 == [(("eth_type", 0x86DD), ("ip_proto", 58))]
    # the remote prefix is the source of ingress, the destination of egress
    _, _, _, src = m(rule("ingress", remote_ip_prefix="10.1.2.3/16"))  # type: ignore[misc]
    assert src == [(("eth_type", 0x800), ("ipv4_src", ("10.1.0.0", "255.255.0.0")))]
    _, _, remote, dst = m(rule("egress", remote_group_id="g"))  # type: ignore[misc]
    assert remote == "g" and dst == [(("eth_type", 0x800),)]
    # what can match nothing is no rule at all
    assert m(rule("ingress", "IPv6", remote_ip_prefix="10.0.0.0/8")) is None
    assert m(rule("sideways")) is None


@given(st.integers(1, 65535), st.integers(0, 2000))
def test_port_masks_cover_exactly_the_range(lo: int, width: int) -> None:
    hi = min(65535, lo + width)
    covered: set[int] = set()
    for v in secgroups.port_masks(lo, hi):
        value, mask = (v, 0xFFFF) if isinstance(v, int) else v
        block = {p for p in range(value, value + ((~mask & 0xFFFF) + 1)) if p & mask == value}
        assert not covered & block
        covered |= block
    assert covered == set(range(lo, hi + 1))


def test_conjunction_ids_are_stable_unique_and_never_zero() -> None:
    keys = [secgroups.ClassKey(f"sg{i}", "ingress", 0x800, "") for i in range(300)]
    ids = secgroups.conj_ids(keys)
    assert len(set(ids.values())) == 300 and 0 not in ids.values()
    more = secgroups.conj_ids([*keys, secgroups.ClassKey("new", "egress", 0x800, "sg1")])
    assert all(more[k] == ids[k] for k in keys)  # one class coming moves no other


def test_default_group_ingress_from_members_only_egress_to_all() -> None:
    goal = secgroup_scene().goal()
    assert outs(goal, to_port(PB1, PA1)) == {P1}  # a member, across hosts
    assert outs(goal, to_port(PA3, PA1)) == {P1}  # a member, on the host
    assert outs(goal, to_port(PB2, PA1)) == set()  # not a member
    assert outs(goal, to_port(PA1, PB2)) == {VX}  # egress: anywhere
    assert outs(goal, to_port(PA1, PA3)) == {P3}


def test_replies_of_the_vms_own_connections_pass_and_nothing_else_does() -> None:
    goal = secgroup_scene({PB1: ("other",)}).goal()  # PB1 is no member: it may not start anything to PA1
    ct = Conntrack()
    for proto in ("icmp", "tcp", "udp"):
        if proto == "icmp":
            out = ipv4(P1, MAC[PA1], MAC[PB1], IP[PA1], IP[PB1], icmp_id=7)
        else:
            out = tcp(P1, MAC[PA1], MAC[PB1], IP[PA1], IP[PB1], 40000, 53)
            if proto == "udp":
                out = {**out, "ip_proto": 17, "udp_src": 40000, "udp_dst": 53}
                del out["tcp_src"], out["tcp_dst"]
        back = tunnelled(reply(out, VX))
        assert outs(goal, back, ct) == set(), proto  # before PA1 asked: dropped
        assert outs(goal, out, ct) == {VX}, proto
        assert outs(goal, back, ct) == {P1}, proto  # the reply of its own connection
    # the same 5-tuple started by PB1 instead is still a new connection, and dropped
    assert (
        outs(goal, tunnelled(tcp(VX, MAC[PB1], MAC[PA1], IP[PB1], IP[PA1], 53, 40001)), ct) == set()
    )


def test_tcp_22_only() -> None:
    goal = secgroup_scene({PA3: ("ssh",)}).goal()
    ssh = tunnelled(tcp(VX, MAC[PB1], MAC[PA3], IP[PB1], IP[PA3], 33000, 22))
    assert outs(goal, ssh) == {P3}
    assert outs(goal, {**ssh, "tcp_dst": 80}) == set()
    assert outs(goal, to_port(PB1, PA3)) == set()  # ICMP
    assert outs(goal, to_port(PA1, PA3)) == set()  # from the same host too


def test_a_rule_removed_stops_new_and_established_connections_a_rule_added_allows() -> None:
    g = secgroup_scene({PA3: ("ssh",)})
    ct = Conntrack()
    ssh = tunnelled(tcp(VX, MAC[PB1], MAC[PA3], IP[PB1], IP[PA3], 33000, 22))
    back = reply(ssh, P3)
    goal = g.goal()
    assert outs(goal, ssh, ct) == {P3} and outs(goal, back, ct) == {VX}
    assert outs(goal, ssh, ct) == {P3}  # established: judged by the rules again, still allowed
    g.sg("ssh", [rule("egress")])  # the tcp/22 rule goes
    goal = g.goal()
    assert outs(goal, ssh, ct) == set()  # the running connection: stopped, and marked revoked
    assert outs(goal, back, ct) == set()  # its replies too
    assert outs(goal, {**ssh, "tcp_src": 33001}, ct) == set()  # and new ones
    g.sg(
        "ssh",
        [rule("egress"), rule("ingress", protocol="tcp", port_range_min=8000, port_range_max=8080)],
    )
    goal = g.goal()
    assert outs(goal, {**ssh, "tcp_src": 33002, "tcp_dst": 8080}, ct) == {P3}
    assert outs(goal, {**ssh, "tcp_src": 33002, "tcp_dst": 8081}, ct) == set()


def test_remote_group_membership_follows_the_ports() -> None:
    g = secgroup_scene()
    g.sg(
        "web",
        [
            rule(
                "ingress",
                protocol="tcp",
                port_range_min=80,
                port_range_max=80,
                remote_group_id="default",
            )
        ],
    )
    g.res["port"][PA3]["security_group_ids"] = ["web"]
    web = tunnelled(tcp(VX, MAC[PB2], MAC[PA3], IP[PB2], IP[PA3], 33000, 80))
    web = {**web, "eth_dst": MAC[PA3]}
    compiler = FlowCompiler()
    compiler.compile(g.goal(), OFPORTS)
    fs = compiler.flowset()
    assert {p for p, _ in simulate(fs, web)} == set()  # PB2 is not in default
    g.res["port"][PB2]["security_group_ids"] = ["default", "other"]  # it joins
    changes = compiler.compile(g.goal(), OFPORTS)
    assert changes.cookies == {cookie_for("member", PB2)}  # its own address flows, nothing else
    assert {p for p, _ in simulate(compiler.flowset(), web)} == {P3}
    g.res["port"][PB2]["security_group_ids"] = ["other"]  # and leaves
    changes = compiler.compile(g.goal(), OFPORTS)
    assert changes.cookies == {cookie_for("member", PB2)}
    assert {p for p, _ in simulate(compiler.flowset(), web)} == set()


def test_a_members_prefix_lets_in_its_addresses_and_the_exact_members_keep_theirs() -> None:
    """An address pair's CIDR as a member: its addresses meet the rules naming its group, even
    one that is also another group's exact member (the lookup loads only that one's bit)."""
    g = secgroup_scene()
    g.sg("peers", [rule("egress", "IPv4")])
    g.sg("web", [rule("ingress", protocol="tcp", port_range_min=80, remote_group_id="peers")])
    g.res["port"][PA3]["security_group_ids"] = ["web"]
    g.res["port"][PB2]["security_group_ids"] = ["peers"]
    g.res["port"][PB2]["allowed_address_pairs"] = [{"ip_address": "10.0.0.0/29"}]

    def web(src: str) -> set[int]:
        pkt = tunnelled(tcp(VX, MAC[PB2], MAC[PA3], src, IP[PA3], 33000, 80))
        return {p for p, _ in simulate(compiler.flowset(), pkt)}

    compiler = FlowCompiler()
    compiler.compile(g.goal(), OFPORTS)
    assert web(IP[PB2]) == {P3}  # its fixed IP: the lookup
    assert web("10.0.0.3") == {P3}  # inside its prefix
    assert web(IP[PB1]) == {P3}  # 10.0.0.6: in the prefix, and an exact member of default
    assert web("10.0.0.9") == set()  # outside
    # a rule of the class changes: the prefix's own clause flows follow, the lookups stay
    g.sg("web", [rule("ingress", protocol="tcp", port_range_min=81, remote_group_id="peers")])
    changes = compiler.compile(g.goal(), OFPORTS)
    assert cookie_for("member", PB2) in changes.cookies
    assert cookie_for("member", PB1) not in changes.cookies
    assert web("10.0.0.3") == set()
    assert compiler.desired == compile_flows(g.goal(), OFPORTS).by_key()


def test_groups_beyond_the_bit_budget_are_clause_3_of_their_classes() -> None:
    g = secgroup_scene()
    names = [f"g{i:03d}" for i in range(secgroups.REMOTE_BITS + 2)]
    for name in names:
        g.sg(name, [rule("egress", "IPv4")])
    g.sg(
        "web",
        [
            rule("ingress", protocol="tcp", port_range_min=1000 + i, remote_group_id=name)
            for i, name in enumerate(names)
        ],
    )
    g.res["port"][PA3]["security_group_ids"] = ["web"]
    g.res["port"][PB2]["security_group_ids"] = [names[-1], names[5]]
    compiler = FlowCompiler()
    compiler.compile(g.goal(), OFPORTS)
    bits = compiler.security.bits
    assert len(bits) == secgroups.REMOTE_BITS and len(set(bits.values())) == len(bits)
    assert names[-1] not in bits and names[5] in bits
    fs = compiler.flowset()
    mine = [f for f in fs.flows if f.cookie == cookie_for("member", PB2)]
    assert {f.table for f in mine} == {T_INGRESS_REMOTE, T_INGRESS_RULES}  # a lookup, clause 3

    def web(src: str, port: int) -> set[int]:
        pkt = tunnelled(tcp(VX, MAC[PB2], MAC[PA3], src, IP[PA3], 33000, port))
        return {p for p, _ in simulate(fs, pkt)}

    last = 1000 + len(names) - 1
    assert web(IP[PB2], last) == {P3} and web(IP[PB2], 1005) == {P3}
    assert web(IP[PB1], last) == set() and web(IP[PB2], 1006) == set()


def test_one_address_of_two_members_loads_the_bits_of_both() -> None:
    g = secgroup_scene()
    g.sg("web", [rule("ingress", protocol="tcp", port_range_min=80, remote_group_id="other")])
    g.res["port"][PA3]["security_group_ids"] = ["web"]
    # PB1 (default) also claims PB2's address (other) as an address pair
    g.res["port"][PB1]["allowed_address_pairs"] = [{"ip_address": IP[PB2]}]
    fs = compile_flows(g.goal(), OFPORTS)
    # (the responders' flows of the shared address conflict; the lookups merge)
    assert not [c for c in fs.conflicts if c[0].table == T_INGRESS_REMOTE]
    [lookup] = [
        f
        for f in fs.flows
        if f.table == T_INGRESS_REMOTE and dict(f.match).get("ipv4_src") == IP[PB2]
    ]
    index = secgroups.SecurityIndex()
    index.update(g.goal()["security_group"])
    want = 1 << index.bits["default"] | 1 << index.bits["other"]
    loaded = sum(
        int(a.value) << 32 * secgroups.REMOTE_REGS["ingress"].index(a.field)
        for a in lookup.actions
        if isinstance(a, SetField)
    )
    assert loaded == want
    pkt = tunnelled(tcp(VX, MAC[PB2], MAC[PA3], IP[PB2], IP[PA3], 33000, 80))
    assert {p for p, _ in simulate(fs, pkt)} == {P3}
    default = tunnelled(tcp(VX, MAC[PB2], MAC[PA1], IP[PB2], IP[PA1], 33000, 5))
    assert {p for p, _ in simulate(fs, {**default, "eth_dst": MAC[PA1]})} == {P1}


def test_stateless_groups_use_no_conntrack_and_replies_need_a_rule() -> None:
    g = secgroup_scene()
    g.sg(
        "sl",
        [rule("ingress", protocol="tcp", port_range_min=22, port_range_max=22)],
        stateful=False,
    )
    g.res["port"][PA3]["security_group_ids"] = ["sl"]
    fs = compile_flows(g.goal(), OFPORTS)
    [classify] = [f for f in fs.flows if f.table == 0 and dict(f.match).get("in_port") == P3]
    assert classify.actions[0].value & ZONE_UNTRACKED  # type: ignore[union-attr]
    ssh = tunnelled(tcp(VX, MAC[PB1], MAC[PA3], IP[PB1], IP[PA3], 33000, 22))
    trace: list[Flow] = []
    assert {p for p, _ in simulate(fs, ssh, trace=trace)} == {P3}
    assert not any(isinstance(a, Ct) for f in trace for a in f.actions)
    assert outs(g.goal(), reply(ssh, P3)) == set()  # no egress rule: the reply stays in
    g.sg(
        "sl",
        [rule("ingress", protocol="tcp", port_range_min=22, port_range_max=22), rule("egress")],
        stateful=False,
    )
    assert outs(g.goal(), reply(ssh, P3)) == {VX}


def test_vpcs_with_overlapping_cidrs_keep_their_connections_apart() -> None:
    g = secgroup_scene({QA1: ("default",), QB1: ("default",)})
    ct = Conntrack()
    goal = g.goal()
    a = tcp(P1, MAC[PA1], MAC[PB1], "10.0.0.5", "10.0.0.6", 40000, 80)  # VPC 1
    q = tcp(Q1, MAC[QA1], MAC[QB1], "10.0.0.5", "10.0.0.6", 40000, 80)  # VPC 2, same 5-tuple
    assert outs(goal, a, ct) == {VX} and outs(goal, q, ct) == {VX}
    zones = {z for z, _ in ct.entries}
    assert len(zones) == 2  # one connection each, in each port's own zone


def test_members_times_rules_do_not_multiply() -> None:
    """20 members of a remote group, 10 rules naming it, 5 local ports: N + M + K flows."""
    g = secgroup_scene()
    remote_rules = [
        rule(
            "ingress",
            protocol="tcp",
            port_range_min=1000 + i,
            port_range_max=1000 + i,
            remote_group_id="peers",
        )
        for i in range(10)
    ]
    g.sg("app", remote_rules)
    for i in range(20):
        pid = f"eeee{i:04d}-0000"
        g.port(
            pid,
            "vpc1",
            "s1",
            f"10.0.0.{100 + i}",
            f"fa:16:3e:ee:00:{i:02x}",
            node="node-b",
            security_groups=("peers",),
        )
    ofports = dict(OFPORTS)
    for i in range(5):
        pid = f"aaaa{i + 10:04d}-0000"
        g.port(
            pid,
            "vpc1",
            "s1",
            f"10.0.0.{50 + i}",
            f"fa:16:3e:aa:01:{i:02x}",
            node="node-a",
            security_groups=("app",),
        )
        ofports["tap" + pid[:11]] = 50 + i
    fs = compile_flows(g.goal(), ofports)
    ingress = [
        f
        for f in fs.flows
        if f.table == T_INGRESS_RULES and any(isinstance(a, Conjunction) for a in f.actions)
    ]
    app = [f for f in ingress if f.cookie == cookie_for("security_group", "app")]
    member_cookies = {cookie_for("member", f"eeee{i:04d}-0000") for i in range(20)}
    members = [f for f in fs.flows if f.cookie in member_cookies]
    assert len(app) == 10 and len(members) == 20  # one flow per rule, one per member
    # a member's flow is its address's lookup of the groups' bits, not a clause of each class
    assert {f.table for f in members} == {T_INGRESS_REMOTE}
    # and a packet from a member to a local port of "app" on one of the ports is let in
    pkt = tunnelled(
        tcp(VX, "fa:16:3e:ee:00:03", "fa:16:3e:aa:01:02", "10.0.0.103", "10.0.0.52", 33000, 1004)
    )
    assert {p for p, _ in simulate(fs, pkt)} == {52}
    assert {p for p, _ in simulate(fs, {**pkt, "tcp_dst": 1010})} == set()


def test_a_rule_change_reflows_only_what_it_must() -> None:
    g = secgroup_scene({PA3: ("ssh",)})
    compiler = FlowCompiler()
    compiler.compile(g.goal(), OFPORTS)
    # one more rule of an existing class: that group's flows only
    g.sg(
        "ssh",
        [
            *g.res["security_group"]["ssh"]["rules"],
            rule("ingress", protocol="tcp", port_range_min=23, port_range_max=23),
        ],
    )
    changes = compiler.compile(g.goal(), OFPORTS)
    assert changes.cookies == {cookie_for("security_group", "ssh")} and len(changes.flows) == 1
    # a new class naming a remote group that rules already name (default names itself): the
    # group's flows and its local port's filter; the members' lookups already load its bit
    g.sg(
        "ssh",
        [
            *g.res["security_group"]["ssh"]["rules"],
            rule("ingress", protocol="udp", remote_group_id="default"),
        ],
    )
    changes = compiler.compile(g.goal(), OFPORTS)
    expected = {cookie_for("security_group", "ssh"), cookie_for("port", PA3)}  # PA3 is in ssh
    assert changes.cookies == expected
    # one naming a group no rule named (ssh, whose member is PA3): its members' lookups too
    g.sg(
        "default",
        [
            *g.res["security_group"]["default"]["rules"],
            rule("ingress", protocol="udp", remote_group_id="ssh"),
        ],
    )
    changes = compiler.compile(g.goal(), OFPORTS)
    expected = {cookie_for("security_group", "default"), cookie_for("member", PA3)}
    expected.add(cookie_for("port", PA1))  # the local port in default (PB1 is remote)
    assert changes.cookies == expected
    assert not changes.recomputed and compiler.recomputes == 1


def test_every_filtered_port_has_its_own_zone() -> None:
    fs = compile_flows(secgroup_scene().goal(), OFPORTS, zones={PA1: 7, PA2: 8, PA3: 9, QA1: 10})
    loads = {
        dict(f.match)["in_port"]: f.actions[0].value  # type: ignore[union-attr]
        for f in fs.flows
        if f.table == 0 and "in_port" in dict(f.match) and f.actions
    }
    assert loads == {P1: 7, P2: 8, P3: 9, Q1: 10}
    # a port without a zone is never left unfiltered: it gets no flows at all
    fs = compile_flows(secgroup_scene().goal(), OFPORTS, zones={PA1: 7})
    assert fs.port_problems[PA3] == "no conntrack zone assigned to the port"
    assert not [f for f in fs.flows if f.cookie == cookie_for("port", PA3) and f.table == 0]


SG_OPS = st.lists(
    st.tuples(
        st.sampled_from(["rule", "unrule", "join", "leave", "stateful", "psec", "drop"]),
        st.integers(0, 3),
    ),
    min_size=1,
    max_size=10,
)


@settings(max_examples=60, deadline=None)
@given(SG_OPS)
def test_incremental_security_equals_full_compile(ops: list[tuple[str, int]]) -> None:
    g = secgroup_scene({PA3: ("ssh",)})
    goal: dict[str, Any] = dict(g.goal())
    compiler = FlowCompiler()
    compiler.compile(goal, OFPORTS)
    pids = [PA1, PA3, PB1, PB2]
    for op, n in ops:
        sgs = goal["security_group"] = copy.deepcopy(goal["security_group"])
        ports = goal["port"] = dict(goal["port"])
        pid = pids[n]
        if op == "rule":
            sgs.setdefault("ssh", {"id": "ssh", "rules": []})["rules"].append(
                rule(
                    "ingress",
                    protocol="tcp",
                    port_range_min=100 + n,
                    port_range_max=100 + n,
                    remote_group_id=["default", "other", "", "ssh"][n] or None,
                )
            )
        elif op == "unrule" and sgs.get("ssh", {}).get("rules"):
            sgs["ssh"]["rules"].pop(n % len(sgs["ssh"]["rules"]))
        elif op in ("join", "leave"):
            body = ports[pid] = copy.deepcopy(ports[pid])
            have = set(body["security_group_ids"])
            (have.add if op == "join" else have.discard)(["default", "ssh", "other", "default"][n])
            body["security_group_ids"] = sorted(have)
        elif op == "stateful" and "ssh" in sgs:
            sgs["ssh"]["stateful"] = not sgs["ssh"].get("stateful", True)
        elif op == "psec" and pid in (PA1, PA3):
            ports[pid] = {
                **ports[pid],
                "port_security_enabled": not ports[pid]["port_security_enabled"],
            }
        elif op == "drop":
            sgs.pop(["default", "ssh", "other", "ssh"][n], None)
        compiler.compile(goal, OFPORTS)
        full = compile_flows(goal, OFPORTS)
        assert compiler.desired == full.by_key()
        assert compiler.port_problems == dict(full.port_problems)


def test_zone_register_carries_the_zone_and_the_untracked_flag() -> None:
    assert secgroups.zone_register(5, False) == 5
    assert secgroups.zone_register(5, True) == 5 | ZONE_UNTRACKED
    assert REG_ZONE == "reg6" and T_EGRESS_RULES == 3
