"""Dispatcher failover: controllers on one PostgreSQL database and RabbitMQ, agents (AgentStream,
no datapath) in this process, port creates at a steady rate through every live controller; the
leader is killed (SIGKILL) or stalled (SIGSTOP, resumed after the takeover), several times.

Per fault it prints: the takeover (fault → a standby reports itself leader with a higher epoch),
the failover gap (the last message agents took from the old leader → the first from the new), the
creates that failed meanwhile, the time until every port is ACTIVE and every node in sync again,
and the messages agents refused from a deposed leader.

Run: .venv/bin/python bench/failover.py [--controllers 3] [--rounds 3] [--rate 100] [--fault kill]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from alcor.agent.model import Outcome  # noqa: E402
from tests.support.broker import broker_up  # noqa: E402
from tests.support.cluster import Cluster  # noqa: E402
from tests.support.postgres import create_database, drop_database  # noqa: E402


async def steady(c: Cluster, net: dict[str, Any], hosts: list[str], rate: float,
                 stop: asyncio.Event, accepted: list[str], failed: list[float]) -> None:
    """One create every 1/rate s, to the live controllers in turn; a failure is counted and the
    create retried on the next one."""
    n = itertools.count()
    interval = 1.0 / rate

    async def one(i: int) -> None:
        body = {"port": {"network_id": net["id"], "binding:host_id": hosts[i % len(hosts)]}}
        for attempt in range(200):
            live = c.alive()
            if not live:
                return  # the cluster is closing
            p = live[(i + attempt) % len(live)]
            try:
                status, reply = await c.call(p, "POST", "/v2.0/ports", body, timeout=3)
                if status == 201:
                    accepted.append(reply["port"]["id"])
                    return
            except (aiohttp.ClientError, TimeoutError):
                pass
            failed.append(time.monotonic())
            await asyncio.sleep(0.05)

    tasks = set()
    t0 = time.monotonic()
    while not stop.is_set():
        i = next(n)
        t = asyncio.ensure_future(one(i))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        await asyncio.sleep(max(0.0, t0 + (i + 1) * interval - time.monotonic()))
    await asyncio.gather(*tasks)


async def converged(c: Cluster, want: set[str], timeout: float = 60) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if all(want <= set(s.model.resources.get("port", {})) for s in c.agents.values()):
            p = c.alive()[0]
            _, body = await c.call(p, "GET", "/v2.0/ports?fields=id&fields=status")
            states = {x["id"]: x["status"] for x in body["ports"]}
            if all(states.get(i) == "ACTIVE" for i in want):
                return time.monotonic() - t0
        await asyncio.sleep(0.05)
    raise TimeoutError("not converged")


async def main(args: argparse.Namespace) -> None:
    if not broker_up():
        raise SystemExit("RabbitMQ is not up at 127.0.0.1:5672")
    db = await create_database()
    tmp = Path(tempfile.mkdtemp(prefix="alcor-failover-"))
    c = Cluster(tmp, db, args.controllers,
                extra_env={"ALCOR_SOUTHBOUND__LEADER_TIMEOUT": str(args.leader_timeout),
                           "ALCOR_LOG__LEVEL": "warning"})
    rows = []
    try:
        await c.start()
        first = c.programs[0]
        nodes = [await c.create(first, "node", "/v2.0/alcor/nodes", node_name=f"host-{i}",
                                local_ip=f"172.16.0.{i + 1}") for i in range(args.nodes)]
        for n in nodes:
            await c.add_agent(n)
        net = await c.create(first, "network", "/v2.0/networks", name="failover")
        await c.create(first, "subnet", "/v2.0/subnets", network_id=net["id"],
                       cidr="10.60.0.0/16", ip_version=4)
        hosts = [n["node_name"] for n in nodes]
        accepted: list[str] = []
        for r in range(args.rounds):
            stop = asyncio.Event()
            failed: list[float] = []
            load = asyncio.ensure_future(steady(c, net, hosts, args.rate, stop, accepted, failed))
            await asyncio.sleep(2.0)
            old, epoch = await c.leader()
            assert old.proc is not None
            t_fault = time.monotonic()
            mark = len(c.received)
            os.kill(old.proc.pid, signal.SIGKILL if args.fault == "kill" else signal.SIGSTOP)
            others = [p for p in c.alive() if p is not old]
            while True:
                try:
                    new, new_epoch = await c.leader(others)
                except (aiohttp.ClientError, TimeoutError):
                    continue  # a controller busy with the burst: ask again
                if new is not old and new_epoch > epoch:
                    break
                await asyncio.sleep(0.02)
            takeover = time.monotonic() - t_fault
            await asyncio.sleep(3.0)
            if args.fault == "stop":
                os.kill(old.proc.pid, signal.SIGCONT)
            stop.set()
            await load
            settle = await converged(c, set(accepted))
            after = c.received[mark:]
            last_old = max((t for t, e, o in c.received[:mark] + after
                            if e == epoch and o is not Outcome.DEPOSED), default=t_fault)
            first_new = min((t for t, e, _ in after if e == new_epoch), default=float("nan"))
            refused = sum(1 for _, _, o in after if o is Outcome.DEPOSED)
            rows.append((takeover, first_new - last_old, len(failed), settle, refused))
            print(f"round {r + 1} ({args.fault}): takeover {takeover:5.2f} s, failover gap "
                  f"{first_new - last_old:5.2f} s (last message of epoch {epoch} -> first of "
                  f"{new_epoch}), {len(failed)} creates retried, all ACTIVE {settle:4.2f} s after "
                  f"the load stopped, {refused} messages from the deposed leader refused",
                  flush=True)
            if args.fault == "kill":
                # Bring the killed one back as a standby for the next round.
                await asyncio.to_thread(old.start)
        takeovers = [x[0] for x in rows]
        gaps = [x[1] for x in rows]
        print(f"takeover median {statistics.median(takeovers):.2f} s (max {max(takeovers):.2f}); "
              f"failover gap median {statistics.median(gaps):.2f} s (max {max(gaps):.2f}); "
              f"{len(accepted)} ports, none lost")
    finally:
        await c.close()
        await drop_database(db)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--controllers", type=int, default=3)
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=100.0, help="port creates per second")
    ap.add_argument("--fault", choices=["kill", "stop"], default="kill")
    ap.add_argument("--leader-timeout", type=float, default=3.0)
    asyncio.run(main(ap.parse_args()))
