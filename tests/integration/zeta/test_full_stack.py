"""The whole control path in one process, as the dev run wires it, on a real Open vSwitch:
API -> gateway plugin -> Zeta stand-in's management API -> change log -> southbound -> agent
stream -> datapath -> select group on the switch; then an OAM inject from the FWD's address
becomes a direct-path flow, and deleting the gateway takes group, flows and registration away."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from alcor import roles
from alcor.agent import zeta
from alcor.api.app import HttpModule
from alcor.controller import controller_modules
from alcor.kernel import Kernel
from alcor.resources.nodes import Nodes
from alcor_plugins.zeta import ZetaModule
from alcor_plugins.zeta.standin import Standin
from tests.conftest import require
from tests.support.controller import Client, config_for_test
from tests.support.ovs import OvsSandbox, have_ovs, is_root
from tests.support.wait import eventually

pytestmark = pytest.mark.ovs

HOST = "zeta-host"
FWD = {"ip": "127.0.0.9", "mac": "02:00:00:00:00:09"}  # on lo: the OAM comes from the FWD's IP


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[Client, OvsSandbox, Standin, Kernel]]:
    require(is_root(), "needs root (network namespaces, Open vSwitch)")
    require(have_ovs(), "needs openvswitch-switch installed")
    with OvsSandbox.started(tmp_path / "ovs") as ovs:
        standin = Standin([FWD], run_fwds=False)
        await standin.start()
        cfg = config_for_test(
            tmp_path,
            node={"name": HOST, "local_ip": "127.0.0.78"},  # lo; not a dev run's 127.0.0.1
            # a unix socket crosses into the switch's namespace (OVS wants it in its run dir)
            agent={"openflow_listen": f"unix:{ovs.dir}/alcor-of.sock", "ovs_db": ovs.db},
            zeta={"url": standin.url, "refresh_interval": 0.0},
        )
        kernel = Kernel(
            cfg, [*controller_modules(cfg), *roles.modules("dev", cfg), ZetaModule(cfg)]
        )
        await kernel.start()
        try:
            async with aiohttp.ClientSession() as http:
                yield (
                    Client(http, f"http://127.0.0.1:{kernel.get(HttpModule).port}"),
                    ovs,
                    standin,
                    kernel,
                )
        finally:
            await kernel.stop()
            await standin.stop()


def groups(ovs: OvsSandbox) -> str:
    return ovs.ofctl("dump-groups", "br-int", check=False)


def direct(ovs: OvsSandbox) -> list[str]:
    out = ovs.ofctl("dump-flows", "br-int", "cookie=0xa1c1000000000000/0xffff000000000000")
    return [ln for ln in out.splitlines() if "cookie=" in ln]


async def test_api_to_switch_and_back(stack: tuple[Client, OvsSandbox, Standin, Kernel]) -> None:
    api, ovs, standin, kernel = stack
    net = await api.create("network", "/v2.0/networks", name="zeta")
    await api.create(
        "subnet", "/v2.0/subnets", network_id=net["id"], cidr="10.0.0.0/24", ip_version=4
    )
    await eventually(
        lambda: kernel.get(Nodes).by_name(HOST),
        5,
        "the local node registered",
        blocking=True,
        interval=0.05,
    )
    await api.create("port", "/v2.0/ports", network_id=net["id"], **{"binding:host_id": HOST})
    gw = await api.create("gateway", "/v2.0/alcor/gateways", vpc_id=net["id"])

    out = await eventually(
        lambda: FWD["ip"] in groups(ovs) and groups(ovs),
        10,
        "the gateway's select group never reached the switch",
        blocking=True,
        interval=0.05,
    )
    assert "type=select" in out and f"set_field:{FWD['mac']}->eth_dst" in out
    vni = net["provider:segmentation_id"]
    assert f"set_field:{vni:#x}->tun_id" in out
    assert standin.state.vpcs[net["id"]]["vni"] == vni

    # the FWD tells this host about a flow: the agent installs the direct path
    msg = zeta.OamMessage(
        zeta.OP_INJECT,
        "10.0.0.3",
        "10.0.0.4",
        0,
        0,
        1,
        vni,
        "10.0.0.4",
        "127.0.0.2",
        "fa:16:3e:00:00:04",
        "02:00:00:00:00:02",
        30,
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((FWD["ip"], 0))
        s.sendto(zeta.encode_oam(msg), ("127.0.0.78", 8300))
    [flow] = await eventually(
        lambda: direct(ovs), 5, "no direct flow after the inject", blocking=True, interval=0.05
    )
    assert "idle_timeout=30" in flow and "set_field:127.0.0.2->tun_dst" in flow

    # deleting the gateway: registration, group and the VPC's direct paths all go
    assert (await api.delete(f"/v2.0/alcor/gateways/{gw['id']}")).status == 204
    await eventually(
        lambda: FWD["ip"] not in groups(ovs),
        10,
        "group left on the switch",
        blocking=True,
        interval=0.05,
    )
    await eventually(
        lambda: not direct(ovs),
        5,
        "direct flows of the VPC left on the switch",
        blocking=True,
        interval=0.05,
    )
    await kernel.get(ZetaModule).idle()
    assert standin.state.vpcs == {}
