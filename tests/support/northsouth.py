"""A north-south scene with real packets, for tests and benchmarks: a compute host, two gateway
nodes whose br-ex (physical network physnet1) reach an "external host", the controller's modules
and an agent (stream + datapath) per host on the in-process transport.

    compute (nsa): VMs ──VXLAN──  gateway nsg1: br-int ──patch── br-ex ──┐
                       └─VXLAN──  gateway nsg2: br-int ──patch── br-ex ──┴── external host
                                                            203.0.113.1 (the external subnet's
                                                            gateway: the "outside")

Two tenants with the same CIDR (10.0.0.0/24), a VM each on the compute host (10.0.0.5), behind two
routers with gateways on physnet1.

    async with north_south(tmp, agent_down_time=3.0) as cloud:
        cloud.tenants[0]["vm"].ping("203.0.113.1")
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alcor.agent.datapath import Datapath
from alcor.agent.stream import AgentStream
from alcor.controller import controller_modules
from alcor.roles import southbound_modules
from alcor.southbound import SouthboundModule
from alcor.transport import Address
from tests.support.controller import Client, config_for_test, serving
from tests.support.ovs import Netns, unique
from tests.support.topology import Host, Vm, join_underlay, learn_tunnel_neighbours
from tests.support.wait import eventually

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


async def start_agent(
    sb: SouthboundModule, host: Host, node: dict[str, Any], mappings: tuple[tuple[str, str], ...] = ()
) -> AgentStream:
    """`host`'s datapath as the registered `node`, and its stream to the controller `sb` runs."""
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


@asynccontextmanager
async def north_south(root: Path, agent_down_time: float = 3.0) -> AsyncIterator[Cloud]:
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
        cfg = config_for_test(root, gateway={"agent_down_time": agent_down_time, "check_interval": 0.2})
        mods = [*controller_modules(cfg), *southbound_modules("controller", cfg)]
        async with serving(cfg, mods) as (kernel, api):
            api.kernel = kernel  # type: ignore[attr-defined]
            sb = kernel.get(SouthboundModule)
            nodes = {
                "nsa": await api.create("node", "/v2.0/alcor/nodes", node_name="nsa",
                                        local_ip=compute.underlay_ip),
            }
            for name, gw in (("nsg1", gw1), ("nsg2", gw2)):
                nodes[name] = await api.create("node", "/v2.0/alcor/nodes", node_name=name,
                                               local_ip=gw.underlay_ip,
                                               bridge_mappings={"physnet1": "br-ex"})
            streams["nsa"] = await start_agent(sb, compute, nodes["nsa"])
            for name, gw in (("nsg1", gw1), ("nsg2", gw2)):
                streams[name] = await start_agent(sb, gw, nodes[name], (("physnet1", "br-ex"),))
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


async def open_group(api: Client, project: str) -> dict[str, Any]:
    t = api.as_project(project)
    g = await t.create("security_group", "/v2.0/security-groups", name="open")
    for proto in ("icmp", "tcp"):
        await t.create("security_group_rule", "/v2.0/security-group-rules",
                       security_group_id=g["id"], direction="ingress", protocol=proto,
                       remote_ip_prefix="0.0.0.0/0")
    return g


async def gateway_port(api: Client, router_id: str) -> dict[str, Any]:
    r = await api.get(f"/v2.0/ports?device_id={router_id}&device_owner=network:router_gateway")
    return dict(r.body["ports"][0])


def longest_silence(ping_output: str) -> float:
    """The longest time between two answered echoes in `ping -D` output, in seconds."""
    stamps = [float(line.split("]")[0].lstrip("["))
              for line in ping_output.splitlines() if line.startswith("[") and "bytes from" in line]
    return max((b - a for a, b in zip(stamps, stamps[1:], strict=False)), default=float("inf"))
