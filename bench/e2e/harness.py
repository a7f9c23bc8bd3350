"""Drive a `Cluster`: create ports through the API, watch them turn ACTIVE, sample the processes.

- `create(n, phase, rate=…)` posts ports bound to the nodes round-robin (each into its node's VPC),
  at a steady rate or as a burst, with `concurrency` clients; a port on the real node gets its VIF
  plugged on the real switch right after the API accepts it, as Nova does after binding.
- The change log is tailed (`/v2.0/alcor/changes?wait=`): the time a port's status turned ACTIVE
  is the commit time of that status change, so API accepted → ACTIVE is measured per port
  without polling ports.
- A sampler records controller CPU and RSS each second, and RabbitMQ queue depths.
- `wait_converged()` and `verify()` are the loud checks: every node's digest equals its goal
  (the controller's in_sync), every accepted port exists and is ACTIVE, the simulated agents hold
  exactly their ports, the real switch has flows for every local port, no node queue is left
  with messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aiohttp
import structlog
from prometheus_client.parser import text_string_to_metric_families

from alcor.agent.ir import cookie_for, tap_name
from bench.e2e.cluster import Cluster
from bench.e2e.fleet import URL

log = structlog.get_logger("bench.e2e")

TICKS = os.sysconf("SC_CLK_TCK")


def _proc_usage(pid: int) -> tuple[int, float] | None:
    """(CPU ticks used, RSS in MB) of a process; /proc reads never block."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        rss = next(
            int(ln.split()[1]) / 1024
            for ln in Path(f"/proc/{pid}/status").read_text().splitlines()
            if ln.startswith("VmRSS:")
        )
        return int(stat[11]) + int(stat[12]), rss
    except (OSError, ValueError, IndexError, StopIteration):
        return None


class CheckFailed(AssertionError):
    """A harness check failed: the run's figures are not to be trusted, and the reason says why."""


@dataclass
class PortRecord:
    node: int
    phase: str
    sent: float  # wall clock, request sent
    accepted: float  # wall clock, 201 received
    batch: int = 0  # which create() call: a burst, or a steady stream


@dataclass
class Sample:
    t: float
    cpu: float | None  # controller, % of one core
    rss_mb: float | None
    created: int
    active: int
    queued: int | None  # messages ready in all node queues
    queued_max: int | None  # deepest node queue
    controller_queue: int | None


@dataclass
class Harness:
    cluster: Cluster
    concurrency: int = 16
    progress: bool = True
    ports: dict[str, PortRecord] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)  # latest status per port (change log)
    active_at: dict[str, float] = field(default_factory=dict)  # first ACTIVE commit time
    errors_seen: dict[str, int] = field(default_factory=dict)  # ERROR before first ACTIVE
    samples: list[Sample] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    unknown_outcomes: int = 0  # requests that died after being sent (the port may exist)
    retries: int = 0
    phase: str = ""
    target: int = 0
    # Real node only. False: Nova's order, the port is bound, then its VIF plugged (the agent
    # programs the port once the interface appears). True: created unbound, plugged, then bound,
    # so the interface is on the switch before the agent hears of the port.
    plug_first: bool = False

    def __post_init__(self) -> None:
        self._seq = 0
        self._batch = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._plug_queue: asyncio.Queue[tuple[str, asyncio.Future[None] | None]] = asyncio.Queue()
        self._plugged = 0
        self.session: aiohttp.ClientSession | None = None
        self._mq: Any = None
        self._depths: tuple[int | None, int | None, int | None] = (None, None, None)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.concurrency + 8),
            timeout=aiohttp.ClientTimeout(total=30),
        )
        since = (await self._get("/v2.0/alcor/changes?since=0&limit=1"))["last_rev"]
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._tail(since)),
            loop.create_task(self._sample()),
            loop.create_task(self._plugger()),
        ]
        if self.progress:
            self._tasks.append(loop.create_task(self._progress()))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.progress:
            sys.stderr.write("\n")
        # Bounded: a connection the broker drill closed under us may never finish closing.
        if self.session is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.session.close(), 5)
        if self._mq is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._mq.close(), 5)

    def mark(self, label: str) -> float:
        t = time.time()
        self.events.append((t, label))
        log.info("e2e.mark", what=label)
        return t

    async def _get(self, path: str) -> Any:
        assert self.session is not None
        async with self.session.get(self.cluster.url + path) as r:
            if r.status != 200:
                raise CheckFailed(f"GET {path}: {r.status} {await r.text()}")
            return await r.json()

    # -- load --------------------------------------------------------------------------------------

    async def create(
        self, n: int, phase: str, rate: float | None = None, nodes: list[int] | None = None
    ) -> list[str]:
        """Create n ports (round-robin over `nodes`, default all) at `rate`/s or as fast as the
        API takes them; returns their ids once every request was accepted."""
        self.phase, self.target = phase, self.target + n
        self._batch += 1
        jobs: asyncio.Queue[int | None] = asyncio.Queue()
        created: list[str] = []
        pool = nodes if nodes is not None else list(range(self.cluster.n_nodes))

        async def worker() -> None:
            while (node := await jobs.get()) is not None:
                created.append(await self._create_one(node, phase))

        workers = [asyncio.create_task(worker()) for _ in range(self.concurrency)]
        try:
            start = time.perf_counter()
            for k in range(n):
                if rate:
                    delay = start + k / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                jobs.put_nowait(pool[self._seq % len(pool)])
                self._seq += 1
            for _ in workers:
                jobs.put_nowait(None)
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
        return created

    async def _create_one(self, node: int, phase: str) -> str:
        c = self.cluster
        port: dict[str, Any] = {
            "network_id": c.networks[c.node_vpc[node]],
            "device_owner": "compute:nova",
            "device_id": str(uuid.uuid4()),
        }
        bind = {"binding:host_id": c.node_name(node)}
        real = node == 0 and c.ovs is not None
        if real and self.plug_first:
            pid = (await self._request("POST", "/v2.0/ports", {"port": port}, 201))[1]["id"]
            await self.plug(pid)
            sent, _ = await self._request("PUT", f"/v2.0/ports/{pid}", {"port": bind}, 200)
        else:
            sent, body = await self._request("POST", "/v2.0/ports", {"port": {**port, **bind}}, 201)
            pid = body["id"]
            if real:
                self._plug_queue.put_nowait((pid, None))  # Nova's order: bound, then plugged
        self.ports[pid] = PortRecord(node, phase, sent, time.time(), self._batch)
        return pid

    async def _request(
        self, method: str, path: str, body: dict[str, Any], ok: int
    ) -> tuple[float, dict[str, Any]]:
        """(wall time the successful request was sent, the port); retried while the controller
        is away (a drill), loud on any refusal."""
        assert self.session is not None
        deadline = time.monotonic() + 120
        while True:
            sent = time.time()
            try:
                async with self.session.request(method, self.cluster.url + path, json=body) as r:
                    data = await r.json()
                    if r.status == ok:
                        return sent, data["port"]
                    if r.status < 500:
                        raise CheckFailed(f"{method} {path} refused: {r.status} {data}")
            except (aiohttp.ClientConnectorError, ConnectionRefusedError):
                pass  # not sent: the controller is down; retry
            except (TimeoutError, aiohttp.ClientError):
                # Sent, but no answer: a create may have been committed (adopted in verify()).
                self.unknown_outcomes += 1
            if time.monotonic() > deadline:
                raise CheckFailed(f"the API did not take {method} {path} for 120 s")
            self.retries += 1
            await asyncio.sleep(0.2)

    async def create_bound(self, node: int) -> str:
        """One port bound to `node` and nothing else (no VIF plugged, not tracked)."""
        c = self.cluster
        port = {"network_id": c.networks[c.node_vpc[node]], "binding:host_id": c.node_name(node)}
        return str((await self._request("POST", "/v2.0/ports", {"port": port}, 201))[1]["id"])

    async def plug(self, pid: str) -> None:
        """Plug the port's VIF on the real node's switch; returns once OVS has it."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._plug_queue.put_nowait((pid, done))
        await done

    async def _plugger(self) -> None:
        """The real node's VIFs: internal interfaces named tap<port id[:11]>, many per ovs-vsctl."""
        ovs = self.cluster.ovs
        while True:
            jobs = [await self._plug_queue.get()]
            while not self._plug_queue.empty() and len(jobs) < 200:
                jobs.append(self._plug_queue.get_nowait())
            pids = [pid for pid, _ in jobs]
            if ovs is None:
                continue
            args: list[str] = []
            for pid in pids:
                t = tap_name(pid)
                args += [
                    "--",
                    "--may-exist",
                    "add-port",
                    "br-int",
                    t,
                    "--",
                    "set",
                    "interface",
                    t,
                    "type=internal",
                ]
            proc = await asyncio.create_subprocess_exec(
                "ovs-vsctl",
                f"--db={ovs.db}",
                "--timeout=30",
                *args,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await proc.communicate()
            if proc.returncode != 0:
                log.error("e2e.plug_failed", ports=len(pids), error=err.decode().strip())
            self._plugged += len(pids)
            for _, done in jobs:
                if done is not None and not done.done():
                    done.set_result(None)

    # -- observation -------------------------------------------------------------------------------

    async def _tail(self, since: int) -> None:
        assert self.session is not None
        while True:
            try:
                page = await self._get(f"/v2.0/alcor/changes?since={since}&limit=2000&wait=2")
            except (TimeoutError, aiohttp.ClientError, CheckFailed):
                await asyncio.sleep(0.2)  # the controller is restarting
                continue
            for ch in page["changes"]:
                since = ch["rev"]
                if ch["type"] != "port" or ch["body"] is None:
                    continue
                pid, st = ch["id"], ch["body"].get("status")
                self.status[pid] = st
                if st == "ACTIVE":
                    self.active_at.setdefault(pid, ch["time"])
                elif st == "ERROR" and pid not in self.active_at:
                    # on its way to ACTIVE (an ERROR later, e.g. while OVS restarts, is not)
                    self.errors_seen[pid] = self.errors_seen.get(pid, 0) + 1

    async def _sample(self) -> None:
        last: tuple[int, float, int] | None = None  # pid, time, cpu ticks
        i = 0
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            cpu = rss = None
            pid = self.cluster.controller_pid()
            got = _proc_usage(pid) if pid is not None else None
            if got is not None:
                ticks, rss = got
                if last is not None and last[0] == pid:
                    cpu = 100.0 * (ticks - last[2]) / TICKS / (now - last[1])
                last = (pid, now, ticks)
            # Passive declares cost a round trip per queue: every 5 s at a thousand nodes.
            if i % (5 if self.cluster.n_nodes > 200 else 1) == 0:
                self._depths = await self.queue_depths()
            i += 1
            q, qmax, qc = self._depths
            self.samples.append(
                Sample(now, cpu, rss, len(self.ports), len(self.active_at), q, qmax, qc)
            )

    async def queue_depths(self) -> tuple[int | None, int | None, int | None]:
        """(messages in all node queues, deepest node queue, controller queue); None if unknown."""
        try:
            if self._mq is None or self._mq.is_closed:
                self._mq = await aio_pika.connect_robust(URL, reconnect_interval=1.0)
            ch = await self._mq.channel()
            try:
                depths = []
                for n in self.cluster.node_ids:
                    q = await ch.declare_queue(f"alcor.node.{n}", passive=True)
                    depths.append(q.declaration_result.message_count)
                qc = await ch.declare_queue(self.cluster.controller_queue, passive=True)
                return sum(depths), max(depths, default=0), qc.declaration_result.message_count
            finally:
                await ch.close()
        except Exception:  # noqa: BLE001 -- a broker drill closes this connection too
            return None, None, None

    async def _progress(self) -> None:
        tty = sys.stderr.isatty()
        last_line = 0.0
        while True:
            await asyncio.sleep(0.5)
            created, active = len(self.ports), len(self.active_at)
            total = max(self.target, 1)
            done = int(30 * min(active, total) / total)
            s = self.samples[-1] if self.samples else None
            extra = ""
            if s is not None:
                extra = (
                    f" cpu {s.cpu or 0:4.0f}% rss {s.rss_mb or 0:5.0f}MB"
                    f" queued {s.queued if s.queued is not None else '?'}"
                )
            line = (
                f"[{'#' * done}{'.' * (30 - done)}] {self.phase:<22} created {created:>7,}/"
                f"{total:,} active {active:>7,}{extra}"
            )
            if tty:
                sys.stderr.write("\r\x1b[K" + line)
                sys.stderr.flush()
            elif time.monotonic() - last_line > 5:
                last_line = time.monotonic()
                sys.stderr.write(line + "\n")

    # -- checks ------------------------------------------------------------------------------------

    async def node_sync(self) -> dict[str, dict[str, float]]:
        """Per node, from the controller's /metrics: in_sync, goal and applied rev, snapshot owed."""
        assert self.session is not None
        async with self.session.get(self.cluster.url + "/metrics") as r:
            text = await r.text()
        out: dict[str, dict[str, float]] = {}
        names = {
            "alcor_southbound_node_in_sync": "in_sync",
            "alcor_southbound_node_goal_rev": "goal_rev",
            "alcor_southbound_node_applied_rev": "applied_rev",
            "alcor_southbound_node_snapshot_pending": "snapshot_pending",
        }
        for fam in text_string_to_metric_families(text):
            key = names.get(fam.name)
            if key is None:
                continue
            for smp in fam.samples:
                out.setdefault(smp.labels["node_id"], {})[key] = smp.value
        return out

    async def pending(
        self, ports: Iterable[str] | None = None, final: bool = False
    ) -> tuple[list[str], list[str]]:
        """(ports not ACTIVE, nodes not in sync): both empty once the system has converged."""
        ids = self.ports if ports is None else ports
        not_active = [p for p in ids if self.status.get(p) != "ACTIVE"]
        if not_active and not final:
            # Statuses come from the change stream for free; the per-node scrape of /metrics
            # (1,000 nodes) is left until they are all ACTIVE, so polling does not load the
            # controller it measures.
            return not_active, []
        try:
            sync = await self.node_sync()
        except (TimeoutError, aiohttp.ClientError):
            return not_active, list(self.cluster.node_ids)
        behind = [n for n in self.cluster.node_ids if not sync.get(n, {}).get("in_sync")]
        return not_active, behind

    async def wait_converged(self, timeout: float = 120.0) -> float:
        """Poll until every port is ACTIVE and every node in sync; the wall time it happened."""
        deadline = time.monotonic() + timeout
        while True:
            not_active, behind = await self.pending()
            if not not_active and not behind:
                return time.time()
            if time.monotonic() > deadline:
                not_active, behind = await self.pending(final=True)
                sample = {p: self.status.get(p) for p in not_active[:5]}
                raise CheckFailed(
                    f"not converged after {timeout:.0f} s: {len(not_active)} ports not ACTIVE "
                    f"(e.g. {sample}), {len(behind)} nodes not in sync (e.g. {behind[:3]})"
                )
            await asyncio.sleep(0.25)

    async def list_ports(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        path = "/v2.0/ports?fields=id&fields=status&fields=binding:host_id&limit=5000"
        while path:
            page = await self._get(path)
            out += page["ports"]
            nxt = [lk["href"] for lk in page.get("ports_links", []) if lk["rel"] == "next"]
            link = urlsplit(nxt[0]) if nxt and page["ports"] else None
            path = f"{link.path}?{link.query}" if link else ""
        return out

    async def verify(self) -> dict[str, Any]:
        """The strict end-of-run check; raises CheckFailed with every problem found."""
        c = self.cluster
        problems: list[str] = []
        listed = await self.list_ports()
        by_id = {p["id"]: p for p in listed}
        ours = {c.node_name(i): i for i in range(c.n_nodes)}
        lost = [p for p in self.ports if p not in by_id]
        if lost:
            problems.append(f"{len(lost)} accepted ports are gone (e.g. {lost[:3]})")
        mine = [p for p in listed if p.get("binding:host_id") in ours]
        extra = [p["id"] for p in mine if p["id"] not in self.ports]
        # A create committed while the controller died before answering was retried, so no VIF was
        # ever plugged for it: on the real node it must say ERROR (interface not on the bridge),
        # exactly as an orphaned Neutron port would; everywhere else it is held like any port.
        real = c.node_name(0) if c.ovs is not None else None
        unplugged = {p["id"] for p in mine if p["id"] in extra and p.get("binding:host_id") == real}
        down = [p["id"] for p in mine if p["status"] != "ACTIVE" and p["id"] not in unplugged]
        if down:
            problems.append(f"{len(down)} ports not ACTIVE (e.g. {down[:3]})")
        wrong = [p["id"] for p in mine if p["id"] in unplugged and p["status"] != "ERROR"]
        if wrong:
            problems.append(f"{len(wrong)} unplugged ports not ERROR (e.g. {wrong[:3]})")
        per_node = [0] * c.n_nodes
        for p in mine:
            per_node[ours[p["binding:host_id"]]] += 1
        sync = await self.node_sync()
        behind = [n for n in c.node_ids if not sync.get(n, {}).get("in_sync")]
        if behind:
            problems.append(f"{len(behind)} nodes not in sync (e.g. {behind[:3]})")
        assert c.fleet is not None
        agents = await c.fleet.report()
        for i, n in enumerate(c.node_ids):
            a = agents.get(n)
            if a is None:
                continue  # the real agent: checked against its switch below
            if a.local_ports != per_node[i]:
                problems.append(
                    f"simulated node {i} holds {a.local_ports} ports, {per_node[i]} bound"
                )
            if a.awaiting_snapshot or a.rejected:
                problems.append(
                    f"simulated node {i}: awaiting_snapshot={a.awaiting_snapshot} "
                    f"rejected={a.rejected}"
                )
            if sync.get(n, {}).get("applied_rev") != a.applied_rev:
                problems.append(
                    f"simulated node {i} applied {a.applied_rev}, controller saw "
                    f"{sync.get(n, {}).get('applied_rev')}"
                )
        flows_checked = 0
        if c.ovs is not None:
            have = {
                int(m.group(1), 16)
                for m in re.finditer(r"cookie=(0x[0-9a-f]+)", "\n".join(c.ovs.dump_flows()))
            }
            local = [
                p["id"]
                for p in mine
                if ours[p["binding:host_id"]] == 0 and p["id"] not in unplugged
            ]
            missing = [p for p in local if cookie_for("port", p) not in have]
            flows_checked = len(local)
            if missing:
                problems.append(
                    f"{len(missing)} real-node ports have no flows (e.g. {missing[:3]})"
                )
        depth, deepest, _ = await self.queue_depths()
        if depth:
            problems.append(f"{depth} messages left in node queues (deepest {deepest})")
        if problems:
            raise CheckFailed("; ".join(problems))
        return {
            "ports": len(mine),
            "accepted": len(self.ports),
            "adopted": len(extra),
            "nodes_in_sync": len(c.node_ids),
            "real_node_ports_with_flows": flows_checked,
        }
