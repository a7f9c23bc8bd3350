"""`alcor agent flows`: desired flows against what the switch holds, each named by its resource."""

from __future__ import annotations

import dataclasses

from alcor.agent.compiler import compile_flows
from alcor.ops.flows import diff


def test_states_ok_missing_differs_stale() -> None:
    fs = compile_flows({"node_id": "n1"}, {})
    desired = fs.by_key()
    keys = sorted(desired)
    assert len(keys) >= 3
    installed = dict(desired)
    missing = installed.pop(keys[0])
    changed = dataclasses.replace(installed[keys[1]], actions=())
    installed[keys[1]] = dataclasses.replace(changed, goto_table=99)
    stale = dataclasses.replace(missing, priority=4321)
    installed[stale.key] = stale
    rows = diff(desired, installed, dict(fs.owners))
    states = [r["state"] for r in rows]
    assert states.count("missing") == 1 and states.count("differs") == 1 and states.count("stale") == 1
    assert all(r["resource"]["type"] == "pipeline" for r in rows)
    assert any("goto_table:" in r["actions"] for r in rows)
    # Before the switch was read, nothing is claimed about it.
    assert {r["state"] for r in diff(desired, None, dict(fs.owners))} == {"unknown"}
