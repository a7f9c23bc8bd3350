"""Benchmark the agent's DHCP server on a real Open vSwitch: N VMs asking for an address at once.

    sudo .venv/bin/python bench/agent_dhcp.py [--vms 1000] [--rounds 3]

N local ports on one DHCP subnet; a client process runs DISCOVER -> OFFER -> REQUEST -> ACK for
all of them at once, resending after 2 s as dhclient would. Prints, per round: the time from the
first DISCOVER to the last ACK (target < 1 s for 1,000 VMs), each VM's time to its ACK (p50,
p99), the resends, and the CPU the agent (this process) and ovs-vswitchd used meanwhile. Needs
root and openvswitch-switch.

The ports are OVS "dummy" interfaces (ovs-vswitchd --enable-dummy), each with a unix socket the
client sends and receives the VM's frames on, rather than taps: the userspace datapath reads
every tap once per main-loop pass (38 % of a core with 100 idle taps, a saturated core long
before 1,000), so 1,000 taps would measure that polling, which the kernel datapath of a real
host does not have. From the port on, everything is the real path: the port's DHCP flow, its
meter, the upcall and packet-in, the agent, the packet-out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog  # noqa: E402

from alcor.agent import dhcp  # noqa: E402
from alcor.agent.datapath import Datapath, DatapathConfig  # noqa: E402
from alcor.agent.ir import tap_name  # noqa: E402
from tests.support.ovs import OvsSandbox  # noqa: E402

SERVER_IP = "10.0.0.1"


def port_id(i: int) -> str:
    return f"{i:08x}-0000-4000-8000-{i:012x}"


def mac(i: int) -> str:
    return f"fa:16:3e:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}"


def ip(i: int) -> str:
    return f"10.0.{(i + 2) // 250}.{(i + 2) % 250 + 2}"


def build_goal(n: int) -> dict[str, Any]:
    goal: dict[str, Any] = {"node_id": "node-0", "security_group": {}, "gateway": {}, "router": {}}
    goal["node"] = {"node-0": {"id": "node-0", "local_ip": "172.31.0.1"}}
    goal["vpc"] = {"vpc1": {"id": "vpc1", "segmentation_id": 100, "mtu": 1450}}
    goal["subnet"] = {
        "s1": {"id": "s1", "network_id": "vpc1", "cidr": "10.0.0.0/16", "ip_version": 4,
               "gateway_ip": SERVER_IP, "gateway_mac": "fa:16:3e:00:00:01", "enable_dhcp": True,
               "dns_nameservers": ["10.0.0.2"],
               "host_routes": [{"destination": "192.168.0.0/16", "nexthop": "10.0.0.254"}]},
    }  # fmt: skip
    goal["port"] = {
        port_id(i): {
            "id": port_id(i),
            "network_id": "vpc1",
            "mac_address": mac(i),
            "node_id": "node-0",
            "fixed_ips": [{"subnet_id": "s1", "ip_address": ip(i)}],
            "device_owner": "compute:nova",
            "admin_state_up": True,
            "allowed_address_pairs": [],
        }  # fmt: skip
        for i in range(n)
    }
    return goal


# The VMs: one unix socket per port (netdev-dummy frames each packet with a 2-byte length),
# all asking at once. Frames are built before the clock starts (a VM's kernel does not share
# the host's CPU), and replies are recognised by a few bytes.
CLIENTS = r"""
import json, selectors, socket, struct, sys, time
spec = json.loads(sys.stdin.read())
sel = selectors.DefaultSelector()
vms = []
for path, discover, request in spec["vms"]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.setblocking(False)
    d, r = bytes.fromhex(discover), bytes.fromhex(request)
    vm = {"s": s, "d": struct.pack("!H", len(d)) + d, "r": struct.pack("!H", len(r)) + r,
          "state": 0, "sent": 0.0, "start": 0.0, "done": 0.0, "buf": b""}
    vms.append(vm)
    sel.register(s, selectors.EVENT_READ, vm)
time.sleep(0.5)  # ovs-vswitchd accepts the connections in its main loop
resend = 0
t0 = time.monotonic()
for vm in vms:
    vm["s"].send(vm["d"])
    vm["start"] = vm["sent"] = time.monotonic()
left = len(vms)
deadline = t0 + spec["timeout"]
while left and time.monotonic() < deadline:
    for key, _ in sel.select(0.05):
        vm = key.data
        try:
            vm["buf"] += vm["s"].recv(65536)
        except BlockingIOError:
            continue
        while len(vm["buf"]) >= 2 and len(vm["buf"]) >= 2 + struct.unpack("!H", vm["buf"][:2])[0]:
            n = struct.unpack("!H", vm["buf"][:2])[0]
            data, vm["buf"] = vm["buf"][2 : 2 + n], vm["buf"][2 + n :]
            if len(data) < 282 or data[36:38] != b"\x00\x44":  # UDP to port 68 only
                continue
            opts = data[282:]
            if vm["state"] == 0 and b"\x35\x01\x02" in opts:  # OFFER
                vm["state"] = 1
                vm["s"].send(vm["r"])
                vm["sent"] = time.monotonic()
            elif vm["state"] == 1 and b"\x35\x01\x05" in opts:  # ACK
                vm["state"] = 2
                vm["done"] = time.monotonic()
                left -= 1
    now = time.monotonic()
    for vm in vms:
        if vm["state"] < 2 and now - vm["sent"] > 2.0:  # as a client would, after a while
            vm["s"].send(vm["r"] if vm["state"] else vm["d"])
            vm["sent"] = now
            resend += 1
done = [vm["done"] - vm["start"] for vm in vms if vm["state"] == 2]
last = max((vm["done"] for vm in vms if vm["state"] == 2), default=t0)
print(json.dumps({"acked": len(done), "last": last - t0, "each": sorted(done), "resend": resend}))
"""


def cpu_ticks(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] if values else 0.0


async def one_round(dp: Datapath, ovs: OvsSandbox, n: int, spec: dict[str, Any]) -> dict[str, Any]:
    vswitchd = int((ovs.dir / "ovs-vswitchd.pid").read_text())
    before_in = dp.counters["dhcp_packet_in"]
    cpu0, ovs0 = resource.getrusage(resource.RUSAGE_SELF), cpu_ticks(vswitchd)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENTS, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    out, _ = await proc.communicate(json.dumps(spec).encode())
    cpu1, ovs1 = resource.getrusage(resource.RUSAGE_SELF), cpu_ticks(vswitchd)
    result: dict[str, Any] = json.loads(out)
    result["agent_cpu"] = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    result["ovs_cpu"] = ovs1 - ovs0
    result["packet_in"] = dp.counters["dhcp_packet_in"] - before_in
    return result


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.DEBUG if os.environ.get("BENCH_LOG") else logging.WARNING
        )
    )
    n = args.vms
    goal = build_goal(n)
    spec = {
        "timeout": 30,
        "vms": [
            (
                tap_name(port_id(i)),
                dhcp.client_frame(dhcp.DISCOVER, mac(i), xid=i + 1).hex(),
                dhcp.client_frame(
                    dhcp.REQUEST, mac(i), xid=i + 1, requested_ip=ip(i), server_id=SERVER_IP
                ).hex(),
            )
            for i in range(n)
        ],
    }
    with (
        tempfile.TemporaryDirectory() as tmp,
        OvsSandbox.started(Path(tmp) / "ovs", vswitchd_args=("--enable-dummy",)) as ovs,
    ):
        cfg = DatapathConfig(
            node_id="node-0", listen="tcp:127.0.0.1:6798", netns=ovs.netns.name, ovs_db=ovs.db,
        )  # fmt: skip
        dp = Datapath(cfg)
        await dp.start()
        await dp.wait_connected()
        names = [tap_name(port_id(i)) for i in range(n)]
        for k in range(0, n, 200):
            cmd: list[str] = []
            for i in range(k, min(n, k + 200)):
                cmd += ["--", "add-port", "br-int", names[i], "--", "set", "interface", names[i],
                        "type=dummy", f"options:pstream=punix:{ovs.dir}/vm{i}.sock"]  # fmt: skip
            ovs.vsctl(*cmd)
        spec["vms"] = [(f"{ovs.dir}/vm{i}.sock", d, r) for i, (_, d, r) in enumerate(spec["vms"])]
        deadline = time.monotonic() + 60
        while not (dp.switch and all(name in dp.switch.ports for name in names)):
            assert time.monotonic() < deadline, "ports not seen"
            await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        statuses = await dp.apply(goal)
        t_apply = time.perf_counter() - t0
        active = sum(1 for s in statuses.values() if s[0] == "ACTIVE")
        meters = len(dp._compiler.meters)
        print(f"VMs (local ports, one DHCP subnet)   {n}  ({active} ACTIVE)")
        print(f"goal applied, flows + {meters} meters    {t_apply * 1000:.0f} ms")
        await asyncio.sleep(1.0)  # let the GC that a bulk apply owes run before the clock starts
        vswitchd = int((ovs.dir / "ovs-vswitchd.pid").read_text())
        idle0 = cpu_ticks(vswitchd)
        await asyncio.sleep(2.0)
        idle = (cpu_ticks(vswitchd) - idle0) / 2 * 100
        print(f"ovs-vswitchd idle, {n} ports        {idle:.0f} % of a core")
        for r in range(args.rounds):
            res = await one_round(dp, ovs, n, spec)
            each = res["each"]
            print(
                f"round {r + 1}: {res['acked']}/{n} ACKed, last ACK after {res['last'] * 1000:.0f} ms"
                f"  (per VM p50 {pct(each, 50) * 1000:.0f} ms, p99 {pct(each, 99) * 1000:.0f} ms;"
                f" resends {res['resend']}; packet-ins {res['packet_in']})"
            )
            busy = max(res["last"], 1e-9)
            print(
                f"         agent CPU {res['agent_cpu'] * 1000:.0f} ms"
                f" ({res['agent_cpu'] / busy * 100:.0f} % of a core over the burst),"
                f" ovs-vswitchd CPU {res['ovs_cpu'] * 1000:.0f} ms;"
                f" agent answer p99 {pct(sorted(dp.dhcp.answer_seconds), 99) * 1000:.1f} ms"
            )
            dp.dhcp.answer_seconds.clear()
            await asyncio.sleep(1.0)
        await dp.stop()


if __name__ == "__main__":
    asyncio.run(main())
