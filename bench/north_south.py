"""Benchmark north-south on real Open vSwitch: floating IP association to first packet, SNAT
connections per second through one gateway node, and the gap when a gateway node dies.

    sudo .venv/bin/python bench/north_south.py [--fips 200] [--snat-seconds 5] [--failovers 2]

The scene is tests/support/northsouth.py's: a compute host, two gateway nodes whose br-ex reach an
"external host" (203.0.113.1), the controller's modules and an agent per host on the in-process
transport, all in this process (ovs-vswitchd runs apart, one userspace datapath per host).

- **association → first packet**: PUT the floating IP's port_id, then ping the floating IP from
  the outside every 10 ms until one answers; the time from the PUT's answer to that answer (p50,
  p99 over --fips rounds; each round disassociates and waits until it no longer answers); and
  from the PUT's answer until the floating IP's `status` (the gateway node's report) is ACTIVE.
- **SNAT connections/s**: a VM opens TCP connections to the outside (connect, close) one after
  another for --snat-seconds, each one a new conntrack entry and NAT mapping on the gateway node.
- **failover gap**: a VM pings the outside every 100 ms; the gateway node of its router is killed
  (agent stopped, ovs-vswitchd stopped: its flows are gone) and the longest silence between two
  answers is the gap; the node is then brought back (its routers stay where they went) and the
  next round kills the other one.

Prints the figures with os.getloadavg(). Needs root and openvswitch-switch.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog  # noqa: E402

from alcor.southbound import SouthboundModule  # noqa: E402
from tests.support.northsouth import (  # noqa: E402
    OUTSIDE,
    Cloud,
    gateway_port,
    longest_silence,
    north_south,
    open_group,
    start_agent,
)
from tests.support.topology import learn_tunnel_neighbours  # noqa: E402
from tests.support.wait import eventually  # noqa: E402

CONNECT_LOOP = """
import socket, sys, time
end = time.monotonic() + float(sys.argv[2]); n = 0; fail = 0
while time.monotonic() < end:
    s = socket.socket(); s.settimeout(1.0)
    try:
        s.connect((sys.argv[1], 8080)); n += 1
    except OSError:
        fail += 1
    finally:
        s.close()
print(n, fail)
"""
ACCEPT_LOOP = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(1024); print("ready", flush=True)
while True:
    c, _ = s.accept(); c.close()
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def answers(cloud: Cloud, ip: str) -> bool:
    out = cloud.outside.exec("ping", "-c", "1", "-W", "0.05", ip, check=False)
    return "1 received" in out


async def fip_first_packet(cloud: Cloud, rounds: int) -> tuple[list[float], list[float]]:
    """Per round: association -> first packet through, and association -> `status` ACTIVE."""
    api, a = cloud.api, cloud.tenants[0]
    t = api.as_project("tenant-a")
    group = await open_group(api, "tenant-a")
    await t.put(f"/v2.0/ports/{a['port']['id']}", {"port": {"security_groups": [group["id"]]}})
    fip = await t.create("floatingip", "/v2.0/floatingips", floating_network_id=cloud.ext["id"])
    ip = fip["floating_ip_address"]
    times, active = [], []
    for _ in range(rounds):
        r = await t.put(f"/v2.0/floatingips/{fip['id']}", {"floatingip": {"port_id": a["port"]["id"]}})
        assert r.status == 200, r.body
        start = time.monotonic()
        while not await asyncio.to_thread(answers, cloud, ip):
            if time.monotonic() - start > 10:
                raise RuntimeError("the floating IP never answered")
        times.append(time.monotonic() - start)
        while (await t.get(f"/v2.0/floatingips/{fip['id']}")).body["floatingip"]["status"] != "ACTIVE":
            if time.monotonic() - start > 10:
                raise RuntimeError("the floating IP never turned ACTIVE")
            await asyncio.sleep(0.005)
        active.append(time.monotonic() - start)
        await t.put(f"/v2.0/floatingips/{fip['id']}", {"floatingip": {"port_id": None}})
        await eventually(lambda: asyncio.to_thread(lambda: not answers(cloud, ip)), 10,
                         "the floating IP still answers")
    await t.delete(f"/v2.0/floatingips/{fip['id']}")
    return times, active


def snat_rate(cloud: Cloud, seconds: float) -> tuple[float, int]:
    server = cloud.outside.netns.popen(sys.executable, "-c", ACCEPT_LOOP, stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        vm = cloud.tenants[1]["vm"]
        out = vm.exec(sys.executable, "-c", CONNECT_LOOP, OUTSIDE, str(seconds),
                      timeout=seconds + 30)
        n, fail = map(int, out.split())
        return n / seconds, fail
    finally:
        server.kill()
        server.wait()


async def revive(cloud: Cloud, name: str) -> None:
    """Bring a killed gateway node back: its switch, then its agent (stream and datapath)."""
    host = cloud.gws[name]
    await asyncio.to_thread(host.ovs.start_vswitchd)
    # The underlay bridge's address and the tunnel neighbours lived in the old ovs-vswitchd.
    await asyncio.to_thread(host.configure_underlay_ip)
    await asyncio.to_thread(learn_tunnel_neighbours, cloud.compute, host)
    sb = cloud.api.kernel.get(SouthboundModule)  # type: ignore[attr-defined]  # set by north_south
    cloud.streams[name] = await start_agent(sb, host, cloud.nodes[name], (("physnet1", "br-ex"),))


async def failover_gap(cloud: Cloud) -> tuple[float, float]:
    api, a = cloud.api, cloud.tenants[0]
    victim = (await gateway_port(api, a["router"]["id"]))["binding:host_id"]
    survivor = ({"nsg1", "nsg2"} - {victim}).pop()
    pinger = a["vm"].netns.popen("ping", "-D", "-i", "0.1", "-W", "1", OUTSIDE,
                                 stdout=subprocess.PIPE)
    try:
        await asyncio.sleep(1.0)
        killed = time.monotonic()
        await cloud.streams.pop(victim).stop()
        await cloud.gws[victim].stop_agent()
        await asyncio.to_thread(cloud.gws[victim].ovs.stop_vswitchd)

        async def moved() -> bool:
            p = await gateway_port(api, a["router"]["id"])
            return p["binding:host_id"] == survivor and p["status"] == "ACTIVE"
        await eventually(moved, 60, "the gateway never moved", interval=0.05)
        placed = time.monotonic() - killed
        await eventually(lambda: asyncio.to_thread(a["vm"].ping, OUTSIDE, 1, 0.2, 1), 30,
                         "SNAT did not resume")
        await asyncio.sleep(1.0)
    finally:
        pinger.terminate()
        out, _ = pinger.communicate(timeout=10)
    await revive(cloud, victim)
    return placed, longest_silence(out)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fips", type=int, default=200)
    p.add_argument("--snat-seconds", type=float, default=5.0)
    p.add_argument("--failovers", type=int, default=2)
    p.add_argument("--agent-down-time", type=float, default=3.0)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory(prefix="alcor-ns-bench-") as tmp:
        async with north_south(Path(tmp), agent_down_time=args.agent_down_time) as cloud:
            for t in cloud.tenants:
                await eventually(lambda t=t: asyncio.to_thread(t["vm"].ping, OUTSIDE, 1, 0.2, 1),
                                 20, "no SNAT")
            if args.fips:
                times, active = await fip_first_packet(cloud, args.fips)
                print(f"floating IP association -> first packet ({len(times)} rounds): "
                      f"p50 {pct(times, 0.5) * 1000:.0f} ms, p99 {pct(times, 0.99) * 1000:.0f} ms, "
                      f"max {max(times) * 1000:.0f} ms, mean {statistics.mean(times) * 1000:.0f} ms"
                      f"  load {os.getloadavg()}")
                print(f"floating IP association -> status ACTIVE: p50 {pct(active, 0.5) * 1000:.0f} ms, "
                      f"p99 {pct(active, 0.99) * 1000:.0f} ms (the first packet counts in it)")
            if args.snat_seconds:
                rate, fail = await asyncio.to_thread(snat_rate, cloud, args.snat_seconds)
                print(f"SNAT through one gateway node: {rate:.0f} new TCP connections/s "
                      f"({fail} failed) over {args.snat_seconds:g} s  load {os.getloadavg()}")
            for n in range(args.failovers):
                placed, gap = await failover_gap(cloud)
                print(f"failover {n + 1}: gateway moved {placed:.2f} s after the node died, "
                      f"ping gap {gap:.2f} s (agent_down_time {args.agent_down_time:g} s, "
                      f"report_interval 0.5 s)  load {os.getloadavg()}")


if __name__ == "__main__":
    asyncio.run(main())
