"""The end-to-end benchmark's short version (bench/e2e): a controller over RabbitMQ, a real agent on
a real Open vSwitch and five simulated agents; a few hundred ports at a steady rate and in bursts,
then every fault drill. Each drill must converge (every node's digest equal to its goal state,
every accepted port ACTIVE, flows on the real switch) within the issue's 10 s, with nothing lost.

The cluster is shared by the module's tests, in order; it is torn down (processes, queues,
namespace) however they end.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bench.e2e import drills
from bench.e2e.cluster import Cluster
from bench.e2e.harness import Harness
from bench.e2e.report import phase_figures
from tests.conftest import require
from tests.support.broker import require_broker
from tests.support.ovs import have_ovs, is_root
from tests.support.wait import eventually

pytestmark = [
    pytest.mark.rabbitmq,
    pytest.mark.ovs,
    pytest.mark.asyncio(loop_scope="module"),
]

NODES, VPCS, DRILL_PORTS = 6, 2, 60


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def h(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Harness]:
    require(is_root(), "the e2e drills need root (a network namespace for Open vSwitch)")
    require(have_ovs(), "the e2e drills need openvswitch-switch installed")
    require_broker()
    require(shutil.which("rabbitmqctl") is not None, "the e2e drills need rabbitmqctl")
    cluster = Cluster(Path(tmp_path_factory.mktemp("e2e")), NODES, VPCS)
    harness = Harness(cluster, concurrency=8, progress=False)
    try:
        await cluster.start()
        await harness.start()
        await harness.wait_converged(60)
        yield harness
    finally:
        await harness.stop()
        await cluster.close()


def _assert_drill(r: drills.DrillResult) -> None:
    assert r.within_target, f"{r.name} converged {r.converge_s:.1f} s after the fault: {r.detail}"


async def test_steady_then_burst_all_active(h: Harness) -> None:
    await h.create(60, "steady", rate=60)
    await h.create(120, "burst")
    t = time.time()
    await h.wait_converged(drills.TARGET_S)
    checked = await h.verify()
    assert checked["accepted"] == checked["ports"] == 180
    assert checked["real_node_ports_with_flows"] == 30
    for phase in phase_figures(h):
        assert phase["active"] == phase["ports"], phase
    assert time.time() - t <= drills.TARGET_S


async def test_controller_killed_and_restarted_mid_burst(h: Harness) -> None:
    _assert_drill(await drills.controller_restart(h, DRILL_PORTS, timeout=60))


async def test_all_broker_connections_closed_mid_burst(h: Harness) -> None:
    _assert_drill(await drills.broker_connections_closed(h, DRILL_PORTS, timeout=60))


async def test_simulated_agents_restarted_at_once(h: Harness) -> None:
    # Four of the five simulated agents: the 200-of-1,000 storm at this scale.
    r = await drills.restart_simulated_agents(h, 4, rate=40, seconds=3, timeout=60)
    assert r.detail["snapshots_per_restarted_agent"] == [1]
    _assert_drill(r)


async def test_real_agent_restarted_keeps_every_wanted_flow(h: Harness) -> None:
    r = await drills.restart_real_agent(h, DRILL_PORTS, timeout=60)
    assert r.detail["flows_kept"] > 0
    _assert_drill(r)


async def test_ovs_restarted_while_its_vpc_changes(h: Harness) -> None:
    # A delta applied while the switch is away reports the local ports ERROR; once the switch is
    # back and reprogrammed they must turn ACTIVE again without another delta.
    r = await drills.restart_ovs(h, DRILL_PORTS, timeout=60)
    _assert_drill(r)


async def test_vif_plugged_after_binding_turns_active(h: Harness) -> None:
    """Nova's order: the port is bound, the agent programs what it can (no interface yet: ERROR),
    then the VIF is plugged; the port must turn ACTIVE without any further API change."""
    pid = await h.create_bound(0)
    await eventually(
        lambda: h.status.get(pid) == "ERROR",
        drills.TARGET_S,
        f"the real agent never reported {pid}",
        interval=0.1,
    )
    await h.plug(pid)
    await eventually(
        lambda: h.status.get(pid) == "ACTIVE",
        drills.TARGET_S,
        lambda: f"{pid} still {h.status.get(pid)} after its VIF plug",
        interval=0.1,
    )


async def _sleep() -> None:
    import asyncio

    await asyncio.sleep(0.1)
