"""ZetaAgent against a recording switch: OAM outcomes are counted and never touch another VPC,
groups are added, modified and deleted as the goal state's gateways change."""

from __future__ import annotations

import asyncio
from typing import Any

from os_ken.ofproto import ofproto_v1_3 as ofp

from alcor.agent import zeta
from alcor.agent.oam import ZetaAgent
from tests.support.goals import FWD1, FWD2
from tests.support.goals import zeta_scene as goal


class Page:
    def __init__(self, ids: list[int]) -> None:
        self.body = [type("G", (), {"group_id": i})() for i in ids]


class RecordingSwitch:
    def __init__(self, groups: list[int] | None = None) -> None:
        self.ports = {"vxlan0": 1}
        self.groups: dict[int, int] = {g: 0 for g in groups or []}  # id -> buckets
        self.group_cmds: list[tuple[int, int]] = []
        self.adds: list[Any] = []
        self.deletes: list[Any] = []
        self.sent: list[Any] = []

    async def request(self, msg: Any, timeout: float = 10.0) -> list[Any]:
        return [Page(list(self.groups))]

    async def group_mod(self, msg: Any) -> list[Any]:
        self.group_cmds.append((msg.command, msg.group_id))
        if msg.command == ofp.OFPGC_DELETE:
            self.groups.pop(msg.group_id, None)
        else:
            self.groups[msg.group_id] = len(msg.buckets)
        return []

    async def flow_mods(self, adds: Any = (), deletes: Any = (), timeout: float = 60) -> list[Any]:
        self.adds += list(adds)
        self.deletes += list(deletes)
        return []

    async def send(self, msg: Any) -> None:
        self.sent.append(msg)


def inject(vni: int = 100, **kw: Any) -> bytes:
    fields = dict(
        opcode=zeta.OP_INJECT,
        src_ip="10.0.0.5",
        dst_ip="10.0.0.6",
        src_port=1,
        dst_port=2,
        proto=17,
        vni=vni,
        dst_instance_ip="10.0.0.6",
        dst_host_ip="172.31.255.2",
        dst_instance_mac="fa:16:3e:00:00:06",
        dst_host_mac="52:54:00:00:00:02",
        idle_timeout=5,
    )
    fields.update(kw)
    return zeta.encode_oam(zeta.OamMessage(**fields))


async def test_outcomes_are_counted() -> None:
    agent, sw = ZetaAgent(), RecordingSwitch()
    g = goal()
    g["node"]["node-a"]["local_ip"] = "127.0.0.77"  # lo: no clash with a dev run on :8300
    await agent.before_flows(sw, g, "vxlan0")  # type: ignore[arg-type]
    try:
        src, port = FWD1["ip"], 8300
        agent.received(inject(), src, port, 0.0)
        agent.received(inject()[:20], src, port, 0.0)  # an inject cut short
        agent.received(b"\0\0\0\x07" + bytes(40), src, port, 0.0)
        agent.received(inject(vni=200), src, port, 0.0)  # VPC 2 has no gateway: not Zeta's
        agent.received(inject(vni=999), src, port, 0.0)
        agent.received(inject(), src, 8301, 0.0)
        agent.received(inject(), "10.9.9.9", port, 0.0)  # not one of the gateway's FWDs
        agent.received(inject(opcode=zeta.OP_DELETE)[:20], src, port, 0.0)
        await asyncio.sleep(0.01)
        assert agent.counters == {
            "injected": 1,
            "deleted": 1,
            "malformed": 1,
            "unknown_opcode": 1,
            "unknown_vni": 2,
            "wrong_port": 1,
            "unknown_source": 1,
            "no_switch": 0,
        }
        [add] = sw.adds
        assert add.idle_timeout == 5 and dict(add.match)["metadata"] == 100
        [delete] = sw.deletes
        assert delete.key == add.key
        assert len(agent.latencies) == 2
        assert agent.listening == [("127.0.0.77", 8300)]
    finally:
        await agent.stop()


async def test_groups_follow_the_gateway() -> None:
    agent = ZetaAgent()
    gid = zeta.group_id_for("gw1")
    stale = zeta.GROUP_BASE + 1 if gid != zeta.GROUP_BASE + 1 else zeta.GROUP_BASE + 2
    sw = RecordingSwitch(groups=[stale, 7])  # 7 is not in our range: never touched
    try:
        await agent.before_flows(sw, goal(), "vxlan0")  # type: ignore[arg-type]
        await agent.after_flows(sw)  # type: ignore[arg-type]
        assert sw.groups == {gid: 1, 7: 0}
        await agent.before_flows(sw, goal(dests=[FWD1, FWD2]), "vxlan0")  # type: ignore[arg-type]
        await agent.after_flows(sw)  # type: ignore[arg-type]
        assert sw.groups[gid] == 2 and sw.group_cmds[-1] == (ofp.OFPGC_MODIFY, gid)
        n = len(sw.group_cmds)
        await agent.before_flows(sw, goal(dests=[FWD2, FWD1]), "vxlan0")  # type: ignore[arg-type]
        assert len(sw.group_cmds) == n  # same FWD set: nothing sent
        await agent.before_flows(sw, goal(status="failed"), "vxlan0")  # type: ignore[arg-type]
        await agent.after_flows(sw)  # type: ignore[arg-type]
        assert sw.groups == {7: 0}
        # the VPC's direct paths go with its redirection
        [msg] = sw.sent
        assert msg.cookie == zeta.vni_cookie(100) and msg.cookie_mask == zeta.DIRECT_VNI_MASK
    finally:
        await agent.stop()
