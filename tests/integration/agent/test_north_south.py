"""North-south with real packets, from the API to the outside: a compute host, two gateway nodes
whose br-ex (the physical network physnet1) reach an "external host", the controller's modules and
an agent (stream + datapath) per host on the in-process transport.

    compute (nsa): VMs ──VXLAN──  gateway nsg1: br-int ──patch── br-ex ──┐
                       └─VXLAN──  gateway nsg2: br-int ──patch── br-ex ──┴── external host
                                                            203.0.113.1 (the external subnet's
                                                            gateway: the "outside")

Two tenants with the same CIDR (10.0.0.0/24) behind two routers with gateways on physnet1. The last
test kills a gateway node (its agent and its Open vSwitch) and measures the gap.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from alcor.agent.datapath import Datapath
from alcor.agent.stream import AgentStream
from alcor.controller import controller_modules
from alcor.roles import southbound_modules
from alcor.southbound import SouthboundModule
from alcor.transport import Address
from tests.conftest import require
from tests.support.controller import Client, config_for_test, serving
from tests.support.ovs import Netns, have_ovs, is_root, unique
from tests.support.topology import Host, Vm, join_underlay, learn_tunnel_neighbours
from tests.support.wait import eventually

pytestmark = [pytest.mark.ovs, pytest.mark.asyncio(loop_scope="module")]

OUTSIDE = "203.0.113.1"
OUTSIDE_MAC = "02:00:00:cb:00:01"


@dataclasses.dataclass
class Cloud:
    api: Client
    compute: Host
    gws: dict[str, Host]
    outside: Vm
    nodes: dict[str, dict[str, Any]]
    streams: dict[str, AgentStream]
    ext: dict[str, Any]
    tenants: list[dict[str, Any]]  # {"router", "vm", "port"}


async def _agent(sb: SouthboundModule, host: Host, node: dict[str, Any], mappings=()) -> AgentStream:
    cfg = dataclasses.replace(host.config(), node_id=node["node_id"], bridge_mappings=mappings)
    host.agent = dp = Datapath(cfg)
    await dp.start()
    await dp.wait_connected(10)
    addr = Address(node["mq_url"], node["mq_vhost"], node["mq_exchange"], node["mq_queue"])
    stream = AgentStream(sb.transport, node["node_id"], addr, addr.with_queue("alcor.controller"),
                         apply=dp.apply, resync_interval=0.5, status_delay=0.01,
                         status_quiet=0.1, report_interval=0.5)
    dp.on_status = stream.datapath_status
    await stream.start()
    return stream


def _outside_host(*gws: Host) -> Vm:
    """The physical network: a Linux bridge (named eth0, so the outside host's tools find it)
    holding the outside host's address, with a veth to each gateway node's br-ex."""
    ns = Netns(unique("ext"))
    ns.exec("ip", "link", "add", "eth0", "type", "bridge")
    ns.exec("ip", "link", "set", "eth0", "address", OUTSIDE_MAC, "up")
    ns.exec("ip", "addr", "add", f"{OUTSIDE}/24", "dev", "eth0")
    ns.exec("ethtool", "-K", "eth0", "tx", "off")
    for n, gw in enumerate(gws):
        gw.ovs.vsctl("--may-exist", "add-br", "br-ex", "--", "set", "bridge", "br-ex",
                     "datapath_type=netdev")
        gw.netns.exec("ip", "link", "add", "ext0", "type", "veth", "peer", "name", f"sw{n}")
        gw.netns.exec("ip", "link", "set", f"sw{n}", "netns", ns.name)
        gw.netns.exec("ip", "link", "set", "ext0", "up")
        ns.exec("ip", "link", "set", f"sw{n}", "master", "eth0", "up")
        ns.exec("ethtool", "-K", f"sw{n}", "tx", "off")  # the userspace datapath completes none
        gw.ovs.vsctl("add-port", "br-ex", "ext0")
    return Vm("outside", ns, OUTSIDE, OUTSIDE_MAC)


def _join_star(hub: Host, spoke: Host, n: int) -> None:
    """One more host on the hub's underlay bridge (join_underlay made the first)."""
    peer = unique("ul")
    hub.netns.exec("ip", "link", "add", f"ul{n}", "type", "veth", "peer", "name", peer)
    hub.netns.exec("ip", "link", "set", peer, "netns", spoke.netns.name)
    spoke.netns.exec("ip", "link", "set", peer, "name", "ul0")
    hub.netns.exec("ip", "link", "set", f"ul{n}", "mtu", "1600", "up")
    spoke.netns.exec("ip", "link", "set", "ul0", "mtu", "1600", "up")
    hub.ovs.vsctl("--may-exist", "add-port", "br-ul", f"ul{n}")
    spoke.ovs.vsctl("--may-exist", "add-br", "br-ul", "--", "set", "bridge", "br-ul",
                    "datapath_type=netdev")
    spoke.ovs.vsctl("--may-exist", "add-port", "br-ul", "ul0")
    spoke.configure_underlay_ip()
    learn_tunnel_neighbours(hub, spoke)


async def status(api: Client, pid: str) -> str:
    return str((await api.get(f"/v2.0/ports/{pid}")).body["port"]["status"])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cloud(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cloud]:
    require(is_root(), "needs root (network namespaces, Open vSwitch)")
    require(have_ovs(), "needs openvswitch-switch installed")
    root = tmp_path_factory.mktemp("ns")
    hosts: list[Host] = []
    outside: Vm | None = None
    streams: dict[str, AgentStream] = {}
    try:
        compute = Host.start(root / "a", "nsa", "172.31.253.1", of_port=6741)
        hosts.append(compute)
        gw1 = Host.start(root / "g1", "nsg1", "172.31.253.2", of_port=6742)
        hosts.append(gw1)
        gw2 = Host.start(root / "g2", "nsg2", "172.31.253.3", of_port=6743)
        hosts.append(gw2)
        join_underlay(compute, gw1)
        _join_star(compute, gw2, 1)
        outside = _outside_host(gw1, gw2)
        cfg = config_for_test(root, gateway={"agent_down_time": 3.0, "check_interval": 0.2})
        mods = [*controller_modules(cfg), *southbound_modules("controller", cfg)]
        async with serving(cfg, mods) as (kernel, api):
            sb = kernel.get(SouthboundModule)
            nodes = {
                "nsa": await api.create("node", "/v2.0/alcor/nodes", node_name="nsa",
                                        local_ip=compute.underlay_ip),
            }
            for name, gw in (("nsg1", gw1), ("nsg2", gw2)):
                nodes[name] = await api.create("node", "/v2.0/alcor/nodes", node_name=name,
                                               local_ip=gw.underlay_ip,
                                               bridge_mappings={"physnet1": "br-ex"})
            streams["nsa"] = await _agent(sb, compute, nodes["nsa"])
            for name, gw in (("nsg1", gw1), ("nsg2", gw2)):
                streams[name] = await _agent(sb, gw, nodes[name], (("physnet1", "br-ex"),))
            ext = await api.create("network", "/v2.0/networks", name="public", **{
                "router:external": True, "provider:network_type": "flat",
                "provider:physical_network": "physnet1"})
            await api.create("subnet", "/v2.0/subnets", network_id=ext["id"],
                             cidr="203.0.113.0/24", gateway_ip=OUTSIDE, ip_version=4,
                             enable_dhcp=False)
            tenants = []
            for n, project in enumerate(("tenant-a", "tenant-b")):
                t = api.as_project(project)
                net = await t.create("network", "/v2.0/networks")
                sub = await t.create("subnet", "/v2.0/subnets", network_id=net["id"],
                                     cidr="10.0.0.0/24", ip_version=4)
                router = await t.create("router", "/v2.0/routers",
                                        external_gateway_info={"network_id": ext["id"]})
                r = await t.put(f"/v2.0/routers/{router['id']}/add_router_interface",
                                {"subnet_id": sub["id"]})
                assert r.status == 200, r.body
                port = await api.create("port", "/v2.0/ports", network_id=net["id"],
                                        project_id=project, fixed_ips=[{"ip_address": "10.0.0.5"}],
                                        **{"binding:host_id": "nsa"})
                vm = await asyncio.to_thread(compute.add_vm, port["id"], "10.0.0.5/24",
                                             port["mac_address"], "10.0.0.1")
                router = (await api.get(f"/v2.0/routers/{router['id']}")).body["router"]
                tenants.append({"router": router, "vm": vm, "port": port, "n": n})
            gw_ports = [(await api.get(f"/v2.0/ports?device_id={t['router']['id']}"
                                       "&device_owner=network:router_gateway")).body["ports"][0]
                        for t in tenants]
            for p in [*(t["port"] for t in tenants), *gw_ports]:
                await eventually(lambda p=p: _is(api, p["id"], "ACTIVE"), 20,
                                 f"port {p['id']} ({p['device_owner']}) not ACTIVE")
            assert {p["binding:host_id"] for p in
                    [(await api.get(f"/v2.0/ports/{g['id']}")).body["port"] for g in gw_ports]
                    } <= {"nsg1", "nsg2"}
            yield Cloud(api, compute, {"nsg1": gw1, "nsg2": gw2}, outside, nodes, streams, ext,
                        tenants)
            for s in streams.values():
                await s.stop()
    finally:
        if outside is not None:
            outside.netns.delete()
        for h in hosts:
            await h.close()


async def _is(api: Client, pid: str, want: str) -> bool:
    return await status(api, pid) == want


def gateway_ip(t: dict[str, Any]) -> str:
    return str(t["router"]["external_gateway_info"]["external_fixed_ips"][0]["ip_address"])


def sources(frames: list[bytes], proto: int) -> set[str]:
    """IPv4 source addresses of the frames of `proto` (1 ICMP, 6 TCP)."""
    out = set()
    for f in frames:
        if len(f) >= 34 and f[12:14] == b"\x08\x00" and f[23] == proto:
            out.add(str(ipaddress.IPv4Address(f[26:30])))
    return out


async def test_vms_reach_the_outside_from_their_routers_gateway_ip(cloud: Cloud) -> None:
    a, b = cloud.tenants
    for t in (a, b):  # the first packets wait for the gateway node to ARP its next hop
        await eventually(lambda t=t: asyncio.to_thread(t["vm"].ping, OUTSIDE, 1, 0.2, 1), 15,
                         f"{t['router']['id']}: no ping to the outside")
    with cloud.outside.sniffing() as frames:
        for t in (a, b):
            assert await asyncio.to_thread(t["vm"].ping, OUTSIDE, 2)
    # Same CIDR, same VM address behind two routers: the outside sees each router's gateway IP.
    assert sources(frames, 1) == {gateway_ip(a), gateway_ip(b)}
    with cloud.outside.server("tcp", 8080), cloud.outside.sniffing() as frames:
        for t in (a, b):
            assert await asyncio.to_thread(t["vm"].tcp_ok, OUTSIDE, 8080)
    assert sources(frames, 6) == {gateway_ip(a), gateway_ip(b)}
    # The gateway IP answers ARP and ping on the external network.
    for t in (a, b):
        assert await asyncio.to_thread(cloud.outside.arping, gateway_ip(t)) == (
            await cloud.api.get(f"/v2.0/ports?device_id={t['router']['id']}"
                                "&device_owner=network:router_gateway")).body["ports"][0]["mac_address"]
        assert await asyncio.to_thread(cloud.outside.ping, gateway_ip(t), 1)


async def test_nothing_from_the_outside_reaches_a_vm_through_snat(cloud: Cloud) -> None:
    a = cloud.tenants[0]
    with a["vm"].server("tcp", 22):
        # the gateway IP is not a way in: no connection was made from inside
        assert not await asyncio.to_thread(cloud.outside.tcp_ok, gateway_ip(a), 22)


async def test_without_snat_nothing_leaves(cloud: Cloud) -> None:
    a = cloud.tenants[0]
    rid = a["router"]["id"]
    info = {"network_id": cloud.ext["id"], "enable_snat": False,
            "external_fixed_ips": a["router"]["external_gateway_info"]["external_fixed_ips"]}
    r = await cloud.api.put(f"/v2.0/routers/{rid}", {"router": {"external_gateway_info": info}})
    assert r.status == 200, r.body
    try:
        await eventually(lambda: _gone(a["vm"]), 10, "SNAT still on")
    finally:
        info["enable_snat"] = True
        await cloud.api.put(f"/v2.0/routers/{rid}", {"router": {"external_gateway_info": info}})
    await eventually(lambda: asyncio.to_thread(a["vm"].ping, OUTSIDE, 1, 0.2, 1), 15, "SNAT not back")


async def _gone(vm: Vm) -> bool:
    return not await asyncio.to_thread(vm.ping, OUTSIDE, 1, 0.2, 1)


async def _open_group(api: Client, project: str) -> dict[str, Any]:
    t = api.as_project(project)
    g = await t.create("security_group", "/v2.0/security-groups", name="open")
    for proto in ("icmp", "tcp"):
        await t.create("security_group_rule", "/v2.0/security-group-rules",
                       security_group_id=g["id"], direction="ingress", protocol=proto,
                       remote_ip_prefix="0.0.0.0/0")
    return g


async def test_the_outside_reaches_a_vm_through_its_floating_ip_and_only_then(cloud: Cloud) -> None:
    api, a = cloud.api, cloud.tenants[0]
    t = api.as_project("tenant-a")
    vm, port = a["vm"], a["port"]
    group = await _open_group(api, "tenant-a")
    assert (await t.put(f"/v2.0/ports/{port['id']}", {"port": {"security_groups": [group["id"]]}})).status == 200
    fip = await t.create("floatingip", "/v2.0/floatingips", floating_network_id=cloud.ext["id"],
                         port_id=port["id"])
    ip = fip["floating_ip_address"]
    assert fip["router_id"] == a["router"]["id"] and fip["fixed_ip_address"] == "10.0.0.5"
    outside = cloud.outside
    await eventually(lambda: asyncio.to_thread(outside.ping, ip, 1, 0.2, 1), 15,
                     "the floating IP never answered")
    with vm.server("tcp", 22):
        assert await asyncio.to_thread(outside.tcp_ok, ip, 22)
    # 1:1: what the VM sends out leaves from its floating IP, not the router's gateway IP.
    with outside.sniffing() as frames:
        assert await asyncio.to_thread(vm.ping, OUTSIDE, 2)
    assert sources(frames, 1) == {ip}
    # Security groups still apply: without an ingress rule nothing comes in.
    default = (await t.get("/v2.0/security-groups?name=default")).body["security_groups"][0]
    await t.put(f"/v2.0/ports/{port['id']}", {"port": {"security_groups": [default["id"]]}})
    await eventually(lambda: _unreachable(outside, ip), 10, "ingress still open without a rule")
    with vm.server("tcp", 22):
        assert not await asyncio.to_thread(outside.tcp_ok, ip, 22)
    await t.put(f"/v2.0/ports/{port['id']}", {"port": {"security_groups": [group["id"]]}})
    await eventually(lambda: asyncio.to_thread(outside.ping, ip, 1, 0.2, 1), 10, "ingress not back")
    # Disassociated: the floating IP leads nowhere, the VM goes out through SNAT again.
    r = await t.put(f"/v2.0/floatingips/{fip['id']}", {"floatingip": {"port_id": None}})
    assert r.status == 200
    await eventually(lambda: _unreachable(outside, ip), 10, "the floating IP still leads in")
    assert await asyncio.to_thread(outside.arping, ip, 1) is None  # nobody answers for it now
    with outside.sniffing() as frames:
        assert await asyncio.to_thread(vm.ping, OUTSIDE, 2)
    assert sources(frames, 1) == {gateway_ip(a)}
    assert (await t.delete(f"/v2.0/floatingips/{fip['id']}")).status == 204


async def _unreachable(outside: Vm, ip: str) -> bool:
    return not await asyncio.to_thread(outside.ping, ip, 1, 0.2, 1)


async def _gateway_port(api: Client, router_id: str) -> dict[str, Any]:
    r = await api.get(f"/v2.0/ports?device_id={router_id}&device_owner=network:router_gateway")
    return dict(r.body["ports"][0])


def _longest_silence(ping_output: str) -> float:
    """The longest time between two answered echoes in `ping -D` output, in seconds."""
    stamps = [float(line.split("]")[0].lstrip("["))
              for line in ping_output.splitlines() if line.startswith("[") and "bytes from" in line]
    return max((b - a for a, b in zip(stamps, stamps[1:], strict=False)), default=float("inf"))


async def test_a_dead_gateway_node_moves_its_routers_and_traffic_resumes(cloud: Cloud) -> None:
    """Last in this module: it kills a gateway node. The gap is printed (bench/north_south.py
    measures it more often)."""
    api, a = cloud.api, cloud.tenants[0]
    t = api.as_project("tenant-a")
    group = await _open_group(api, "tenant-a")
    await t.put(f"/v2.0/ports/{a['port']['id']}", {"port": {"security_groups": [group["id"]]}})
    fip = await t.create("floatingip", "/v2.0/floatingips", floating_network_id=cloud.ext["id"],
                         port_id=a["port"]["id"])
    await eventually(lambda: asyncio.to_thread(cloud.outside.ping, fip["floating_ip_address"], 1, 0.2, 1),
                     15, "the floating IP never answered")
    victim = (await _gateway_port(api, a["router"]["id"]))["binding:host_id"]
    survivor = ({"nsg1", "nsg2"} - {victim}).pop()
    pinger = a["vm"].netns.popen("ping", "-D", "-i", "0.1", "-W", "1", OUTSIDE,
                                 stdout=subprocess.PIPE)
    try:
        await asyncio.sleep(1.0)
        killed = time.monotonic()
        await cloud.streams[victim].stop()  # the agent dies, and its switch with it
        await cloud.gws[victim].stop_agent()
        await asyncio.to_thread(cloud.gws[victim].ovs.stop_vswitchd)

        async def moved() -> bool:
            p = await _gateway_port(api, a["router"]["id"])
            return p["binding:host_id"] == survivor and p["status"] == "ACTIVE"
        await eventually(moved, 30, f"the gateway never moved to {survivor}", interval=0.1)
        placed = time.monotonic() - killed
        await eventually(lambda: asyncio.to_thread(a["vm"].ping, OUTSIDE, 1, 0.2, 1), 20,
                         "SNAT did not resume on the survivor")
        await asyncio.sleep(1.0)
    finally:
        pinger.terminate()
        out, _ = pinger.communicate(timeout=10)
    gap = _longest_silence(out)
    print(f"gateway failover: moved after {placed:.2f} s, ping gap {gap:.2f} s "
          f"(agent_down_time 3.0 s, load {os.getloadavg()[0]:.1f})")
    assert gap < 15.0
    # Both routers are on the survivor now, and the floating IP leads in again.
    for tn in cloud.tenants:
        assert (await _gateway_port(api, tn["router"]["id"]))["binding:host_id"] == survivor
    await eventually(lambda: asyncio.to_thread(cloud.outside.ping, fip["floating_ip_address"], 1, 0.2, 1),
                     15, "the floating IP did not come back")
    agents = {x["host"]: x["alive"] for x in (await api.get("/v2.0/agents?agent_type=L3+agent")).body["agents"]}
    assert agents == {victim: False, survivor: True}
