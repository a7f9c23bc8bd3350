"""The agent's stream side: consume this node's queue, keep the model, report back.

`AgentStream` says `hello` on start (the controller answers with a snapshot), hands each message
to the model's ordering rule (alcor/agent/model.py), lets the datapath apply the new goal state,
acknowledges, then reports `status` (applied_rev, digest, and the port states that changed since
the last report, so a report's size follows the churn, not the host's port count; coalesced
under load), and likewise the states of the floating IPs it NATs. The queue carries the node's own chain and the chains of the multicast VPCs it
follows (the broker copies those in), or, with `[southbound] vpc_channel = "stream"`, each
followed VPC's chain comes from that VPC's stream, read from the point in time its join names
(`since`). Both sources go through one handler, one message at a time (a lock), into the same
ordering rule; a stream is read only from after the node's chain started following it, so no VPC
op is applied before the join. A message that is not a valid message for this node is rejected (never requeued) and counted.
While a snapshot is owed (start, gap), `hello`/`resync` is repeated until one arrives.

    stream = AgentStream(transport, node_id, node_address, controller_address, apply=datapath.apply)
    await stream.start()
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from alcor.agent.config import AgentConfig, NodeConfig
from alcor.agent.model import AgentModel, MalformedMessage, Outcome, parse_message
from alcor.config import Config, ConfigError
from alcor.transport import Address, Delivery, MqConfig, Subscription, Transport
from alcor.wire import CONTROLLER_QUEUE, WIRE_VERSION, vpc_stream

if TYPE_CHECKING:
    from alcor.kernel import Kernel

log = structlog.get_logger("alcor.agent.stream")

# The datapath: goal state in, {port id: (status, reason)} out; sync or async.
Apply = Callable[[dict[str, Any]], Any]


@dataclass
class StreamCounters:
    received: int = 0
    applied: int = 0
    duplicates: int = 0
    gaps: int = 0
    vpc_gaps: int = 0  # of them, on a VPC's chain (repaired with that VPC's state only)
    waiting: int = 0
    snapshots: int = 0
    rejected: int = 0
    deposed: int = 0  # refused: sent by a leader older than one already heard
    foreign: int = 0
    statuses: int = 0


class AgentStream:
    def __init__(
        self,
        transport: Transport,
        node_id: str,
        address: Address,
        controller: Address,
        *,
        apply: Apply | None = None,
        prefetch: int = 64,
        resync_interval: float = 5.0,
        status_delay: float = 0.05,
        status_quiet: float = 1.0,
        publish_timeout: float = 5.0,
        report_interval: float = 5.0,
        stream_rewind: float = 5.0,
    ) -> None:
        self.transport = transport
        self.node_id = node_id
        self.address = address
        self.controller = controller
        self.apply = apply
        self.prefetch = prefetch
        self.resync_interval = resync_interval
        self.status_delay = status_delay
        self.status_quiet = status_quiet
        self.report_interval = report_interval
        self.publish_timeout = publish_timeout
        # Seconds a stream is read from before its join's `since`: the dispatcher's clock
        # against the broker's (a stream's times are the broker's), and RabbitMQ attaches by
        # whole seconds. What this re-reads is dropped as duplicates.
        self.stream_rewind = stream_rewind
        self.model = AgentModel(node_id)
        self.boot_id = uuid.uuid4().hex
        self.counters = StreamCounters()
        self.port_status: dict[str, str] = {}
        # What the controller has been told: port → (status, the port's revision_number then).
        # A port is reported again when its state changes, or when the controller sent a new
        # revision of it (the controller may have reset its status, e.g. a rebinding), and all of
        # them after a snapshot (the controller's repair path, and every agent start).
        self._reported: dict[str, tuple[str, int]] = {}
        # The same for the floating IPs this node NATs (a gateway node): id → status, told.
        self.fip_status: dict[str, str] = {}
        self._fips_reported: dict[str, tuple[str, int]] = {}
        self.synced = asyncio.Event()  # set once a snapshot made the model whole
        self._sub: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._status_due = asyncio.Event()
        self._ports_due = asyncio.Event()  # a port's state changed, or a snapshot came
        self._last_status = 0.0
        self._asked_at = 0.0
        self._vpc_asked_at: dict[str, float] = {}  # broken VPC chains → when last asked
        # One message at a time, from the queue and every stream: the model's rule is one
        # sequence, and a stream's message must not slip in while a join is half done.
        self._lock = asyncio.Lock()
        self._streams: dict[str, Subscription] = {}  # VPC chains read from their stream
        self._unopened: dict[str, float] = {}  # streams to (re)open → since (s), retried

    async def start(self) -> None:
        self._sub = await self.transport.consume(self.address, self._on_delivery, self.prefetch)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._ask_loop(), name=f"agent.ask.{self.node_id}"),
            loop.create_task(self._status_loop(), name=f"agent.status.{self.node_id}"),
            loop.create_task(self._heartbeat_loop(), name=f"agent.heartbeat.{self.node_id}"),
        ]
        log.info("agent.stream_started", node=self.node_id, queue=self.address.queue)

    async def stop(self) -> None:
        for v in list(self._streams):
            await self._close_stream(v)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
        self._tasks = []
        if self._sub is not None:
            await self._sub.cancel()
            self._sub = None

    # -- controller → agent --------------------------------------------------------------------

    async def _on_delivery(self, d: Delivery) -> None:
        async with self._lock:
            await self._handle(d)

    def _on_stream(self, vpc: str) -> Callable[[Delivery], Any]:
        async def handler(d: Delivery) -> None:
            async with self._lock:
                await self._handle(d, vpc)

        return handler

    async def _handle(self, d: Delivery, stream: str = "") -> None:
        c = self.counters
        c.received += 1
        try:
            msg = parse_message(d.body)
        except MalformedMessage as e:
            c.rejected += 1
            log.warning("stream.rejected", node=self.node_id, error=str(e), size=len(d.body))
            await d.reject()
            return
        if stream and msg.vpc_id != stream:
            c.rejected += 1
            log.warning("stream.misrouted", node=self.node_id, stream=stream, vpc=msg.vpc_id)
            await d.reject()
            return
        if not msg.vpc_id and msg.node_id != self.node_id:
            c.foreign += 1
            c.rejected += 1
            log.warning("stream.foreign", node=self.node_id, addressed_to=msg.node_id)
            await d.reject()
            return
        was_awaiting = self.model.awaiting_snapshot
        outcome = self.model.receive(msg)
        if outcome is Outcome.DEPOSED:
            c.deposed += 1
            c.rejected += 1
            log.warning("stream.deposed_leader", node=self.node_id, epoch=msg.epoch,
                        current=self.model.epoch, rev=msg.rev)
            await d.reject()
            return
        if outcome is Outcome.DUPLICATE:
            c.duplicates += 1
        elif outcome is Outcome.WAITING:
            c.waiting += 1
        elif outcome is Outcome.GAP:
            c.gaps += 1
            log.warning(
                "stream.gap",
                node=self.node_id,
                prev_rev=msg.prev_rev,
                applied_rev=self.model.applied_rev,
            )
            await self._ask("resync")
        elif outcome is Outcome.VPC_GAP:
            c.gaps += 1
            c.vpc_gaps += 1
            log.warning("stream.vpc_gap", node=self.node_id, vpc=msg.vpc_id,
                        prev_rev=msg.prev_rev, held=self.model.chains.get(msg.vpc_id))
            await self._ask_vpc(msg.vpc_id)
        else:
            if outcome is Outcome.SNAPSHOT:
                c.snapshots += 1
                log.info("stream.snapshot", node=self.node_id, rev=msg.rev, ops=len(msg.ops))
                self.synced.set()
                self._reported.clear()
                self._fips_reported.clear()
                self._ports_due.set()
            else:
                c.applied += 1
            if not msg.vpc_id:
                await self._follow(msg, outcome is Outcome.SNAPSHOT)
            await self._apply()
            self._status_due.set()
        # Acknowledge only once applied: a crash before this redelivers, and the rule drops it.
        await d.ack()
        if was_awaiting and not self.model.awaiting_snapshot:
            self._asked_at = 0.0

    # -- the VPC chains' streams -------------------------------------------------------------

    async def _follow(self, msg: Any, snapshot: bool) -> None:
        """After the node's chain started or stopped VPC chains: read each started one from its
        stream (from `since` on), stop reading the stopped ones. A chain (re)started is read
        again from the message's `since` whatever was read before: a join, a snapshot, a VPC
        snapshot all say "from rev r", and the stream may have run ahead of r meanwhile (its
        messages dropped while a snapshot was awaited)."""
        if snapshot:
            for v in [v for v in [*self._streams, *self._unopened] if v not in self.model.chains]:
                await self._close_stream(v)
        for v, r in msg.vpcs:
            await self._close_stream(v)
            if r is not None and msg.since:
                self._unopened[v] = msg.since / 1000 - self.stream_rewind
                await self._open_stream(v)

    async def _open_stream(self, vpc: str) -> None:
        since = self._unopened[vpc]
        try:
            sub = await self.transport.consume_stream(
                self.address.with_stream(vpc_stream(vpc)), self._on_stream(vpc), self.prefetch,
                since,
            )
        except Exception as e:
            # Retried by _ask_loop; meanwhile the chain gets nothing, and when it opens it is
            # read from `since` all the same (or, truncated by retention, it shows a gap).
            log.warning("stream.open_failed", node=self.node_id, vpc=vpc, error=str(e))
            return
        del self._unopened[vpc]
        self._streams[vpc] = sub
        log.info("stream.following", node=self.node_id, vpc=vpc, since=round(since, 3))

    async def _close_stream(self, vpc: str) -> None:
        self._unopened.pop(vpc, None)
        sub = self._streams.pop(vpc, None)
        if sub is not None:
            await sub.cancel()

    @property
    def streams(self) -> list[str]:
        """The VPC chains read from their stream now (tests, ops views)."""
        return sorted(self._streams)

    async def _apply(self) -> None:
        local = self.model.local_ports()
        if self.apply is None:
            # No datapath (bench, tests): a port is programmed as soon as it is known.
            self._set_ports({p: "ACTIVE" for p in local})
            self._set_fips({f: "ACTIVE" for f in self.model.floating_ips()})
            return
        try:
            result = self.apply(self.model.goal())
            if inspect.isawaitable(result):
                result = await result
            states = {pid: st for pid, (st, _reason) in (result or {}).items()}
        except Exception:
            log.exception("stream.apply_failed", node=self.node_id, rev=self.model.applied_rev)
            states = {p: "ERROR" for p in [*local, *self.model.floating_ips()]}
        self._set_ports({p: states.get(p, "DOWN") for p in local})
        self._set_fips({f: states.get(f, "DOWN") for f in self.model.floating_ips()})

    def _set_ports(self, new: dict[str, str]) -> bool:
        """Take the local ports' states; True (and a report due) if any changed."""
        if new == self.port_status:
            return False
        self.port_status = new
        self._ports_due.set()
        return True

    def _set_fips(self, new: dict[str, str]) -> bool:
        if new == self.fip_status:
            return False
        self.fip_status = new
        self._ports_due.set()
        return True

    def datapath_status(self, statuses: Mapping[str, tuple[str, str]]) -> None:
        """The switch changed a port's state on its own (its tap appeared or went, the switch
        reconnected): report it without waiting for the next message from the controller."""
        new = {p: statuses.get(p, ("DOWN", ""))[0] for p in self.model.local_ports()}
        fips = {f: statuses.get(f, ("DOWN", ""))[0] for f in self.model.floating_ips()}
        if self._set_ports(new) | self._set_fips(fips):
            self._status_due.set()

    # -- agent → controller --------------------------------------------------------------------

    async def _send(self, body: dict[str, Any]) -> bool:
        raw = json.dumps({"v": WIRE_VERSION, "node_id": self.node_id, **body}, separators=(",", ":"))
        try:
            ok = await self.transport.publish(
                [(self.controller, raw.encode())], self.publish_timeout
            )
            return bool(ok and ok[0])
        except Exception as e:
            log.warning(
                "stream.send_failed", node=self.node_id, kind=body.get("kind"), error=str(e)
            )
            return False

    async def _ask(self, kind: str) -> None:
        """hello (no snapshot yet) or resync (after a gap); repeated by _ask_loop until answered."""
        self._asked_at = time.monotonic()
        body: dict[str, Any] = {"kind": kind, "applied_rev": self.model.applied_rev}
        if kind == "hello":
            body["boot_id"] = self.boot_id
        if await self._send(body):
            log.info(f"stream.{kind}_sent", node=self.node_id, applied_rev=self.model.applied_rev)

    async def _ask_vpc(self, vpc: str) -> None:
        """resync for one VPC chain with a gap: the controller answers with that VPC's state."""
        self._vpc_asked_at[vpc] = time.monotonic()
        body = {"kind": "resync", "applied_rev": self.model.applied_rev, "vpc_id": vpc}
        if await self._send(body):
            log.info("stream.resync_sent", node=self.node_id, vpc=vpc)

    async def _ask_loop(self) -> None:
        await self._ask("hello")
        while True:
            await asyncio.sleep(min(1.0, self.resync_interval))
            now = time.monotonic()
            for vpc in list(self._unopened):
                async with self._lock:
                    if vpc in self._unopened:
                        await self._open_stream(vpc)
            for vpc in list(self._vpc_asked_at):
                if vpc not in self.model.broken or self.model.awaiting_snapshot:
                    del self._vpc_asked_at[vpc]
                elif now - self._vpc_asked_at[vpc] >= self.resync_interval:
                    await self._ask_vpc(vpc)
            if not self.model.awaiting_snapshot:
                continue
            if time.monotonic() - self._asked_at >= self.resync_interval:
                await self._ask("hello" if not self.synced.is_set() else "resync")

    def _unreported(
        self, kind: str = "port"
    ) -> tuple[dict[str, tuple[str, int]], dict[str, str]]:
        """Every local port's (or floating IP's) (state, revision), and the states the
        controller has not heard."""
        revisions = self.model.revisions
        held, reported = (
            (self.port_status, self._reported)
            if kind == "port"
            else (self.fip_status, self._fips_reported)
        )
        now = {p: (s, revisions.get((kind, p), 0)) for p, s in held.items()}
        return now, {p: v[0] for p, v in now.items() if reported.get(p) != v}

    async def _heartbeat_loop(self) -> None:
        """With nothing to report, a report all the same every report_interval: the controller
        takes a silent agent's node for down (alcor/southbound/gateways.py). Before the first
        snapshot the hello, repeated until it comes, says the agent is alive."""
        while True:
            await asyncio.sleep(self.report_interval)
            if self.synced.is_set() and time.monotonic() - self._last_status >= self.report_interval:
                self._ports_due.set()  # sent now, not held back by status_quiet
                self._status_due.set()

    async def _status_loop(self) -> None:
        while True:
            await self._status_due.wait()
            # Coalesce: a burst of messages yields one status with the latest applied_rev.
            await asyncio.sleep(self.status_delay)
            self._status_due.clear()
            now, changed = self._unreported()
            fips_now, fips_changed = self._unreported("floating_ip")
            quiet = self.status_quiet - (time.monotonic() - self._last_status)
            if not changed and not fips_changed and quiet > 0 and not self._ports_due.is_set():
                # Only applied_rev and the digest moved (a neighbour, a subnet...): nothing the
                # controller writes depends on that, so such reports are sent at most every
                # status_quiet seconds, unless a port changes meanwhile. At 10 nodes per VPC
                # that is 9 reports in 10.
                try:
                    await asyncio.wait_for(self._ports_due.wait(), quiet)
                except TimeoutError:
                    pass
                self._status_due.clear()
                now, changed = self._unreported()
                fips_now, fips_changed = self._unreported("floating_ip")
            self._ports_due.clear()
            body: dict[str, Any] = {
                "kind": "status",
                "applied_rev": self.model.applied_rev,
                "vpcs": dict(self.model.chains),
                "digest": self.model.digest(),
                "ports": changed,
            }
            if fips_changed:
                body["floating_ips"] = fips_changed
            ok = await self._send(body)
            if ok:
                self.counters.statuses += 1
                self._last_status = time.monotonic()
                # What is no longer here is forgotten, so what comes back is reported.
                for held, told, sent in (
                    (now, self._reported, changed),
                    (fips_now, self._fips_reported, fips_changed),
                ):
                    for p in [p for p in told if p not in held]:
                        del told[p]
                    for p in sent:
                        told[p] = held[p]
            else:
                await asyncio.sleep(1.0)
                self._status_due.set()


class LocalNode(Protocol):
    """Where the stream's node and transport come from in the dev run, where it shares the
    controller's process (alcor/roles.py `EmbeddedNode`); the agent role needs none."""

    requires: tuple[str, ...]

    async def resolve(self, kernel: Kernel) -> tuple[str, Mapping[str, Any]]:
        """This node's id and its body (its MQ settings)."""
        ...

    def transport(self, kernel: Kernel) -> Transport: ...


class StreamModule:
    """Kernel module running one AgentStream: the agent role's, or the dev run's embedded one.

    Config (alcor/agent/config.py): the agent role's node is [node] id, with its MQ settings
    [node] mq_url/mq_vhost/mq_exchange/mq_queue (default: [mq]), over the rabbitmq plugin; the dev
    run's comes from `local` (registered by name, on the southbound's in-process transport).
    [agent] prefetch, resync_interval, status_quiet. The datapath module, when loaded, applies
    each new goal state.
    """

    name = "agent_stream"

    def __init__(
        self,
        config: Config,
        *,
        controller_queue: str = CONTROLLER_QUEUE,
        local: LocalNode | None = None,
    ) -> None:
        self.config = config
        self.node = config.get(NodeConfig)
        # [southbound] controller_queue, handed in by alcor/roles.py: the agent reads no section
        # of the controller's.
        self.controller_queue = controller_queue
        self.local = local
        self.requires: tuple[str, ...] = local.requires if local is not None else ("rabbitmq",)
        if local is None and not self.node.id:
            raise ConfigError("the agent role needs [node] id (this host's node_id)")
        self.stream: AgentStream | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, kernel: Kernel) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(kernel))

    async def _run(self, kernel: Kernel) -> None:
        if self.local is not None:
            node_id, body = await self.local.resolve(kernel)
            transport = self.local.transport(kernel)
        else:
            node_id, body = self.node.id, dataclasses.asdict(self.node)
            transport = kernel.get(Transport)  # the rabbitmq plugin
        mq = self.config.get(MqConfig)
        agent = self.config.get(AgentConfig)
        addr = Address.of_node(node_id, body, mq)
        # Imported here: the stream (and the ops views that read it) load without os-ken.
        from alcor.agent.datapath import DatapathModule

        datapath = kernel.get(DatapathModule) if kernel.has(DatapathModule) else None
        self.stream = AgentStream(
            transport,
            node_id,
            addr,
            addr.with_queue(self.controller_queue),
            apply=datapath.apply if datapath is not None else None,
            prefetch=agent.prefetch,
            resync_interval=agent.resync_interval,
            status_quiet=agent.status_quiet,
            report_interval=agent.report_interval,
            stream_rewind=agent.stream_rewind,
        )
        if datapath is not None:
            datapath.datapath.on_status = self.stream.datapath_status
        await self.stream.start()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self.stream is not None:
            await self.stream.stop()
