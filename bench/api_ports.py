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
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.postgres import create_database, drop_database  # noqa: E402
from tests.support.process import Program  # noqa: E402


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> list[int]:
    """The machine's CPU time so far (/proc/stat's first line: user, nice, system, idle, iowait,
    irq, softirq, steal, ...), in ticks."""
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def steal(before: list[int], after: list[int], ours: float) -> str:
    """How busy the machine was between two samples, the share of that the bench's own
    processes account for (`ours`, CPU seconds), so the rest is everything else running, and
    the hypervisor's steal: a run whose rate is low while others or steal took the cores is
    not a slower code."""
    d = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(d) or 1
    busy = total - d[3] - d[4] - d[7]
    mine = ours * os.sysconf("SC_CLK_TCK") / total
    return (f"machine busy {busy / total:.0%} (this bench {mine:.0%}, others "
            f"{max(busy / total - mine, 0):.0%}), steal {d[7] / total:.1%}")


def reference() -> float:
    """CPU ms of a fixed piece of Python (dicts, strings, JSON: what the controllers do), run
    in this process: if it takes longer in one run than in the next on a quiet machine, the
    cores themselves were slower (a busy host: shared caches, clock), which steal does not
    show, and every process's CPU per create is up by as much."""
    t0 = time.process_time()
    for _ in range(3):
        for i in range(3000):
            d = {"id": f"port-{i}", "name": f"p{i}", "fixed_ips": [{"ip_address": f"10.0.{i % 250}.1"}]}
            json.loads(json.dumps(d))
    return (time.process_time() - t0) * 1e3


def load() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


async def pg_counts(db: str) -> dict[str, int]:
    """What the database did so far: its commits, the write transactions (updates of the rev
    counter, one per batch of requests), the group commit's flushes, the dispatcher's
    watermark commits, and the WAL the server wrote (all databases: nothing else should run),
    full-page images in it (each page's first change after a checkpoint) and the checkpoints."""
    conn = await asyncpg.connect(db)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),"
            " (SELECT wal_bytes FROM pg_stat_wal), (SELECT wal_fpi FROM pg_stat_wal),"
            " (SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter),"
            " (SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'rev_counter'),"
            " (SELECT n_tup_upd + n_tup_ins FROM pg_stat_user_tables WHERE relname = 'store_flushes'),"
            # Each watermark commit sets two rows of sb_state (watermark, epoch).
            " (SELECT n_tup_upd / 2 FROM pg_stat_user_tables WHERE relname = 'sb_state')")
    finally:
        await conn.close()
    return dict(zip(["commits", "wal", "fpi", "checkpoints", "batches", "flushes", "watermarks"],
                    [int(x or 0) for x in row], strict=True))


def pg_per(before: dict[str, int], after: dict[str, int], n: int) -> str:
    d = {k: after[k] - before[k] for k in before}
    return (f"; PostgreSQL per create: {d['commits'] / n:.2f} commits, "
            f"{d['batches'] / n:.2f} write batches, {d['flushes'] / n:.2f} flushes, "
            f"{d['watermarks'] / n:.2f} watermark commits, {d['wal'] / n / 1024:.1f} kB WAL "
            f"({d['fpi'] / n:.2f} full pages; {d['checkpoints']} checkpoints meanwhile)")


class Cpu:
    """CPU spent by the controllers, this client and the database's backends over a phase."""

    def __init__(self, controllers: list[int], db: str | None) -> None:
        self.controllers = controllers
        self.db = db
        self.backends: list[int] = []

    async def start(self) -> None:
        if self.db:
            conn = await asyncpg.connect(self.db)
            try:
                self.backends = [r[0] for r in await conn.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid()")]
            finally:
                await conn.close()
        self.ref0 = reference()
        self.t0 = self.sample()
        self.m0 = machine()

    def sample(self) -> tuple[float, float, float, list[float]]:
        def total(pids: list[int]) -> float:
            out = 0.0
            for pid in pids:
                try:
                    out += cpu_s(pid)
                except OSError:  # a backend that ended meanwhile
                    pass
            return out
        each = [total([pid]) for pid in self.controllers]
        return sum(each), time.process_time(), total(self.backends), each

    def per(self, n: int) -> str:
        now = self.sample()
        c, b, d = (x - y for x, y in zip(now[:3], self.t0[:3], strict=True))
        out = f"CPU per create: controllers {c / n * 1e3:.2f} ms"
        if len(self.controllers) > 1:  # each one's share (the leader also dispatches)
            out += " (" + " + ".join(f"{(x - y) / n * 1e3:.2f}"
                                     for x, y in zip(now[3], self.t0[3], strict=True)) + ")"
        out += f", client {b / n * 1e3:.2f} ms"
        if self.db:
            out += f", PostgreSQL backends {d / n * 1e3:.2f} ms"
        m = machine()
        return out + (f"; {steal(self.m0, m, c + b + d)}; reference loop {self.ref0:.0f} ms "
                      f"before, {reference():.0f} ms after")


def spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling a controller (raw stacks, one line per stack and count) until stop_spy."""
    return subprocess.Popen(["py-spy", "record", "--format", "raw", "--nonblocking", "--rate",
                             "250", "--pid", str(pid), "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def perf(pids: list[int], out: Path) -> subprocess.Popen[bytes] | None:
    """perf (if on PATH and allowed) sampling processes until stop_spy; read with
    `perf report -i <out> --no-children --sort symbol`."""
    try:
        return subprocess.Popen(["perf", "record", "-F", "499", "-g", "-o", str(out), "-p",
                                 ",".join(str(p) for p in pids)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None


def stop_spy(sampler: subprocess.Popen[bytes]) -> None:
    sampler.send_signal(signal.SIGINT)
    sampler.wait()


class KeepAlive:
    """One HTTP/1.1 connection kept open, one request at a time: all a load generator needs.
    (aiohttp's client costs ~0.3 ms of CPU per request, on the same two cores as the controllers
    and PostgreSQL; this costs about half. `--client aiohttp` measures with it instead.)"""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        data = json.dumps(body).encode()
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (
                              path.encode(), self.host.encode(), self.port, len(data), data))
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        reply = await self.reader.readexactly(length)
        return int(head[9:12]), json.loads(reply)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


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
            print(f"== {store}, {n} controller{'s' if n > 1 else ''} "
                  f"({time.strftime('%H:%M:%S', time.gmtime())} UTC, {load()})", flush=True)
            await run(args, store, n)
    print(f"== end ({time.strftime('%H:%M:%S', time.gmtime())} UTC, {load()})")


async def run(args: argparse.Namespace, store: str, n: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="alcor-bench-"))
    env = {"ALCOR_LOG__LEVEL": "warning", "ALCOR_STORE__SYNCHRONOUS": args.synchronous,
           # The 50 nodes have no agents: after agent_down_time the leader declares them all
           # down at once and reads every port bound to them (one transaction per node) to set
           # them DOWN, a one-off sweep that lands inside whichever phase is running 15 s
           # after start (the 8 clients' one in slow runs). Not what this bench measures.
           "ALCOR_GATEWAY__AGENT_DOWN_TIME": str(args.agent_down_time)}
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

            clients: list[KeepAlive] = []

            def client(via: str) -> Any:
                """A client of its own for each worker (the lean one, or the shared session)."""
                if args.client == "aiohttp":
                    return lambda path, body: post_to(via, path, body)
                c = KeepAlive(via)
                clients.append(c)

                async def send(path: str, body: dict[str, Any]) -> dict[str, Any]:
                    status, data = await c.post(path, body)
                    assert status == 201, data
                    return data
                return send

            async def create_one(lat: list[float], send: Any) -> None:
                i = next(counter)
                t = time.perf_counter()
                await send("/v2.0/ports", {
                    "port": {
                        "network_id": net["id"],
                        "name": f"p{i}",
                        "binding:host_id": f"host-{i % 50}",
                    }
                })
                lat.append(time.perf_counter() - t)

            pids = [p.proc.pid for p in progs if p.proc is not None]
            seq: list[float] = []
            cpu = Cpu(pids, db)
            await cpu.start()
            pg0 = await pg_counts(db) if db else {}
            t0 = time.perf_counter()
            one = client(base)
            for _ in range(args.ports):
                await create_one(seq, one)
            seq_s = time.perf_counter() - t0
            seq_cpu = cpu.per(args.ports)
            if db:
                # The backends report their statistics once idle, at most once a second.
                await asyncio.sleep(1.2)
                seq_cpu += pg_per(pg0, await pg_counts(db), args.ports)

            list_times = []
            for _ in range(5):
                t = time.perf_counter()
                async with s.get(base + "/v2.0/ports") as r:
                    body = await r.read()
                list_times.append(time.perf_counter() - t)
            listed = body.count(b'"mac_address"')

            conc: list[float] = []

            async def worker(k: int, via: str) -> None:
                send = client(via)
                for _ in range(k):
                    await create_one(conc, send)

            async def dispatched() -> tuple[int, int]:
                """Changes and batches the dispatchers sent so far (the leader's count)."""
                out = [0, 0]
                for p in progs:
                    async with s.get(p.url + "/v2.0/alcor/southbound") as r:
                        sb = (await r.json()).get("southbound", {})
                    if sb.get("role", "leader") == "leader":
                        out = [max(out[0], sb.get("changes", 0)), max(out[1], sb.get("batches", 0))]
                return out[0], out[1]

            sent0 = await dispatched()
            cpu = Cpu(pids, db)
            await cpu.start()
            pg0 = await pg_counts(db) if db else {}
            spies = [spy(pid, Path(args.profile) / f"{store}-{n}-{i}.txt")
                     for i, pid in enumerate(pids)] if args.profile else []
            if args.profile:
                # CPU cycles, where py-spy's wall-clock samples also count a process waiting
                # for its core (e.g. preempted in a send by the process it woke).
                for what, of in (("controllers", pids), ("postgres", cpu.backends)):
                    sampler = perf(of, Path(args.profile) / f"{store}-{n}-{what}.perf") if of \
                        else None
                    spies += [sampler] if sampler else []
            t0 = time.perf_counter()
            await asyncio.gather(*(worker(args.ports // 8, progs[i % n].url) for i in range(8)))
            conc_s = time.perf_counter() - t0

            conc_cpu = cpu.per(len(conc))
            if db:
                await asyncio.sleep(1.2)
                conc_cpu += pg_per(pg0, await pg_counts(db), len(conc))
            for sampler in spies:
                stop_spy(sampler)
            await asyncio.sleep(0.1)  # the last batch
            sent1 = await dispatched()
            batches = max(sent1[1] - sent0[1], 1)
            conc_cpu += (f"; dispatched in {batches} batches, "
                         f"{(sent1[0] - sent0[0]) / batches:.1f} changes each")

            print(
                f"sequential creates: {args.ports / seq_s:8.1f} ports/s  p50 {pct(seq, 0.5) * 1e3:6.2f} ms"
                f"  p99 {pct(seq, 0.99) * 1e3:6.2f} ms"
            )
            print(f"  {seq_cpu}")
            print(
                f"8 concurrent:       {len(conc) / conc_s:8.1f} ports/s  p50 {pct(conc, 0.5) * 1e3:6.2f} ms"
                f"  p99 {pct(conc, 0.99) * 1e3:6.2f} ms"
            )
            print(f"  {conc_cpu}")
            print(
                f"list {listed} ports:   median {statistics.median(list_times) * 1e3:6.1f} ms "
                f"(min {min(list_times) * 1e3:.1f} ms, {len(body) / 1e6:.1f} MB)"
            )

            for c in clients:
                await c.close()

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
    ap.add_argument("--agent-down-time", type=float, default=3600.0,
                    help="[gateway] agent_down_time of the controllers (s): the absent agents' "
                         "nodes are declared down after it (Neutron's default is 15)")
    ap.add_argument("--client", default="lean", choices=["lean", "aiohttp"],
                    help="the creates' HTTP client: one kept-alive connection per worker "
                         "(lean), or aiohttp's")
    ap.add_argument("--profile", default="",
                    help="a directory: py-spy (on PATH) samples each controller during the 8 "
                         "clients' creates, raw stacks there (and perf, if there, PostgreSQL's "
                         "backends)")
    asyncio.run(main(ap.parse_args()))
