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
import os
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from tests.conftest import require
from tests.support.northsouth import (
    OUTSIDE,
    Cloud,
    gateway_ip,
    gateway_port,
    longest_silence,
    north_south,
    open_group,
    sources,
)
from tests.support.ovs import have_ovs, is_root
from tests.support.topology import Vm
from tests.support.wait import eventually

pytestmark = [pytest.mark.ovs, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cloud(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cloud]:
    require(is_root(), "needs root (network namespaces, Open vSwitch)")
    require(have_ovs(), "needs openvswitch-switch installed")
    async with north_south(tmp_path_factory.mktemp("ns")) as c:
        yield c


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


async def test_the_outside_reaches_a_vm_through_its_floating_ip_and_only_then(cloud: Cloud) -> None:
    api, a = cloud.api, cloud.tenants[0]
    t = api.as_project("tenant-a")
    vm, port = a["vm"], a["port"]
    group = await open_group(api, "tenant-a")
    assert (await t.put(f"/v2.0/ports/{port['id']}", {"port": {"security_groups": [group["id"]]}})).status == 200
    fip = await t.create("floatingip", "/v2.0/floatingips", floating_network_id=cloud.ext["id"],
                         port_id=port["id"])
    ip = fip["floating_ip_address"]
    assert fip["router_id"] == a["router"]["id"] and fip["fixed_ip_address"] == "10.0.0.5"
    assert fip["status"] == "DOWN"  # until the gateway node has its NAT on the switch
    outside = cloud.outside
    await eventually(lambda: asyncio.to_thread(outside.ping, ip, 1, 0.2, 1), 15,
                     "the floating IP never answered")
    await eventually(lambda: _fip_status(t, fip["id"], "ACTIVE"), 10, "the floating IP stayed DOWN")
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
    assert r.status == 200 and r.body["floatingip"]["status"] == "DOWN"
    await eventually(lambda: _unreachable(outside, ip), 10, "the floating IP still leads in")
    assert await asyncio.to_thread(outside.arping, ip, 1) is None  # nobody answers for it now
    with outside.sniffing() as frames:
        assert await asyncio.to_thread(vm.ping, OUTSIDE, 2)
    assert sources(frames, 1) == {gateway_ip(a)}
    assert (await t.delete(f"/v2.0/floatingips/{fip['id']}")).status == 204


async def _fip_status(api: Any, fid: str, want: str) -> bool:
    return bool((await api.get(f"/v2.0/floatingips/{fid}")).body["floatingip"]["status"] == want)


async def _unreachable(outside: Vm, ip: str) -> bool:
    return not await asyncio.to_thread(outside.ping, ip, 1, 0.2, 1)


async def test_a_dead_gateway_node_moves_its_routers_and_traffic_resumes(cloud: Cloud) -> None:
    """Last in this module: it kills a gateway node. The gap is printed (bench/north_south.py
    measures it more often)."""
    api, a = cloud.api, cloud.tenants[0]
    t = api.as_project("tenant-a")
    group = await open_group(api, "tenant-a")
    await t.put(f"/v2.0/ports/{a['port']['id']}", {"port": {"security_groups": [group["id"]]}})
    fip = await t.create("floatingip", "/v2.0/floatingips", floating_network_id=cloud.ext["id"],
                         port_id=a["port"]["id"])
    await eventually(lambda: asyncio.to_thread(cloud.outside.ping, fip["floating_ip_address"], 1, 0.2, 1),
                     15, "the floating IP never answered")
    victim = (await gateway_port(api, a["router"]["id"]))["binding:host_id"]
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
            p = await gateway_port(api, a["router"]["id"])
            return p["binding:host_id"] == survivor and p["status"] == "ACTIVE"
        await eventually(moved, 30, f"the gateway never moved to {survivor}", interval=0.1)
        placed = time.monotonic() - killed
        await eventually(lambda: asyncio.to_thread(a["vm"].ping, OUTSIDE, 1, 0.2, 1), 20,
                         "SNAT did not resume on the survivor")
        await asyncio.sleep(1.0)
    finally:
        pinger.terminate()
        out, _ = pinger.communicate(timeout=10)
    gap = longest_silence(out)
    print(f"gateway failover: moved after {placed:.2f} s, ping gap {gap:.2f} s "
          f"(agent_down_time 3.0 s, load {os.getloadavg()[0]:.1f})")
    assert gap < 15.0
    # Both routers are on the survivor now, and the floating IP leads in again.
    for tn in cloud.tenants:
        assert (await gateway_port(api, tn["router"]["id"]))["binding:host_id"] == survivor
    await eventually(lambda: asyncio.to_thread(cloud.outside.ping, fip["floating_ip_address"], 1, 0.2, 1),
                     15, "the floating IP did not come back")
    # Its status said so: DOWN while no node carried it, ACTIVE again from the survivor.
    await eventually(lambda: _fip_status(api, fip["id"], "ACTIVE"), 10, "the floating IP stayed DOWN")
    log = (await api.get("/v2.0/alcor/changes?since=0&limit=10000")).body["changes"]
    seen = [c["body"]["status"] for c in log if c["type"] == "floatingip" and c["id"] == fip["id"]
            and c["body"]]
    assert seen[-3:] == ["ACTIVE", "DOWN", "ACTIVE"], seen
    agents = {x["host"]: x["alive"] for x in (await api.get("/v2.0/agents?agent_type=L3+agent")).body["agents"]}
    assert agents == {victim: False, survivor: True}
