"""The pipeline rules, checked by running packets through the compiled flows (tests/support/flowsim)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alcor.agent.compiler import FlowSet, compile_flows
from alcor.agent.ir import (
    COOKIE_TAG,
    COOKIE_TAG_MASK,
    OFPP_IN_PORT,
    T_ARP_PROXY,
    T_CLASSIFY,
    T_EGRESS_CT,
    T_EGRESS_REMOTE,
    T_EGRESS_RULES,
    T_INGRESS_REMOTE,
    T_INGRESS_RULES,
    T_L2,
    T_L3,
    T_RESPOND,
    Output,
    cookie_for,
    tap_name,
)
from tests.support.flowsim import arp_request, ipv4, simulate
from tests.support.goals import (
    B_IP,
    GW1,
    GW2,
    GW3,
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
    A,
    B,
    GoalBuilder,
    two_vpcs,
)


@pytest.fixture
def fs() -> FlowSet:
    return compile_flows(two_vpcs().goal(), OFPORTS)


def ask(fs: FlowSet, in_port: int, mac: str, spa: str, tpa: str) -> str | None:
    """The MAC the datapath answers for tpa, or None when nobody answers from the datapath."""
    outs = simulate(fs, arp_request(in_port, mac, spa, tpa))
    replies = [p for port, p in outs if port == in_port and p["arp_op"] == 2]
    assert len(replies) <= 1
    if not replies:
        return None
    r = replies[0]
    assert (r["eth_dst"], r["arp_tha"], r["arp_tpa"]) == (mac, mac, spa)
    assert r["arp_spa"] == tpa and r["eth_src"] == r["arp_sha"]
    return str(r["arp_sha"])


def test_arp_answered_for_local_port_l2_neighbour_and_gateway(fs: FlowSet) -> None:
    assert ask(fs, 1, MAC[PA1], "10.0.0.5", "10.0.0.7") == MAC[PA3]  # local port
    assert ask(fs, 1, MAC[PA1], "10.0.0.5", "10.0.0.6") == MAC[PB1]  # L2 neighbour on host B
    assert ask(fs, 1, MAC[PA1], "10.0.0.5", "10.0.0.1") == GW1  # gateway IP


def test_arp_for_l3_neighbour_is_answered_with_the_gateway_mac(fs: FlowSet) -> None:
    # 10.0.1.6 sits in s2, on the router with s1: the asker must send through its gateway.
    assert ask(fs, 1, MAC[PA1], "10.0.0.5", "10.0.1.6") == GW1
    assert ask(fs, 2, MAC[PA2], "10.0.1.5", "10.0.0.6") == GW2
    # while a same-subnet asker gets the port's own MAC
    assert ask(fs, 2, MAC[PA2], "10.0.1.5", "10.0.1.6") == MAC[PB2]


def test_proxy_arp_answers_only_addresses_a_port_holds(fs: FlowSet) -> None:
    # one flow per pair of routed subnets rewrites the port's reply; an address of s2 that no
    # port holds gets no answer from it (flooded, as in s2 itself), s2's gateway its own MAC
    assert ask(fs, 1, MAC[PA1], "10.0.0.5", "10.0.1.99") is None
    assert ask(fs, 2, MAC[PA2], "10.0.1.5", "10.0.1.99") is None
    assert ask(fs, 1, MAC[PA1], "10.0.0.5", "10.0.1.1") == GW2
    pairs = [f for f in fs.flows if f.table == T_ARP_PROXY and f.match]
    assert len(pairs) == 2  # s1 -> s2 and s2 -> s1, whatever the number of ports


def test_proxy_arp_of_two_routers_on_the_same_subnets_is_one_flow_per_pair() -> None:
    # the pair's flow is subnet A's (its gateway answers), not a router's: a second router
    # joining the same subnets wants the same flow, no conflict
    fs = compile_flows(two_vpcs().router("r2", ["s1", "s2"]).goal(), OFPORTS)
    assert fs.conflicts == ()
    pairs = [f for f in fs.flows if f.table == T_ARP_PROXY and f.match]
    assert sorted(fs.owners[f.cookie] for f in pairs) == [("subnet", "s1"), ("subnet", "s2")]
    assert ask(fs, 1, MAC[PA1], "10.0.0.5", "10.0.1.6") == GW1


def test_proxy_arp_between_vpcs_joined_by_a_router() -> None:
    # r2 joins s2 (VPC1) and t1 (VPC2): the asker's VPC holds no responder flow for the other
    # VPC's ports, so each such address has a proxy flow of its own in RESPOND
    g = two_vpcs().router("r2", ["s2", "t1"])
    fs = compile_flows(g.goal(), OFPORTS)
    assert ask(fs, 3, MAC[QA1], "10.0.0.5", "10.0.1.6") == GW3
    assert ask(fs, 2, MAC[PA2], "10.0.1.5", "10.0.0.6") == GW2
    assert ask(fs, 3, MAC[QA1], "10.0.0.5", "10.0.1.99") is None
    # and within VPC1 the pair flows still answer for r1's subnets
    assert ask(fs, 1, MAC[PA1], "10.0.0.5", "10.0.1.6") == GW1


def test_port_asking_for_its_own_ip_is_not_answered_but_flooded(fs: FlowSet) -> None:
    assert ask(fs, 1, MAC[PA1], "10.0.0.5", "10.0.0.5") is None
    outs = simulate(fs, arp_request(1, MAC[PA1], "0.0.0.0", "10.0.0.5"))
    assert {port for port, _ in outs} == {2, 4, VX}


def test_unknown_ip_is_flooded_in_the_vpc_only(fs: FlowSet) -> None:
    outs = simulate(fs, arp_request(1, MAC[PA1], "10.0.0.5", "10.0.0.99"))
    assert sorted(port for port, _ in outs) == [2, 4, VX]
    tunnelled = [p for port, p in outs if port == VX]
    assert [(p["tunnel_id"], p["tun_ipv4_dst"]) for p in tunnelled] == [(100, B_IP)]
    assert all(p["arp_op"] == 1 for _, p in outs)


def test_l2_local_and_across_hosts(fs: FlowSet) -> None:
    outs = simulate(fs, ipv4(1, MAC[PA1], MAC[PA3], "10.0.0.5", "10.0.0.7"))
    assert [port for port, _ in outs] == [4]
    outs = simulate(fs, ipv4(1, MAC[PA1], MAC[PB1], "10.0.0.5", "10.0.0.6"))
    assert [(port, p["tunnel_id"], p["tun_ipv4_dst"]) for port, p in outs] == [(VX, 100, B_IP)]
    assert outs[0][1]["ttl"] == 64


def test_distributed_routing_rewrites_macs_and_decrements_ttl(fs: FlowSet) -> None:
    outs = simulate(fs, ipv4(1, MAC[PA1], GW1, "10.0.0.5", "10.0.1.6"))
    [(port, p)] = outs
    assert (port, p["tunnel_id"], p["tun_ipv4_dst"]) == (VX, 100, B_IP)
    assert (p["eth_src"], p["eth_dst"], p["ttl"]) == (GW2, MAC[PB2], 63)
    [(port, p)] = simulate(fs, ipv4(1, MAC[PA1], GW1, "10.0.0.5", "10.0.1.5"))
    assert (port, p["eth_dst"], p["ttl"]) == (2, MAC[PA2], 63)
    # to the gateway MAC but nowhere routable: dropped, not flooded
    assert simulate(fs, ipv4(1, MAC[PA1], GW1, "10.0.0.5", "192.0.2.1")) == []


def test_gateway_answers_ping(fs: FlowSet) -> None:
    [(port, p)] = simulate(fs, ipv4(1, MAC[PA1], GW1, "10.0.0.5", "10.0.0.1"))
    assert port == 1
    assert (p["eth_src"], p["eth_dst"]) == (GW1, MAC[PA1])
    assert (p["ipv4_src"], p["ipv4_dst"], p["icmpv4_type"]) == ("10.0.0.1", "10.0.0.5", 0)


def test_tunnelled_traffic_is_classified_by_vni(fs: FlowSet) -> None:
    pkt = ipv4(VX, MAC[PB1], MAC[PA1], "10.0.0.6", "10.0.0.5", tunnel_id=100)
    assert [port for port, _ in simulate(fs, pkt)] == [1]
    pkt = ipv4(VX, MAC[QB1], MAC[QA1], "10.0.0.6", "10.0.0.5", tunnel_id=200)
    assert [port for port, _ in simulate(fs, pkt)] == [3]
    # VPC1's VNI cannot reach VPC2's port, an unknown VNI reaches nothing
    pkt = ipv4(VX, MAC[PB1], MAC[QA1], "10.0.0.6", "10.0.0.5", tunnel_id=100)
    assert 3 not in [port for port, _ in simulate(fs, pkt)]
    pkt = ipv4(VX, MAC[PB1], MAC[PA1], "10.0.0.6", "10.0.0.5", tunnel_id=999)
    assert simulate(fs, pkt) == []
    # tunnelled broadcast goes to local ports only (never back into the tunnel)
    outs = simulate(fs, arp_request(VX, MAC[PB1], "10.0.0.6", "10.0.0.99", tunnel_id=100))
    assert sorted(port for port, _ in outs) == [1, 2, 4]


def test_vpcs_with_the_same_cidr_are_isolated(fs: FlowSet) -> None:
    assert ask(fs, 3, MAC[QA1], "10.0.0.5", "10.0.0.6") == MAC[QB1]
    assert ask(fs, 3, MAC[QA1], "10.0.0.5", "10.0.0.7") is None  # VPC1's local port
    assert ask(fs, 3, MAC[QA1], "10.0.0.5", "10.0.0.1") == GW3
    assert ask(fs, 3, MAC[QA1], "10.0.0.5", "10.0.1.6") is None  # VPC1's L3 neighbour
    outs = simulate(fs, arp_request(3, MAC[QA1], "10.0.0.5", "10.0.0.99"))
    assert [(port, p["tunnel_id"]) for port, p in outs] == [(VX, 200)]
    # VPC1's MAC is unknown in VPC2: flooded within VPC2 (tunnel only), never out port 1
    outs = simulate(fs, ipv4(3, MAC[QA1], MAC[PA1], "10.0.0.5", "10.0.0.5"))
    assert [(port, p["tunnel_id"]) for port, p in outs] == [(VX, 200)]
    outs = simulate(fs, ipv4(1, MAC[PA1], MAC[QA1], "10.0.0.5", "10.0.0.5"))
    assert 3 not in [port for port, _ in outs]


def test_nothing_goes_to_the_controller(fs: FlowSet) -> None:
    controller = 0xFFFFFFFD
    assert not [f for f in fs.flows if Output(controller) in f.actions]


def test_port_without_interface_has_no_flows_until_it_appears() -> None:
    ofports = {k: v for k, v in OFPORTS.items() if k != tap_name(PA3)}
    fs = compile_flows(two_vpcs().goal(), ofports)
    assert not [f for f in fs.flows if f.cookie == cookie_for("port", PA3)]
    assert fs.port_problems[PA3] == f"interface {tap_name(PA3)} not on the bridge"
    assert ask(fs, 1, MAC[PA1], "10.0.0.5", "10.0.0.7") is None
    fs = compile_flows(two_vpcs().goal(), OFPORTS)
    assert fs.port_problems[PA3] == ""
    assert ask(fs, 1, MAC[PA1], "10.0.0.5", "10.0.0.7") == MAC[PA3]


def test_deleted_port_takes_its_flows_with_it() -> None:
    before = compile_flows(two_vpcs().goal(), OFPORTS)
    after = compile_flows(two_vpcs().remove("port", PB1).goal(), OFPORTS)
    gone = before.flows - after.flows
    assert {f.cookie for f in gone if f.cookie != cookie_for("vpc", "vpc1")} == {
        cookie_for("port", PB1)
    }
    assert not [f for f in after.flows if f.cookie == cookie_for("port", PB1)]


def test_admin_down_port_gets_no_ingress() -> None:
    g = two_vpcs()
    g.res["port"][PA1]["admin_state_up"] = False
    fs = compile_flows(g.goal(), OFPORTS)
    assert fs.port_problems[PA1] == "admin_state_up is false"
    assert simulate(fs, arp_request(1, MAC[PA1], "10.0.0.5", "10.0.0.7")) == []


def test_router_interface_port_is_a_gateway_not_a_vm() -> None:
    g = two_vpcs()
    g.res["subnet"]["s1"]["gateway_mac"] = None
    g.port("rif1", "vpc1", "s1", "10.0.0.1", "fa:16:3e:99:99:01", node=A)
    g.res["port"]["rif1"]["device_owner"] = "network:router_interface"
    fs = compile_flows(g.goal(), OFPORTS)
    assert "rif1" not in fs.local_ports
    assert ask(fs, 1, MAC[PA1], "10.0.0.5", "10.0.0.1") == "fa:16:3e:99:99:01"


def test_static_route_via_a_next_hop_port() -> None:
    g = two_vpcs().router(
        "r1", ["s1", "s2"], [{"destination": "192.168.0.0/16", "nexthop": "10.0.1.6"}]
    )
    fs = compile_flows(g.goal(), OFPORTS)
    [(port, p)] = simulate(fs, ipv4(1, MAC[PA1], GW1, "10.0.0.5", "192.168.3.4"))
    assert (port, p["eth_dst"], p["eth_src"], p["ttl"]) == (VX, MAC[PB2], GW2, 63)


def test_without_a_tunnel_port_only_local_traffic_is_compiled() -> None:
    ofports = {k: v for k, v in OFPORTS.items() if k != "vxlan0"}
    fs = compile_flows(two_vpcs().goal(), ofports)
    assert ask(fs, 1, MAC[PA1], "10.0.0.5", "10.0.0.6") is None
    assert ask(fs, 1, MAC[PA1], "10.0.0.5", "10.0.0.7") == MAC[PA3]


def test_cookies_are_ours_and_deterministic(fs: FlowSet) -> None:
    assert all(f.cookie & COOKIE_TAG_MASK == COOKIE_TAG for f in fs.flows)
    again = compile_flows(two_vpcs().goal(), OFPORTS)
    assert again.flows == fs.flows
    assert len({f.key for f in fs.flows}) == len(fs.flows)
    assert fs.conflicts == ()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["vpc1", "vpc2"]),
            st.sampled_from([A, B]),
            st.integers(min_value=2, max_value=250),
        ),
        max_size=12,
        unique_by=lambda t: (t[0], t[2]),
    )
)
def test_every_flow_past_classification_is_scoped_to_a_vpc(
    ports: list[tuple[str, str, int]],
) -> None:
    g = GoalBuilder(A).node(B, B_IP).vpc("vpc1", 100).vpc("vpc2", 200)
    g.subnet("s-vpc1", "vpc1", "10.0.0.0/24", "10.0.0.1", GW1)
    g.subnet("s-vpc2", "vpc2", "10.0.0.0/24", "10.0.0.1", GW3)
    ofports = {"vxlan0": VX}
    for i, (vpc, node, host) in enumerate(ports):
        pid = f"{vpc}-{host:04d}-port"
        g.port(pid, vpc, f"s-{vpc}", f"10.0.0.{host}", f"fa:16:3e:00:{i:02x}:{host:02x}", node=node)
        ofports[tap_name(pid)] = 10 + i
    fs = compile_flows(g.goal(), ofports)
    assert fs.conflicts == ()
    for f in fs.flows:
        if f.table == T_ARP_PROXY:  # a reply built in RESPOND goes back where it came from
            assert [a for a in f.actions if isinstance(a, Output)] == [Output(OFPP_IN_PORT)]
        if f.table in (T_RESPOND, T_ARP_PROXY, T_L3, T_L2) and f.match:
            assert dict(f.match)["metadata"] in (100, 200)
        elif f.table not in (T_CLASSIFY, T_RESPOND, T_ARP_PROXY, T_L3, T_L2):
            # The filter tables judge one port's packets: they go on to RESPOND (egress) or
            # out to the port L2 chose (REG_PORT, ingress), never anywhere a VPC could not.
            assert f.goto_table in (
                None, T_EGRESS_CT, T_EGRESS_REMOTE, T_EGRESS_RULES, T_RESPOND, T_INGRESS_REMOTE,
                T_INGRESS_RULES,
            )  # fmt: skip
            assert not [a for a in f.actions if isinstance(a, Output)]


def test_allowed_address_pairs() -> None:
    g = two_vpcs()
    g.res["port"][PA1]["allowed_address_pairs"] = [
        {"ip_address": "10.0.0.200", "mac_address": "fa:16:3e:aa:aa:aa"},  # a VIP with its MAC
        {"ip_address": "10.0.0.0/28"},  # a prefix: nothing to answer
    ]
    fs = compile_flows(g.goal(), OFPORTS)
    assert ask(fs, 4, MAC[PA3], "10.0.0.7", "10.0.0.200") == "fa:16:3e:aa:aa:aa"
    assert ask(fs, 4, MAC[PA3], "10.0.0.7", "10.0.0.0") is None
    outs = simulate(fs, ipv4(4, MAC[PA3], "fa:16:3e:aa:aa:aa", "10.0.0.7", "10.0.0.200"))
    assert [port for port, _ in outs] == [1]
    # and the VIP is routed to from the other subnet
    [(port, p)] = simulate(fs, ipv4(2, MAC[PA2], GW2, "10.0.1.5", "10.0.0.200"))
    assert (port, p["eth_dst"]) == (1, "fa:16:3e:aa:aa:aa")


def test_a_flood_too_long_for_one_message_goes_on_in_parts() -> None:
    """1,500 filtered local ports in one VPC: 4,500 actions, more than 64 KiB in one flow-mod."""
    from alcor.agent import fastcodec
    from alcor.agent.ir import T_FLOOD

    g = GoalBuilder(A).node(A, "172.31.255.1").node(B, B_IP).vpc("vpc1", 100)
    g.subnet("s1", "vpc1", "10.0.0.0/16", "10.0.0.1", GW1)
    ofports = {"vxlan0": VX}
    for i in range(1500):
        pid = f"f{i:04d}000-0000"
        g.port(
            pid,
            "vpc1",
            "s1",
            f"10.0.{i // 250}.{i % 250 + 2}",
            f"fa:16:3e:f0:{i >> 8:02x}:{i & 255:02x}",
            node=A,
        )
        ofports[tap_name(pid)] = 10 + i
    g.port("remote00-0000", "vpc1", "s1", "10.0.99.9", "fa:16:3e:99:00:09", node=B)
    fs = compile_flows(g.goal(), ofports)
    assert [f for f in fs.flows if f.table == T_FLOOD and f.actions]
    assert max(len(fastcodec.encode_add(f, 1)) for f in fs.flows) < 65535
    arp = arp_request(10, "fa:16:3e:f0:00:00", "10.0.0.2", "10.0.200.200")
    assert {p for p, _ in simulate(fs, arp)} == {*range(11, 1510), VX}  # everyone but the sender
