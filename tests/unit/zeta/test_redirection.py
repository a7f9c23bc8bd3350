"""Redirection as the flow compiler and the Zeta functions see it: which VPCs go to the cluster,
the select group's buckets, the flood flow, and the direct-path flow of an inject."""

from __future__ import annotations

from typing import Any

from alcor.agent import zeta
from alcor.agent.compiler import compile_flows
from alcor.agent.ir import T_L2, T_L3, Group, Output, SetField, cookie_for
from alcor.agent.pipeline import deliver_actions
from tests.support.goals import FWD1, FWD2, ZETA_P1, ZETA_P2, zeta_scene

A, B = "node-a", "node-b"
P1, P2 = ZETA_P1, ZETA_P2
goal = zeta_scene
OFPORTS = {"vxlan0": 1, "tap" + P1[:11]: 5}


def flood(flows: Any, vni: int) -> Any:
    [f] = [f for f in flows if f.table == T_L2 and f.match == (("metadata", vni),)]
    return f


def test_a_ready_gateway_redirects_its_vpc_only() -> None:
    r = zeta.redirects(goal())
    assert list(r) == ["v1"]
    assert r["v1"].vni == 100 and r["v1"].oam_port == 8300
    assert r["v1"].destinations == (("172.31.255.9", "02:00:00:00:00:09"),)
    fs = compile_flows(goal(), OFPORTS).flows
    f = flood(fs, 100)
    # local ports still get the flood (through their ingress filter: zone 1, ofport 5);
    # remote hosts are reached through the cluster only
    assert f.actions == (*deliver_actions(5, 1), Group(r["v1"].group_id))
    assert all(not (isinstance(a, SetField) and a.field.startswith("tun")) for a in f.actions)
    # VPC 2 still floods to its member host directly
    assert SetField("tun_ipv4_dst", "172.31.255.2") in flood(fs, 200).actions


def test_known_neighbours_keep_their_direct_flows_and_arp_answers() -> None:
    with_gw = compile_flows(goal(), OFPORTS).flows
    without = compile_flows(goal(status="pending"), OFPORTS).flows
    mine = cookie_for("port", P2)
    assert {f for f in with_gw if f.cookie == mine} == {f for f in without if f.cookie == mine}
    assert {f for f in with_gw if f.cookie == mine}  # tunnel + ARP answer for P2


def test_not_ready_or_empty_gateways_do_not_redirect() -> None:
    for g in (
        goal(status="pending"),
        goal(status="failed"),
        goal(dests=[]),
        goal(vpc_id="v2"),
        goal(type="other"),
    ):
        assert zeta.redirects(g) == {}
        assert Group not in {type(a) for a in flood(compile_flows(g, OFPORTS).flows, 100).actions}


def test_buckets_follow_the_fwd_set() -> None:
    [(gid, buckets)] = zeta.groups(goal(dests=[FWD2, FWD1]), tun_ofport=1).items()
    assert gid == zeta.group_id_for("gw1")
    assert buckets == (
        (
            SetField("eth_dst", FWD1["mac"]),
            SetField("tunnel_id", 100),
            SetField("tun_ipv4_dst", FWD1["ip"]),
            Output(1),
        ),
        (
            SetField("eth_dst", FWD2["mac"]),
            SetField("tunnel_id", 100),
            SetField("tun_ipv4_dst", FWD2["ip"]),
            Output(1),
        ),
    )  # sorted by address, so equal FWD sets give equal groups
    assert zeta.groups(goal(), tun_ofport=None) == {}


def test_group_ids_are_stable_and_distinct() -> None:
    g = goal()
    g["vpc"]["v2"]["gateway_ids"] = ["gw2"]
    g["gateway"]["gw2"] = {**g["gateway"]["gw1"], "id": "gw2", "vpc_id": "v2"}
    r = zeta.redirects(g)
    assert r["v1"].group_id != r["v2"].group_id
    assert r == zeta.redirects(g)
    for x in r.values():
        assert zeta.GROUP_BASE <= x.group_id < zeta.GROUP_BASE + zeta.GROUP_SPAN


def test_the_incremental_compiler_follows_a_gateway_that_becomes_ready() -> None:
    from alcor.agent.compiler import FlowCompiler

    c = FlowCompiler()
    c.compile(goal(status="pending"), OFPORTS)
    before = flood(c.desired.values(), 100)
    c.compile(goal(), OFPORTS)
    after = flood(c.desired.values(), 100)
    assert before != after and isinstance(after.actions[-1], Group)


def test_direct_flow_of_an_inject() -> None:
    m = zeta.OamMessage(
        zeta.OP_INJECT,
        "10.0.0.5",
        "10.0.0.6",
        40000,
        80,
        6,
        100,
        "10.0.0.6",
        "172.31.255.2",
        "fa:16:3e:00:00:06",
        "52:54:00:00:00:02",
        7,
    )
    f = zeta.direct_flow(m, tun_ofport=1)
    assert f.table == T_L3 and f.priority == zeta.P_DIRECT and f.idle_timeout == 7
    assert dict(f.match) == {
        "metadata": 100,
        "eth_type": 0x0800,
        "ipv4_src": "10.0.0.5",
        "ipv4_dst": "10.0.0.6",
        "ip_proto": 6,
        "tcp_src": 40000,
        "tcp_dst": 80,
    }
    assert f.actions == (
        SetField("eth_dst", "fa:16:3e:00:00:06"),
        SetField("ipv4_dst", "10.0.0.6"),
        SetField("tunnel_id", 100),
        SetField("tun_ipv4_dst", "172.31.255.2"),
        Output(1),
    )
    # the reconciler reads back only its own tag: a direct flow is never "stale" to it
    assert f.cookie >> 48 == 0xA1C1 and (f.cookie >> 24) & 0xFFFFFF == 100
    assert f.cookie & zeta.DIRECT_VNI_MASK == zeta.vni_cookie(100)
    # the delete names the same flow
    d = zeta.delete_flow(zeta.OamMessage(zeta.OP_DELETE, "10.0.0.5", "10.0.0.6", 40000, 80, 6, 100))
    assert d.key == f.key and d.cookie == f.cookie


def test_ports_only_when_non_zero_and_only_for_port_protocols() -> None:
    def fields(sport: int, dport: int, proto: int) -> dict[str, Any]:
        m = zeta.OamMessage(zeta.OP_DELETE, "10.0.0.5", "10.0.0.6", sport, dport, proto, 100)
        return dict(zeta.direct_match(m))

    assert "udp_src" not in fields(0, 53, 17) and fields(0, 53, 17)["udp_dst"] == 53
    icmp = fields(7, 9, 1)
    assert icmp["ip_proto"] == 1 and not {"tcp_src", "udp_src", "tcp_dst"} & set(icmp)
    assert "ip_proto" not in fields(0, 0, 0)
    assert (
        zeta.direct_flow(
            zeta.OamMessage(
                0,
                "10.0.0.5",
                "10.0.0.6",
                0,
                0,
                1,
                100,
                "10.0.0.6",
                "1.1.1.1",
                "fa:16:3e:00:00:06",
                "52:54:00:00:00:02",
                0,
            ),
            1,
        ).idle_timeout
        == zeta.DEFAULT_IDLE_TIMEOUT
    )
