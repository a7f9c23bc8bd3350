"""IPv6 rules (alcor/agent/ipv6.py), checked by running packets through the compiled flows.

The scene is tests/support/goals.py's dual_stack(): two_vpcs() with an IPv6 /64 beside every IPv4
subnet, VPC1's four subnets on router r1, VPC2 reusing VPC1's IPv6 CIDR.
"""

from __future__ import annotations

import pytest

from alcor.agent.compiler import FlowSet, compile_flows
from alcor.agent.ipv6 import (
    NA_ROUTER_SOLICITED_OVERRIDE,
    NA_SOLICITED_OVERRIDE,
    link_local,
)
from alcor.agent.ir import T_L2, T_L3, T_ND_REPLY, T_RESPOND, Output
from tests.support.flowsim import ipv6, neighbour_solicitation, simulate
from tests.support.goals import (
    B_IP,
    GW1V6,
    GW2V6,
    GW3V6,
    MAC,
    OFPORTS,
    PA1,
    PA2,
    PA3,
    PB1,
    PB2,
    QA1,
    QB1,
    V6,
    VX,
    dual_stack,
    two_vpcs,
)


@pytest.fixture
def fs() -> FlowSet:
    return compile_flows(dual_stack().goal(), OFPORTS)


def ip6(pid: str) -> str:
    return V6[pid][1]


def solicit(fs: FlowSet, in_port: int, pid: str, target: str, **kw: str) -> dict | None:  # type: ignore[type-arg]
    """The NA the datapath sends back for `target` (checked against RFC 4861), or None."""
    src = kw.pop("src", ip6(pid))
    outs = simulate(fs, neighbour_solicitation(in_port, MAC[pid], src, target, **kw))
    answers = [p for port, p in outs if port == in_port and p["icmpv6_type"] == 136]
    assert len(answers) <= 1
    if not answers:
        return None
    na = answers[0]
    assert (na["eth_dst"], na["ipv6_dst"], na["ipv6_src"]) == (MAC[pid], src, target)
    assert na["ipv6_nd_target"] == target and na["ttl"] == 255  # hop limit kept
    assert na["nd_options_type"] == 2 and na["nd_tll"] == na["eth_src"]
    return na


def test_neighbour_solicitations_are_answered_in_the_datapath(fs: FlowSet) -> None:
    for target, owner in ((ip6(PA3), PA3), (ip6(PB1), PB1)):  # local port, port on host B
        na = solicit(fs, 1, PA1, target)
        assert na is not None
        assert na["nd_tll"] == MAC[owner] and na["nd_reserved"] == NA_SOLICITED_OVERRIDE


def test_the_gateway_answers_as_a_router_on_its_address_and_link_local(fs: FlowSet) -> None:
    for target in ("2001:db8:1::1", link_local(GW1V6)):
        na = solicit(fs, 1, PA1, target)
        assert na is not None
        assert na["nd_tll"] == GW1V6 and na["nd_reserved"] == NA_ROUTER_SOLICITED_OVERRIDE
    # and from its link-local address too (what a host that took the router from an RA uses)
    assert solicit(fs, 1, PA1, link_local(GW1V6), src=link_local(MAC[PA1])) is not None
    assert link_local("fa:16:3e:00:06:01") == "fe80::f816:3eff:fe00:601"


def test_solicitations_the_datapath_must_not_answer_are_flooded(fs: FlowSet) -> None:
    # a port asking for its own address, duplicate address detection, no link-layer option
    for kw in ({"target": ip6(PA1)}, {"target": ip6(PA3), "src": "::"},
               {"target": ip6(PB1), "sll": "00:00:00:00:00:00"}):  # fmt: skip
        target = kw.pop("target")
        assert solicit(fs, 1, PA1, target, **kw) is None
        outs = simulate(fs, neighbour_solicitation(1, MAC[PA1], kw.get("src", ip6(PA1)), target,
                                                   sll=kw.get("sll")))  # fmt: skip
        assert sorted(port for port, _ in outs) == [2, 4, VX]  # VPC1: flooded, as any multicast
    # unknown addresses are flooded within the VPC, never answered
    assert solicit(fs, 1, PA1, "2001:db8:1::99") is None


def test_vpcs_with_the_same_ipv6_cidr_are_isolated(fs: FlowSet) -> None:
    na = solicit(fs, 3, QA1, ip6(QB1))
    assert na is not None and na["nd_tll"] == MAC[QB1]  # VPC2's ::6, not VPC1's
    assert solicit(fs, 3, QA1, ip6(PA3)) is None  # VPC1's port
    assert solicit(fs, 3, QA1, ip6(PB2)) is None  # VPC1's routed neighbour
    na = solicit(fs, 3, QA1, "2001:db8:1::1")
    assert na is not None and na["nd_tll"] == GW3V6
    outs = simulate(fs, neighbour_solicitation(3, MAC[QA1], ip6(QA1), "2001:db8:1::99"))
    assert [(port, p["tunnel_id"]) for port, p in outs] == [(VX, 200)]


def test_gateways_answer_ping6(fs: FlowSet) -> None:
    for dst in ("2001:db8:1::1", link_local(GW1V6)):
        [(port, p)] = simulate(fs, ipv6(1, MAC[PA1], GW1V6, ip6(PA1), dst))
        assert port == 1
        assert (p["eth_src"], p["eth_dst"]) == (GW1V6, MAC[PA1])
        assert (p["ipv6_src"], p["ipv6_dst"], p["icmpv6_type"]) == (dst, ip6(PA1), 129)
    # another subnet's gateway on the same network answers too, as a router's interfaces do
    [(port, p)] = simulate(fs, ipv6(1, MAC[PA1], GW1V6, ip6(PA1), "2001:db8:2::1"))
    assert (port, p["ipv6_src"], p["icmpv6_type"]) == (1, "2001:db8:2::1", 129)


def test_ipv6_is_routed_between_the_routers_subnets_with_the_hop_limit_decremented(
    fs: FlowSet,
) -> None:
    [(port, p)] = simulate(fs, ipv6(1, MAC[PA1], GW1V6, ip6(PA1), ip6(PB2)))
    assert (port, p["tunnel_id"], p["tun_ipv4_dst"]) == (VX, 100, B_IP)
    assert (p["eth_src"], p["eth_dst"], p["ttl"]) == (GW2V6, MAC[PB2], 63)
    [(port, p)] = simulate(fs, ipv6(1, MAC[PA1], GW1V6, ip6(PA1), ip6(PA2)))
    assert (port, p["eth_dst"], p["ttl"]) == (2, MAC[PA2], 63)
    # to the gateway MAC but nowhere routable, or IPv6 to an IPv4 gateway's MAC: dropped
    assert simulate(fs, ipv6(1, MAC[PA1], GW1V6, ip6(PA1), "2001:db8:77::1")) == []
    # VPC2's subnet is on no router
    assert simulate(fs, ipv6(3, MAC[QA1], GW3V6, ip6(QA1), ip6(PB2))) == []


def test_ipv6_extra_route_via_a_next_hop_port() -> None:
    g = dual_stack().router(
        "r1",
        ["s1", "s2", "s1v6", "s2v6"],
        [{"destination": "2001:db8:99::/48", "nexthop": ip6(PB2)}],
    )
    fs = compile_flows(g.goal(), OFPORTS)
    [(port, p)] = simulate(fs, ipv6(1, MAC[PA1], GW1V6, ip6(PA1), "2001:db8:99:1::7"))
    assert (port, p["eth_dst"], p["eth_src"], p["ttl"]) == (VX, MAC[PB2], GW2V6, 63)


def test_ipv4_flows_are_unchanged_by_ipv6(fs: FlowSet) -> None:
    v4 = compile_flows(two_vpcs().goal(), OFPORTS)
    assert v4.flows <= fs.flows
    assert fs.conflicts == ()


def test_all_in_the_datapath_and_scoped_to_a_vpc(fs: FlowSet) -> None:
    controller = 0xFFFFFFFD
    assert not [f for f in fs.flows if Output(controller) in f.actions]
    for f in fs.flows:
        if f.table in (T_RESPOND, T_ND_REPLY, T_L3, T_L2) and f.match:
            assert dict(f.match)["metadata"] in (100, 200), f
        # the filter tables (port security, security groups) judge one port's packets: see
        # test_pipeline.py's test_every_flow_past_classification_is_scoped_to_a_vpc


def test_a_router_set_down_routes_nothing_and_its_gateways_answer_nothing() -> None:
    g = dual_stack()
    g.res["router"]["r1"]["admin_state_up"] = False
    fs = compile_flows(g.goal(), OFPORTS)
    # the gateway MAC is nobody's now: flooded like any unknown destination, never routed
    outs = simulate(fs, ipv6(1, MAC[PA1], GW1V6, ip6(PA1), ip6(PB2)))
    assert outs and all(p["eth_dst"] == GW1V6 and p["ttl"] == 64 for _, p in outs)
    outs = simulate(fs, ipv6(1, MAC[PA1], GW1V6, ip6(PA1), "2001:db8:1::1"))
    assert 1 not in [port for port, _ in outs]  # no echo reply
    assert solicit(fs, 1, PA1, "2001:db8:1::1") is None
    assert solicit(fs, 1, PA1, ip6(PB1)) is not None  # switching within a subnet goes on
    # IPv4 alike (its gateways are on the same router)
    vpc1 = [dict(f.match) for f in fs.flows if dict(f.match).get("metadata") == 100]
    assert not [m for m in vpc1 if m.get("ipv4_dst") == "10.0.0.1" or m.get("arp_tpa") == "10.0.0.1"]
    # VPC2's gateway is on no router: its subnet never had routing, its gateway MAC stays known
    assert solicit(fs, 3, QA1, "2001:db8:1::1") is not None
