"""Simulated agents: the real `AgentStream` (ordering rule, hello, status, digest) with no datapath.

Each simulated node runs the agent's own stream code against its RabbitMQ queue, so a simulated
node drops duplicates, detects gaps, asks for snapshots and reports port status exactly as a real
one does; only the flows are missing (with no datapath a known local port counts as programmed).
They live in one or two child processes so that consuming a thousand queues never competes with
the harness's own event loop for the GIL.

    fleet = Fleet(node_ids, controller_queue, processes=2)
    await fleet.start()
    await fleet.restart(node_ids[:200])     # a fresh boot each: hello, snapshot
    state = await fleet.report()            # node → AgentReport
    await fleet.stop()
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from dataclasses import dataclass
from typing import Any

from alcor import log as alcor_log
from alcor.agent.stream import AgentStream
from alcor.transport import Address

URL = "amqp://guest:guest@127.0.0.1:5672/"
EXCHANGE = "alcor"


@dataclass(frozen=True)
class AgentReport:
    applied_rev: int
    digest: str
    local_ports: int
    snapshots: int
    gaps: int
    rejected: int
    awaiting_snapshot: bool


def node_address(node_id: str, url: str = URL) -> Address:
    """Where the controller publishes a node's messages (the node record's defaults)."""
    return Address(url, "/", EXCHANGE, f"alcor.node.{node_id}")


class Fleet:
    """Simulated agents spread over `processes` child processes, driven over pipes."""

    def __init__(self, node_ids: list[str], controller_queue: str, processes: int = 1) -> None:
        self.node_ids = list(node_ids)
        self.controller_queue = controller_queue
        n = max(1, min(processes, len(self.node_ids)))
        self.shards = [self.node_ids[i::n] for i in range(n)]
        self.pipes: list[Any] = []
        self.procs: list[Any] = []

    async def start(self) -> None:
        if not self.node_ids:
            return
        ctx = multiprocessing.get_context("spawn")
        for shard in self.shards:
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_child, args=(child, shard, self.controller_queue), daemon=True
            )
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)
        for pipe in self.pipes:
            reply = await asyncio.to_thread(pipe.recv)
            if reply != "ready":
                raise RuntimeError(f"simulated agents failed to start: {reply}")

    async def _ask(self, pipe: Any, cmd: tuple[Any, ...]) -> Any:
        pipe.send(cmd)
        reply = await asyncio.to_thread(pipe.recv)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def restart(self, node_ids: list[str]) -> None:
        """Stop these nodes' streams and start fresh ones (new boot, empty model), all at once."""
        wanted = set(node_ids)
        await asyncio.gather(
            *(
                self._ask(pipe, ("restart", [n for n in shard if n in wanted]))
                for pipe, shard in zip(self.pipes, self.shards, strict=True)
            )
        )

    async def report(self) -> dict[str, AgentReport]:
        out: dict[str, AgentReport] = {}
        for part in await asyncio.gather(*(self._ask(p, ("report",)) for p in self.pipes)):
            out.update(part)
        return out

    async def stop(self) -> None:
        for pipe in self.pipes:
            try:
                await asyncio.wait_for(self._ask(pipe, ("stop",)), 30)
            except Exception:  # noqa: BLE001 -- the process is killed below anyway
                pass
        for proc in self.procs:
            await asyncio.to_thread(proc.join, 10)
            if proc.is_alive():
                proc.kill()
        self.pipes, self.procs = [], []


def _child(pipe: Any, node_ids: list[str], controller_queue: str) -> None:
    asyncio.run(_serve(pipe, node_ids, controller_queue))


async def _serve(pipe: Any, node_ids: list[str], controller_queue: str) -> None:
    from alcor_plugins.rabbitmq import RabbitConfig, RabbitTransport

    alcor_log.setup("warning", "console")
    # After `close_all_connections` aio-pika logs one "callback error" per restored channel: a
    # thousand lines saying the reconnect worked.
    logging.getLogger("aio_pika.tools").setLevel(logging.CRITICAL)
    transport = RabbitTransport(RabbitConfig(reconnect_interval=1.0))
    controller = Address(URL, "/", EXCHANGE, controller_queue)
    streams: dict[str, AgentStream] = {}

    async def boot(node: str) -> None:
        s = AgentStream(transport, node, node_address(node), controller)
        await s.start()
        streams[node] = s

    try:
        # In waves: a thousand channel opens at once would stall the connection's heartbeat.
        for i in range(0, len(node_ids), 50):
            await asyncio.gather(*(boot(n) for n in node_ids[i : i + 50]))
        pipe.send("ready")
    except Exception as e:  # noqa: BLE001 -- reported to the parent, which fails loudly
        pipe.send(repr(e))
        return
    while True:
        cmd = await asyncio.to_thread(pipe.recv)
        try:
            if cmd[0] == "stop":
                await asyncio.gather(*(s.stop() for s in streams.values()))
                await transport.stop()
                pipe.send("stopped")
                return
            if cmd[0] == "restart":
                await asyncio.gather(*(streams.pop(n).stop() for n in cmd[1]))
                await asyncio.gather(*(boot(n) for n in cmd[1]))
                pipe.send("restarted")
            elif cmd[0] == "report":
                pipe.send({n: _report(s) for n, s in streams.items()})
        except Exception as e:  # noqa: BLE001
            pipe.send(RuntimeError(f"fleet command {cmd[0]} failed: {e!r}"))


def _report(s: AgentStream) -> AgentReport:
    m, c = s.model, s.counters
    return AgentReport(
        m.applied_rev,
        m.digest(),
        len(m.local_ports()),
        c.snapshots,
        c.gaps,
        c.rejected,
        m.awaiting_snapshot,
    )
