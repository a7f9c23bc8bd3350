"""The transport interface between dispatcher and agents, and its in-process implementation.

Both sides use the same three calls: `publish` a batch of messages to queues and learn which the
broker confirmed, `consume` a queue with manual acknowledgements and a prefetch window, `stop`.
The in-process transport (the dev run, most tests) keeps RabbitMQ's semantics that the protocol
relies on: durable FIFO queues that outlive their consumers, at-least-once delivery (unacked
messages are redelivered, flagged, when a consumer goes away), reject without requeue.
It also has streams (RabbitMQ's x-queue-type=stream, the VPC chains' channel with
`[southbound] vpc_channel = "stream"`): an append-only log per name, trimmed by size and age, read
from a point in time by any number of readers, each with its own position; nothing is removed by
reading. The RabbitMQ implementation is plugins/rabbitmq.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import structlog

from alcor.wire import node_queue

log = structlog.get_logger("alcor.southbound.transport")  # the name operators filter on


@dataclass(frozen=True)
class MqConfig:
    """[mq]: the defaults of every node's own MQ settings."""

    SECTION: ClassVar[str] = "mq"
    url: str = "amqp://guest:guest@127.0.0.1:5672/"
    vhost: str = "/"
    exchange: str = "alcor"


@dataclass(frozen=True, slots=True)
class Address:
    """Where a queue lives: a broker (URL and vhost), the exchange it is bound to, its name."""

    url: str
    vhost: str
    exchange: str
    queue: str
    # A routing key other than the queue's name: publishing to it reaches every queue bound
    # under it (`Transport.bind`), and declares no queue. The VPC channels (docs/wire.md).
    key: str = ""
    # `queue` names a stream (`Transport.declare_stream`), not a queue: a publish appends to it.
    stream: bool = False

    @property
    def broker(self) -> tuple[str, str]:
        return (self.url, self.vhost)

    @property
    def routing_key(self) -> str:
        return self.key or self.queue

    def with_queue(self, queue: str) -> Address:
        return Address(self.url, self.vhost, self.exchange, queue)

    def with_key(self, key: str) -> Address:
        """The same broker and exchange, to a routing key (a multicast channel)."""
        return Address(self.url, self.vhost, self.exchange, "", key)

    def with_stream(self, name: str) -> Address:
        """The same broker, to the stream `name` (published on the broker's default exchange)."""
        return Address(self.url, self.vhost, "", name, stream=True)

    @classmethod
    def of_node(cls, node_id: str, body: Mapping[str, Any], mq: MqConfig) -> Address:
        """A node's own queue, from its record's MQ settings ("" or absent: [mq]'s and
        `alcor.wire.node_queue`). The dispatcher and the agent both build it here."""
        return cls(
            body.get("mq_url") or mq.url,
            body.get("mq_vhost") or mq.vhost,
            body.get("mq_exchange") or mq.exchange,
            body.get("mq_queue") or node_queue(node_id),
        )


class Delivery(Protocol):
    body: bytes
    redelivered: bool

    async def ack(self) -> None: ...

    async def reject(self) -> None:
        """Drop the message for good (no requeue): it is malformed or not ours."""
        ...


Handler = Callable[[Delivery], Awaitable[None]]


class Subscription(Protocol):
    async def cancel(self) -> None: ...


@runtime_checkable
class Transport(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(
        self, messages: Sequence[tuple[Address, bytes]], timeout: float
    ) -> list[bool]:
        """Publish persistently, confirms pipelined; True per message the broker confirmed."""
        ...

    async def consume(self, address: Address, handler: Handler, prefetch: int) -> Subscription:
        """Deliver the queue's messages to `handler` one at a time, in order; the handler acks."""
        ...

    async def bind(self, address: Address, key: str) -> None:
        """Bind the address's queue (declared if new) to its exchange under `key` as well:
        messages published to `address.with_key(key)` reach it from then on. Idempotent."""
        ...

    async def unbind(self, address: Address, key: str) -> None:
        """Undo `bind`: once this returns, messages published to `key` no longer reach the queue."""
        ...

    async def declare_stream(self, address: Address, max_bytes: int, max_age: float) -> None:
        """Make sure the stream `address.queue` exists (kept: at most max_bytes, at most max_age
        seconds old; a stream that exists keeps its own). Publishing to `address` then appends."""
        ...

    async def consume_stream(
        self, address: Address, handler: Handler, prefetch: int, since: float
    ) -> Subscription:
        """Deliver the stream's messages from the first appended at `since` (wall clock,
        seconds) or later, or from its oldest retained one if that is younger, in order, to
        `handler` one at a time; acks only open the prefetch window. The stream must exist."""
        ...


# -- in-process ---------------------------------------------------------------------------------


@dataclass
class _Queue:
    ready: collections.deque[tuple[bytes, bool]] = field(default_factory=collections.deque)
    consumer: _InProcessSubscription | None = None
    rejected: int = 0
    dropped: int = 0
    size: int = 0  # bytes in `ready`

    def push(self, body: bytes, redelivered: bool, head: bool = False) -> None:
        if head:
            self.ready.appendleft((body, redelivered))
        else:
            self.ready.append((body, redelivered))
        self.size += len(body)

    def pop(self) -> tuple[bytes, bool]:
        body, redelivered = self.ready.popleft()
        self.size -= len(body)
        return body, redelivered


# What a queue keeps for a consumer that is away (a node registered whose agent is not running):
# beyond either bound the oldest messages go, as with RabbitMQ's x-max-length(-bytes) and
# drop-head, and the agent that comes back sees a gap and asks for a snapshot. Without it, memory
# grows with every change for as long as the agent is away.
MAX_QUEUE_DEPTH = 1000
MAX_QUEUE_BYTES = 1 << 20


@dataclass
class _Stream:
    """An append-only log: offsets rise by one per message; retention drops from the head."""

    max_bytes: int
    max_age: float
    first: int = 0  # offset of entries[0]
    times: list[float] = field(default_factory=list)  # append time per retained entry
    entries: list[bytes] = field(default_factory=list)
    size: int = 0
    readers: set[_InProcessStreamReader] = field(default_factory=set)

    @property
    def end(self) -> int:
        return self.first + len(self.entries)

    def append(self, body: bytes, now: float) -> None:
        self.entries.append(body)
        self.times.append(now)
        self.size += len(body)
        self.trim(now)
        for r in self.readers:
            r.wake.set()

    def trim(self, now: float) -> None:
        """Drop from the head what is beyond either bound (a reader behind it skips ahead:
        what it missed shows up at the agent as a gap on the chain, never silently)."""
        drop = 0
        size = self.size
        while drop < len(self.entries) - 1 and (
            size > self.max_bytes or now - self.times[drop] > self.max_age
        ):
            size -= len(self.entries[drop])
            drop += 1
        if drop:
            del self.entries[:drop], self.times[:drop]
            self.first += drop
            self.size = size

    def offset_at(self, since: float) -> int:
        """The offset of the first retained message appended at `since` or later (the end if
        none): where a reader attached by time starts, as RabbitMQ's x-stream-offset does."""
        return self.first + bisect.bisect_left(self.times, since)


class InProcessBroker:
    """Queues shared by every in-process transport of one program (controller and agents)."""

    def __init__(
        self, max_depth: int = MAX_QUEUE_DEPTH, max_bytes: int = MAX_QUEUE_BYTES
    ) -> None:
        self.queues: dict[tuple[str, str, str], _Queue] = {}
        # (url, vhost, exchange, routing key) → the queues bound under it (beside their own name)
        self.bindings: dict[tuple[str, str, str, str], set[tuple[str, str, str]]] = {}
        self.max_depth = max_depth
        self.max_bytes = max_bytes
        self.streams: dict[tuple[str, str, str], _Stream] = {}
        self.clock: Callable[[], float] = time.time  # streams' append times (tests move it)
        # Tests flip this to make publishes fail as if the broker were unreachable.
        self.down = False

    def queue(self, a: Address) -> _Queue:
        key = (a.url, a.vhost, a.queue)
        q = self.queues.get(key)
        if q is None:
            q = self.queues[key] = _Queue()
        return q

    def depth(self, a: Address) -> int:
        return len(self.queue(a).ready)

    def stream(self, a: Address) -> _Stream | None:
        return self.streams.get((a.url, a.vhost, a.queue))

    def routed(self, a: Address) -> list[_Queue]:
        """The queues a message published to `a` lands in."""
        if not a.key:
            return [self.queue(a)]
        bound = self.bindings.get((a.url, a.vhost, a.exchange, a.key), ())
        return [self.queues[k] for k in sorted(bound) if k in self.queues]


class _InProcessDelivery:
    def __init__(self, sub: _InProcessSubscription, body: bytes, redelivered: bool) -> None:
        self.body = body
        self.redelivered = redelivered
        self._sub = sub
        self._done = False

    async def ack(self) -> None:
        self._settle()

    async def reject(self) -> None:
        if self._settle():
            self._sub.q.rejected += 1

    def _settle(self) -> bool:
        if self._done:
            return False
        self._done = True
        self._sub.unacked.pop(id(self), None)
        self._sub.wake.set()
        return True


class _InProcessSubscription:
    def __init__(self, q: _Queue, handler: Handler, prefetch: int) -> None:
        self.q = q
        self.handler = handler
        self.prefetch = max(1, prefetch)
        self.unacked: dict[int, _InProcessDelivery] = {}
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while True:
            while not self.q.ready or len(self.unacked) >= self.prefetch:
                self.wake.clear()
                await self.wake.wait()
            body, redelivered = self.q.pop()
            d = _InProcessDelivery(self, body, redelivered)
            self.unacked[id(d)] = d
            try:
                await self.handler(d)
            except Exception:
                # A handler that raises leaves its message unacked, as with a real broker
                # until the channel closes: the message comes back when this consumer goes.
                log.exception("transport.handler_failed", queue="in-process")

    async def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        # Unacked messages go back to the head of the queue, in order, flagged as redelivered.
        for d in reversed(list(self.unacked.values())):
            d._done = True
            self.q.push(d.body, True, head=True)
        self.unacked.clear()
        if self.q.consumer is self:
            self.q.consumer = None


class _InProcessStreamDelivery:
    def __init__(self, reader: _InProcessStreamReader, body: bytes, offset: int) -> None:
        self.body = body
        self.redelivered = False
        self.offset = offset
        self._reader = reader
        self._done = False

    async def ack(self) -> None:
        if not self._done:
            self._done = True
            self._reader.unacked -= 1
            self._reader.wake.set()

    async def reject(self) -> None:
        await self.ack()  # a stream keeps its messages; rejecting only moves the window on


class _InProcessStreamReader:
    """One reader of a stream, at its own offset; reading removes nothing."""

    def __init__(self, stream: _Stream, handler: Handler, prefetch: int, offset: int) -> None:
        self.stream = stream
        self.handler = handler
        self.prefetch = max(1, prefetch)
        self.offset = offset
        self.unacked = 0
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.forget: Callable[[_InProcessStreamReader], None] | None = None

    async def run(self) -> None:
        s = self.stream
        while True:
            while self.offset >= s.end or self.unacked >= self.prefetch:
                self.wake.clear()
                await self.wake.wait()
            # Trimmed under the reader: it goes on from the oldest retained message.
            self.offset = max(self.offset, s.first)
            body = s.entries[self.offset - s.first]
            d = _InProcessStreamDelivery(self, body, self.offset)
            self.offset += 1
            self.unacked += 1
            try:
                await self.handler(d)
            except Exception:
                log.exception("transport.handler_failed", stream="in-process")

    async def cancel(self) -> None:
        self.stream.readers.discard(self)
        if self.forget is not None:
            self.forget(self)
            self.forget = None
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass


class InProcessTransport:
    """A Transport over an InProcessBroker; publishes are confirmed at once unless the broker is down."""

    name = "transport.inprocess"

    def __init__(self, broker: InProcessBroker | None = None) -> None:
        self.broker = broker or InProcessBroker()
        self._subs: list[_InProcessSubscription | _InProcessStreamReader] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        for s in list(self._subs):
            await s.cancel()
        self._subs.clear()

    async def publish(
        self, messages: Sequence[tuple[Address, bytes]], timeout: float
    ) -> list[bool]:
        if self.broker.down:
            return [False] * len(messages)
        ok = []
        for address, body in messages:
            if address.stream:
                st = self.broker.stream(address)
                if st is not None:
                    st.append(body, self.broker.clock())
                ok.append(st is not None)  # no such stream: unroutable
                continue
            queues = self.broker.routed(address)
            ok.append(bool(queues))  # unroutable: a failure, as `mandatory` makes it
            for q in queues:
                # Only while nobody consumes: a live consumer keeps up (and the controller's
                # queue of agent reports, said once, must never drop one).
                while q.consumer is None and q.ready and (
                    len(q.ready) >= self.broker.max_depth
                    or q.size + len(body) > self.broker.max_bytes
                ):
                    q.pop()
                    q.dropped += 1
                q.push(body, False)
                if q.consumer is not None:
                    q.consumer.wake.set()
        await asyncio.sleep(0)
        return ok

    async def bind(self, address: Address, key: str) -> None:
        self.broker.queue(address)
        k = (address.url, address.vhost, address.exchange, key)
        self.broker.bindings.setdefault(k, set()).add((address.url, address.vhost, address.queue))

    async def unbind(self, address: Address, key: str) -> None:
        k = (address.url, address.vhost, address.exchange, key)
        bound = self.broker.bindings.get(k)
        if bound is not None:
            bound.discard((address.url, address.vhost, address.queue))
            if not bound:
                del self.broker.bindings[k]

    async def consume(self, address: Address, handler: Handler, prefetch: int) -> Subscription:
        q = self.broker.queue(address)
        if q.consumer is not None:
            raise RuntimeError(f"queue {address.queue} already has a consumer")
        sub = _InProcessSubscription(q, handler, prefetch)
        q.consumer = sub
        sub.task = asyncio.get_running_loop().create_task(sub.run())
        sub.wake.set()
        self._subs.append(sub)
        return sub

    async def declare_stream(self, address: Address, max_bytes: int, max_age: float) -> None:
        key = (address.url, address.vhost, address.queue)
        if key not in self.broker.streams:
            self.broker.streams[key] = _Stream(max_bytes, max_age)

    async def consume_stream(
        self, address: Address, handler: Handler, prefetch: int, since: float
    ) -> Subscription:
        st = self.broker.stream(address)
        if st is None:
            raise LookupError(f"no stream {address.queue}")
        st.trim(self.broker.clock())
        reader = _InProcessStreamReader(st, handler, prefetch, st.offset_at(since))
        st.readers.add(reader)
        reader.task = asyncio.get_running_loop().create_task(reader.run())
        reader.forget = self._subs.remove
        self._subs.append(reader)
        return reader
