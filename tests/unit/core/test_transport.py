"""The in-process transport keeps the broker semantics the protocol relies on."""

from __future__ import annotations

import asyncio

from alcor.transport import Address, InProcessBroker, InProcessTransport

Q = Address("amqp://x/", "/", "alcor", "alcor.node.n1")


async def test_fifo_ack_reject_and_redelivery_on_cancel() -> None:
    broker = InProcessBroker()
    t = InProcessTransport(broker)
    assert await t.publish([(Q, b"1"), (Q, b"2"), (Q, b"3"), (Q, b"4")], 1.0) == [True] * 4
    seen: list[tuple[bytes, bool]] = []
    held = []

    async def handler(d) -> None:  # type: ignore[no-untyped-def]
        seen.append((d.body, d.redelivered))
        if d.body == b"1":
            await d.ack()
        elif d.body == b"2":
            await d.reject()
        else:
            held.append(d)  # left unacked

    sub = await t.consume(Q, handler, prefetch=1)
    for _ in range(50):
        await asyncio.sleep(0)
    # Prefetch 1: "3" is held unacked, so "4" waits.
    assert [b for b, _ in seen] == [b"1", b"2", b"3"]
    await sub.cancel()
    assert broker.queue(Q).rejected == 1
    # The unacked message returns to the head of the queue, flagged as redelivered.
    seen.clear()
    sub = await t.consume(Q, handler, prefetch=10)
    for _ in range(50):
        await asyncio.sleep(0)
    assert seen == [(b"3", True), (b"4", False)]
    await t.stop()


async def test_publish_fails_while_broker_down() -> None:
    broker = InProcessBroker()
    t = InProcessTransport(broker)
    broker.down = True
    assert await t.publish([(Q, b"x")], 1.0) == [False]
    assert broker.depth(Q) == 0


async def test_a_queue_without_consumer_keeps_only_its_newest_messages() -> None:
    broker = InProcessBroker(max_depth=3, max_bytes=10)
    t = InProcessTransport(broker)
    await t.publish([(Q, b"%d" % i) for i in range(6)], 1.0)
    q = broker.queue(Q)
    assert [b for b, _ in q.ready] == [b"3", b"4", b"5"] and q.dropped == 3
    await t.publish([(Q, b"abcdefghi")], 1.0)  # bytes too: the 3 left + 9 > 10
    assert [b for b, _ in q.ready] == [b"5", b"abcdefghi"] and q.size == 10

    # A queue with a consumer (the controller's, of reports said once) never drops.
    other = Address("amqp://x/", "/", "alcor", "alcor.controller")
    held = []

    async def slow(d) -> None:  # type: ignore[no-untyped-def]
        held.append(d)  # never acked: the rest waits in the queue

    await t.consume(other, slow, prefetch=1)
    await t.publish([(other, b"%d" % i) for i in range(6)], 1.0)
    await asyncio.sleep(0)
    oq = broker.queue(other)
    assert len(held) + len(oq.ready) == 6 and oq.dropped == 0
    await t.stop()
