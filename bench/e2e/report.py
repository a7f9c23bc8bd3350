"""Figures of a run: per-phase latency and throughput, process samples, drills → JSON, Markdown, PNG.

The PNG needs matplotlib (the `bench` extra: `pip install -e '.[bench]'`); without it the plot is
skipped with a message and everything else is still written.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.e2e.drills import TARGET_S, DrillResult, q_ms
from bench.e2e.harness import Harness


def phase_figures(h: Harness) -> list[dict[str, Any]]:
    """Per phase: ports, API accepted → ACTIVE quantiles, and ports per minute: ports over the
    time from each burst's first request sent to its last port ACTIVE."""
    phases: dict[str, list[str]] = {}
    for pid, rec in h.ports.items():
        phases.setdefault(rec.phase, []).append(pid)
    out = []
    for name, ids in phases.items():
        lat = [h.active_at[p] - h.ports[p].accepted for p in ids if p in h.active_at]
        # Busy time: per create() call (a burst), first request sent → last port ACTIVE, merged
        # where bursts overlap (a backlog); idle pauses between bursts are not counted.
        spans: dict[int, tuple[float, float]] = {}
        for p in ids:
            r = h.ports[p]
            lo, hi = spans.get(r.batch, (r.sent, r.sent))
            spans[r.batch] = (min(lo, r.sent), max(hi, h.active_at.get(p, r.sent)))
        span = max(_covered(list(spans.values())), 1e-6)
        out.append(
            {
                "phase": name,
                "ports": len(ids),
                "active": len(lat),
                "p50_ms": q_ms(lat, 0.5),
                "p95_ms": q_ms(lat, 0.95),
                "p99_ms": q_ms(lat, 0.99),
                "max_ms": max(lat) * 1000 if lat else math.nan,
                "seconds": span,
                "ports_per_min": len(ids) / span * 60,
                "errors_seen": sum(1 for p in ids if p in h.errors_seen),
            }
        )
    return out


def _covered(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [lo, hi] intervals."""
    total, end = 0.0, float("-inf")
    for lo, hi in sorted(intervals):
        if hi > end:
            total += hi - max(lo, end)
            end = hi
    return total


def process_figures(h: Harness) -> dict[str, Any]:
    cpu = [s.cpu for s in h.samples if s.cpu is not None]
    rss = [s.rss_mb for s in h.samples if s.rss_mb is not None]
    q = [s.queued for s in h.samples if s.queued is not None]
    qmax = [s.queued_max for s in h.samples if s.queued_max is not None]
    qc = [s.controller_queue for s in h.samples if s.controller_queue is not None]
    return {
        "controller_cpu_mean_pct": statistics.fmean(cpu) if cpu else math.nan,
        "controller_cpu_max_pct": max(cpu, default=math.nan),
        "controller_rss_max_mb": max(rss, default=math.nan),
        "controller_rss_end_mb": rss[-1] if rss else math.nan,
        "node_queues_max_total": max(q, default=0),
        "node_queue_max_single": max(qmax, default=0),
        "controller_queue_max": max(qc, default=0),
    }


def machine() -> str:
    cpus = len(Path("/proc/cpuinfo").read_text().split("processor\t:")) - 1
    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.machine(),
    )
    return (
        f"{cpus} cores ({model}), {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}"
    )


def markdown(run: dict[str, Any]) -> str:
    c = run["config"]
    lines = [
        f"### e2e: N = {c['nodes']:,} nodes ({c['vpcs']} VPCs), {run['ports']:,} ports",
        "",
        f"Machine: {run['machine']}. Command: `{run['command']}`",
        "",
        "| phase | ports | API → ACTIVE p50 / p95 / p99 (ms) | ports/min | ERROR seen |",
        "|---|---:|---|---:|---:|",
    ]
    for p in run["phases"]:
        lines.append(
            f"| {p['phase']} | {p['ports']:,} | {p['p50_ms']:.0f} / {p['p95_ms']:.0f} / "
            f"{p['p99_ms']:.0f} | {p['ports_per_min']:,.0f} | {p['errors_seen']} |"
        )
    pr = run["process"]
    lines += [
        "",
        f"Controller CPU mean {pr['controller_cpu_mean_pct']:.0f} % of a core (max "
        f"{pr['controller_cpu_max_pct']:.0f} %), RSS max {pr['controller_rss_max_mb']:.0f} MB; "
        f"RabbitMQ: node queues max {pr['node_queues_max_total']:,} messages in all "
        f"({pr['node_queue_max_single']:,} in one), controller queue max "
        f"{pr['controller_queue_max']:,}.",
    ]
    if run["drills"]:
        lines += [
            "",
            f"| drill | ports | fault lasted (s) | converged after (s) | "
            f"within {TARGET_S:.0f} s | notes |",
            "|---|---:|---:|---:|---|---|",
        ]
        for d in run["drills"]:
            notes = {k: v for k, v in d["detail"].items() if k not in ("verify",)}
            lines.append(
                f"| {d['name']} | {d['ports']:,} | {d['fault_s']:.1f} | {d['converge_s']:.1f} | "
                f"{'yes' if d['converge_s'] <= TARGET_S else 'NO'} | {_short(notes)} |"
            )
    for f in run.get("failures", []):
        lines.append(f"\n**FAILED** {f}")
    return "\n".join(lines) + "\n"


def _short(d: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.0f}"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} {fmt(x)}" for k, x in v.items()) + "}"
        return str(v)

    return "; ".join(f"{k}: {fmt(v)}" for k, v in d.items())


def build(
    h: Harness, drills: list[DrillResult], config: dict[str, Any], command: str, failures: list[str]
) -> dict[str, Any]:
    return {
        "config": config,
        "command": command,
        "machine": machine(),
        "ports": len(h.ports),
        "phases": phase_figures(h),
        "process": process_figures(h),
        "drills": [asdict(d) for d in drills],
        "failures": failures,
        "unknown_outcomes": h.unknown_outcomes,
        "retries": h.retries,
        "events": h.events,
    }


def write(h: Harness, run: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md"}
    paths["json"].write_text(json.dumps(run, indent=2, default=str))
    paths["markdown"].write_text(markdown(run))
    # Every port's timeline, to recompute any figure later.
    paths["ports"] = out / "ports.csv"
    with paths["ports"].open("w") as f:
        f.write("port_id,node,phase,batch,sent,accepted,active\n")
        for pid, r in h.ports.items():
            f.write(
                f"{pid},{r.node},{r.phase},{r.batch},{r.sent:.6f},{r.accepted:.6f},"
                f"{h.active_at.get(pid, '')}\n"
            )
    png = plot(h, run, out / "e2e.png")
    if png is not None:
        paths["png"] = png
    return paths


def plot(h: Harness, run: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report: matplotlib not installed (pip install -e '.[bench]'): no plot")
        return None
    t0 = min((r.sent for r in h.ports.values()), default=0.0)
    fig, ax = plt.subplots(4, 1, figsize=(11, 12), sharex=True)
    recs = sorted(h.ports.items(), key=lambda kv: kv[1].accepted)
    xs = [r.accepted - t0 for p, r in recs if p in h.active_at]
    ys = [(h.active_at[p] - r.accepted) * 1000 for p, r in recs if p in h.active_at]
    ax[0].scatter(xs, ys, s=1, alpha=0.4)
    ax[0].set_yscale("log")
    ax[0].set_ylabel("API accepted → ACTIVE (ms)")
    st = [s.t - t0 for s in h.samples]
    created = [s.created for s in h.samples]
    active = [s.active for s in h.samples]
    rate = [0.0] + [
        max(0.0, (b - a) / (t2 - t1) * 60)
        for a, b, t1, t2 in zip(active, active[1:], st, st[1:], strict=False)
    ]
    ax[1].plot(st, created, label="created")
    ax[1].plot(st, active, label="ACTIVE")
    ax1b = ax[1].twinx()
    ax1b.plot(st, rate, color="grey", alpha=0.4, lw=0.8, label="ACTIVE/min")
    ax1b.set_ylabel("ports/min")
    ax[1].set_ylabel("ports")
    ax[1].legend(loc="upper left")
    ax[2].plot(st, [s.cpu if s.cpu is not None else math.nan for s in h.samples], color="C3")
    ax[2].set_ylabel("controller CPU %")
    ax2b = ax[2].twinx()
    ax2b.plot(st, [s.rss_mb if s.rss_mb is not None else math.nan for s in h.samples], color="C2")
    ax2b.set_ylabel("controller RSS (MB)")
    ax[3].plot(
        st,
        [s.queued if s.queued is not None else math.nan for s in h.samples],
        label="all node queues",
    )
    ax[3].plot(
        st,
        [s.controller_queue if s.controller_queue is not None else math.nan for s in h.samples],
        label="controller queue",
    )
    ax[3].set_ylabel("RabbitMQ messages ready")
    ax[3].set_xlabel("seconds")
    ax[3].legend(loc="upper left")
    for t, label in h.events:
        if label.endswith(": fault"):
            for a in ax:
                a.axvline(t - t0, color="red", lw=0.8, alpha=0.6)
            ax[0].annotate(
                label.split(":")[0],
                (t - t0, ax[0].get_ylim()[1]),
                fontsize=7,
                rotation=90,
                va="top",
            )
    c = run["config"]
    fig.suptitle(f"Alcor-py e2e: N={c['nodes']:,} nodes, {run['ports']:,} ports")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
