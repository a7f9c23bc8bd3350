"""The processes of an end-to-end run: controller, real agent on a real OVS, simulated agents.

`Cluster` starts `python main.py controller` over RabbitMQ (a private controller queue, so runs
and test sessions sharing the broker never read each other's feedback), registers the nodes,
starts a private Open vSwitch (userspace datapath, own network namespace) with `python main.py
agent` for node 0, and the simulated agents for the others. `close()` stops everything and
deletes every queue it used, whatever state the run is in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import structlog

from bench.e2e.fleet import URL, Fleet
from tests.support.ovs import OvsSandbox
from tests.support.process import ROOT, Program, free_port

log = structlog.get_logger("bench.e2e")


class AgentProcess:
    """`python main.py agent` for one node; ready when its own /readyz answers 200."""

    def __init__(self, env: dict[str, str], logfile: Path) -> None:
        self.http = free_port()
        self.env = {
            **os.environ,
            "ALCOR_LOG__FORMAT": "json",
            "ALCOR_AGENT__HTTP": f"127.0.0.1:{self.http}",
            **env,
        }
        self.logfile = logfile
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        out = open(self.logfile, "ab")  # noqa: SIM115 -- the child keeps it
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "agent"],
            cwd=ROOT,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}; log {self.logfile}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/readyz", timeout=1):
                    return
            time.sleep(0.1)
        raise TimeoutError(f"agent not ready in {timeout}s; log {self.logfile}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Cluster:
    def __init__(
        self,
        workdir: Path,
        nodes: int,
        vpcs: int,
        *,
        real_agent: bool = True,
        fleet_processes: int = 1,
        synchronous: str = "FULL",
        store: str = "sqlite",
        controllers: int = 1,
    ) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.n_nodes = nodes
        self.n_vpcs = max(1, min(vpcs, nodes))
        self.real_agent = real_agent
        self.fleet_processes = fleet_processes
        self.tag = f"e2e.{uuid.uuid4().hex[:8]}"
        self.controller_queue = f"{self.tag}.controller"
        if store not in ("sqlite", "postgresql") or controllers < 1 or (
                store == "sqlite" and controllers > 1):
            raise ValueError("one controller on SQLite, or 1+ on PostgreSQL")
        self.store = store
        self.db: str | None = None  # the PostgreSQL database, created at start
        # Every controller serves the whole API (the harness spreads its requests over the
        # live ones); on PostgreSQL one of them, elected, dispatches.
        self.controllers = [
            Program(
                ["controller", "--db", str(self.dir / "alcor.db")],
                env={
                    "ALCOR_KERNEL__PLUGINS": "rabbitmq",
                    "ALCOR_SOUTHBOUND__TRANSPORT": "rabbitmq",
                    "ALCOR_SOUTHBOUND__CONTROLLER_QUEUE": self.controller_queue,
                    "ALCOR_STORE__SYNCHRONOUS": synchronous,
                    "ALCOR_LOG__LEVEL": os.environ.get("E2E_CONTROLLER_LOG", "warning"),
                },
                log=self.dir / ("controller.log" if i == 0 else f"controller-{i}.log"),
            )
            for i in range(controllers)
        ]
        self.controller = self.controllers[0]
        self._turn = 0
        self.node_ids: list[str] = []  # index i is node i; node 0 is the real agent's
        self.node_vpc: list[int] = []  # node i hosts ports of VPC node_vpc[i]
        self.networks: list[str] = []
        self.ovs: OvsSandbox | None = None
        self.agent: AgentProcess | None = None
        self.fleet: Fleet | None = None

    @property
    def url(self) -> str:
        """A live controller's API, each in turn (the first when none is up: a restart)."""
        live = [p for p in self.controllers if p.proc is not None and p.proc.poll() is None]
        if not live:
            return self.controller.url
        self._turn += 1
        return live[self._turn % len(live)].url

    @property
    def real_node(self) -> str | None:
        return self.node_ids[0] if self.real_agent and self.node_ids else None

    @property
    def simulated(self) -> list[str]:
        return self.node_ids[1:] if self.real_agent else list(self.node_ids)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        t0 = time.monotonic()
        if self.store == "postgresql":
            from tests.support.postgres import create_database

            self.db = await create_database()
            for p in self.controllers:
                p.env["ALCOR_STORE__URL"] = self.db
        for p in self.controllers:
            await asyncio.to_thread(p.start)
        async with aiohttp.ClientSession() as s:
            await self._topology(s)
        log.info(
            "e2e.controller_up",
            nodes=self.n_nodes,
            vpcs=self.n_vpcs,
            s=round(time.monotonic() - t0, 1),
        )
        if self.real_agent:
            self.ovs = OvsSandbox(self.dir / "ovs")
            await asyncio.to_thread(self.ovs.start)
            self.agent = AgentProcess(self._agent_env(), self.dir / "agent.log")
            await asyncio.to_thread(self.agent.start)
            log.info("e2e.real_agent_up", node=self.real_node, ovs=str(self.ovs.dir))
        self.fleet = Fleet(self.simulated, self.controller_queue, self.fleet_processes)
        await self.fleet.start()
        log.info(
            "e2e.fleet_up",
            agents=len(self.simulated),
            processes=len(self.fleet.procs),
            s=round(time.monotonic() - t0, 1),
        )

    def _agent_env(self) -> dict[str, str]:
        assert self.ovs is not None and self.real_node is not None
        return {
            "ALCOR_KERNEL__PLUGINS": "rabbitmq",
            "ALCOR_NODE__ID": self.real_node,
            "ALCOR_SOUTHBOUND__CONTROLLER_QUEUE": self.controller_queue,
            # A unix socket crosses network namespaces: the switch dials it from its own netns
            # (ovs-vswitchd only dials sockets inside its run directory).
            "ALCOR_AGENT__OPENFLOW_LISTEN": f"unix:{self.ovs.dir}/openflow.sock",
            "ALCOR_AGENT__OVS_DB": self.ovs.db,
            "ALCOR_AGENT__MANAGE_BRIDGE": "true",
            "ALCOR_LOG__LEVEL": "info",
        }

    async def _topology(self, s: aiohttp.ClientSession) -> None:
        async def post(path: str, body: dict[str, Any]) -> Any:
            async with s.post(self.url + path, json=body) as r:
                data = await r.json()
                if r.status != 201:
                    raise RuntimeError(f"POST {path}: {r.status} {data}")
                return data

        for start in range(0, self.n_nodes, 500):
            batch = [
                {
                    "node_name": f"{self.tag}-host-{i}",
                    "local_ip": f"172.{16 + i // 65536}.{i // 256 % 256}.{i % 256}",
                    "mac_address": f"52:54:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                }
                for i in range(start, min(start + 500, self.n_nodes))
            ]
            created = (await post("/v2.0/alcor/nodes", {"nodes": batch}))["nodes"]
            self.node_ids += [n["node_id"] for n in created]
        nets = (
            await post(
                "/v2.0/networks",
                {"networks": [{"name": f"{self.tag}-vpc-{v}"} for v in range(self.n_vpcs)]},
            )
        )["networks"]
        self.networks = [n["id"] for n in nets]
        subnets = [
            {"network_id": nid, "cidr": f"10.{v % 250}.0.0/16", "ip_version": 4}
            for v, nid in enumerate(self.networks)
        ]
        await post("/v2.0/subnets", {"subnets": subnets})
        # Node i hosts ports of VPC i % V: each VPC spans N/V nodes, every node one VPC.
        self.node_vpc = [i % self.n_vpcs for i in range(self.n_nodes)]

    def node_name(self, i: int) -> str:
        return f"{self.tag}-host-{i}"

    async def leader(self) -> Program:
        """The controller that dispatches (asked of a live one; the only one on SQLite)."""
        if len(self.controllers) == 1:
            return self.controller
        async with aiohttp.ClientSession() as s:
            async with s.get(self.url + "/v2.0/alcor/southbound") as r:
                holder = (await r.json())["southbound"]["leader"]
        pid = int(holder.split("-")[-2])  # ControllerInfo.id: host-pid-random
        return next(p for p in self.controllers if p.proc is not None and p.proc.pid == pid)

    async def restart_controller(self, sig: int = signal.SIGKILL) -> float:
        """Kill the controller that dispatches and start it again on the same database and port
        (with several, another leads meanwhile); seconds it was away."""
        victim = await self.leader()
        t0 = time.monotonic()
        await asyncio.to_thread(victim.stop, sig)
        log.info("e2e.controller_killed", port=victim.port, controllers=len(self.controllers))
        await asyncio.to_thread(victim.start)
        return time.monotonic() - t0

    async def restart_agent(self) -> None:
        assert self.agent is not None
        await asyncio.to_thread(self.agent.stop)
        await asyncio.to_thread(self.agent.start)

    def controller_pid(self) -> int | None:
        p = self.controller.proc
        return p.pid if p is not None and p.poll() is None else None

    async def close(self) -> None:
        """Stop everything and delete the queues; each step runs even if an earlier one fails."""
        steps: list[tuple[str, Any]] = [
            ("fleet", self.fleet.stop() if self.fleet else None),
            ("agent", asyncio.to_thread(self.agent.stop) if self.agent else None),
            *(("controller", asyncio.to_thread(p.stop)) for p in self.controllers),
            ("ovs", asyncio.to_thread(self.ovs.stop) if self.ovs else None),
            ("queues", self.delete_queues()),
            ("database", self._drop_database() if self.db else None),
        ]
        for name, step in steps:
            if step is None:
                continue
            try:
                await asyncio.wait_for(step, 60)
            except Exception as e:  # noqa: BLE001 -- cleanup goes on; the failure is logged
                log.error("e2e.cleanup_failed", step=name, error=repr(e))

    async def _drop_database(self) -> None:
        from tests.support.postgres import drop_database

        assert self.db is not None
        await drop_database(self.db)

    async def delete_queues(self) -> None:
        conn = await aio_pika.connect(URL)
        async with conn:
            ch = await conn.channel()
            for name in [*(f"alcor.node.{n}" for n in self.node_ids), self.controller_queue]:
                with contextlib.suppress(Exception):
                    await ch.queue_delete(name)

    def info(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "nodes": self.n_nodes,
            "vpcs": self.n_vpcs,
            "real_node": self.real_node,
            "dir": str(self.dir),
            "controller_log": str(self.controller.log),
            "store": self.store,
            "controllers": len(self.controllers),
            "config": json.dumps(
                {k: v for k, v in self.controller.env.items() if k.startswith("ALCOR_")}
            ),
        }
