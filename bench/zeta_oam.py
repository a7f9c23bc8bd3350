"""Benchmark the agent's OAM direct path against a real Open vSwitch (userspace datapath, private
run dir, own network namespace).

    .venv/bin/python bench/zeta_oam.py [--latency 500] [--burst 20000]

Prints: time from an OAM inject received to its direct-path flow installed and confirmed by a
barrier (p50/p99, one message at a time; target < 5 ms), and OAM messages/s handled when a
sender blasts injects with distinct 5-tuples (flows batched per barrier). Needs root and
openvswitch-switch.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog  # noqa: E402

from alcor.agent import zeta  # noqa: E402
from alcor.agent.datapath import Datapath, DatapathConfig  # noqa: E402
from alcor.agent.oam import udp_socket  # noqa: E402
from tests.support.goals import GoalBuilder  # noqa: E402
from tests.support.ovs import OvsSandbox  # noqa: E402

HOST_IP, FWD_IP, PEER_IP = "172.31.254.1", "172.31.254.9", "172.31.254.2"
VNI = 100


def goal() -> Any:
    g = GoalBuilder("node-a").node("node-a", HOST_IP).node("node-b", PEER_IP).vpc("v1", VNI)
    g.subnet("s1", "v1", "10.0.0.0/16", "10.0.0.1", "fa:16:3e:00:00:01")
    g.port("p1000000-aaaa", "v1", "s1", "10.0.0.5", "fa:16:3e:00:00:05", node="node-b")
    g.res["vpc"]["v1"]["gateway_ids"] = ["gw1"]
    g.res["gateway"]["gw1"] = {
        "id": "gw1",
        "type": "zeta",
        "vpc_id": "v1",
        "status": "ready",
        "destinations": [{"ip": FWD_IP, "mac": "02:00:00:00:00:09"}],
        "oam_port": 8300,
    }
    return g.goal()


def inject(i: int) -> bytes:
    """An inject for flow i: distinct source port and destination per message."""
    dst = f"10.0.{1 + i // 250 % 250}.{1 + i % 250}"
    return zeta.encode_oam(
        zeta.OamMessage(
            zeta.OP_INJECT,
            "10.0.0.5",
            dst,
            1024 + i % 60000,
            80,
            6,
            VNI,
            dst,
            PEER_IP,
            "fa:16:3e:00:00:06",
            "02:00:00:00:00:02",
            30,
        )
    )


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


async def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory() as tmp, OvsSandbox.started(Path(tmp) / "ovs") as ovs:
        ns = ovs.netns
        for ip in (HOST_IP, FWD_IP):  # on lo: the OAM path is host-local here, OVS is not
            ns.exec("ip", "addr", "add", f"{ip}/32", "dev", "lo")
        dp = Datapath(
            DatapathConfig(
                node_id="node-a", listen="tcp:127.0.0.1:6791", netns=ns.name, ovs_db=ovs.db
            )
        )
        await dp.start()
        try:
            await dp.wait_connected(10)
            await dp.apply(goal())
            oam = dp.zeta
            sender = await asyncio.to_thread(udp_socket, FWD_IP, 0, ns.name)
            sender.setblocking(True)

            # latency: one message at a time, as a FWD sends them for new flows
            for i in range(args.latency):
                n = len(oam.latencies)
                sender.sendto(inject(i), (HOST_IP, 8300))
                while len(oam.latencies) == n:  # noqa: ASYNC110  (the agent runs in this loop)
                    await asyncio.sleep(0)
            lat = list(oam.latencies)[-args.latency :]
            print(
                f"OAM received -> direct flow installed (barrier): n={len(lat)} "
                f"p50={pct(lat, 0.5):.2f} ms p99={pct(lat, 0.99):.2f} ms "
                f"mean={statistics.mean(lat) * 1000:.2f} ms"
            )

            # throughput: a burst from another process, as fast as it can send
            before = oam.counters["injected"]
            script = (
                "import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
                f"s.bind(('{FWD_IP}',0));d=[bytes.fromhex(x) for x in sys.stdin.read().split()];"
                "import time;t=time.perf_counter();"
                f"[s.sendto(m,('{HOST_IP}',8300)) for m in d];"
                "print(len(d)/(time.perf_counter()-t))"
            )
            payload = "\n".join(inject(args.latency + i).hex() for i in range(args.burst))
            start = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(
                "ip",
                "netns",
                "exec",
                ns.name,
                sys.executable,
                "-c",
                script,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await proc.communicate(payload.encode())
            last, last_change = before, time.perf_counter()
            while time.perf_counter() - last_change < 1.0:
                await asyncio.sleep(0.05)
                if oam.counters["injected"] != last:
                    last, last_change = oam.counters["injected"], time.perf_counter()
            handled = last - before
            secs = last_change - start
            flows = ovs.ofctl(
                "dump-aggregate", "br-int", f"cookie={zeta.DIRECT_TAG:#x}/0xffff000000000000"
            )
            print(
                f"burst: sent {args.burst} at {float(out or 0):.0f}/s; injected {handled} in "
                f"{secs:.2f} s = {handled / secs:.0f} OAM messages/s "
                f"({args.burst - handled} lost in socket buffers); switch: {flows.strip()}"
            )
            print(f"counters: {oam.counters}")
            sender.close()
        finally:
            await dp.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latency", type=int, default=500, help="messages sent one at a time")
    p.add_argument("--burst", type=int, default=20000, help="messages sent back to back")
    asyncio.run(main(p.parse_args()))
