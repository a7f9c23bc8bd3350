"""Found by the OVS-restart drill (bench/e2e): a port whose status flaps ERROR → ACTIVE within one
status flush stays ERROR at the controller for good.

While ovs-vswitchd restarts the agent reports its ports ERROR, then ACTIVE once the switch is
back, often within a few hundred milliseconds. `Dispatcher._on_status` queues a status only when
it differs from the topology's copy of the port (the state as of the watermark): the second
report equals that stale copy, so it is dropped while the first is still queued, and the
flush writes ERROR. Nothing sends the port's status again until it changes on the agent.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from alcor.southbound.dispatcher import Settings
from alcor.transport import InProcessTransport
from tests.support.southbound import Harness, node_ids, topology


class _Delivery:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body = json.dumps(body).encode()
        self.redelivered = False

    async def ack(self) -> None:
        return None

    async def reject(self) -> None:
        raise AssertionError("the controller rejected a well-formed status")


async def test_last_reported_status_wins(tmp_path: Path) -> None:
    h = Harness(tmp_path / "alcor.db", InProcessTransport, Settings(linger=0.001))
    await h.start()
    try:
        await h.commit(topology(h, 1))
        node = node_ids(h)[0]
        port = next(
            p["id"] for p in h.world.res["port"].values() if p["binding:host_id"] == "host-0"
        )
        d = h.dispatcher
        assert d is not None and h.store is not None
        last = h.store.changes.last_rev
        for _ in range(200):  # the dispatcher places the topology
            if d.watermark >= last:
                break
            await asyncio.sleep(0.01)
        held = d.topology.res["port"][port]["status"]  # what the controller has: DOWN
        for status in ("ERROR", held):  # the agent's switch went away and came back
            report = {
                "v": 2,
                "kind": "status",
                "node_id": node,
                "applied_rev": 0,
                "digest": "0" * 64,
                "ports": {port: status},
            }
            await d.feedback.on_message(_Delivery(report))
        await asyncio.sleep(d.settings.status_flush * 3)
        assert h.statuses.get(port, held) == held, "the port kept the status reported first"
    finally:
        await h.stop()
