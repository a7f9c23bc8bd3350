"""Make sure, idempotently, that the integration bridge exists and points at the agent.

Through ovs-vsctl, which honours OVS_RUNDIR (or an explicit `db`): the bridge with its datapath
type, OpenFlow 1.3, fail-mode secure (the switch keeps its flows and forwards on them while the
agent is away, which is what makes agent restarts gap-free), the controller target, and one
flow-based VXLAN port. Nothing is changed when everything is already as wanted. Operators who
manage the bridge themselves turn this off (`manage_bridge=False`).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import structlog

log = structlog.get_logger("alcor.agent.bridge")


@dataclass(frozen=True)
class BridgeConfig:
    bridge: str = "br-int"
    datapath_type: str = "netdev"  # "system" with the kernel module
    controller: str = "tcp:127.0.0.1:6653"  # what ovs-vswitchd dials
    tunnel_port: str = "vxlan0"
    db: str | None = None  # e.g. unix:/run/openvswitch/db.sock; None: ovs-vsctl's default
    # Reconnect quickly after an agent restart (OVS's default backs off up to 8 s).
    max_backoff_ms: int = 1000
    # OVS drops a controller that has not answered its echo for two of these (5 s by default);
    # compiling a host's first goal state holds the agent's loop for seconds on a busy machine,
    # and a dropped connection makes it start over. Neutron's agent allows 10 s, OVN's 180 s.
    inactivity_probe_ms: int = 30000


class BridgeError(RuntimeError):
    pass


async def vsctl(cfg: BridgeConfig, *args: str) -> str:
    cmd = ["ovs-vsctl", "--timeout=10"]
    if cfg.db:
        cmd.append(f"--db={cfg.db}")
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=os.environ.copy(),
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise BridgeError(f"ovs-vsctl {' '.join(args)}: {err.decode().strip()}")
    return out.decode().strip()


async def ensure_bridge(cfg: BridgeConfig) -> bool:
    """Create or fix the bridge; return True when something had to change."""
    br, vx = cfg.bridge, cfg.tunnel_port
    want = {
        "datapath_type": cfg.datapath_type,
        "protocols": '["OpenFlow13"]',
        "fail_mode": "secure",
    }
    have: dict[str, str] = {}
    exists = br in (await vsctl(cfg, "list-br")).split()
    if exists:
        for column in want:
            have[column] = (await vsctl(cfg, "get", "bridge", br, column)).strip('"')
        have["controller"] = await vsctl(cfg, "get-controller", br)
        ports = (await vsctl(cfg, "list-ports", br)).split()
        if vx in ports:
            have["tunnel"] = await vsctl(cfg, "get", "interface", vx, "type", "options")
    changed = False
    cmd: list[str] = ["--may-exist", "add-br", br]
    if (
        not exists
        or any(have.get(c) != v.strip('"') for c, v in want.items() if c != "protocols")
        or have.get("protocols") not in ('["OpenFlow13"]', "[OpenFlow13]")
    ):
        cmd += ["--", "set", "bridge", br, f"datapath_type={cfg.datapath_type}"]
        cmd += ["protocols=OpenFlow13", "fail_mode=secure", "other-config:disable-in-band=true"]
        changed = True
    if have.get("controller") != cfg.controller:
        cmd += [
            "--",
            "--id=@c",
            "create",
            "controller",
            f'target="{cfg.controller}"',
            f"max_backoff={cfg.max_backoff_ms}",
            f"inactivity_probe={cfg.inactivity_probe_ms}",
            "connection_mode=out-of-band",
            "--",
            "set",
            "bridge",
            br,
            "controller=@c",
        ]
        changed = True
    tunnel = have.get("tunnel", "")
    if not ("vxlan" in tunnel and "key=flow" in tunnel and "remote_ip=flow" in tunnel):
        cmd += ["--", "--may-exist", "add-port", br, vx, "--", "set", "interface", vx]
        cmd += ["type=vxlan", "options:remote_ip=flow", "options:key=flow"]
        changed = True
    if changed:
        await vsctl(cfg, *cmd)
        log.info(
            "bridge.configured",
            bridge=br,
            datapath_type=cfg.datapath_type,
            controller=cfg.controller,
            tunnel_port=vx,
        )
    else:
        log.info("bridge.unchanged", bridge=br)
    return changed


async def ensure_patches(cfg: BridgeConfig, mappings: dict[str, str]) -> list[str]:
    """Patch each mapped bridge to the integration bridge (`int-<br>` on it, `phy-<br>` on the
    mapped one), as Neutron's OVS agent does; the operator creates the mapped bridges (with the
    physical NIC in them). A mapped bridge that does not exist is logged and skipped (its gateways
    stay ERROR until it does). Returns the bridges patched."""
    existing = set((await vsctl(cfg, "list-br")).split())
    patched = []
    for physnet, br in sorted(mappings.items()):
        if br not in existing:
            log.warning("bridge.mapping_missing", physical_network=physnet, bridge=br)
            continue
        inner, outer = ("int-" + br)[:15], ("phy-" + br)[:15]
        await vsctl(
            cfg,
            "--may-exist", "add-port", cfg.bridge, inner, "--", "set", "interface", inner,
            "type=patch", f"options:peer={outer}",
            "--", "--may-exist", "add-port", br, outer, "--", "set", "interface", outer,
            "type=patch", f"options:peer={inner}",
        )  # fmt: skip
        patched.append(br)
        log.info("bridge.patched", physical_network=physnet, bridge=br, port=inner)
    return patched
