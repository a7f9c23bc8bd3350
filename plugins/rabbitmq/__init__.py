"""RabbitMQ transport (aio-pika): the southbound `Transport` over real brokers.

One robust connection per broker (URL + vhost), shared by publishing and consuming, so nodes can
be spread over several RabbitMQ clusters by their own MQ settings. Node queues are durable, with
the node's fixed name, bound to the node's durable direct exchange under their own name.
A node's queue is also bound under the routing key of every multicast VPC channel it follows
(`bind`/`unbind`; docs/wire.md): one publish to that key, the broker copies it to each member's
queue. Publishing: persistent messages on a confirm channel, `mandatory` (an unroutable message is a
failure, not a silent drop), confirms awaited in pipelined windows. Consuming: manual acks and
a prefetch window; messages are handed to the handler one at a time, in queue order. After a
connection loss aio-pika reconnects and restores channels, queues and consumers; unacked messages
are redelivered by the broker, and the ordering rule drops what was already applied.

Streams (`[southbound] vpc_channel = "stream"`): a VPC's chain is appended to a durable stream
queue per VPC (x-queue-type=stream, retention x-max-length-bytes / x-max-age), published on the
default exchange under its name; each member's agent reads it with its own consumer
(x-stream-offset: a point in time, then, after a reconnection, the offset after the last one it
was handed), on one channel per broker with a prefetch window per consumer. Every reader of a
stream holds the stream's segment and index files open on the broker: a broker serving 1,000
readers needs a descriptor limit well above 1,024 (docs/operations.md).

Config [rabbitmq]: reconnect_interval (s, 1.0), connect_timeout (s, 5.0), publish_window (1000),
persistent (true), queue_version (0: the broker's default; an existing queue is kept as it is).
Enable with `[kernel] plugins = ["rabbitmq"]` and `[southbound] transport = "rabbitmq"`.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from yarl import URL

from alcor.config import Config, ConfigError
from alcor.transport import Address, Handler


@dataclass(frozen=True)
class RabbitConfig:
    """[rabbitmq]"""

    SECTION: ClassVar[str] = "rabbitmq"
    reconnect_interval: float = 1.0  # seconds between reconnection attempts
    connect_timeout: float = 5.0
    publish_window: int = 1000  # messages awaiting confirms at once, per broker
    # Persistent messages survive a broker restart, at an fsync per queue per batch before the
    # confirm. Transient ones are confirmed from memory; a broker restart then loses queued
    # messages, which agents see as a gap and repair with a snapshot (docs/architecture.md, "Revisions").
    persistent: bool = True
    # Node queues are declared as classic queues of this version (`x-queue-version`; 0: the
    # broker's default, v1 on 3.10, no argument). Not 2 by default: on RabbitMQ 3.10 a v2 queue
    # keeps its own files open outside the broker's file-handle cache, and 1,000 of them
    # exhausted a broker's 1,024 descriptors (queues crashed with emfile, docs/performance.md).
    # A queue that exists already is kept as it was declared: the broker refuses a redeclare
    # with another version (PRECONDITION_FAILED), so the transport takes the queue as it is
    # (`declare_queue`); an operator converts queues in place with a `queue-version` policy.
    queue_version: int = 0

    def check(self) -> None:
        if self.queue_version not in (0, 1, 2):
            raise ConfigError(f"rabbitmq.queue_version must be 0, 1 or 2, got {self.queue_version}")


# Stream readers per channel: few enough that no channel process (the broker's reader for all
# its consumers) is what a fleet sharing one connection (a bench, a test) waits on.
STREAM_READERS_PER_CHANNEL = 8

SECTIONS = (RabbitConfig,)  # found by alcor/sections.py

log = structlog.get_logger("alcor.rabbitmq")


def broker_url(url: str, vhost: str, reconnect_interval: float) -> URL:
    """The node's broker URL with its vhost as the path (aio-pika reads the vhost from there)."""
    u = URL(url).with_path("/" if vhost in ("", "/") else "/" + vhost)
    return u.update_query(reconnect_interval=str(reconnect_interval), name="alcor")


async def declare_queue(channel: AbstractChannel, name: str, version: int) -> AbstractQueue:
    """A node's durable queue, declared as a classic queue of `version` if it is new. An
    existing queue declared otherwise (a v1 queue from before, or a v2 queue for a transport
    configured back to 0: the broker compares the argument both ways) is used as it is: the broker answers PRECONDITION_FAILED and closes
    the channel, which is reopened and the queue declared passively. Refusing it instead would
    stop every agent, and the dispatcher, at an upgrade."""
    try:
        return await channel.declare_queue(
            name, durable=True, arguments={"x-queue-version": version} if version else None
        )
    except aio_pika.exceptions.ChannelPreconditionFailed as e:
        log.info("mq.queue_kept", queue=name, reason=str(e))
    await channel.reopen()
    return await channel.declare_queue(name, passive=True)


def _redact(url: str) -> str:
    return str(URL(url).with_password(None).with_user(None)) if "@" in url else url


class _Broker:
    """One connection and one confirm channel for publishing; consumer channels come and go."""

    def __init__(self, url: str, vhost: str, settings: RabbitConfig) -> None:
        self.url, self.vhost, self.settings = url, vhost, settings
        self.connection: AbstractRobustConnection | None = None
        self.channel: AbstractChannel | None = None
        self.exchanges: dict[str, AbstractExchange] = {}
        self.queues: set[tuple[str, str]] = set()
        self.queue_objects: dict[str, AbstractQueue] = {}
        self.lock = asyncio.Lock()
        self.reconnects = 0
        # Stream readers' channels, a few readers each (channel → readers on it): a broker
        # channel is one Erlang process, which reads the stream for every consumer on it.
        self.stream_channels: dict[AbstractChannel, int] = {}
        self.streams: set[str] = set()  # streams declared by this process

    async def connect(self) -> AbstractRobustConnection:
        async with self.lock:
            if self.connection is None:
                self.connection = await aio_pika.connect_robust(
                    broker_url(self.url, self.vhost, self.settings.reconnect_interval),
                    timeout=self.settings.connect_timeout,
                )
                self.connection.reconnect_callbacks.add(self._reconnected)
                log.info("mq.connected", url=_redact(self.url), vhost=self.vhost)
            if self.channel is None:
                self.channel = await self.connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
            return self.connection

    def _reconnected(self, *_: Any) -> None:
        self.reconnects += 1
        log.warning("mq.reconnected", url=_redact(self.url), vhost=self.vhost, n=self.reconnects)

    async def exchange(self, channel: AbstractChannel, name: str) -> AbstractExchange:
        return await channel.declare_exchange(name, aio_pika.ExchangeType.DIRECT, durable=True)

    async def ensure(self, address: Address) -> AbstractExchange:
        """The address's exchange on the publish channel, with its queue declared and bound."""
        assert self.channel is not None
        if address.stream:
            # A stream is its own queue, addressed by name on the default exchange.
            return self.channel.default_exchange
        ex = self.exchanges.get(address.exchange)
        if ex is None:
            ex = self.exchanges[address.exchange] = await self.exchange(
                self.channel, address.exchange
            )
        if address.key:
            return ex  # a multicast routing key: the queues bound under it are the receivers
        if (address.exchange, address.queue) not in self.queues:
            q = await declare_queue(self.channel, address.queue, self.settings.queue_version)
            await q.bind(ex, routing_key=address.queue)
            self.queues.add((address.exchange, address.queue))
        return ex

    async def bind(self, address: Address, key: str, bound: bool) -> None:
        """Bind (or unbind) the address's durable queue to its exchange under `key`. The
        broker keeps durable bindings across its restarts, like the queue."""
        await self.connect()
        assert self.channel is not None
        ex = await self.ensure(address)
        q = self.queue_objects.get(address.queue)
        if q is None:
            q = self.queue_objects[address.queue] = await declare_queue(
                self.channel, address.queue, self.settings.queue_version
            )
        if bound:
            await q.bind(ex, routing_key=key)
        else:
            await q.unbind(ex, routing_key=key)

    async def declare_stream(self, name: str, max_bytes: int, max_age: float) -> None:
        """A durable stream queue, on a channel of its own: a stream that exists with other
        retention arguments (PRECONDITION_FAILED closes the channel) is kept as it is."""
        connection = await self.connect()
        if name in self.streams:
            return
        channel = await connection.channel(publisher_confirms=False)
        try:
            await channel.declare_queue(name, durable=True, arguments={
                "x-queue-type": "stream",
                "x-max-length-bytes": max_bytes,
                "x-max-age": f"{max(1, int(max_age))}s",
                # Retention drops whole segments: several per stream, so it trims in steps.
                "x-stream-max-segment-size-bytes": max(1 << 20, min(max_bytes // 4, 500 << 20)),
            })
        except aio_pika.exceptions.ChannelPreconditionFailed as e:
            log.info("mq.stream_kept", stream=name, reason=str(e))
        finally:
            try:
                await channel.close()
            except Exception as e:
                log.info("mq.channel_close_failed", error=str(e))
        self.streams.add(name)

    async def stream_reader_channel(self) -> AbstractChannel:
        """A channel for one more stream reader: one with room, or a new one."""
        connection = await self.connect()
        async with self.lock:
            for ch, readers in list(self.stream_channels.items()):
                if ch.is_closed:
                    del self.stream_channels[ch]
                elif readers < STREAM_READERS_PER_CHANNEL:
                    self.stream_channels[ch] = readers + 1
                    return ch
            ch = await connection.channel(publisher_confirms=False)
            self.stream_channels[ch] = 1
            return ch

    def stream_reader_gone(self, channel: AbstractChannel) -> None:
        if channel in self.stream_channels:
            self.stream_channels[channel] -= 1

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
        self.stream_channels.clear()
        self.streams.clear()
        self.connection = self.channel = None
        self.exchanges.clear()
        self.queues.clear()
        self.queue_objects.clear()


class _Delivery:
    def __init__(self, message: AbstractIncomingMessage) -> None:
        self.message = message
        self.body = message.body
        self.redelivered = bool(message.redelivered)

    async def ack(self) -> None:
        try:
            await self.message.ack()
        except Exception as e:
            # The channel died under us: the broker redelivers, the agent drops the duplicate.
            log.info("mq.ack_lost", error=repr(e))

    async def reject(self) -> None:
        try:
            await self.message.reject(requeue=False)
        except Exception as e:
            log.info("mq.reject_lost", error=str(e))


class _Subscription:
    def __init__(self, channel: AbstractChannel, queue: AbstractQueue, handler: Handler) -> None:
        self.channel, self.queue, self.handler = channel, queue, handler
        # aio-pika calls back per message; an inbox and one worker keep queue order end to end.
        self.inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self.tag: str | None = None
        self.worker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.worker = asyncio.get_running_loop().create_task(self._work())
        self.tag = await self.queue.consume(self._on_message, no_ack=False)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self.inbox.put_nowait(message)

    async def _work(self) -> None:
        while True:
            message = await self.inbox.get()
            try:
                await self.handler(_Delivery(message))
            except Exception:
                log.exception("mq.handler_failed", queue=self.queue.name)

    async def cancel(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            try:
                await self.worker
            except asyncio.CancelledError:
                pass
        try:
            # Closing the channel hands every unacked message back to the queue.
            await self.channel.close()
        except Exception as e:
            log.info("mq.channel_close_failed", error=str(e))


class _StreamSubscription:
    """One consumer of a stream. The offset it asks for is kept current in the consume
    arguments aio-pika restores the consumer with after a reconnection: it goes on after the
    last message handed to the handler, not from its first point again."""

    def __init__(self, broker: _Broker, channel: AbstractChannel, queue: AbstractQueue,
                 handler: Handler, since: float) -> None:
        self.broker, self.channel, self.queue, self.handler = broker, channel, queue, handler
        start = datetime.datetime.fromtimestamp(max(0, int(since)), tz=datetime.UTC)
        self.arguments: dict[str, Any] = {"x-stream-offset": start}
        self.inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self.tag: str | None = None
        self.worker: asyncio.Task[None] | None = None
        self.offset: int | None = None  # the last one handled
        # The transport forgets a reader once cancelled (an agent opens one per join).
        self.on_cancel: Callable[[_StreamSubscription], None] | None = None

    async def start(self) -> None:
        self.worker = asyncio.get_running_loop().create_task(self._work())
        self.tag = await self.queue.consume(self._on_message, no_ack=False,
                                            arguments=self.arguments)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self.inbox.put_nowait(message)

    async def _work(self) -> None:
        while True:
            message = await self.inbox.get()
            offset = (message.headers or {}).get("x-stream-offset")
            if isinstance(offset, int) and self.offset is not None and offset <= self.offset:
                # Re-read after a reconnection that restored the consumer from an older point.
                await _Delivery(message).ack()
                continue
            try:
                await self.handler(_Delivery(message))
            except Exception:
                log.exception("mq.handler_failed", stream=self.queue.name)
            if isinstance(offset, int):
                self.offset = offset
                self.arguments["x-stream-offset"] = offset + 1

    async def cancel(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            try:
                await self.worker
            except asyncio.CancelledError:
                pass
        if self.on_cancel is not None:
            self.on_cancel(self)
            self.on_cancel = None
        if self.tag is not None:
            tag, self.tag = self.tag, None
            self.broker.stream_reader_gone(self.channel)
            try:
                await self.queue.cancel(tag)
            except Exception as e:
                log.info("mq.cancel_failed", stream=self.queue.name, error=str(e))


class RabbitTransport:
    name = "rabbitmq"
    requires: tuple[str, ...] = ()

    def __init__(self, settings: RabbitConfig | None = None) -> None:
        self.settings = settings or RabbitConfig()
        self.delivery_mode = (
            aio_pika.DeliveryMode.PERSISTENT
            if self.settings.persistent
            else aio_pika.DeliveryMode.NOT_PERSISTENT
        )
        self.brokers: dict[tuple[str, str], _Broker] = {}
        self.subscriptions: list[_Subscription | _StreamSubscription] = []
        self.published = 0
        self.failed = 0

    # Module protocol: connections are opened lazily, per broker, on first use.
    async def start(self, kernel: Any = None) -> None:
        return None

    async def stop(self) -> None:
        for s in list(self.subscriptions):
            await s.cancel()
        self.subscriptions.clear()
        for b in self.brokers.values():
            try:
                await b.close()
            except Exception as e:
                log.info("mq.close_failed", error=str(e))
        self.brokers.clear()

    def broker(self, address: Address) -> _Broker:
        b = self.brokers.get(address.broker)
        if b is None:
            b = self.brokers[address.broker] = _Broker(address.url, address.vhost, self.settings)
        return b

    async def publish(
        self, messages: Sequence[tuple[Address, bytes]], timeout: float
    ) -> list[bool]:
        t0 = time.perf_counter()
        results = [False] * len(messages)
        groups: dict[tuple[str, str], list[int]] = {}
        for i, (addr, _) in enumerate(messages):
            groups.setdefault(addr.broker, []).append(i)
        await asyncio.gather(
            *(self._publish_to(idx, messages, results, timeout) for idx in groups.values())
        )
        ok = sum(results)
        self.published += ok
        self.failed += len(results) - ok
        log.debug("mq.published", messages=len(results), confirmed=ok,
                  ms=round((time.perf_counter() - t0) * 1000, 1))
        return results

    async def _publish_to(
        self,
        idx: list[int],
        messages: Sequence[tuple[Address, bytes]],
        results: list[bool],
        timeout: float,
    ) -> None:
        first = messages[idx[0]][0]
        b = self.broker(first)
        try:
            await asyncio.wait_for(b.connect(), timeout)
            targets = {}
            for i in idx:
                addr = messages[i][0]
                if (addr.exchange, addr.routing_key) not in targets:
                    targets[(addr.exchange, addr.routing_key)] = await b.ensure(addr)
        except Exception as e:
            log.warning("mq.publish_unavailable", url=_redact(b.url), vhost=b.vhost, error=str(e))
            return
        window = self.settings.publish_window
        for start in range(0, len(idx), window):
            chunk = idx[start : start + window]
            outcomes = await asyncio.gather(
                *(
                    targets[(messages[i][0].exchange, messages[i][0].routing_key)].publish(
                        aio_pika.Message(
                            messages[i][1],
                            delivery_mode=self.delivery_mode,
                            content_type="application/json",
                        ),
                        routing_key=messages[i][0].routing_key,
                        mandatory=True,
                        timeout=timeout,
                    )
                    for i in chunk
                ),
                return_exceptions=True,
            )
            for i, out in zip(chunk, outcomes, strict=True):
                results[i] = not isinstance(out, BaseException)

    async def bind(self, address: Address, key: str) -> None:
        await self.broker(address).bind(address, key, True)

    async def unbind(self, address: Address, key: str) -> None:
        await self.broker(address).bind(address, key, False)

    async def consume(self, address: Address, handler: Handler, prefetch: int) -> _Subscription:
        b = self.broker(address)
        connection = await b.connect()
        channel = await connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=prefetch)
        ex = await b.exchange(channel, address.exchange)
        queue = await declare_queue(channel, address.queue, self.settings.queue_version)
        await queue.bind(ex, routing_key=address.queue)
        sub = _Subscription(channel, queue, handler)
        await sub.start()
        self.subscriptions.append(sub)
        return sub

    async def declare_stream(self, address: Address, max_bytes: int, max_age: float) -> None:
        await self.broker(address).declare_stream(address.queue, max_bytes, max_age)

    async def consume_stream(
        self, address: Address, handler: Handler, prefetch: int, since: float
    ) -> _StreamSubscription:
        b = self.broker(address)
        connection = await b.connect()
        # Whether it exists, on a channel of its own: a missing one (NOT_FOUND) closes it.
        probe = await connection.channel(publisher_confirms=False)
        try:
            await probe.declare_queue(address.queue, passive=True)
        finally:
            if not probe.is_closed:
                await probe.close()
        channel = await b.stream_reader_channel()
        # Per consumer (global off): each new consumer on the channel gets this window.
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.declare_queue(address.queue, passive=True)
        sub = _StreamSubscription(b, channel, queue, handler, since)
        sub.on_cancel = self.subscriptions.remove
        await sub.start()
        self.subscriptions.append(sub)
        return sub


def create(config: Config) -> RabbitTransport:
    return RabbitTransport(config.get(RabbitConfig))
