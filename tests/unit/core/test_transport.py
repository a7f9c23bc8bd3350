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


S = Address("amqp://x/", "/", "", "alcor.vpc.v1", stream=True)


async def test_a_stream_keeps_its_log_for_every_reader_from_a_point_in_time() -> None:
    """Append-only, read by any number of readers from where they attach (by time), each at its
    own offset; reading removes nothing; a prefetch window; no such stream: unroutable."""
    broker = InProcessBroker()
    now = [1000.0]
    broker.clock = lambda: now[0]
    t = InProcessTransport(broker)
    assert await t.publish([(S, b"0")], 1.0) == [False]  # not declared yet
    await t.declare_stream(S, 1 << 20, 3600)
    for i in range(4):
        now[0] = 1000.0 + i
        await t.publish([(S, b"%d" % i)], 1.0)
    seen: dict[str, list[bytes]] = {"a": [], "b": []}
    held = []

    def handler(who: str, ack: bool):  # type: ignore[no-untyped-def]
        async def h(d) -> None:  # type: ignore[no-untyped-def]
            seen[who].append(d.body)
            if ack:
                await d.ack()
            else:
                held.append(d)
        return h

    a = await t.consume_stream(S, handler("a", True), 10, since=0)
    b = await t.consume_stream(S, handler("b", False), 2, since=1002.0)
    for _ in range(20):
        await asyncio.sleep(0)
    assert seen["a"] == [b"0", b"1", b"2", b"3"]
    assert seen["b"] == [b"2", b"3"]  # from the first appended at 1002 or later
    now[0] = 1010.0
    await t.publish([(S, b"4")], 1.0)
    for _ in range(20):
        await asyncio.sleep(0)
    assert seen["a"][-1] == b"4" and seen["b"] == [b"2", b"3"]  # b's window (2) is full
    await held.pop(0).ack()
    for _ in range(20):
        await asyncio.sleep(0)
    assert seen["b"] == [b"2", b"3", b"4"]
    late = await t.consume_stream(S, handler("a", True), 10, since=2000.0)  # the end: new only
    await a.cancel()
    await b.cancel()
    await late.cancel()
    assert t._subs == []  # a cancelled reader is forgotten (an agent opens one per join)
    try:
        await t.consume_stream(Address("amqp://x/", "/", "", "nope", stream=True),
                               handler("a", True), 1, 0)
    except LookupError:
        pass
    else:
        raise AssertionError("a stream that does not exist was read")
    await t.stop()


async def test_a_stream_is_trimmed_by_size_and_age_and_readers_skip_ahead() -> None:
    broker = InProcessBroker()
    now = [0.0]
    broker.clock = lambda: now[0]
    t = InProcessTransport(broker)
    await t.declare_stream(S, 10, 60)
    await t.declare_stream(S, 1 << 20, 3600)  # an existing stream keeps its retention
    for i in range(6):
        await t.publish([(S, b"%03d" % i)], 1.0)  # 3 bytes each: 3 fit in 10
    st = broker.stream(S)
    assert st is not None and (st.first, st.entries) == (3, [b"003", b"004", b"005"])
    now[0] = 100.0
    await t.publish([(S, b"006")], 1.0)  # older than 60 s: the rest goes
    assert (st.first, st.entries) == (6, [b"006"])
    seen: list[bytes] = []

    async def h(d) -> None:  # type: ignore[no-untyped-def]
        seen.append(d.body)
        await d.ack()

    r = await t.consume_stream(S, h, 1, since=0)  # before the oldest kept: from there
    for _ in range(20):
        await asyncio.sleep(0)
    assert seen == [b"006"]
    await r.cancel()
    await t.stop()
