"""Benchmark the agent's datapath against a real Open vSwitch (userspace datapath, private run dir).

    .venv/bin/python bench/agent_flows.py [--neighbours 10000] [--deltas 200] [--single-subnet]
                                          [--dual-stack]
    .venv/bin/python bench/agent_flows.py --security [--local-ports 1000] [--groups 50]
                                          [--dummy-ports]

Prints: a goal state with N neighbours applied from scratch (compile + flow-mods + barrier); one
port delta to flows installed (p50/p99); a switch reconnect and an agent restart with nothing
changed (flow-mods sent, time). Needs root and openvswitch-switch. Targets (issue 4): 10,000
neighbours < 2 s, one delta p99 < 20 ms, reconnect: zero flow-mods and < 1 s. --dual-stack gives
every port an IPv6 address too, in a /64 beside each IPv4 subnet (on the same router).

--security (issue 11): 10,000 neighbours, 1,000 local ports, 50 security groups of 20 rules each
(half of them naming remote groups), every port in one group: flows installed and the apply from
scratch (target < 2 s), the flows of one local port and one neighbour, then one rule change (of a
class that exists, and one that adds a remote group to a group) and one membership change (a
neighbour and a local port moving group): flow-mods and time until the switch has them (target
p99 < 50 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog  # noqa: E402

from alcor.agent import fastcodec  # noqa: E402
from alcor.agent.config import AgentConfig  # noqa: E402
from alcor.agent.datapath import Datapath, DatapathConfig  # noqa: E402
from alcor.agent.ir import cookie_for, tap_name  # noqa: E402
from tests.support.ovs import OvsSandbox  # noqa: E402
from tests.support.wait import eventually  # noqa: E402

LOCAL_PORTS = 10
NODES = 100


def build_goal(n: int, single_subnet: bool, dual_stack: bool = False) -> dict[str, Any]:
    """Host node-0 with LOCAL_PORTS VMs; n neighbours on NODES other hosts; one VPC."""
    goal: dict[str, Any] = {"node_id": "node-0", "security_group": {}, "gateway": {}}
    goal["node"] = {
        f"node-{i}": {"id": f"node-{i}", "local_ip": f"172.31.{i // 250}.{i % 250 + 1}"}
        for i in range(NODES + 1)
    }
    goal["vpc"] = {"vpc1": {"id": "vpc1", "segmentation_id": 100}}
    goal["subnet"] = {
        "s1": {"id": "s1", "network_id": "vpc1", "cidr": "10.0.0.0/16", "gateway_ip": "10.0.0.1",
               "gateway_mac": "fa:16:3e:00:00:01"},
        "s2": {"id": "s2", "network_id": "vpc1", "cidr": "10.1.0.0/16", "gateway_ip": "10.1.0.1",
               "gateway_mac": "fa:16:3e:00:00:02"},
    }  # fmt: skip
    subnet_ids = ["s1", "s2"]
    if dual_stack:
        for k in (1, 2):
            goal["subnet"][f"s{k}v6"] = {
                "id": f"s{k}v6", "network_id": "vpc1", "cidr": f"2001:db8:{k}::/64",
                "gateway_ip": f"2001:db8:{k}::1", "gateway_mac": f"fa:16:3e:00:06:0{k}",
            }  # fmt: skip
            subnet_ids.append(f"s{k}v6")
    goal["router"] = {} if single_subnet else {"r1": {"id": "r1", "subnet_ids": subnet_ids}}
    goal["port"] = {}
    for i in range(LOCAL_PORTS + n):
        add_port(goal, i, single_subnet, dual_stack)
    return goal


def port_id(i: int) -> str:
    return f"{i:08x}-0000-4000-8000-{i:012x}"


def add_port(
    goal: dict[str, Any],
    i: int,
    single_subnet: bool,
    dual_stack: bool = False,
    local: int = LOCAL_PORTS,
) -> None:
    subnet = 0 if single_subnet else i % 2
    host = 0 if i < local else 1 + i % NODES
    goal["port"][port_id(i)] = {
        "id": port_id(i),
        "network_id": "vpc1",
        "mac_address": f"fa:16:3e:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}",
        "fixed_ips": [{"subnet_id": f"s{subnet + 1}", "ip_address": f"10.{subnet}.{i // 250}.{i % 250 + 2}"}],
        "node_id": f"node-{host}",
        "device_owner": "compute:nova",
        "admin_state_up": True,
        "allowed_address_pairs": [],
    }  # fmt: skip
    if dual_stack:
        goal["port"][port_id(i)]["fixed_ips"].append(
            {"subnet_id": f"s{subnet + 1}v6", "ip_address": f"2001:db8:{subnet + 1}::{i + 2:x}"}
        )


def cpu_ticks(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


# --- security groups ----------------------------------------------------------------------------


def sg_id(g: int) -> str:
    return f"5ec{g:05x}-0000-4000-8000-000000000000"


def sg_rules(g: int, groups: int) -> list[dict[str, Any]]:
    """20 rules: egress v4/v6, 10 tcp ports each from another remote group, and an assortment."""

    def rule(
        direction: str,
        ethertype: str = "IPv4",
        protocol: str | None = None,
        lo: int | None = None,
        hi: int | None = None,
        prefix: str | None = None,
        remote: int | None = None,
    ) -> dict[str, Any]:
        return {"direction": direction, "ethertype": ethertype, "protocol": protocol,
                "port_range_min": lo, "port_range_max": hi if hi is not None else lo,
                "remote_ip_prefix": prefix,
                "remote_group_id": sg_id(remote % groups) if remote is not None else None}  # fmt: skip

    return [
        rule("egress"),
        rule("egress", "IPv6"),
        *(rule("ingress", protocol="tcp", lo=1000 + i, remote=g + i) for i in range(10)),
        rule("ingress", protocol="tcp", lo=2000, hi=2999, prefix="10.0.0.0/8"),
        rule("ingress", protocol="udp", lo=53),
        rule("ingress", protocol="icmp", lo=8),
        rule("ingress", "IPv6", protocol="tcp", lo=22),
        rule("ingress", protocol="tcp", lo=443, remote=g),
        rule("ingress", protocol="tcp", lo=8000, hi=8080),
        rule("ingress", protocol="tcp", lo=3306, prefix="10.1.0.0/16"),
        rule("ingress", protocol="udp", lo=5000, hi=5100, remote=g + 1),
    ]


def build_security_goal(neighbours: int, local: int, groups: int) -> dict[str, Any]:
    goal = build_goal(0, single_subnet=False)
    goal["port"] = {}
    for i in range(local + neighbours):
        add_port(goal, i, single_subnet=False, local=local)
        goal["port"][port_id(i)]["security_group_ids"] = [sg_id(i % groups)]
    goal["security_group"] = {
        sg_id(g): {"id": sg_id(g), "stateful": True, "rules": sg_rules(g, groups)}
        for g in range(groups)
    }
    return goal


async def security_bench(args: argparse.Namespace) -> None:
    local, groups = args.local_ports, args.groups
    goal = build_security_goal(args.neighbours, local, groups)
    # --dummy-ports: OVS dummy interfaces rather than internal ports (taps), as bench/agent_dhcp.py
    # has them: the userspace datapath polls every tap on each pass of its main loop, so 1,000
    # taps make every round trip to the switch wait on polling a real host's kernel datapath
    # does not do
    vswitchd_args = ("--enable-dummy",) if args.dummy_ports else ()
    port_type = "type=dummy" if args.dummy_ports else "type=internal"
    with (
        tempfile.TemporaryDirectory() as tmp,
        OvsSandbox.started(Path(tmp) / "ovs", vswitchd_args=vswitchd_args) as ovs,
    ):
        cfg = DatapathConfig(
            node_id="node-0",
            listen="tcp:127.0.0.1:6798",
            netns=ovs.netns.name,
            ovs_db=ovs.db,
            flow_mod_connections=args.connections,
        )
        dp = Datapath(cfg)
        await dp.start()
        await dp.wait_connected()
        cmd: list[str] = []
        for i in range(local):
            name = tap_name(port_id(i))
            cmd += [
                "--",
                "add-port",
                "br-int",
                name,
                "--",
                "set",
                "interface",
                name,
                port_type,
            ]
        ovs.vsctl(*cmd[1:])
        await eventually(lambda: dp.switch and len(dp.switch.ports) >= local + 1, 120, interval=0.01)
        await asyncio.sleep(0.5)

        gc.collect()
        vswitchd = int((ovs.dir / "ovs-vswitchd.pid").read_text())
        t0, c0, o0 = time.perf_counter(), time.process_time(), cpu_ticks(vswitchd)
        statuses = await dp.apply(goal)
        t_full, c_full = time.perf_counter() - t0, time.process_time() - c0
        o_full = cpu_ticks(vswitchd) - o0
        phases = dict(dp.last_timings)
        report = dp.last_report
        assert report is not None
        active = sum(1 for st in statuses.values() if st[0] == "ACTIVE")
        flows = ovs.dump_flows()
        by_cookie: dict[str, int] = {}
        for f in flows:
            c = f.split(",", 1)[0]
            by_cookie[c] = by_cookie.get(c, 0) + 1

        def count(rtype: str, rid: str) -> int:
            return by_cookie.get(f"cookie={cookie_for(rtype, rid):#x}", 0)

        mine = count("port", port_id(0)) + count("member", port_id(0))
        theirs = count("port", port_id(local)) + count("member", port_id(local))
        sg_flows = sum(count("security_group", sg_id(g)) for g in range(groups))
        rules = len(sg_rules(0, groups))
        load = os.getloadavg()[0]
        print(
            f"machine                    load {load:.1f} on {os.cpu_count()} CPUs (1-min average)"
        )
        print(f"security groups            {groups} x {rules} rules (12 naming remote groups)")
        print(
            f"neighbours / local ports   {args.neighbours} / {local}  ACTIVE {active}/{local}"
            f"  ({'OVS dummy interfaces' if args.dummy_ports else 'internal ports (taps)'})"
        )
        print(
            f"flows installed            {len(flows)}  (flow-mods sent: {report.adds + report.deletes})"
        )
        print(
            f"apply from scratch         {t_full * 1000:.0f} ms  (zones, compile, flow-mods on"
            f" {dp.config.flow_mod_connections} connections, barriers; agent CPU {c_full * 1000:.0f} ms)"
        )
        print(
            f"  where it went            zones {phases['zones'] * 1000:.0f} ms, compile"
            f" {phases['compile'] * 1000:.0f} ms, read-back + encode + flow-mods + barriers"
            f" {phases['switch'] * 1000:.0f} ms; ovs-vswitchd CPU {o_full * 1000:.0f} ms"
        )
        print(
            f"flows per local port       {mine}  (per neighbour: {theirs}; the groups' own, all"
            f" {groups}: {sg_flows})"
        )

        # the agent takes the collection it owes after a bulk apply once applies pause (1 s)
        await asyncio.sleep(2.5)

        phase_lat: dict[str, list[float]] = {}

        async def timed(changes: list[dict[str, Any]]) -> tuple[list[float], list[int]]:
            lat, mods = [], []
            phase_lat.clear()
            for nxt in changes:
                t0 = time.perf_counter()
                await dp.apply(nxt)
                lat.append(time.perf_counter() - t0)
                r = dp.last_report
                mods.append((r.adds + r.deletes) if r else 0)
                for k, v in dp.last_timings.items():
                    phase_lat.setdefault(k, []).append(v)
            return lat, mods

        def with_group(g: int, rules: list[dict[str, Any]]) -> dict[str, Any]:
            nxt = dict(goal)
            nxt["security_group"] = dict(goal["security_group"])
            nxt["security_group"][sg_id(g)] = {"id": sg_id(g), "stateful": True, "rules": rules}
            return nxt

        def with_member(i: int, g: int) -> dict[str, Any]:
            nxt = dict(goal)
            nxt["port"] = dict(goal["port"])
            nxt["port"][port_id(i)] = {**goal["port"][port_id(i)], "security_group_ids": [sg_id(g)]}
            return nxt

        n = args.deltas
        base = sg_rules(0, groups)
        same_class = {**base[2], "port_range_min": 1900, "port_range_max": 1900}  # remote g+0
        new_class = {**base[2], "port_range_min": 1901, "port_range_max": 1901,
                     "remote_group_id": sg_id(groups // 2)}  # fmt: skip
        cases = {
            "rule (existing class)": [
                with_group(0, [*base, same_class]) if k % 2 == 0 else goal for k in range(n)
            ],
            "rule (new remote group)": [
                with_group(0, [*base, new_class]) if k % 2 == 0 else goal for k in range(n)
            ],
            "membership (neighbour)": [
                with_member(local + 7, 3) if k % 2 == 0 else goal for k in range(n)
            ],
            "membership (local port)": [
                with_member(7, 3) if k % 2 == 0 else goal for k in range(n)
            ],
        }
        for label, changes in cases.items():
            lat, mods = await timed(changes)
            print(
                f"{label:<27}p50 {pct(lat, 50) * 1000:.2f} ms  p99 {pct(lat, 99) * 1000:.2f} ms"
                f"  max {max(lat) * 1000:.2f} ms  flow-mods {min(mods)}-{max(mods)}  ({n} changes)"
            )
            print(
                f"{'':<27}p50 compile {pct(phase_lat['compile'], 50) * 1000:.1f} ms, switch"
                f" (read-back, flow-mods, barriers) {pct(phase_lat['switch'], 50) * 1000:.1f} ms;"
                f" load {os.getloadavg()[0]:.1f}"
            )

        # the agent restarts: same zones (from OVSDB), nothing to send
        zones = dict(dp.port_zones)
        await dp.stop()
        dp = Datapath(cfg)
        await dp.start()
        await dp.wait_connected()
        t0 = time.perf_counter()
        await dp.apply(goal)
        t_restart = time.perf_counter() - t0
        r = dp.last_report
        assert r is not None
        print(
            f"agent restart, same goal   {t_restart * 1000:.0f} ms  read back {r.read_back}"
            f"  flow-mods {r.adds + r.deletes}  zones kept: {dict(dp.port_zones) == zones}"
        )
        await dp.stop()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--neighbours", type=int, default=10_000)
    ap.add_argument("--deltas", type=int, default=200)
    ap.add_argument("--security", action="store_true", help="the security group scenario")
    ap.add_argument("--local-ports", type=int, default=1000, help="with --security")
    ap.add_argument("--groups", type=int, default=50, help="with --security")
    ap.add_argument(
        "--connections",
        type=int,
        default=AgentConfig.flow_mod_connections,
        help="with --security: [agent] flow_mod_connections",
    )
    ap.add_argument(
        "--dummy-ports",
        action="store_true",
        help="with --security: local ports are OVS dummy interfaces, not taps the datapath polls",
    )
    ap.add_argument("--single-subnet", action="store_true", help="no router: no L3 flows")
    ap.add_argument("--dual-stack", action="store_true", help="an IPv6 address on every port too")
    ap.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() after the first apply (what a long-lived agent process could do)",
    )
    args = ap.parse_args()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.DEBUG if os.environ.get("BENCH_LOG") else logging.WARNING
        )
    )
    if args.security:
        await security_bench(args)
        return

    goal = build_goal(args.neighbours, args.single_subnet, args.dual_stack)
    with tempfile.TemporaryDirectory() as tmp, OvsSandbox.started(Path(tmp) / "ovs") as ovs:
        cfg = DatapathConfig(
            node_id="node-0", listen="tcp:127.0.0.1:6799", netns=ovs.netns.name, ovs_db=ovs.db
        )
        dp = Datapath(cfg)
        await dp.start()
        await dp.wait_connected()
        for i in range(LOCAL_PORTS):
            name = tap_name(port_id(i))
            ovs.vsctl("add-port", "br-int", name, "--", "set", "interface", name, "type=internal")
        await eventually(lambda: dp.switch and len(dp.switch.ports) >= LOCAL_PORTS + 1)
        await asyncio.sleep(0.2)  # let the port-status reconciles (no goal yet: no-ops) settle

        # 1. the whole goal state from scratch
        gc.collect()
        t0 = time.perf_counter()
        statuses = await dp.apply(goal)
        t_full = time.perf_counter() - t0
        report = dp.last_report
        assert report is not None
        active = sum(1 for s in statuses.values() if s[0] == "ACTIVE")
        flows = len(ovs.dump_flows())
        print(
            f"neighbours                 {args.neighbours}  (router: {not args.single_subnet},"
            f" dual stack: {args.dual_stack})"
        )
        print(
            f"flows installed            {flows}  (flow-mods sent: {report.adds + report.deletes})"
        )
        print(f"apply from scratch         {t_full * 1000:.0f} ms  (compile+flow-mods+barrier)")
        print(f"local ports ACTIVE         {active}/{LOCAL_PORTS}")
        if args.gc_freeze:
            gc.collect()
            gc.freeze()

        # 2. one port delta at a time: a neighbour appears, then goes
        lat: list[float] = []
        extra = LOCAL_PORTS + args.neighbours
        for k in range(args.deltas):
            nxt = dict(goal)
            nxt["port"] = dict(goal["port"])
            if k % 2 == 0:
                add_port(nxt, extra + k, args.single_subnet, args.dual_stack)
            else:
                del nxt["port"][port_id(extra + k - 1)]
            t0 = time.perf_counter()
            await dp.apply(nxt)
            lat.append(time.perf_counter() - t0)
            goal = nxt
        r = dp.last_report
        print(
            f"one port delta             p50 {pct(lat, 50) * 1000:.2f} ms  p99 {pct(lat, 99) * 1000:.2f} ms"
            f"  max {max(lat) * 1000:.2f} ms (#{lat.index(max(lat))})"
            f"  ({args.deltas} deltas; last: +{r.adds if r else 0}"
            f" -{r.deletes if r else 0} flow-mods)"
        )

        # 3. the switch reconnects, nothing changed: right after the deltas, and after a pause
        #    (the agent computes read-back signatures while idle, see Datapath._warm_signatures)
        for label, pause in (("switch reconnect (busy)", 0.0), ("switch reconnect (idle)", 3.0)):
            await asyncio.sleep(pause)
            assert dp.switch is not None
            full = dp.counters["full"]
            await dp.switch.close()
            await eventually(lambda full=full: dp.counters["full"] > full)
            r = dp.last_report
            assert r is not None
            print(
                f"{label:<27}{r.seconds * 1000:.0f} ms reconcile  read back {r.read_back}"
                f"  flow-mods {r.adds + r.deletes}"
            )

        # 4. the agent restarts (new Datapath, cold caches), nothing changed
        await dp.stop()
        for cache in (
            fastcodec._decode_oxm,
            fastcodec._decode_action,
            fastcodec._oxm_bytes,
            fastcodec.action_bytes,
        ):
            cache.cache_clear()
        dp = Datapath(cfg)
        await dp.start()
        await dp.wait_connected()
        t0 = time.perf_counter()
        await dp.apply(goal)
        t_restart = time.perf_counter() - t0
        r = dp.last_report
        assert r is not None
        print(
            f"agent restart, same goal   {t_restart * 1000:.0f} ms  read back {r.read_back}"
            f"  flow-mods {r.adds + r.deletes}"
        )
        await dp.stop()


if __name__ == "__main__":
    asyncio.run(main())
