"""Zeta redirection on real Open vSwitch: two hosts and the stand-in's FWD, each in a namespace,
on one underlay (a Linux bridge in a fourth namespace), real packets.

VPC v1 (VNI 100) has a ready Zeta gateway whose FWD is 172.31.255.9. Host A does not know VM b
(it is no neighbour in A's goal state), so A's first packets to b take the select group to the
FWD, which forwards them to host B and sends A an OAM inject; A's agent installs the direct path
and the FWD sees no more of the flow, until the direct flow's idle timeout removes it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from alcor.agent import zeta
from alcor.wire import GoalState
from alcor_plugins.zeta.standin import Standin
from tests.conftest import require
from tests.support.goals import FWD1, FWD2, GoalBuilder
from tests.support.ovs import Netns, have_ovs, is_root, unique
from tests.support.topology import Host, wait_taps
from tests.support.wait import eventually

pytestmark = [pytest.mark.ovs, pytest.mark.asyncio(loop_scope="module")]

A, B = "node-a", "node-b"
IP_A, IP_B = "172.31.255.1", "172.31.255.2"
PA, PB = "a1000000-5555", "b1000000-5555"
MAC = {PA: "fa:16:3e:0a:00:05", PB: "fa:16:3e:0b:00:06"}
IDLE = 2  # the FWD's idle timeout for direct paths, seconds


@pytest.fixture(autouse=True, scope="module")
def _needs_ovs_and_root() -> None:
    require(is_root(), "Zeta OVS tests need root (network namespaces, OVS)")
    require(have_ovs(), "Zeta OVS tests need openvswitch-switch installed")


def goal_for(
    node: str, fwds: list[dict[str, str]] | None = None, status: str = "ready"
) -> GoalState:
    g = GoalBuilder(node).node(A, IP_A).node(B, IP_B).vpc("v1", 100)
    g.subnet("s1", "v1", "10.0.0.0/24", "10.0.0.1", "fa:16:3e:00:00:01")
    g.port(PA, "v1", "s1", "10.0.0.5", MAC[PA], node=A)
    if node == B:  # A does not know b: its traffic to b is unknown unicast, Zeta's to forward
        g.port(PB, "v1", "s1", "10.0.0.6", MAC[PB], node=B)
    g.zeta_gateway("v1", "gw1", [FWD1] if fwds is None else fwds, status)
    return g.goal()


@dataclass
class World:
    a: Host
    b: Host
    standin: Standin

    async def apply(self, **kw: Any) -> None:
        for h in (self.a, self.b):
            assert h.agent is not None
            statuses = await h.agent.apply(goal_for(h.name, **kw))
            assert all(s[0] == "ACTIVE" for s in statuses.values()), statuses


def underlay(sw: Netns, hosts: list[Host], fwd: Netns) -> None:
    """One L2 segment: a Linux bridge in `sw`; each host's br-ul and the FWD's eth0 on it."""
    sw.exec("ip", "link", "add", "br0", "type", "bridge")
    sw.exec("ip", "link", "set", "br0", "up")

    def plug(ns: Netns, dev: str) -> None:
        peer = unique("p")
        sw.exec(
            "ip",
            "link",
            "add",
            peer,
            "mtu",
            "1600",
            "type",
            "veth",
            "peer",
            "name",
            dev,
            "mtu",
            "1600",
        )
        sw.exec("ip", "link", "set", dev, "netns", ns.name)
        sw.exec("ip", "link", "set", peer, "master", "br0", "up")
        ns.exec("ip", "link", "set", dev, "up")

    # Fixed bridge MACs: OVS may change br-ul's MAC as ports join it, after the kernel has
    # already answered ARP with the old one; every neighbour entry here is static instead.
    macs = {h.underlay_ip: f"02:00:00:00:01:{i + 1:02x}" for i, h in enumerate(hosts)}
    for h in hosts:
        plug(h.netns, "ul0")
        h.ovs.vsctl(
            "--may-exist",
            "add-br",
            "br-ul",
            "--",
            "set",
            "bridge",
            "br-ul",
            "datapath_type=netdev",
            f"other-config:hwaddr={macs[h.underlay_ip]}",
        )
        h.ovs.vsctl("--may-exist", "add-port", "br-ul", "ul0")
        h.configure_underlay_ip()
    plug(fwd, "eth0")
    fwd.exec("ip", "link", "set", "eth0", "address", FWD1["mac"])
    fwd.exec("ip", "addr", "add", f"{FWD1['ip']}/24", "dev", "eth0")
    for ip, mac in macs.items():
        fwd.exec("ip", "neigh", "replace", ip, "lladdr", mac, "dev", "eth0", "nud", "permanent")
    for h in hosts:
        for ip, mac in [*macs.items(), (FWD1["ip"], FWD1["mac"])]:
            if ip != h.underlay_ip:
                h.ovs.appctl("tnl/arp/set", "br-ul", ip, mac)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    root = tmp_path_factory.mktemp("zeta")
    hosts: list[Host] = []
    spaces: list[Netns] = []
    standin: Standin | None = None
    try:
        a = Host.start(root / "a", A, IP_A, of_port=6741)
        hosts.append(a)
        b = Host.start(root / "b", B, IP_B, of_port=6742)
        hosts.append(b)
        sw, fwd = Netns(unique("sw")), Netns(unique("fwd"))
        spaces += [sw, fwd]
        underlay(sw, [a, b], fwd)
        standin = Standin([FWD1], fwd_netns=fwd.name)
        standin.state.idle_timeout = IDLE
        await standin.start()
        await register(standin)
        await asyncio.gather(a.start_agent(), b.start_agent())
        vm_a = a.add_vm(PA, "10.0.0.5/24", MAC[PA], "10.0.0.1")
        b.add_vm(PB, "10.0.0.6/24", MAC[PB], "10.0.0.1")
        vm_a.exec("ip", "neigh", "replace", "10.0.0.6", "lladdr", MAC[PB], "dev", "eth0")
        await wait_taps(a, b)
        w = World(a, b, standin)
        await w.apply()
        yield w
    finally:
        if standin is not None:
            await standin.stop()
        for h in hosts:
            await h.close()
        for ns in spaces:
            ns.delete()


async def register(s: Standin) -> None:
    """What the gateway plugin does for v1, through the stand-in's management API."""
    async with aiohttp.ClientSession() as http:
        r = await http.post(f"{s.url}/vpcs", json={"vpc_id": "v1", "vni": 100})
        assert r.status == 201
        ports = [
            {
                "port_id": PB,
                "vpc_id": "v1",
                "ips_port": [{"ip": "10.0.0.6", "vip": ""}],
                "mac_port": MAC[PB],
                "ip_node": IP_B,
                "mac_node": "02:00:00:00:00:02",
            }
        ]
        assert (await http.post(f"{s.url}/ports", json=ports)).status == 201


def direct_flows(h: Host) -> list[str]:
    out = h.ovs.ofctl("dump-flows", "br-int", "cookie=0xa1c1000000000000/0xffff000000000000")
    return [ln.strip() for ln in out.splitlines() if "cookie=" in ln]


def compiled_flows(h: Host) -> list[str]:
    return sorted(f for f in h.ovs.dump_flows() if "cookie=0xa1c1" not in f)


def n_packets(line: str) -> int:
    m = re.search(r"n_packets=(\d+)", line)
    return int(m.group(1)) if m else 0


def buckets(h: Host) -> list[str]:
    out = h.ovs.ofctl("dump-groups", "br-int")
    return re.findall(r"bucket=[^\n]*?(?=,bucket=|$)", out, flags=re.M)


def send_from_fwd(world: World, *messages: bytes) -> None:
    """OAM datagrams from the FWD's address (zero UDP checksum, like the FWD: see standin.py)."""
    script = (
        "import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
        "s.setsockopt(socket.SOL_SOCKET,11,1);"
        f"s.bind(('{FWD1['ip']}',0));"
        f"[s.sendto(bytes.fromhex(h),('{IP_A}',8300)) for h in sys.argv[1:]]"
    )
    Netns.adopt(world.standin.fwds[0].netns or "").exec(
        "python3", "-c", script, *[m.hex() for m in messages]
    )


async def test_first_packets_via_the_fwd_then_the_direct_path_until_idle(world: World) -> None:
    a, fwd = world.a, world.standin.fwds[0]
    assert a.agent is not None
    key = (100, "10.0.0.5", "10.0.0.6", 1, 0, 0)  # ICMP: no ports
    # the first packet goes through the FWD (and still arrives), which answers with an inject
    assert await asyncio.to_thread(a.vms[PA].ping, "10.0.0.6", 1, 0.2, 3)
    assert fwd.flows.get(key, 0) >= 1 and fwd.counters["oam_sent"] >= 1
    [flow] = await eventually(
        lambda: direct_flows(a),
        3,
        "no direct flow after the OAM inject",
        blocking=True,
        interval=0.05,
    )
    assert a.agent.zeta.counters["injected"] >= 1
    assert f"idle_timeout={IDLE}" in flow and "set_field:172.31.255.2->tun_dst" in flow
    through_fwd = fwd.flows[key]
    before = n_packets(flow)
    # later packets take the direct path: the FWD sees no more of them, the flow counts them
    assert await asyncio.to_thread(a.vms[PA].ping, "10.0.0.6", 5, 0.05, 2)
    assert fwd.flows[key] == through_fwd
    # (the switch folds datapath counters into flow stats every few hundred ms)
    await eventually(
        lambda: [n for f in direct_flows(a) if (n := n_packets(f)) >= before + 5],
        3,
        f"direct flow did not count the pings: {direct_flows(a)}",
        blocking=True,
        interval=0.05,
    )
    # idle: the switch removes it on its own; the next packet goes to the FWD again
    await eventually(
        lambda: not direct_flows(a),
        IDLE + 4,
        "direct flow outlived its idle timeout",
        blocking=True,
        interval=0.05,
    )
    assert await asyncio.to_thread(a.vms[PA].ping, "10.0.0.6", 1, 0.2, 3)
    assert fwd.flows[key] > through_fwd
    await eventually(
        lambda: direct_flows(a),
        3,
        "no direct flow after the second inject",
        blocking=True,
        interval=0.05,
    )


async def test_bad_oam_is_counted_and_harmless(world: World) -> None:
    a = world.a
    assert a.agent is not None
    flows_before = compiled_flows(a)
    counters = dict(a.agent.zeta.counters)
    good = zeta.OamMessage(
        0,
        "10.0.0.5",
        "10.0.0.7",
        0,
        0,
        1,
        100,
        "10.0.0.7",
        IP_B,
        "fa:16:3e:00:00:07",
        "02:00:00:00:00:02",
        5,
    )
    bad = [
        zeta.encode_oam(good)[:30],  # malformed
        b"\0\0\0\x09" + zeta.encode_oam(good)[4:],  # unknown opcode
        zeta.encode_oam(dataclasses.replace(good, vni=4242)),  # no such VPC here
    ]
    # sent from the FWD's address, so the source check passes and the content is judged
    await asyncio.to_thread(send_from_fwd, world, *bad)
    c = a.agent.zeta.counters
    await eventually(
        lambda: c["unknown_vni"] > counters["unknown_vni"],
        3,
        "OAM not counted",
        blocking=True,
        interval=0.05,
    )
    assert c["malformed"] == counters["malformed"] + 1
    assert c["unknown_opcode"] == counters["unknown_opcode"] + 1
    assert c["injected"] == counters["injected"]
    assert compiled_flows(a) == flows_before  # nothing installed, nothing removed


async def test_direct_paths_survive_an_agent_restart_and_go_on_delete(world: World) -> None:
    a = world.a
    inject = zeta.OamMessage(
        0,
        "10.0.0.5",
        "10.0.0.8",
        1000,
        53,
        17,
        100,
        "10.0.0.8",
        IP_B,
        "fa:16:3e:00:00:08",
        "02:00:00:00:00:02",
        60,
    )
    await asyncio.to_thread(send_from_fwd, world, zeta.encode_oam(inject))
    udp = lambda: [f for f in direct_flows(a) if "udp" in f]  # noqa: E731
    [flow] = await eventually(
        udp, 3, "no direct flow for the UDP inject", blocking=True, interval=0.05
    )
    assert "tp_src=1000" in flow and "tp_dst=53" in flow and "idle_timeout=60" in flow
    groups = a.ovs.ofctl("dump-groups", "br-int")
    # a restarted agent reconciles everything it compiles; Zeta's flows are not among them
    await a.stop_agent()
    await a.start_agent()
    await world.apply()
    assert a.agent is not None and a.agent.last_report is not None and a.agent.last_report.full
    assert len(udp()) == 1
    assert a.ovs.ofctl("dump-groups", "br-int") == groups
    # an OAM delete (20 bytes) removes exactly that flow
    delete = zeta.OamMessage(1, "10.0.0.5", "10.0.0.8", 1000, 53, 17, 100)
    await asyncio.to_thread(send_from_fwd, world, zeta.encode_oam(delete))
    await eventually(lambda: not udp(), 3, "direct flow not deleted", blocking=True, interval=0.05)
    assert a.agent.zeta.counters["deleted"] == 1


async def test_group_buckets_follow_the_fwd_set(world: World) -> None:
    a = world.a
    [one] = buckets(a)
    assert f"set_field:{FWD1['ip']}->tun_dst" in one and f"set_field:{FWD1['mac']}->eth_dst" in one
    assert "type=select" in a.ovs.ofctl("dump-groups", "br-int")
    await world.apply(fwds=[FWD1, FWD2])
    got = buckets(a)
    assert len(got) == 2 and any(FWD2["ip"] in b for b in got)
    await world.apply(fwds=[FWD2])
    [only] = buckets(a)
    assert FWD2["ip"] in only and FWD1["ip"] not in only
    # the gateway stops being ready: no group, flooding goes to the member host directly
    await world.apply(status="failed")
    assert buckets(a) == []
    assert "group:" not in " ".join(a.ovs.dump_flows())
    await world.apply()
    assert len(buckets(a)) == 1
