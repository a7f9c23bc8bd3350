"""A controller with the southbound and an embedded agent stream (no switch), in the test's loop.

That is the dev run minus the datapath: enough for ports to go ACTIVE, nodes to report their applied
rev and every sync metric to move, without Open vSwitch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alcor.kernel import Kernel
from tests.support.controller import Client, running_dev

NODE = "meadow"


@asynccontextmanager
async def dev_controller(tmp: Path, node_name: str = NODE) -> AsyncIterator[tuple[Kernel, Client]]:
    # The test registers the node itself (small_cloud), so the stream must not race it.
    async with running_dev(
        tmp, node={"name": node_name, "register": False}, agent={"resync_interval": 0.5}
    ) as running:
        yield running


async def small_cloud(c: Client, node_name: str = NODE) -> dict[str, Any]:
    """One node, one VPC with a subnet and two ports bound to the node, one unbound port."""
    node = await c.create("node", "/v2.0/alcor/nodes", node_name=node_name, local_ip="172.16.0.11")
    net = await c.create("network", "/v2.0/networks", name="orchard")
    sub = await c.create("subnet", "/v2.0/subnets", network_id=net["id"], cidr="10.8.0.0/24",
                         ip_version=4, name="apples")
    pear = await c.create("port", "/v2.0/ports", network_id=net["id"], name="pear",
                          **{"binding:host_id": node_name})
    plum = await c.create("port", "/v2.0/ports", network_id=net["id"], name="plum",
                          **{"binding:host_id": node_name})
    loose = await c.create("port", "/v2.0/ports", network_id=net["id"], name="quince")
    return {"node": node, "net": net, "subnet": sub, "pear": pear, "plum": plum, "loose": loose}
