"""An IPv6 slaac subnet on a router, made through the Neutron API, reaches the host's agent with
what its datapath needs: the gateway's MAC, the RA mode, the port's EUI-64 address, the router's
state. The rules then give the gateway's NS/ping answers and the port's router advertisement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alcor.agent.compiler import compile_flows
from alcor.agent.ipv6 import link_local
from alcor.agent.ir import tap_name
from alcor.agent.ra import advertisements
from alcor.agent.stream import StreamModule
from tests.support.controller import running_dev
from tests.support.wait import eventually


async def test_slaac_subnet_on_a_router_reaches_the_agent_as_the_datapath_needs(
    tmp_path: Path,
) -> None:
    async with running_dev(
        tmp_path, node={"name": "devhost", "local_ip": "127.0.0.1"}, southbound={"linger": 0.001}
    ) as (kernel, c):
        net = await c.create("network", "/v2.0/networks", name="n6")
        sub = await c.create(
            "subnet", "/v2.0/subnets", network_id=net["id"], cidr="2001:db8:6::/64",
            ip_version=6, ipv6_ra_mode="slaac", ipv6_address_mode="slaac",
        )  # fmt: skip
        router = await c.create("router", "/v2.0/routers", name="r6")
        r = await c.put(
            f"/v2.0/routers/{router['id']}/add_router_interface", {"subnet_id": sub["id"]}
        )
        assert r.status == 200, r.body
        iface = (await c.get(f"/v2.0/ports/{r.body['port_id']}")).body["port"]
        vm = await c.create(
            "port", "/v2.0/ports", network_id=net["id"], mac_address="fa:16:3e:66:00:05",
            **{"binding:host_id": "devhost"},
        )  # fmt: skip
        assert vm["fixed_ips"][0]["ip_address"] == "2001:db8:6:0:f816:3eff:fe66:5"
        async def goal_with(check: Any) -> Any:
            stream = kernel.get(StreamModule).stream  # once the local node registered
            goal = stream.model.goal() if stream is not None else None
            return goal if goal is not None and check(goal) else None

        goal = await eventually(lambda: goal_with(lambda g: vm["id"] in g.get("port", {})))
        body = goal["subnet"][sub["id"]]
        assert body["gateway_mac"] == iface["mac_address"] and body["ipv6_ra_mode"] == "slaac"
        assert goal["router"][router["id"]]["admin_state_up"] is True
        ofports = {tap_name(vm["id"]): 1, "vxlan0": 9}
        targets = {
            dict(f.match).get("ipv6_nd_target") for f in compile_flows(goal, ofports).flows
        }
        assert {"2001:db8:6::1", link_local(iface["mac_address"])} <= targets
        assert set(advertisements(goal, ofports, [vm["id"]])) == {(vm["id"], sub["id"])}

        # the router set down reaches the agent, and nothing is advertised any more
        r = await c.put(f"/v2.0/routers/{router['id']}", {"router": {"admin_state_up": False}})
        assert r.status == 200
        goal = await eventually(
            lambda: goal_with(lambda g: g["router"][router["id"]]["admin_state_up"] is False)
        )
        assert advertisements(goal, ofports, [vm["id"]]) == {}
