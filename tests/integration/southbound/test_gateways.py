"""Agent liveness and router gateway placement, with the controller's modules and real agent
streams (no datapath: a port is programmed as soon as it is known) on the in-process transport.

An agent that stops reporting is down after [gateway] agent_down_time: /v2.0/agents says so, its
ports go DOWN, and the gateway ports it hosted move to the next gateway node mapping their
physical network; when it reports again its ports come back ACTIVE.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from alcor.agent.stream import AgentStream
from alcor.controller import controller_modules
from alcor.roles import southbound_modules
from alcor.southbound import SouthboundModule
from alcor.transport import Address
from tests.support.controller import config_for_test, serving
from tests.support.wait import eventually

# Agents report every 0.2 s; 2 s of silence is a dead node. Less, and one stall of this process's
# event loop on a loaded machine (controller and agents share it) takes a live node for dead.
DOWN_TIME = 2.0


@asynccontextmanager
async def controller(tmp_path):
    cfg = config_for_test(tmp_path, gateway={"agent_down_time": DOWN_TIME, "check_interval": 0.1})
    async with serving(cfg, [*controller_modules(cfg), *southbound_modules("controller", cfg)]) as (
        kernel, client):
        client.kernel = kernel
        yield client


async def agent(ctl, node) -> AgentStream:
    sb = ctl.kernel.get(SouthboundModule)
    addr = Address(node["mq_url"], node["mq_vhost"], node["mq_exchange"], node["mq_queue"])
    a = AgentStream(sb.transport, node["node_id"], addr, addr.with_queue("alcor.controller"),
                    resync_interval=0.3, status_delay=0.01, status_quiet=0.05,
                    report_interval=0.2)
    await a.start()
    return a


async def gateway_nodes(ctl):
    """Two gateway nodes mapping physnet1, a compute node, an agent each, and an external flat
    network with a subnet on physnet1."""
    gws = [await ctl.create("node", "/v2.0/alcor/nodes", node_name=f"gw-{i}",
                            local_ip=f"172.16.0.{10 + i}", bridge_mappings={"physnet1": "br-ex"})
           for i in (1, 2)]
    compute = await ctl.create("node", "/v2.0/alcor/nodes", node_name="compute-1",
                               local_ip="172.16.0.20")
    agents = {n["node_name"]: await agent(ctl, n) for n in [*gws, compute]}
    ext = await ctl.create("network", "/v2.0/networks", **{
        "router:external": True, "provider:network_type": "flat",
        "provider:physical_network": "physnet1"})
    await ctl.create("subnet", "/v2.0/subnets", network_id=ext["id"], cidr="203.0.113.0/24",
                     ip_version=4, enable_dhcp=False)
    return gws, agents, ext


async def gateway_router(ctl, ext, **attrs):
    """A router with its gateway on `ext`, and its gateway port."""
    router = await ctl.create("router", "/v2.0/routers",
                              external_gateway_info={"network_id": ext["id"]}, **attrs)
    gw = (await ctl.get(f"/v2.0/ports?device_id={router['id']}"
                        "&device_owner=network:router_gateway")).body["ports"][0]
    return router, gw


async def carrier(ctl, gw_port):
    """The node whose agent has the gateway port ACTIVE (None while nobody has)."""
    p = await port(ctl, gw_port["id"])
    return p["binding:host_id"] if p["status"] == "ACTIVE" else None


async def port(ctl, pid):
    return (await ctl.get(f"/v2.0/ports/{pid}")).body["port"]


async def alive(ctl, node_id):
    return (await ctl.get(f"/v2.0/agents/{node_id}")).body["agent"]["alive"]


async def test_gateway_port_is_placed_on_a_gateway_node_and_moves_when_its_agent_goes_silent(tmp_path):
    async with controller(tmp_path) as ctl:
        gws, agents, ext = await gateway_nodes(ctl)
        router, gw_port = await gateway_router(ctl, ext)

        async def placed():
            return await carrier(ctl, gw_port)
        first = await eventually(placed, 10, "the gateway port never turned ACTIVE on a gateway node")
        assert first in ("gw-1", "gw-2")  # never the compute node: it maps no physical network
        # A VM's port on the same node, to see it go DOWN with its node.
        net = await ctl.create("network", "/v2.0/networks")
        await ctl.create("subnet", "/v2.0/subnets", network_id=net["id"], cidr="10.0.0.0/24",
                         ip_version=4)
        vm = await ctl.create("port", "/v2.0/ports", network_id=net["id"],
                              **{"binding:host_id": first})
        await eventually(lambda: _status(ctl, vm["id"], "ACTIVE"), 10, "the VM port never turned ACTIVE")
        active = next(n for n in gws if n["node_name"] == first)
        standby = next(n for n in gws if n["node_name"] != first)
        assert await alive(ctl, active["node_id"]) is True

        await agents[first].stop()  # the agent goes silent (its node is not deleted)
        async def moved_away():
            host = await placed()
            return host if host != first else None
        moved = await eventually(moved_away, 10 * DOWN_TIME, "the gateway never moved")
        assert moved == standby["node_name"]
        assert (await _status(ctl, vm["id"], "DOWN"))
        assert await alive(ctl, active["node_id"]) is False
        assert await alive(ctl, standby["node_id"]) is True
        listed = (await ctl.get("/v2.0/agents?alive=false")).body["agents"]
        assert {a["host"] for a in listed} == {first}

        # Back: the node is alive again, its port is reported again; the gateway stays put.
        agents[first] = await agent(ctl, active)
        await eventually(lambda: _status(ctl, vm["id"], "ACTIVE"), 10, "the VM port stayed DOWN")
        assert await alive(ctl, active["node_id"]) is True
        assert (await port(ctl, gw_port["id"]))["binding:host_id"] == standby["node_name"]
        for a in agents.values():
            await a.stop()


async def test_an_l3_agent_turned_off_gives_its_gateways_to_another_gateway_node(tmp_path):
    async with controller(tmp_path) as ctl:
        gws, agents, ext = await gateway_nodes(ctl)
        router, gw_port = await gateway_router(ctl, ext)

        async def placed():
            return await carrier(ctl, gw_port)
        first = await eventually(placed, 10, "the gateway port never turned ACTIVE")
        node = next(n for n in gws if n["node_name"] == first)
        l3 = (await ctl.get(f"/v2.0/agents?agent_type=L3+agent&host={first}")).body["agents"][0]
        r = await ctl.put(f"/v2.0/agents/{l3['id']}", {"agent": {"admin_state_up": False}})
        assert r.status == 200 and r.body["agent"]["admin_state_up"] is False
        assert await alive(ctl, node["node_id"]) is True  # alive, only disabled

        async def moved_away():
            host = await placed()
            return host if host not in (None, first) else None
        moved = await eventually(moved_away, 10, "the gateway stayed on the disabled L3 agent")
        assert moved != first
        # A new router's gateway goes to the enabled node only.
        _, other_port = await gateway_router(ctl, ext)

        async def other_placed():
            return await carrier(ctl, other_port)
        assert await eventually(other_placed, 10, "the second gateway was never placed") == moved
        for a in agents.values():
            await a.stop()


async def _status(ctl, pid, want):
    return (await port(ctl, pid))["status"] == want


async def _fip(ctl, fid):
    return (await ctl.get(f"/v2.0/floatingips/{fid}")).body["floatingip"]


async def test_a_floating_ips_status_follows_the_node_that_carries_its_router(tmp_path):
    """DOWN when associated, ACTIVE once the gateway node reports its NAT, DOWN when that node
    goes silent, ACTIVE again from the node the router moved to; a report from any other node
    is not taken."""
    from alcor.resources.floatingips import FloatingIps

    async with controller(tmp_path) as ctl:
        gws, agents, ext = await gateway_nodes(ctl)
        net = await ctl.create("network", "/v2.0/networks")
        sub = await ctl.create("subnet", "/v2.0/subnets", network_id=net["id"],
                               cidr="10.0.0.0/24", ip_version=4)
        router, gw_port = await gateway_router(ctl, ext)
        await ctl.put(f"/v2.0/routers/{router['id']}/add_router_interface", {"subnet_id": sub["id"]})
        vm = await ctl.create("port", "/v2.0/ports", network_id=net["id"],
                              **{"binding:host_id": "compute-1"})
        first = await eventually(lambda: carrier(ctl, gw_port), 10,
                                 "the gateway port never turned ACTIVE")
        other = ({"gw-1", "gw-2"} - {first}).pop()

        fip = await ctl.create("floatingip", "/v2.0/floatingips", floating_network_id=ext["id"])
        assert fip["status"] == "DOWN"
        r = await ctl.put(f"/v2.0/floatingips/{fip['id']}", {"floatingip": {"port_id": vm["id"]}})
        assert r.body["floatingip"]["status"] == "DOWN"  # until the gateway node reports it
        await eventually(lambda: _fip_status(ctl, fip["id"], "ACTIVE"), 10,
                         "the floating IP never turned ACTIVE")

        # Only the gateway node speaks for it: the other's (or a compute node's) word is ignored.
        fips = ctl.kernel.get(FloatingIps)
        await fips.set_statuses({fip["id"]: ("ERROR", other)})
        await fips.set_statuses({fip["id"]: ("DOWN", "compute-1")})
        assert (await _fip(ctl, fip["id"]))["status"] == "ACTIVE"

        # Its gateway node goes silent: DOWN, then ACTIVE from the node the router moved to. Read
        # from the change log, not the resource: the rebinding commits before the DOWN, so the
        # resource can be seen moved and still ACTIVE from the node that went silent.
        async def fip_statuses():
            changes = (await ctl.get("/v2.0/alcor/changes?since=0&limit=10000")).body["changes"]
            return [c["body"]["status"] for c in changes
                    if c.get("type") == "floatingip" and c.get("id") == fip["id"] and c.get("body")]

        async def moved_and_active():
            return (await port(ctl, gw_port["id"]))["binding:host_id"] == other and \
                (await fip_statuses())[-3:] == ["ACTIVE", "DOWN", "ACTIVE"]
        await agents[first].stop()
        await eventually(moved_and_active, 10 * DOWN_TIME,
                         "the floating IP did not go DOWN and come back ACTIVE", interval=0.02)
        assert (await _fip(ctl, fip["id"]))["status"] == "ACTIVE"

        # Disassociated: DOWN at once, and the node no longer holds it.
        r = await ctl.put(f"/v2.0/floatingips/{fip['id']}", {"floatingip": {"port_id": None}})
        assert r.body["floatingip"]["status"] == "DOWN"
        await eventually(lambda: not agents[other].model.floating_ips(), 10,
                         "the gateway node still holds the floating IP")
        assert (await _fip(ctl, fip["id"]))["status"] == "DOWN"
        for name, a in agents.items():
            if name != first:
                await a.stop()


async def _fip_status(ctl, fid, want):
    return (await _fip(ctl, fid))["status"] == want
