"""RabbitMQ fan-out channels side by side, for a VPC's chain: prints its figures, asserts nothing.

    .venv/bin/python bench/mq_channels.py [--members 50] [--messages 1000] [--size 2000]

One VPC of `members` nodes, each with its own durable queue and a consumer (manual acks, prefetch
200), gets `messages` persistent messages of `size` bytes, published with confirms, by each way:

- unicast: one publish per member queue (wire v1, and v2's small VPCs);
- binding: one publish to a routing key every member queue is bound under (v2's choice);
- cc: one publish to the first member queue with a `CC` header naming the others;
- stream: one publish to a stream queue of the VPC; each member reads it by offset (its own
  consumer on the stream, from `first`), so the broker keeps one copy;
- `-v2` after unicast or binding: the member queues are classic queues v2 (`x-queue-version: 2`);
  `-quorum`: quorum queues (one Raft log each, fsynced through the node's shared write-ahead log).

`--batch` messages are published, and their confirms awaited, at a time (the dispatcher publishes
a batch of one message per VPC, then waits for its confirms); `--vpcs` VPCs of `members` queues
each, a batch carrying one message for every VPC. Mind the broker's file descriptors: on
RabbitMQ 3.10 each v2 queue and each stream reader opens files outside the broker's handle
cache, and 1,000 of either (20 VPCs of 50) ran a broker with 1,024 descriptors out of them
(queues crashed with emfile); try those on a private node (`--url`).

For each: publishes/s, time until every member consumed everything (deliveries/s), and whether
each member saw every message in order.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from typing import Any

import aio_pika

URL = "amqp://guest:guest@127.0.0.1:5672/"


class Counter:
    def __init__(self, n: int) -> None:
        self.n = n
        self.seen: list[int] = []
        self.done = asyncio.Event()

    async def on(self, m: Any) -> None:
        self.seen.append(int(m.headers["seq"]))
        await m.ack()
        if len(self.seen) >= self.n:
            self.done.set()


async def run(way: str, args: argparse.Namespace) -> dict[str, Any]:
    tag = f"bench.mq.{way}.{uuid.uuid4().hex[:6]}"
    conn = await aio_pika.connect_robust(args.url)
    pub = await aio_pika.connect_robust(args.url)
    ch = await conn.channel()
    await ch.set_qos(prefetch_count=200)
    pch = await pub.channel(publisher_confirms=True)
    ex = await pch.declare_exchange(tag, aio_pika.ExchangeType.DIRECT, auto_delete=True)
    names = [f"{tag}.n{i}" for i in range(args.members * args.vpcs)]
    counters = [Counter(args.messages // args.vpcs) for _ in names]
    queues = []
    streams = []
    base, _, kind = way.partition("-")
    qargs: dict[str, Any] = (
        {"x-queue-version": 2} if kind == "v2"
        else {"x-queue-type": "quorum"} if kind == "quorum"
        else {}
    )
    if way == "stream":
        for v in range(args.vpcs):
            stream = await pch.declare_queue(f"{tag}.vpc{v}", durable=True,
                                             arguments={"x-queue-type": "stream"})
            await stream.bind(ex, routing_key=f"vpc{v}")
            streams.append(stream)
        for k, c in enumerate(counters):
            q = await ch.declare_queue(f"{tag}.vpc{k // args.members}", durable=True,
                                       passive=True)
            await q.consume(c.on, arguments={"x-stream-offset": "first"})
    else:
        for name, c in zip(names, counters, strict=True):
            q = await ch.declare_queue(name, durable=True, arguments=qargs)
            await q.bind(tag, routing_key=name)
            if base == "binding":
                await q.bind(tag, routing_key=f"vpc{names.index(name) // args.members}")
            await q.consume(c.on)
            queues.append(q)
    body = os.urandom(args.size // 2).hex().encode()
    start = time.perf_counter()
    publishes = 0
    waits: list[float] = []
    for start_i in range(0, args.messages, args.batch):
        futs = []
        t_batch = time.perf_counter()
        for i in range(start_i, min(start_i + args.batch, args.messages)):
            headers: dict[str, Any] = {"seq": i}
            def msg(h: dict[str, Any] = headers) -> aio_pika.Message:
                return aio_pika.Message(
                    body, headers=dict(h), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                )

            vpc = i % args.vpcs
            members = names[vpc * args.members : (vpc + 1) * args.members]
            if base == "unicast":
                futs += [ex.publish(msg(), routing_key=n, mandatory=True) for n in members]
            elif way == "cc":
                headers["CC"] = members[1:]
                futs.append(ex.publish(msg(), routing_key=members[0], mandatory=True))
            else:
                futs.append(ex.publish(msg(), routing_key=f"vpc{vpc}", mandatory=True))
        publishes += len(futs)
        await asyncio.gather(*futs)
        waits.append(time.perf_counter() - t_batch)
    confirmed = time.perf_counter() - start
    await asyncio.wait_for(asyncio.gather(*(c.done.wait() for c in counters)), 300)
    delivered = time.perf_counter() - start
    def mine(k: int) -> list[int]:  # the messages member k's VPC got, in publish order
        return [i for i in range(args.messages) if i % args.vpcs == k // args.members]

    in_order = all(c.seen == mine(k) for k, c in enumerate(counters))
    await ch.close()
    for stream in streams:
        await stream.delete(if_unused=False, if_empty=False)
    for name in names:
        if way != "stream":
            await pch.queue_delete(name)
    await conn.close()
    await pub.close()
    return {
        "way": way,
        "publishes/s": publishes / confirmed,
        "messages/s (confirmed)": args.messages / confirmed,
        "deliveries/s": args.members * args.messages / delivered,
        "all consumed s": delivered,
        "in order": in_order,
        "batch p50": sorted(waits)[len(waits) // 2] * 1000,
        "batch max": max(waits) * 1000,
    }


async def main(args: argparse.Namespace) -> None:
    print(f"load average {os.getloadavg()}; {args.vpcs} VPC(s) of {args.members} member queues, "
          f"{args.messages} messages of {args.size} B, persistent, confirms awaited per "
          f"{args.batch}")
    for way in args.ways.split(","):
        r = await run(way, args)
        print(f"  {r['way']:8} {r['publishes/s']:9,.0f} publishes/s  "
              f"{r['messages/s (confirmed)']:7,.0f} VPC messages/s confirmed  "
              f"{r['deliveries/s']:9,.0f} deliveries/s  all consumed in {r['all consumed s']:.2f} s"
              f"  batch confirmed p50 {r['batch p50']:.0f} ms max {r['batch max']:.0f} ms"
              f"  in order: {r['in order']}")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--members", type=int, default=50)
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--size", type=int, default=2000)
    ap.add_argument("--url", default=URL, help="the broker (a private node for config experiments)")
    ap.add_argument("--vpcs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--ways", default="unicast,binding,cc,stream")
    asyncio.run(main(ap.parse_args()))
