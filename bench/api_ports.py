"""Port provisioning through the HTTP API, against `python main.py controller` on a fresh SQLite
file, or on a fresh PostgreSQL database with one or more controllers.

With 50 nodes registered and one /16 subnet: 2,000 port creates sequential, then 2,000 with 8
concurrent clients (ports/s, p50, p99; with several controllers the clients take turns over
them), listing 2,000 ports, and the controller's RSS after 100,000 ports (SQLite, one controller).
Run: .venv/bin/python bench/api_ports.py [--ports 2000] [--rss-ports 100000]
     .venv/bin/python bench/api_ports.py --store sqlite,postgresql --controllers 1,2 --rss-ports 0
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.postgres import create_database, drop_database  # noqa: E402
from tests.support.process import Program  # noqa: E402


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def main(args: argparse.Namespace) -> None:
    for store in args.store.split(","):
        for n in [int(x) for x in args.controllers.split(",")]:
            if store == "sqlite" and n > 1:
                continue  # one controller per SQLite file
            print(f"== {store}, {n} controller{'s' if n > 1 else ''}", flush=True)
            await run(args, store, n)


async def run(args: argparse.Namespace, store: str, n: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="alcor-bench-"))
    env = {"ALCOR_LOG__LEVEL": "warning", "ALCOR_STORE__SYNCHRONOUS": args.synchronous}
    db = await create_database() if store == "postgresql" else None
    if db:
        env["ALCOR_STORE__URL"] = db
    progs = [Program(["controller", "--db", str(tmp / "alcor.db")], log=tmp / f"alcor-{i}.log",
                     env=env) for i in range(n)]
    for p in progs:
        p.start()
    prog = progs[0]
    base = prog.url
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as s:

            async def post_to(url: str, path: str, body: dict) -> dict:
                async with s.post(url + path, json=body) as r:
                    data = await r.json()
                    assert r.status == 201, data
                    return data

            async def post(path: str, body: dict) -> dict:
                return await post_to(base, path, body)

            for i in range(50):
                await post(
                    "/v2.0/alcor/nodes",
                    {
                        "node": {
                            "node_name": f"host-{i}",
                            "local_ip": f"172.16.{i // 250}.{i % 250 + 1}",
                        }
                    },
                )
            net = (await post("/v2.0/networks", {"network": {"name": "bench"}}))["network"]
            await post(
                "/v2.0/subnets",
                {"subnet": {"network_id": net["id"], "cidr": "10.0.0.0/16", "ip_version": 4}},
            )
            counter = iter(range(10**9))

            async def create_one(lat: list[float], via: str = base) -> None:
                i = next(counter)
                t = time.perf_counter()
                await post_to(via,
                    "/v2.0/ports",
                    {
                        "port": {
                            "network_id": net["id"],
                            "name": f"p{i}",
                            "binding:host_id": f"host-{i % 50}",
                        }
                    },
                )
                lat.append(time.perf_counter() - t)

            seq: list[float] = []
            t0 = time.perf_counter()
            for _ in range(args.ports):
                await create_one(seq)
            seq_s = time.perf_counter() - t0

            list_times = []
            for _ in range(5):
                t = time.perf_counter()
                async with s.get(base + "/v2.0/ports") as r:
                    body = await r.read()
                list_times.append(time.perf_counter() - t)
            listed = body.count(b'"mac_address"')

            conc: list[float] = []

            async def worker(k: int, via: str) -> None:
                for _ in range(k):
                    await create_one(conc, via)

            t0 = time.perf_counter()
            await asyncio.gather(*(worker(args.ports // 8, progs[i % n].url) for i in range(8)))
            conc_s = time.perf_counter() - t0

            print(
                f"sequential creates: {args.ports / seq_s:8.1f} ports/s  p50 {pct(seq, 0.5) * 1e3:6.2f} ms"
                f"  p99 {pct(seq, 0.99) * 1e3:6.2f} ms"
            )
            print(
                f"8 concurrent:       {len(conc) / conc_s:8.1f} ports/s  p50 {pct(conc, 0.5) * 1e3:6.2f} ms"
                f"  p99 {pct(conc, 0.99) * 1e3:6.2f} ms"
            )
            print(
                f"list {listed} ports:   median {statistics.median(list_times) * 1e3:6.1f} ms "
                f"(min {min(list_times) * 1e3:.1f} ms, {len(body) / 1e6:.1f} MB)"
            )

            if args.rss_ports and store == "sqlite":
                have = args.ports + len(conc)
                # A /16 holds 65,534 ports: a second one takes the rest.
                await post(
                    "/v2.0/subnets",
                    {"subnet": {"network_id": net["id"], "cidr": "10.1.0.0/16", "ip_version": 4}},
                )
                batch = 500
                t0 = time.perf_counter()
                while have < args.rss_ports:
                    n = min(batch, args.rss_ports - have)
                    await post(
                        "/v2.0/ports",
                        {
                            "ports": [
                                {"network_id": net["id"], "binding:host_id": f"host-{j % 50}"}
                                for j in range(n)
                            ]
                        },
                    )
                    have += n
                bulk_s = time.perf_counter() - t0
                t = time.perf_counter()
                async with s.get(base + "/v2.0/ports?limit=2000") as r:
                    await r.read()
                page = time.perf_counter() - t
                print(
                    f"bulk to {have} ports: {(have - args.ports - len(conc)) / bulk_s:8.1f} ports/s; "
                    f"controller RSS {rss_mb(prog.proc.pid):.0f} MB; first page of 2000 at "
                    f"{have} ports: {page * 1e3:.1f} ms"
                )
    finally:
        for p in progs:
            p.stop()
        if db:
            await drop_database(db)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--ports", type=int, default=2000)
    ap.add_argument("--rss-ports", type=int, default=100000)
    ap.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"])
    ap.add_argument("--store", default="sqlite", help="sqlite, postgresql, or both: sqlite,postgresql")
    ap.add_argument("--controllers", default="1", help="controllers on a PostgreSQL store: 1,2,3")
    asyncio.run(main(ap.parse_args()))
