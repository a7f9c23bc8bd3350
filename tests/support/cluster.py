"""Several `python main.py controller` processes on one PostgreSQL database and RabbitMQ, and
agents for their nodes (the real AgentStream, without a datapath) in the caller's event loop.

    c = Cluster(tmp, db_url, 3)
    await c.start()
    leader, epoch = await c.leader()
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from alcor.agent.model import Message, Outcome
from alcor.agent.stream import AgentStream
from alcor.transport import Address
from alcor_plugins.rabbitmq import RabbitConfig, RabbitTransport
from tests.support.broker import URL
from tests.support.process import Program

MQ = URL


@dataclass
class Cluster:
    tmp: Path
    db: str
    n: int
    exchange: str = field(default_factory=lambda: f"alcor-t-{uuid.uuid4().hex[:8]}")
    programs: list[Program] = field(default_factory=list)
    agents: dict[str, AgentStream] = field(default_factory=dict)
    transport: RabbitTransport = field(default_factory=lambda: RabbitTransport(
        RabbitConfig(reconnect_interval=0.3)))
    session: aiohttp.ClientSession | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    # Every message an agent took or refused: (monotonic time, leader epoch, outcome).
    received: list[tuple[float, int, Outcome]] = field(default_factory=list)

    @property
    def controller_queue(self) -> str:
        return f"{self.exchange}.controller"

    def env(self) -> dict[str, str]:
        return {
            "ALCOR_STORE__URL": self.db,
            "ALCOR_KERNEL__PLUGINS": "rabbitmq",
            "ALCOR_SOUTHBOUND__TRANSPORT": "rabbitmq",
            "ALCOR_SOUTHBOUND__CONTROLLER_QUEUE": self.controller_queue,
            "ALCOR_SOUTHBOUND__LEADER_TIMEOUT": "3",
            "ALCOR_MQ__EXCHANGE": self.exchange,
            "ALCOR_LOG__LEVEL": "info",
            **self.extra_env,
        }

    async def start(self) -> None:
        for i in range(self.n):
            p = Program(["controller"], env=self.env(), log=self.tmp / f"controller-{i}.log")
            await asyncio.to_thread(p.start)
            self.programs.append(p)
        self.session = aiohttp.ClientSession()
        await self.transport.start()

    def alive(self) -> list[Program]:
        return [p for p in self.programs if p.proc is not None and p.proc.poll() is None]

    async def call(self, p: Program, method: str, path: str, body: Any = None,
                   timeout: float = 5) -> tuple[int, Any]:
        assert self.session is not None
        async with self.session.request(method, p.url + path, json=body,
                                        timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            text = await r.text()
            return r.status, json.loads(text) if text else None

    async def create(self, p: Program, kind: str, path: str, **attrs: Any) -> dict[str, Any]:
        status, body = await self.call(p, "POST", path, {kind: attrs})
        assert status == 201, (status, body)
        return body[kind]

    async def southbound(self, p: Program) -> dict[str, Any]:
        status, body = await self.call(p, "GET", "/v2.0/alcor/southbound", timeout=2)
        assert status == 200, body
        return body["southbound"]

    async def leader(self, among: list[Program] | None = None) -> tuple[Program, int]:
        """The program that leads now, and the epoch (asked of a live controller)."""
        progs = among or self.alive()
        sb = await self.southbound(progs[0])
        pid = int(sb["leader"].split("-")[-2])
        by_pid = {p.proc.pid: p for p in self.programs if p.proc is not None}
        return by_pid[pid], sb["epoch"]

    async def add_agent(self, node: dict[str, Any]) -> None:
        nid = node["node_id"]
        addr = Address(MQ, "/", self.exchange, f"alcor.node.{nid}")
        s = AgentStream(self.transport, nid, addr, addr.with_queue(self.controller_queue),
                        resync_interval=1.0, status_quiet=0.2)
        receive = s.model.receive

        def recorded(msg: Message) -> Outcome:
            outcome = receive(msg)
            self.received.append((time.monotonic(), msg.epoch, outcome))
            return outcome

        s.model.receive = recorded  # type: ignore[method-assign]
        await s.start()
        self.agents[nid] = s

    async def close(self) -> None:
        for s in self.agents.values():
            await s.stop()
        for p in self.programs:
            if p.proc is not None and p.proc.poll() is None:
                os.kill(p.proc.pid, signal.SIGCONT)
            p.stop()
        await self.transport.stop()
        if self.session is not None:
            await self.session.close()


