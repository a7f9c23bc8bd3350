"""Fault drills: each injects one failure while ports are being created, then requires the whole
system to converge (every node's digest equal to its goal, every accepted port ACTIVE) and
`Harness.verify()` to find nothing lost. A drill raises `CheckFailed` when it does not hold.

`converge_s` is measured from the moment the fault was over *and* the drill's last port was
accepted to the moment everything had converged: the figure the 10-second target is about.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from bench.e2e.harness import CheckFailed, Harness
from bench.southbound_dispatch import pct
from tests.support.ovs import OvsSandbox

log = structlog.get_logger("bench.e2e")

TARGET_S = 10.0


def q_ms(xs: list[float], q: float) -> float:
    """Quantile in ms (the dispatch benchmark's), NaN for no samples."""
    return pct(xs, q) if xs else float("nan")


def dump_with_stats(ovs: OvsSandbox) -> list[str]:
    """br-int's flows with their counters, port numbers replaced by interface names: a restarted
    ovs-vswitchd may number the interfaces differently, and the same flow must compare equal."""
    names = {}
    rows = ovs.vsctl("--format=csv", "--no-headings", "--columns=ofport,name", "list", "interface")
    for row in rows.splitlines():
        num, _, name = row.partition(",")
        names[num.strip()] = name.strip().strip('"')

    def named(m: re.Match[str]) -> str:
        return m.group(1) + names.get(m.group(2), m.group(2))

    def sort_outputs(m: re.Match[str]) -> str:
        # A flood flow lists its outputs in ofport order, which a restart may change.
        return ",".join(sorted(m.group(0).split(",")))

    lines = ovs.ofctl("dump-flows", "br-int").splitlines()
    return [
        _OUTPUTS.sub(sort_outputs, _PORT.sub(named, ln.strip())) for ln in lines if "cookie=" in ln
    ]


_PORT = re.compile(r"(in_port=|output:)(\d+)")
_OUTPUTS = re.compile(r"output:[\w-]+(?:,output:[\w-]+)+")


@dataclass
class DrillResult:
    name: str
    ports: int
    converge_s: float
    fault_s: float  # how long the fault itself lasted (restart time, command time)
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def within_target(self) -> bool:
        return self.converge_s <= TARGET_S


async def _mid_burst(
    h: Harness, name: str, ports: int, fault: Callable[[], Awaitable[float]], timeout: float
) -> DrillResult:
    """A burst of `ports`; once a third of it is accepted, inject `fault` (returns its length)."""
    before = len(h.ports)
    burst = asyncio.create_task(h.create(ports, f"drill:{name}"))
    while len(h.ports) - before < ports // 3 and not burst.done():  # noqa: ASYNC110 -- polls a count
        await asyncio.sleep(0.01)
    h.mark(f"{name}: fault")
    fault_s = await fault()
    cleared = h.mark(f"{name}: fault over")
    await burst
    loaded = time.time()
    converged = await h.wait_converged(timeout)
    h.mark(f"{name}: converged")
    checked = await h.verify()
    return DrillResult(
        name,
        ports,
        converged - max(cleared, loaded),
        fault_s,
        {"verify": checked, "unknown_outcomes": h.unknown_outcomes},
    )


async def controller_restart(h: Harness, ports: int, timeout: float = 120.0) -> DrillResult:
    """SIGKILL the controller mid-burst and start it again on the same database."""
    return await _mid_burst(
        h,
        "controller_restart",
        ports,
        lambda: h.cluster.restart_controller(signal.SIGKILL),
        timeout,
    )


async def broker_connections_closed(h: Harness, ports: int, timeout: float = 120.0) -> DrillResult:
    """`rabbitmqctl close_all_connections` mid-burst: controller, agents and harness reconnect."""

    async def close_all() -> float:
        t0 = time.monotonic()
        await asyncio.to_thread(
            subprocess.run,
            ["rabbitmqctl", "close_all_connections", "alcor e2e drill"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        return time.monotonic() - t0

    return await _mid_burst(h, "mq_close_all", ports, close_all, timeout)


async def restart_simulated_agents(
    h: Harness, count: int, rate: float, seconds: float, timeout: float = 120.0
) -> DrillResult:
    """Restart `count` simulated agents at once (a snapshot storm) while ports keep coming at
    `rate`/s; the other nodes' API → ACTIVE latency must stay within 2x the same load's without
    the storm (median and p95)."""
    c = h.cluster
    assert c.fleet is not None
    first = 1 if c.real_agent else 0
    victims = list(range(first, min(c.n_nodes, first + count)))
    victim_ids = [c.node_ids[i] for i in victims]
    others = [i for i in range(c.n_nodes) if i not in set(victims)]
    n = max(1, int(rate * seconds))
    base_ids = await h.create(n, "drill:agents:baseline", rate=rate, nodes=others)
    await h.wait_converged(timeout)
    h.mark("agents_restart: fault")
    storm = asyncio.create_task(h.create(n, "drill:agents:storm", rate=rate))
    t0 = time.monotonic()
    await c.fleet.restart(victim_ids)
    fault_s = time.monotonic() - t0
    cleared = h.mark("agents_restart: fault over")
    storm_ids = await storm
    loaded = time.time()
    converged = await h.wait_converged(timeout)
    h.mark("agents_restart: converged")
    checked = await h.verify()
    after = await c.fleet.report()

    def lat(ids: list[str], nodes: set[int]) -> list[float]:
        return [h.active_at[p] - h.ports[p].accepted for p in ids if h.ports[p].node in nodes]

    base = lat(base_ids, set(others))
    during = lat(storm_ids, set(others))
    on_victims = lat(storm_ids, set(victims))
    # A restarted agent is a new AgentStream: its counters start again from zero.
    snapshots = [after[v].snapshots for v in victim_ids]
    detail = {
        "restarted": len(victims),
        "baseline_ms": {"p50": q_ms(base, 0.5), "p95": q_ms(base, 0.95), "p99": q_ms(base, 0.99)},
        "storm_others_ms": {
            "p50": q_ms(during, 0.5),
            "p95": q_ms(during, 0.95),
            "p99": q_ms(during, 0.99),
        },
        "storm_restarted_ms": {"p50": q_ms(on_victims, 0.5), "p99": q_ms(on_victims, 0.99)}
        if on_victims
        else {},
        "snapshots_per_restarted_agent": sorted(set(snapshots)),
        "verify": checked,
    }
    result = DrillResult("agents_restart", 2 * n, converged - max(cleared, loaded), fault_s, detail)
    if min(snapshots) < 1:
        raise CheckFailed(f"a restarted agent got no snapshot: {detail}")
    for q in ("p50", "p95"):
        b, s = detail["baseline_ms"][q], detail["storm_others_ms"][q]
        if s > 2 * b:
            raise CheckFailed(
                f"other nodes' {q} API→ACTIVE latency {s:.0f} ms during the storm "
                f"is over 2x the baseline {b:.0f} ms: {detail}"
            )
    return result


_STATS = re.compile(r"(duration|n_packets|n_bytes|idle_age|hard_age)=[^,\s]+,?\s*")


def flows_by_key(dump: list[str]) -> dict[str, float]:
    """A flow dump as {flow without its counters: seconds it has existed}."""
    out = {}
    for line in dump:
        m = re.search(r"duration=([0-9.]+)s", line)
        out[_STATS.sub("", line).strip()] = float(m.group(1)) if m else 0.0
    return out


async def restart_real_agent(h: Harness, ports: int, timeout: float = 120.0) -> DrillResult:
    """Restart the real agent while ports are being created (a tenth of them on each second).

    No flow that is still wanted may be removed, even for a moment: each such flow's age on the
    switch must have kept growing across the restart (a delete and re-add resets it).
    """
    c = h.cluster
    assert c.ovs is not None and c.agent is not None
    ovs = c.ovs
    load = asyncio.create_task(h.create(ports, "drill:agent_restart", rate=max(ports / 10, 1)))
    before = flows_by_key(await asyncio.to_thread(dump_with_stats, ovs))
    t_before = time.monotonic()
    h.mark("agent_restart: fault")
    t0 = time.monotonic()
    await c.restart_agent()
    fault_s = time.monotonic() - t0
    cleared = h.mark("agent_restart: fault over")
    await h.wait_converged(timeout)
    after = flows_by_key(await asyncio.to_thread(dump_with_stats, ovs))
    elapsed = time.monotonic() - t_before
    kept = [k for k in before if k in after]
    reset = [k for k in kept if after[k] + 0.5 < before[k] + elapsed]
    if reset:
        raise CheckFailed(
            f"{len(reset)} of {len(kept)} still-wanted flows were removed and "
            f"re-added by the agent restart (e.g. {reset[:2]})"
        )
    await load
    loaded = time.time()
    converged = await h.wait_converged(timeout)
    h.mark("agent_restart: converged")
    checked = await h.verify()
    return DrillResult(
        "agent_restart",
        ports,
        converged - max(cleared, loaded),
        fault_s,
        {"flows_kept": len(kept), "flows_before": len(before), "verify": checked},
    )


async def restart_ovs(h: Harness, ports: int, timeout: float = 120.0) -> DrillResult:
    """Restart ovs-vswitchd while the real node's VPC keeps changing (ports created on its other
    member nodes, so the real agent gets deltas while its switch is away). The switch comes back
    empty: every flow wanted before must be back, and every port ACTIVE again."""
    c = h.cluster
    assert c.ovs is not None
    ovs = c.ovs
    await h.wait_converged(timeout)
    wanted = set(flows_by_key(await asyncio.to_thread(dump_with_stats, ovs)))
    peers = [i for i in range(1, c.n_nodes) if c.node_vpc[i] == c.node_vpc[0]] or [0]
    load = asyncio.create_task(
        h.create(ports, "drill:ovs_restart", rate=max(ports / 3, 1), nodes=peers)
    )
    await asyncio.sleep(0.3)
    h.mark("ovs_restart: fault")
    t0 = time.monotonic()
    await asyncio.to_thread(ovs.restart_vswitchd)
    fault_s = time.monotonic() - t0
    cleared = h.mark("ovs_restart: fault over")
    await load
    loaded = time.time()
    deadline = time.monotonic() + timeout
    while True:
        now = set(flows_by_key(await asyncio.to_thread(dump_with_stats, ovs)))
        missing = wanted - now
        if not missing:
            break
        if time.monotonic() > deadline:
            raise CheckFailed(
                f"{len(missing)} of {len(wanted)} flows not restored after the OVS restart "
                f"({len(now)} on the switch; e.g. missing {sorted(missing)[:2]}, "
                f"unexpected {sorted(now - wanted)[:2]})"
            )
        await asyncio.sleep(0.2)
    restored = time.time()
    converged = await h.wait_converged(timeout)
    h.mark("ovs_restart: converged")
    checked = await h.verify()
    return DrillResult(
        "ovs_restart",
        ports,
        converged - max(cleared, loaded),
        fault_s,
        {
            "flows_restored": len(wanted),
            "flows_back_s": round(restored - cleared, 2),
            "verify": checked,
        },
    )
