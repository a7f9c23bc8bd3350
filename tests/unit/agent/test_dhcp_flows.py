"""The DHCP flows: a local port on a DHCP subnet sends its requests to the agent only, through its
own meter; everything else is forwarded as before. Checked by running packets through the flows."""

from __future__ import annotations

from alcor.agent import leases
from alcor.agent.compiler import FlowCompiler, compile_flows
from alcor.agent.config import DhcpConfig
from alcor.agent.ir import OFPP_CONTROLLER, P_DHCP, T_CLASSIFY, Flow
from tests.support.flowsim import simulate
from tests.support.goals import MAC, OFPORTS, PA1, PA2, PA3, PB1, VX, GoalBuilder, two_vpcs


def with_dhcp(g: GoalBuilder, *subnets: str) -> GoalBuilder:
    for sid in subnets:
        g.res["subnet"][sid]["enable_dhcp"] = True
    return g


def is_dhcp(f: Flow) -> bool:
    return f.table == T_CLASSIFY and f.priority == P_DHCP


def discover(in_port: int, mac: str) -> dict[str, object]:
    return {
        "in_port": in_port, "eth_src": mac, "eth_dst": "ff:ff:ff:ff:ff:ff", "eth_type": 0x0800,
        "ipv4_src": "0.0.0.0", "ipv4_dst": "255.255.255.255", "ip_proto": 17,
        "udp_src": 68, "udp_dst": 67,
    }  # fmt: skip


def test_requests_of_local_ports_on_dhcp_subnets_reach_the_agent_only() -> None:
    fs = compile_flows(with_dhcp(two_vpcs(), "s1").goal(), OFPORTS)
    dhcp_flows = {f for f in fs.flows if is_dhcp(f)}
    # PA1 and PA3 are local on s1; PA2 is on s2 (no DHCP), PB1 on another host
    assert {dict(f.match)["in_port"] for f in dhcp_flows} == {1, 4}
    for f in dhcp_flows:
        port = dict(f.match)["in_port"]
        assert f.meter == leases.meter_id(int(port))
        assert f.actions == (type(f.actions[0])(OFPP_CONTROLLER),)
    [(port, sent)] = simulate(fs, discover(1, MAC[PA1]))  # to the agent, and nowhere else
    assert port == OFPP_CONTROLLER and sent.items() >= discover(1, MAC[PA1]).items()
    # a renewal is unicast to the gateway: the agent's too
    renew = discover(4, MAC[PA3]) | {"eth_dst": "fa:16:3e:00:00:01", "ipv4_dst": "10.0.0.1"}
    assert [port for port, _ in simulate(fs, renew)] == [OFPP_CONTROLLER]


def test_dhcp_off_is_forwarded_like_any_broadcast() -> None:
    fs = compile_flows(with_dhcp(two_vpcs(), "s1").goal(), OFPORTS)
    ports = sorted(port for port, _ in simulate(fs, discover(2, MAC[PA2])))
    assert OFPP_CONTROLLER not in ports and 1 in ports and VX in ports  # flooded in the VPC
    assert not [f for f in compile_flows(two_vpcs().goal(), OFPORTS).flows if is_dhcp(f)]


def test_meters_follow_the_flows_incrementally() -> None:
    c = FlowCompiler()
    g = with_dhcp(two_vpcs(), "s1")
    c.compile(g.goal(), OFPORTS)
    assert set(c.meters) == {leases.meter_id(1), leases.meter_id(4)}
    c.compile(g.remove("port", PA3).goal(), OFPORTS)
    assert set(c.meters) == {leases.meter_id(1)}
    down = g.goal()
    down["port"][PA1]["admin_state_up"] = False  # type: ignore[index]
    c.compile(down, OFPORTS)
    assert c.meters == {}
    c.compile(with_dhcp(two_vpcs(), "s1", "s2").goal(), OFPORTS)  # a subnet changed: recompute
    assert set(c.meters) == {leases.meter_id(n) for n in (1, 2, 4)}
    fresh = FlowCompiler()
    fresh.compile(with_dhcp(two_vpcs(), "s1", "s2").goal(), OFPORTS)
    assert c.desired == fresh.desired and c.meters == fresh.meters
    c.compile(two_vpcs().goal(), OFPORTS)
    assert c.meters == {}


def test_the_compiler_and_the_leases_agree_on_who_is_served() -> None:
    g = with_dhcp(two_vpcs(), "s1").goal()
    punted = {
        pid
        for pid, tap in compile_flows(g, OFPORTS).local_ports.items()
        if any(
            is_dhcp(f) and dict(f.match)["in_port"] == OFPORTS[tap]
            for f in compile_flows(g, OFPORTS).flows
        )
    }
    served = {pid for pid in g["port"] if leases.lease_for(g, pid, DhcpConfig())}
    assert punted == served == {PA1, PA3}
    assert PB1 not in served
