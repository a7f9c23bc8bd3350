"""`python -m bench.e2e`: a whole run (setup, steady, bursts, drills), then the report.

Needs root (a network namespace for Open vSwitch), openvswitch-switch and RabbitMQ at
127.0.0.1:5672. Prints the Markdown table; writes results.json, results.md and e2e.png to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402

from alcor import log as alcor_log  # noqa: E402
from bench.e2e import drills as drills_mod  # noqa: E402
from bench.e2e import report  # noqa: E402
from bench.e2e.cluster import Cluster  # noqa: E402
from bench.e2e.harness import CheckFailed, Harness  # noqa: E402

log = structlog.get_logger("bench.e2e")
DRILLS = ("controller", "mq", "agents", "agent", "ovs")


async def run(args: argparse.Namespace, out: Path) -> dict:
    vpcs = args.vpcs or max(1, args.nodes // 10)
    cluster = Cluster(
        out / "work",
        args.nodes,
        vpcs,
        real_agent=not args.no_real_agent,
        fleet_processes=args.fleet_processes or (2 if args.nodes >= 500 else 1),
        synchronous=args.synchronous,
        store=args.store,
        controllers=args.controllers,
    )
    h = Harness(cluster, concurrency=args.concurrency, progress=not args.no_progress)
    done: list[drills_mod.DrillResult] = []
    failures: list[str] = []
    wanted = (
        DRILLS
        if args.drills == "all"
        else tuple(d for d in args.drills.split(",") if d and d != "none")
    )
    try:
        await cluster.start()
        await h.start()
        t0 = time.time()
        await h.wait_converged(args.timeout)
        log.info("e2e.nodes_in_sync", nodes=args.nodes, s=round(time.time() - t0, 1))
        steady = int(args.ports * args.steady_share)
        h.mark("steady")
        await h.create(steady, "steady", rate=args.rate)
        h.mark("bursts")
        left = args.ports - steady
        while left > 0:
            n = min(args.burst, left)
            await h.create(n, "burst")
            left -= n
            if left > 0:
                await asyncio.sleep(args.burst_pause)
        await h.wait_converged(args.timeout)
        h.mark("converged")
        log.info("e2e.verified", **await h.verify())
        for k, name in enumerate(wanted):
            try:
                done.append(await _drill(name, h, args))
                log.info("e2e.drill_passed", drill=name, converge_s=round(done[-1].converge_s, 2))
            except CheckFailed as e:
                failures.append(f"drill {name}: {e}")
                log.error("e2e.drill_failed", drill=name, error=str(e))
                if k + 1 < len(wanted):
                    await h.wait_converged(args.drill_timeout)  # the next starts from clean
    except CheckFailed as e:
        failures.append(str(e))
        log.error("e2e.check_failed", error=str(e))
    finally:
        await h.stop()
        await cluster.close()
    config = {
        "nodes": args.nodes,
        "vpcs": vpcs,
        "rate": args.rate,
        "burst": args.burst,
        "concurrency": args.concurrency,
        "synchronous": args.synchronous,
        "store": args.store,
        "controllers": args.controllers,
    }
    command = "python -m bench.e2e " + shlex.join(sys.argv[1:])
    result = report.build(h, done, config, command, failures)
    paths = report.write(h, result, out)
    print(report.markdown(result))
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return result


async def _drill(name: str, h: Harness, args: argparse.Namespace) -> drills_mod.DrillResult:
    n, timeout = args.drill_ports, args.drill_timeout
    if name == "controller":
        return await drills_mod.controller_restart(h, n, timeout)
    if name == "mq":
        return await drills_mod.broker_connections_closed(h, n, timeout)
    if name == "agents":
        return await drills_mod.restart_simulated_agents(
            h, args.restart_agents, args.rate / 2, args.storm_seconds, timeout
        )
    if name == "agent":
        return await drills_mod.restart_real_agent(h, n, timeout)
    if name == "ovs":
        return await drills_mod.restart_ovs(h, n, timeout)
    raise ValueError(name)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=100, help="N: 1 real agent + N-1 simulated")
    p.add_argument("--ports", type=int, default=10000)
    p.add_argument("--vpcs", type=int, default=0, help="default N/10 (each VPC on N/V nodes)")
    p.add_argument("--rate", type=float, default=500.0, help="steady phase, ports/s")
    p.add_argument("--steady-share", type=float, default=0.3)
    p.add_argument("--burst", type=int, default=2000, help="ports per burst")
    p.add_argument("--burst-pause", type=float, default=2.0)
    p.add_argument("--concurrency", type=int, default=16, help="API clients")
    p.add_argument("--drills", default="all", help=f"all, none, or some of {','.join(DRILLS)}")
    p.add_argument("--drill-ports", type=int, default=1000)
    p.add_argument("--restart-agents", type=int, default=200)
    p.add_argument("--storm-seconds", type=float, default=10.0)
    p.add_argument("--timeout", type=float, default=600.0, help="convergence deadline, s")
    p.add_argument(
        "--drill-timeout", type=float, default=60.0, help="a drill's convergence deadline, s"
    )
    p.add_argument("--fleet-processes", type=int, default=0)
    p.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"])
    p.add_argument("--store", default="sqlite", choices=["sqlite", "postgresql"])
    p.add_argument(
        "--controllers", type=int, default=1,
        help="controllers on the PostgreSQL store (the controller drill kills the leader)",
    )
    p.add_argument("--no-real-agent", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--log", default="info")
    return p


def main() -> int:
    args = parser().parse_args()
    alcor_log.setup(args.log, "console")
    if sys.stderr.isatty() and not args.no_progress:
        # Log lines and the progress bar share the terminal: clear the bar before each line.
        def clear_bar(_: object, __: str, event: dict) -> dict:
            sys.stderr.write("\r\x1b[K")
            return event

        procs = structlog.get_config()["processors"]
        structlog.configure(processors=[clear_bar, *procs])
    out = args.out or Path(tempfile.mkdtemp(prefix="alcor-e2e-"))
    result = asyncio.run(run(args, out))
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
