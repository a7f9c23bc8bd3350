"""The gateway plugin against the Zeta stand-in's management API: registration, ports, deletion,
and what an operator sees when Zeta is down, slow or answering errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from alcor.api.app import HttpModule
from alcor.controller import controller_modules
from alcor.kernel import Kernel
from alcor_plugins.zeta import ZetaModule
from alcor_plugins.zeta.standin import Faults, Standin
from tests.support.controller import Client, config_for_test

GWS = [{"ip": "172.31.255.9", "mac": "02:00:00:00:00:09"}]
GW = "/v2.0/alcor/gateways"


@dataclass
class Env:
    kernel: Kernel
    api: Client
    zeta: ZetaModule
    standin: Standin

    async def network(self, name: str, project: str | None = None) -> dict[str, Any]:
        api = self.api.as_project(project) if project else self.api
        return await api.create("network", "/v2.0/networks", name=name)

    async def port(self, net: dict[str, Any], host: str | None = "compute-1") -> dict[str, Any]:
        if not hasattr(self, "_subnets"):
            self._subnets: dict[str, bool] = {}
        if net["id"] not in self._subnets:
            n = len(self._subnets)
            await self.api.create(
                "subnet", "/v2.0/subnets", network_id=net["id"], cidr=f"10.{n}.0.0/24", ip_version=4
            )
            self._subnets[net["id"]] = True
        attrs: dict[str, Any] = {"network_id": net["id"]}
        if host:
            attrs["binding:host_id"] = host
        return await self.api.create("port", "/v2.0/ports", **attrs)

    async def gateway(self, net: dict[str, Any]) -> dict[str, Any]:
        return await self.api.create("gateway", GW, vpc_id=net["id"])

    async def settled(self, gw_id: str) -> dict[str, Any]:
        await self.zeta.idle()
        r = await self.api.get(f"{GW}/{gw_id}")
        # The API reads on the store's reader connection, seen lagging a commit by ~10 ms now
        # and then; the writer's view (what the change log holds) is the reference.
        w = await self.zeta.gateways.current(gw_id)
        t0 = time.monotonic()
        while r.body["gateway"] != w and time.monotonic() - t0 < 1:
            await asyncio.sleep(0.01)
            r = await self.api.get(f"{GW}/{gw_id}")
        assert r.status == 200, r.body
        return r.body["gateway"]

    def faults(self, **kw: Any) -> None:
        self.standin.state.faults = Faults(**kw)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    standin = Standin(GWS, run_fwds=False)
    await standin.start()
    cfg = config_for_test(
        tmp_path,
        zeta={
            "url": standin.url,
            "timeout": 0.5,
            "attempts": 3,
            "backoff": 0.02,
            "backoff_max": 0.05,
            "refresh_interval": 0.0,
        },
    )
    zeta = ZetaModule(cfg)
    kernel = Kernel(cfg, [*controller_modules(cfg), zeta])
    await kernel.start()
    try:
        async with aiohttp.ClientSession() as session:
            api = Client(session, f"http://127.0.0.1:{kernel.get(HttpModule).port}")
            await api.create(
                "node",
                "/v2.0/alcor/nodes",
                node_name="compute-1",
                local_ip="172.31.255.1",
                mac_address="52:54:00:00:00:01",
            )
            yield Env(kernel, api, zeta, standin)
    finally:
        await kernel.stop()
        await standin.stop()


async def test_gateway_registers_the_vpc_and_its_ports(env: Env) -> None:
    net = await env.network("zeta-net")
    p1 = await env.port(net)
    unbound = await env.port(net, host=None)
    gw = await env.gateway(net)
    assert gw["status"] == "pending" and gw["vpc_id"] == net["id"] and gw["type"] == "zeta"
    gw = await env.settled(gw["id"])
    assert gw["status"] == "ready", gw
    assert gw["destinations"] == GWS and gw["oam_port"] == 8300 and gw["zgc_id"] == "zgc-standin"
    st = env.standin.state
    assert st.vpcs[net["id"]]["vni"] == net["provider:segmentation_id"]
    assert set(st.ports) == {p1["id"]}  # an unbound port is not reachable through Zeta
    posted = st.ports[p1["id"]]
    assert posted["vpc_id"] == net["id"] and posted["mac_port"] == p1["mac_address"]
    assert posted["ip_node"] == "172.31.255.1" and posted["mac_node"] == "52:54:00:00:00:01"
    assert posted["ips_port"] == [{"ip": p1["fixed_ips"][0]["ip_address"], "vip": ""}]
    # the gateway travels through the change log like every resource: type gateway, its VPC
    rows = (await env.api.get("/v2.0/alcor/changes?since=0&limit=1000")).body["changes"]
    mine = [r for r in rows if r["type"] == "gateway"]
    assert [r["body"]["status"] for r in mine] == ["pending", "ready"]
    assert all(r["vpc_id"] == net["id"] for r in mine)

    # ports created, bound and deleted later follow
    p2 = await env.port(net)
    await env.api.put(f"/v2.0/ports/{unbound['id']}", {"port": {"binding:host_id": "compute-1"}})
    await asyncio.sleep(0.1)
    await env.zeta.idle()
    assert set(st.ports) == {p1["id"], p2["id"], unbound["id"]}
    assert (await env.api.delete(f"/v2.0/ports/{p2['id']}")).status == 204
    await asyncio.sleep(0.1)
    await env.zeta.idle()
    assert set(st.ports) == {p1["id"], unbound["id"]}
    assert ("DELETE", f"/ports/{p2['id']}") in st.calls


async def test_deleting_the_gateway_or_the_network_deregisters(env: Env) -> None:
    a, b = await env.network("a"), await env.network("b")
    ga, gb = await env.gateway(a), await env.gateway(b)
    await env.settled(ga["id"])
    assert set(env.standin.state.vpcs) == {a["id"], b["id"]}
    assert (await env.api.delete(f"{GW}/{ga['id']}")).status == 204
    await env.zeta.idle()
    assert set(env.standin.state.vpcs) == {b["id"]}
    assert (await env.api.delete(f"/v2.0/networks/{b['id']}")).status == 204
    await asyncio.sleep(0.1)
    await env.zeta.idle()
    assert env.standin.state.vpcs == {}
    assert (await env.api.get(f"{GW}/{gb['id']}")).status == 404
    rows = (await env.api.get("/v2.0/alcor/changes?since=0&limit=1000")).body["changes"]
    assert [r["op"] for r in rows if r["id"] == gb["id"]][-1] == "delete"


async def test_api_errors(env: Env) -> None:
    net = await env.network("n")
    await env.gateway(net)
    r = await env.api.post(GW, {"gateway": {"vpc_id": net["id"]}})
    assert r.status == 409 and r.error["type"] == "GatewayInUse"
    r = await env.api.post(GW, {"gateway": {}})
    assert r.status == 400
    other = await env.network("theirs", project="tenant-b")
    r = await env.api.as_project("tenant-a").post(GW, {"gateway": {"vpc_id": other["id"]}})
    assert r.status == 404
    r = await env.api.post(GW, {"gateway": {"vpc_id": net["id"], "status": "ready"}})
    assert r.status == 400  # status is Zeta's to say
    assert (await env.api.as_project("tenant-a").get(GW)).body["gateways"] == []


async def test_errors_from_zeta_are_retried(env: Env) -> None:
    env.faults(fail=2, status=503)
    net = await env.network("retry")
    gw = await env.settled((await env.gateway(net))["id"])
    assert gw["status"] == "ready"
    assert env.zeta.client.retries == 2


async def test_a_client_error_from_zeta_fails_at_once(env: Env) -> None:
    env.faults(fail=5, status=400, path="/vpcs")
    gw = await env.settled((await env.gateway(await env.network("bad")))["id"])
    assert gw["status"] == "failed" and "HTTP 400" in gw["status_reason"]
    assert env.zeta.client.retries == 0


async def test_port_failure_rolls_the_registration_back(env: Env) -> None:
    net = await env.network("rollback")
    await env.port(net)
    env.faults(fail=10, status=500, path="/ports")
    gw = await env.settled((await env.gateway(net))["id"])
    assert gw["status"] == "failed" and "rolled back" in gw["status_reason"]
    assert env.standin.state.vpcs == {}  # DELETE /vpcs undid the half registration
    assert gw["destinations"] == []


async def test_zeta_down_or_slow_fails_only_its_vpc_and_never_blocks_the_api(env: Env) -> None:
    env.faults(delay=2.0)  # slower than the client's 0.5 s timeout: every attempt times out
    slow = await env.network("slow")
    t0 = time.monotonic()
    gw = await env.gateway(slow)
    assert gw["status"] == "pending"
    # meanwhile the API answers other VPCs at once
    other = await env.network("other")
    await env.port(other)
    assert time.monotonic() - t0 < 0.5
    gw = await env.settled(gw["id"])
    assert gw["status"] == "failed" and "TimeoutError" in gw["status_reason"]
    # Zeta back: another VPC registers; the failed one stays failed until re-created
    env.faults()
    ok = await env.settled((await env.gateway(other))["id"])
    assert ok["status"] == "ready"
    assert (await env.api.get(f"{GW}/{gw['id']}")).body["gateway"]["status"] == "failed"

    # and down altogether (nothing listens): failed with the connection error
    await env.standin.stop()
    down = await env.settled((await env.gateway(await env.network("down")))["id"])
    assert down["status"] == "failed" and "Connect" in down["status_reason"]


async def test_a_changed_fwd_set_reaches_the_gateway(env: Env) -> None:
    net = await env.network("fwds")
    gw = await env.settled((await env.gateway(net))["id"])
    new = [*GWS, {"ip": "172.31.255.10", "mac": "02:00:00:00:00:0a"}]
    env.standin.state.gws = new
    await env.zeta.refresh()
    gw2 = await env.settled(gw["id"])
    assert gw2["destinations"] == new  # sorted by address: .9 before .10
    assert gw2["revision_number"] == gw["revision_number"] + 1


async def test_the_gateway_reaches_member_hosts_and_redirects_there(env: Env) -> None:
    """Change-log rows -> the southbound's goal state of a member node -> the agent's redirect."""
    from alcor.agent import zeta
    from alcor.southbound.goalstate import Topology, goal_state

    net = await env.network("to-hosts")
    await env.port(net)
    gw = await env.settled((await env.gateway(net))["id"])
    rows = (await env.api.get("/v2.0/alcor/changes?since=0&limit=1000")).body["changes"]
    t = Topology()
    for r in rows:
        t.put(r["type"], r["id"], r["body"])
    node_id = next(r["id"] for r in rows if r["type"] == "node")
    goal = goal_state(t, node_id)
    assert goal["vpc"][net["id"]]["gateway_ids"] == [gw["id"]]
    assert goal["gateway"][gw["id"]] == {
        "id": gw["id"],
        "type": "zeta",
        "vpc_id": net["id"],
        "status": "ready",
        "destinations": GWS,
        "oam_port": 8300,
    }
    [redirect] = zeta.redirects(goal).values()
    assert redirect.vni == net["provider:segmentation_id"]
    assert redirect.destinations == ((GWS[0]["ip"], GWS[0]["mac"]),)


async def test_operator_view(env: Env) -> None:
    await env.settled((await env.gateway(await env.network("ops")))["id"])
    r = await env.api.get("/v2.0/alcor/zeta")
    assert r.status == 200
    z = r.body["zeta"]
    assert z["counters"]["registered"] == 1 and z["gateways"] == 1 and z["busy_vpcs"] == []
    assert (await env.api.as_project("tenant-a").get("/v2.0/alcor/zeta")).status == 403


async def test_a_restart_finishes_what_was_pending(env: Env, tmp_path: Path) -> None:
    """Stopped mid-registration, the next start registers the VPC and re-posts ready ports."""
    env.faults(delay=5.0)  # the registration hangs in Zeta

    net = await env.network("restart")
    await env.port(net)
    gw = await env.gateway(net)
    await asyncio.sleep(0.1)
    await env.kernel.stop()  # the worker is cancelled with the call in flight
    env.faults()
    env.standin.state.vpcs.clear()
    cfg = env.kernel.config
    zeta = ZetaModule(cfg)
    kernel = Kernel(cfg, [*controller_modules(cfg), zeta])
    await kernel.start()
    try:
        await zeta.idle()
        stored = await zeta.gateways.current(gw["id"])
        assert stored is not None and stored["status"] == "ready"
        assert net["id"] in env.standin.state.vpcs and len(env.standin.state.ports) == 1
    finally:
        await kernel.stop()
