"""One host, one agent, a real ovs-vswitchd: the pipeline under ofproto/trace, and the channel's
and reconciler's behaviour across reconnects, errors, port changes and paged read-back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from alcor.agent import reconcile
from alcor.agent.bridge import BridgeConfig, ensure_bridge
from alcor.agent.datapath import Datapath, DatapathConfig
from alcor.agent.ir import (
    COOKIE_TAG,
    COOKIE_TAG_MASK,
    ETH_ARP,
    T_RESPOND,
    Flow,
    Output,
    cookie_for,
    match,
    tap_name,
)
from tests.support.goals import GW1, MAC, PA1, PA2, PA3, PB1, PB2, QA1, QB1, two_vpcs
from tests.support.ovs import OvsSandbox, trace_outcome
from tests.support.wait import eventually

pytestmark = pytest.mark.ovs

PORTS = (PA1, PA2, PA3, QA1)


class Host:
    def __init__(self, ovs: OvsSandbox, dp: Datapath, statuses: list[dict]) -> None:
        self.ovs, self.dp, self.status_events = ovs, dp, statuses

    def add_tap(self, port_id: str) -> int:
        name = tap_name(port_id)
        self.ovs.vsctl("add-port", "br-int", name, "--", "set", "interface", name, "type=internal")
        return self.ovs.ofport(name)

    def dp_port(self, port_id: str) -> int:
        return self.ovs.dp_port(tap_name(port_id))

    def trace(self, flow: str) -> tuple[str, str]:
        """(final flow, datapath actions) of a packet traced through br-int, across the
        recirculations conntrack makes (each traced as a new connection): the last pass's
        final flow, and every pass's actions but the conntrack ones."""
        return trace_outcome(self.ovs.trace("br-int", flow))


@pytest_asyncio.fixture
async def host(ovs_sandbox: OvsSandbox, unused_tcp_port: int) -> AsyncIterator[Host]:
    """An agent (Datapath) for a private OVS; ovs_sandbox (tests/support/ovs.py) cleans up."""
    events: list[dict] = []
    dp = Datapath(
        DatapathConfig(
            node_id="node-a",
            listen=f"tcp:127.0.0.1:{unused_tcp_port}",
            netns=ovs_sandbox.netns.name,
            ovs_db=ovs_sandbox.db,
        ),
        on_status=events.append,
    )
    await dp.start()
    try:
        await dp.wait_connected(10)
        yield Host(ovs_sandbox, dp, events)
    finally:
        await dp.stop()


async def with_ports(h: Host, ports: tuple[str, ...] = PORTS) -> dict[str, int]:
    ofports = {p: h.add_tap(p) for p in ports}
    await eventually(lambda: h.dp.switch and all(tap_name(p) in h.dp.switch.ports for p in ports))
    statuses = await h.dp.apply(two_vpcs().goal())
    assert all(statuses[p] == ("ACTIVE", "") for p in ports), statuses
    return ofports


def arp(in_port: int, mac: str, spa: str, tpa: str) -> str:
    return (
        f"in_port={in_port},arp,dl_src={mac},dl_dst=ff:ff:ff:ff:ff:ff,arp_op=1,"
        f"arp_spa={spa},arp_tpa={tpa},arp_sha={mac}"
    )


async def test_trace_arp_responder(host: Host) -> None:
    of = await with_ports(host)
    p1 = of[PA1]
    for tpa, mac in (
        ("10.0.0.7", MAC[PA3]),  # local port
        ("10.0.0.6", MAC[PB1]),  # L2 neighbour
        ("10.0.1.6", GW1),  # L3 neighbour, answered with the router's MAC
        ("10.0.0.1", GW1),  # gateway
    ):
        final, actions = host.trace(arp(p1, MAC[PA1], "10.0.0.5", tpa))
        assert f"arp_op=2,arp_sha={mac},arp_tha={MAC[PA1]}" in final, (tpa, final)
        assert f"arp_spa={tpa},arp_tpa=10.0.0.5" in final
        assert f"dl_src={mac},dl_dst={MAC[PA1]}" in final
        # straight back out of the asking port, never to the controller
        assert actions.split(",")[-1] == str(host.dp_port(PA1)) and "userspace" not in actions
    # own IP: no answer, flooded like any broadcast
    final, actions = host.trace(arp(p1, MAC[PA1], "10.0.0.5", "10.0.0.5"))
    assert "arp_op=1" in final and str(host.dp_port(PA3)) in actions.split(",")


async def test_trace_l2_l3_and_isolation(host: Host) -> None:
    of = await with_ports(host)
    vx = host.ovs.ofport("vxlan0")
    ip = f"in_port={of[PA1]},icmp,dl_src={MAC[PA1]},nw_src=10.0.0.5,nw_ttl=64"
    _, actions = host.trace(f"{ip},dl_dst={MAC[PA3]},nw_dst=10.0.0.7")
    assert actions == str(host.dp_port(PA3))
    out = host.ovs.trace("br-int", f"{ip},dl_dst={MAC[PB1]},nw_dst=10.0.0.6")
    assert "set_field:0x64->tun_id" in out and "set_field:172.31.255.2->tun_dst" in out
    assert f"output:{vx}" in out and "tun_dst=172.31.255.2" in out
    # routed on this host: MACs rewritten, TTL decremented, then to the tunnel
    out = host.ovs.trace("br-int", f"{ip},dl_dst={GW1},nw_dst=10.0.1.6")
    assert "dec_ttl" in out and f"set_field:{MAC[PB2]}->eth_dst" in out
    assert f"output:{vx}" in out
    _, actions = host.trace(f"{ip},dl_dst={GW1},nw_dst=10.0.1.5")
    assert actions.split(",")[-1] == str(host.dp_port(PA2)) and "ttl=63" in actions
    # VPC2's port with the same IP as PA1 hears only VPC2's answers
    final, _ = host.trace(arp(of[QA1], MAC[QA1], "10.0.0.5", "10.0.0.6"))
    assert f"arp_sha={MAC[QB1]}" in final
    final, actions = host.trace(arp(of[QA1], MAC[QA1], "10.0.0.5", "10.0.0.7"))
    assert "arp_op=1" in final and str(host.dp_port(PA3)) not in actions.split(",")
    # a VNI nobody uses reaches nothing
    _, actions = host.trace(f"in_port={vx},tun_id=0x999,ip,dl_dst={MAC[PA1]}")
    assert actions == "drop"


async def test_reconnect_with_nothing_changed_sends_no_flow_mods(host: Host) -> None:
    await with_ports(host)
    installed = len(host.ovs.dump_flows())
    full = host.dp.counters["full"]
    assert host.dp.switch is not None
    await host.dp.switch.close()  # the switch comes back on its own (max_backoff 1 s)
    await eventually(lambda: host.dp.counters["full"] > full, timeout=10)
    report = host.dp.last_report
    assert report is not None and report.full
    assert (report.read_back, report.adds, report.deletes) == (installed, 0, 0)


async def test_drift_is_repaired_on_reconnect_and_foreign_flows_are_kept(host: Host) -> None:
    await with_ports(host)
    want = sorted(host.ovs.dump_flows())
    sw = host.dp.switch
    assert sw is not None
    await sw.close()
    # while the agent is away: one of our flows lost, a stale one of ours, and an operator's
    host.ovs.ofctl(
        "del-flows",
        "br-int",
        "--strict",
        "table=10,priority=100,arp,metadata=100,arp_op=1,arp_tpa=10.0.0.6",
    )
    host.ovs.ofctl(
        "add-flow",
        "br-int",
        f"cookie={COOKIE_TAG | 7:#x},table=30,priority=7,dl_dst=02:00:00:00:00:07,actions=drop",
    )
    host.ovs.ofctl(
        "add-flow",
        "br-int",
        "cookie=0x42,table=30,priority=5,dl_dst=02:00:00:00:00:05,actions=drop",
    )
    full = host.dp.counters["full"]
    await eventually(lambda: host.dp.counters["full"] > full, timeout=10)
    report = host.dp.last_report
    assert report is not None and (report.adds, report.deletes) == (1, 1)
    now = host.ovs.dump_flows()
    assert sorted(f for f in now if "cookie=0x42" not in f) == want
    assert [f for f in now if "cookie=0x42" in f]


async def test_rejected_flow_mod_is_reported_with_its_flow(host: Host) -> None:
    sw = host.dp.switch
    assert sw is not None
    good = Flow(
        T_RESPOND,
        5,
        match(eth_type=ETH_ARP, arp_tpa="10.9.9.9"),
        (Output(1),),
        cookie=COOKIE_TAG | 1,
    )
    bad = Flow(T_RESPOND, 5, match(arp_tpa="10.9.9.8"), (Output(1),), cookie=COOKIE_TAG | 2)
    errors = await sw.flow_mods([good, bad])
    assert [e.flow for e in errors] == [bad]
    assert "OFPET_BAD_MATCH" in errors[0].error
    back = await sw.flow_stats(COOKIE_TAG | 1, 0xFFFFFFFFFFFFFFFF)
    assert back == [good]


async def test_port_appearing_later_turns_active(host: Host) -> None:
    statuses = await host.dp.apply(two_vpcs().goal())
    assert statuses[PA1] == ("ERROR", f"interface {tap_name(PA1)} not on the bridge")
    host.add_tap(PA1)
    await eventually(lambda: any(e.get(PA1) == ("ACTIVE", "") for e in host.status_events))
    assert [f for f in host.ovs.dump_flows() if f"{cookie_for('port', PA1):#x}" in f]
    host.ovs.vsctl("del-port", "br-int", tap_name(PA1))
    await eventually(lambda: host.status_events[-1].get(PA1, ("",))[0] == "ERROR")
    assert not [
        f for f in host.ovs.dump_flows() if f"{cookie_for('port', PA1):#x}," in f and "in_port" in f
    ]


async def test_bridge_setup_is_idempotent(host: Host) -> None:
    cfg = BridgeConfig(controller=host.dp.controller_target(), db=host.ovs.db)
    assert await ensure_bridge(cfg) is False
    vs = host.ovs.vsctl
    assert vs("get", "bridge", "br-int", "fail_mode").strip() == "secure"
    assert vs("get", "bridge", "br-int", "datapath_type").strip() == "netdev"
    assert "OpenFlow13" in vs("get", "bridge", "br-int", "protocols")
    assert vs("get", "interface", "vxlan0", "type").strip() == "vxlan"
    assert vs("get-controller", "br-int").strip() == host.dp.controller_target()


async def test_flow_stats_read_back_spans_pages(host: Host) -> None:
    sw = host.dp.switch
    assert sw is not None
    flows = [
        Flow(
            T_RESPOND,
            50,
            match(eth_type=ETH_ARP, arp_tpa=f"10.8.{i // 250}.{i % 250 + 1}"),
            (Output(1),),
            cookie=COOKIE_TAG | 3,
        )
        for i in range(3000)
    ]
    assert await sw.flow_mods(flows) == []
    back = await sw.flow_stats(COOKIE_TAG, COOKIE_TAG_MASK)
    assert set(back) == set(flows)  # ~600 kB: many multipart pages


async def test_packet_out_through_the_pipeline_and_packet_in(host: Host) -> None:
    from os_ken.lib.packet import arp as arp_pkt
    from os_ken.lib.packet import ethernet, packet
    from os_ken.ofproto import ofproto_v1_3 as ofp
    from os_ken.ofproto import ofproto_v1_3_parser as parser

    of = await with_ports(host)
    sw = host.dp.switch
    assert sw is not None
    # an ARP request for an unknown IP, sent from PA1 into the pipeline, floods; one that the
    # responder answers goes back to PA1. Send both to the controller instead, to see them.
    to_us = Flow(
        T_RESPOND,
        1000,
        match(eth_type=ETH_ARP, arp_tpa="10.0.0.99"),
        (Output(ofp.OFPP_CONTROLLER),),
        cookie=COOKIE_TAG | 9,
    )
    assert await sw.flow_mods([to_us]) == []
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet("ff:ff:ff:ff:ff:ff", MAC[PA1], 0x0806))
    pkt.add_protocol(
        arp_pkt.arp(
            opcode=1,
            src_mac=MAC[PA1],
            src_ip="10.0.0.5",
            dst_mac="00:00:00:00:00:00",
            dst_ip="10.0.0.99",
        )
    )
    pkt.serialize()
    before = host.dp.counters["arp_packet_in"]
    await sw.packet_out(bytes(pkt.data), [parser.OFPActionOutput(ofp.OFPP_TABLE)], in_port=of[PA1])
    await eventually(lambda: host.dp.counters["arp_packet_in"] == before + 1)


async def test_group_mod_and_its_errors(host: Host) -> None:
    from os_ken.ofproto import ofproto_v1_3 as ofp
    from os_ken.ofproto import ofproto_v1_3_parser as parser

    from alcor.agent import codec

    of = await with_ports(host)
    sw = host.dp.switch
    assert sw is not None
    bucket = parser.OFPBucket(weight=1, actions=[parser.OFPActionOutput(of[PA1])])
    add = parser.OFPGroupMod(codec.DP, ofp.OFPGC_ADD, ofp.OFPGT_SELECT, 7, [bucket])
    assert await sw.group_mod(add) == []
    assert "group_id=7,type=select" in host.ovs.ofctl("dump-groups", "br-int")
    again = parser.OFPGroupMod(codec.DP, ofp.OFPGC_ADD, ofp.OFPGT_SELECT, 7, [bucket])
    [err] = await sw.group_mod(again)  # exists already
    assert err.command == "group" and "OFPGMFC_GROUP_EXISTS" in err.error


async def test_operator_managed_bridge_is_left_alone(tmp_path: Path, unused_tcp_port: int) -> None:
    with OvsSandbox.started(tmp_path / "ovs") as ovs:
        target = f"tcp:127.0.0.1:{unused_tcp_port}"
        ovs.vsctl("add-br", "br-int", "--", "set", "bridge", "br-int", "datapath_type=netdev",
                  "protocols=OpenFlow13", "fail-mode=secure")  # fmt: skip
        ovs.vsctl("set-controller", "br-int", target)
        before = ovs.vsctl("list-ports", "br-int")
        cfg = DatapathConfig(
            node_id="node-a", listen=target, netns=ovs.netns.name, manage_bridge=False
        )
        dp = Datapath(cfg)
        await dp.start()
        try:
            await dp.wait_connected(10)
            statuses = await dp.apply(two_vpcs().goal())
            assert statuses[PA1][0] == "ERROR"  # no taps on this bridge
            assert ovs.vsctl("list-ports", "br-int") == before  # no vxlan0 added
            assert len(ovs.dump_flows()) > 0
        finally:
            await dp.stop()


async def test_periodic_resync_repairs_drift(ovs_sandbox: OvsSandbox, unused_tcp_port: int) -> None:
    cfg = DatapathConfig(
        "node-a",
        listen=f"tcp:127.0.0.1:{unused_tcp_port}",
        netns=ovs_sandbox.netns.name,
        ovs_db=ovs_sandbox.db,
        resync_interval=0.2,
    )
    dp = Datapath(cfg)
    await dp.start()
    try:
        await dp.wait_connected(10)
        await dp.apply(two_vpcs().goal())
        want = sorted(ovs_sandbox.dump_flows())
        ovs_sandbox.ofctl("del-flows", "br-int", "table=10")  # an operator's mistake
        await eventually(lambda: sorted(ovs_sandbox.dump_flows()) == want)
    finally:
        await dp.stop()


async def test_a_big_batch_goes_over_several_connections_and_reads_back_the_same(
    host: Host,
) -> None:
    """Thousands of flow-mods are spread over the controller connection and fifteen of the
    agent's own to the bridge's management socket (OVS reads 50 messages per connection per
    turn of its loop), kept open for the next batch; what they installed is exactly the
    desired set."""
    await with_ports(host)
    g = two_vpcs()
    for i in range(1500):  # neighbours on host B: ~4 flows each
        g.port(f"eeee{i:04x}-0000", "vpc1", "s1", f"10.0.{2 + i // 250}.{i % 250 + 2}",
               f"fa:16:3e:ee:{i >> 8:02x}:{i & 255:02x}", node="node-b")  # fmt: skip
    await host.dp.apply(g.goal())
    report = host.dp.last_report
    assert report is not None and report.adds > reconcile.BULK_FLOW_MODS
    assert report.connections == host.dp.config.flow_mod_connections == 16 and not report.errors
    lanes = host.dp.open_lanes()
    assert len(lanes) == 15
    assert len(host.ovs.dump_flows()) == len(host.dp.desired_flows)
    full = host.dp.counters["full"]
    assert host.dp.switch is not None
    await host.dp.switch.close()
    await eventually(lambda: host.dp.counters["full"] > full, timeout=10)
    again = host.dp.last_report
    assert again is not None and (again.adds, again.deletes) == (0, 0)
    assert host.dp.open_lanes() == lanes  # the same connections, not fifteen new ones
    # one goes away (as when OVS restarts): the next big batch opens it again, and deletes are
    # spread like adds
    await lanes[0].close()
    await host.dp.apply(two_vpcs().goal())
    report = host.dp.last_report
    assert report is not None and report.deletes > reconcile.SPREAD_FLOW_MODS
    assert report.connections == 16 and not report.errors
    assert lanes[0] not in host.dp.open_lanes() and len(host.dp.open_lanes()) == 15
    assert len(host.ovs.dump_flows()) == len(host.dp.desired_flows)


async def test_a_delta_repairs_drift_in_the_resources_it_touches(host: Host) -> None:
    """A delta reads back the flows of the resources it touches: a stale flow under one of
    their cookies is deleted with the delta's own flow-mods."""
    await with_ports(host)
    want = sorted(host.ovs.dump_flows())
    cookie = cookie_for("port", PA1)
    stale = f"cookie={cookie:#x},table=30,priority=7,dl_dst=02:00:00:00:00:07,actions=drop"
    host.ovs.ofctl("add-flow", "br-int", stale)  # someone's, under the port's cookie
    assert len(host.ovs.dump_flows()) == len(want) + 1
    goal = dict(two_vpcs().goal())
    pair = {"ip_address": "10.0.0.99", "mac_address": MAC[PA1]}
    goal["port"] = {**goal["port"], PA1: {**goal["port"][PA1], "allowed_address_pairs": [pair]}}
    await host.dp.apply(goal)
    report = host.dp.last_report
    assert report is not None and not report.full and report.read_back > 0 and not report.errors
    assert report.adds > 0 and report.deletes == 1  # the delta's own flows, and the stale one
    assert len(host.ovs.dump_flows()) == len(host.dp.desired_flows)
    assert not [f for f in host.ovs.dump_flows() if "dl_dst=02:00:00:00:00:07" in f]
