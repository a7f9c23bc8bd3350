"""`alcor agent flows`, server side: the agent's desired flows, each with its resource, against the switch.

The desired set is recomputed with the agent's own pure compiler from the goal state it holds, and
the switch's flows are read back by our cookie tag: a flow is `ok` (on the switch as desired),
`missing` (desired, not on the switch), `differs` (same table, priority and match, other actions)
or `stale` (ours on the switch, not desired). Nothing here changes the switch.
"""

from __future__ import annotations

from typing import Any

from alcor.agent.compiler import compile_flows
from alcor.agent.ir import (
    COOKIE_TAG,
    COOKIE_TAG_MASK,
    COOKIE_TYPES,
    REG_ZONE,
    Conjunction,
    Ct,
    DecTtl,
    Flow,
    Group,
    Move,
    Opaque,
    Output,
    OutputReg,
    Resubmit,
    SetField,
)

_TYPE_BY_CODE = {code: name for name, code in COOKIE_TYPES.items()}


def action_text(a: Any) -> str:
    """An action in ovs-ofctl's spelling, as an operator reads `ovs-ofctl dump-flows`."""
    if isinstance(a, Output):
        special = {0xFFFFFFF8: "IN_PORT", 0xFFFFFFFD: "CONTROLLER"}
        return special.get(a.port, f"output:{a.port}")
    if isinstance(a, SetField):
        hexed = ("tun_id", "metadata", "reg6", "reg7")
        value = hex(a.value) if isinstance(a.value, int) and a.field in hexed else a.value
        return f"set_field:{value}->{a.field}"
    if isinstance(a, Move):
        return f"move:{a.src}[]->{a.dst}[]"
    if isinstance(a, DecTtl):
        return "dec_ttl"
    if isinstance(a, Group):
        return f"group:{a.group_id}"
    if isinstance(a, Ct):
        args = (["commit"] if a.commit else []) + ([f"table={a.table}"] if a.table is not None else [])
        args.append(f"zone={REG_ZONE}[0..15]")
        if a.mark is not None:
            args.append(f"exec(set_field:{a.mark:#x}->ct_mark)")
        return f"ct({','.join(args)})"
    if isinstance(a, Conjunction):
        return f"conjunction({a.id},{a.clause}/{a.n_clauses})"
    if isinstance(a, Resubmit):
        return f"resubmit(,{a.table})"
    if isinstance(a, OutputReg):
        return f"output:{a.reg}"
    if isinstance(a, Opaque):
        return a.text
    return repr(a)


def _value(v: Any) -> str:
    if isinstance(v, tuple):
        value, mask = v
        return f"{value}/{mask}" if not isinstance(value, int) else f"{value:#x}/{mask:#x}"
    return str(v)


def flow_text(f: Flow) -> dict[str, Any]:
    actions = [f"meter:{f.meter}"] if f.meter is not None else []
    actions += [action_text(a) for a in f.actions]
    if f.write_metadata is not None:
        actions.append(f"write_metadata:{f.write_metadata[0]:#x}/{f.write_metadata[1]:#x}")
    if f.goto_table is not None:
        actions.append(f"goto_table:{f.goto_table}")
    return {"table": f.table, "priority": f.priority, "cookie": f"{f.cookie:#x}",
            "match": ",".join(f"{k}={_value(v)}" for k, v in f.match) or "(any)",
            "actions": ",".join(actions) or "drop",
            **({"idle_timeout": f.idle_timeout} if f.idle_timeout else {})}


def owner_of(cookie: int, owners: dict[int, tuple[str, str]]) -> dict[str, str]:
    if cookie in owners:
        rtype, rid = owners[cookie]
        return {"type": rtype, "id": rid}
    # A stale flow's resource is gone from the goal state; its cookie still names the type.
    code = (cookie >> 44) & 0xF if cookie & COOKIE_TAG_MASK == COOKIE_TAG else None
    return {"type": _TYPE_BY_CODE.get(code, "?") if code is not None else "?", "id": "?"}


def diff(desired: dict[Any, Flow], installed: dict[Any, Flow] | None,
         owners: dict[int, tuple[str, str]]) -> list[dict[str, Any]]:
    """Each desired flow with its state, then the stale ones; in table, priority order."""
    rows = []
    for key, f in desired.items():
        if installed is None:
            state = "unknown"
        elif key not in installed:
            state = "missing"
        else:
            state = "ok" if installed[key] == f else "differs"
        rows.append({**flow_text(f), "state": state, "resource": owner_of(f.cookie, owners)})
    for key, f in (installed or {}).items():
        if key not in desired:
            rows.append({**flow_text(f), "state": "stale", "resource": owner_of(f.cookie, owners)})
    rows.sort(key=lambda r: (r["table"], -r["priority"], r["match"]))
    return rows


async def flow_report(dp: Any) -> dict[str, Any]:
    """The whole report for one datapath (see module docstring)."""
    goal = dp.goal or {}
    switch = dp.switch
    ports = dict(switch.ports) if switch is not None else {}
    fs = compile_flows(goal, ports, tunnel_port=dp.config.tunnel_port, zones=dp.port_zones)
    desired = fs.by_key()
    installed = None
    if switch is not None:
        flows = await switch.flow_stats(cookie=COOKIE_TAG, cookie_mask=COOKIE_TAG_MASK)
        installed = {f.key: f for f in flows}
    rows = diff(desired, installed, dict(fs.owners))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    return {"node_id": goal.get("node_id"), "bridge": dp.config.bridge,
            "switch_connected": switch is not None, "goal_loaded": dp.goal is not None,
            "counts": counts, "port_problems": dict(fs.port_problems), "flows": rows}
