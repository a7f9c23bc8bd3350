"""FlowCompiler (incremental) always agrees with a from-scratch compile, and reports the changes."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from alcor.agent.compiler import FlowCompiler, compile_flows
from alcor.agent.ir import tap_name
from tests.support.goals import IP, OFPORTS, PA1, PA3, PB1, A, B, rule, secgroup_scene, two_vpcs

OPS = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "readdress", "move", "tap", "gateway", "router", "noop"]),
        st.integers(min_value=0, max_value=7),
    ),
    min_size=1,
    max_size=12,
)


def step(goal: dict, ofports: dict, op: str, n: int) -> None:
    pid = f"ffff{n:04d}-0000"
    ports = goal["port"] = dict(goal["port"])  # a new dict per message, like AgentModel.goal()
    if op == "add":
        ports[pid] = {
            "id": pid, "network_id": "vpc1" if n % 2 else "vpc2", "mac_address": f"fa:16:3e:ff:00:{n:02x}",
            "fixed_ips": [{"subnet_id": "s1" if n % 2 else "t1", "ip_address": f"10.0.0.{100 + n}"}],
            "node_id": A if n % 3 == 0 else B, "device_owner": "compute:nova", "admin_state_up": True,
        }  # fmt: skip
        ofports.setdefault(tap_name(pid), 20 + n)
    elif op == "remove":
        ports.pop(pid, None)
    elif op == "readdress" and pid in ports:
        body = copy.deepcopy(ports[pid])
        body["fixed_ips"][0]["ip_address"] = f"10.0.0.{200 + n}"
        ports[pid] = body
    elif op == "move" and pid in ports:
        ports[pid] = {**ports[pid], "node_id": B if ports[pid]["node_id"] == A else A}
    elif op == "tap":
        for p in (pid, PA3):
            if tap_name(p) in ofports:
                del ofports[tap_name(p)]
            else:
                ofports[tap_name(p)] = 40 + n
    elif op == "gateway":
        goal["subnet"] = copy.deepcopy(goal["subnet"])
        goal["subnet"]["s2"]["gateway_mac"] = f"fa:16:3e:00:99:{n:02x}"
    elif op == "router":
        goal["router"] = (
            {} if goal["router"] else {"r1": {"id": "r1", "subnet_ids": ["s1", "s2"], "routes": []}}
        )


@settings(max_examples=80, deadline=None)
@given(OPS)
def test_incremental_equals_full_compile(ops: list[tuple[str, int]]) -> None:
    goal = dict(two_vpcs().goal())
    ofports = dict(OFPORTS)
    compiler = FlowCompiler()
    compiler.compile(goal, ofports)
    for op, n in ops:
        before = dict(compiler.desired)
        step(goal, ofports, op, n)
        changes = compiler.compile(goal, ofports)
        full = compile_flows(goal, ofports)
        assert compiler.desired == full.by_key()
        assert compiler.port_problems == dict(full.port_problems)
        # the reported changes take the old desired set to the new one
        for k, (old, new) in changes.flows.items():
            assert before.get(k) == old
            if new is None:
                before.pop(k, None)
            else:
                before[k] = new
        assert before == compiler.desired


def test_one_neighbour_delta_touches_only_its_flows_and_its_vpc_flood() -> None:
    goal = dict(two_vpcs().goal())
    compiler = FlowCompiler()
    compiler.compile(goal, OFPORTS)
    goal["port"] = {k: v for k, v in goal["port"].items() if k != PB1}
    changes = compiler.compile(goal, OFPORTS)
    assert not changes.recomputed
    from alcor.agent.ir import cookie_for

    assert changes.cookies == {cookie_for("port", PB1)}  # host B still has other VPC1 ports
    assert compiler.recomputes == 1
    # unchanged input: nothing to do
    assert compiler.compile(goal, OFPORTS).flows == {}
    # a tap disappearing is a port change
    ofports = {k: v for k, v in OFPORTS.items() if k != tap_name(PA1)}
    changes = compiler.compile(goal, ofports)
    assert cookie_for("port", PA1) in changes.cookies and not changes.recomputed
    assert compiler.port_problems[PA1] == f"interface {tap_name(PA1)} not on the bridge"


def _streamed(compiler: FlowCompiler, goal: dict, ofports: dict) -> tuple[dict, int]:
    """What a switch holds after a streamed compile's chunks and then its late adds, and how
    many flow-mods that took."""
    steps = compiler.stream(goal, ofports)
    switch: dict = {}
    sent = 0
    while True:
        try:
            chunk = next(steps)
        except StopIteration as done:
            changes = done.value
            break
        for f in chunk:
            assert f.key not in switch, "a key streamed twice (two connections could race)"
            switch[f.key] = f
        sent += len(chunk)
    for f in changes.late_adds:  # after the chunks' barriers: they replace what a chunk held
        switch[f.key] = f
    return switch, sent + len(changes.late_adds)


def test_a_streamed_compile_ends_with_the_flows_of_a_compile() -> None:
    g = secgroup_scene()
    g.sg("web", [rule("ingress", protocol="tcp", port_range_min=80, remote_group_id="other")])
    g.res["port"][PA1]["security_group_ids"] = ["web"]
    # two ports claim one address: their flows of that key merge once both said what they want
    g.res["port"][PB1]["allowed_address_pairs"] = [{"ip_address": IP[PA3]}]
    for goal in (dict(two_vpcs().goal()), dict(g.goal())):
        compiler = FlowCompiler()
        switch, sent = _streamed(compiler, goal, dict(OFPORTS))
        full = compile_flows(goal, OFPORTS)
        assert switch == full.by_key() == compiler.desired
        assert sent >= len(switch)
        assert compiler.port_problems == dict(full.port_problems)
        # and the compiler's state is whole: an incremental compile after it agrees too
        step(goal, ofports := dict(OFPORTS), "add", 1)
        compiler.compile(goal, ofports)
        assert compiler.desired == compile_flows(goal, ofports).by_key()
    # the second goal has keys several resources want: some flows went late
    assert sent > len(switch)


def test_a_compile_left_half_way_leaves_nothing_to_diff_against(monkeypatch) -> None:
    """A streamed compile closed at a chunk (or one that raised) leaves the compiler as if new:
    the next compile is whole, from nothing, and agrees with a full compile."""
    import alcor.agent.compiler as compiler_module

    monkeypatch.setattr(compiler_module, "STREAM_FLOWS", 5)  # several chunks from a small goal
    goal = dict(two_vpcs().goal())
    compiler = FlowCompiler()
    steps = compiler.stream(goal, dict(OFPORTS))
    assert next(steps)  # the first chunk, then the switch went away and the compile was dropped
    steps.close()
    assert not compiler.desired
    step(goal, ofports := dict(OFPORTS), "add", 1)
    changes = compiler.compile(goal, ofports)
    full = compile_flows(goal, ofports).by_key()
    assert compiler.desired == full
    assert changes.recomputed and {k: new for k, (_, new) in changes.flows.items()} == full
    # and the state is whole again: incremental compiles agree from here on
    step(goal, ofports, "readdress", 1)
    assert not compiler.compile(goal, ofports).recomputed
    assert compiler.desired == compile_flows(goal, ofports).by_key()
