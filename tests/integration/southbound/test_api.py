"""The southbound wired into the real controller (dev-run shape): Neutron API in, agent in sync out.

The kernel runs the core's modules plus `southbound_modules("dev")` (alcor/roles.py): the dispatcher on the in-process
transport and an embedded agent for the local node, which registers itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alcor.agent.stream import StreamModule
from tests.support.controller import running_dev
from tests.support.wait import eventually


async def test_dev_run_local_node_in_sync_and_port_active(tmp_path: Path) -> None:
    async with running_dev(
        tmp_path, node={"name": "devhost", "local_ip": "127.0.0.1"}, southbound={"linger": 0.001}
    ) as (kernel, c):

        async def local_node() -> Any:
            r = await c.get("/v2.0/alcor/nodes")
            return next((n for n in r.body["nodes"] if n["node_name"] == "devhost"), None)

        node = await eventually(local_node)
        net = await c.create("network", "/v2.0/networks", name="n1")
        sub = await c.create(
            "subnet", "/v2.0/subnets", network_id=net["id"], cidr="10.1.0.0/24", ip_version=4
        )
        p = await c.create(
            "port", "/v2.0/ports", network_id=net["id"], **{"binding:host_id": "devhost"}
        )
        assert p["status"] == "DOWN"

        async def active() -> bool:
            r = await c.get(f"/v2.0/ports/{p['id']}")
            return r.body["port"]["status"] == "ACTIVE"

        await eventually(active)

        async def in_sync() -> Any:
            r = await c.get(f"/v2.0/alcor/nodes/{node['node_id']}")
            n = r.body["node"]
            return n if n.get("in_sync") and n.get("applied_rev") == n.get("goal_rev") else None

        shown = await eventually(in_sync)
        assert shown["digest_match"] is True and shown["last_report_at"]
        stream = kernel.get(StreamModule).stream
        goal = stream.model.goal()
        assert p["id"] in goal["port"] and sub["id"] in goal["subnet"]
        assert goal["vpc"][net["id"]]["segmentation_id"] == net["provider:segmentation_id"]
        # On SQLite the only controller leads, with an epoch its messages carry.
        sb = (await c.get("/v2.0/alcor/southbound")).body["southbound"]
        assert sb["role"] == "leader" and sb["leader"] == sb["this_controller"]
        assert sb["since"] and sb["epoch"] == stream.model.epoch > 0
        assert [x["leader"] for x in sb["controllers"]] == [True]
