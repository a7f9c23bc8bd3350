"""A conntrack zone per local port, kept in the switch's OVSDB so it survives agent restarts.

Each filtered local port's connections live in a zone of its own (egress in the sender's zone,
ingress in the receiver's), as ovn-controller does: VPCs with overlapping CIDRs never share a
connection entry. A zone must not change while the port lives, or its established connections
would look new (and be judged by the rules again) after an agent restart; so the agent writes
each assignment to the integration bridge's `external_ids` (`alcor-ct-zone-<port id>=<zone>`)
before any flow uses it, and reads them back on start. `allocate` is the pure part:

    >>> allocate({"p1": 1, "gone": 2}, ["p1", "p3", "p2"])
    {'p1': 1, 'p2': 2, 'p3': 3}

A port that leaves gives its zone back; the agent flushes the zone's connections
(NXT_CT_FLUSH_ZONE) before it can be handed to another port.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import structlog

from alcor.agent.bridge import BridgeConfig, BridgeError, vsctl

log = structlog.get_logger("alcor.agent.ctzones")

KEY_PREFIX = "alcor-ct-zone-"
FIRST_ZONE = 1  # zone 0 is the default zone everything untracked shares
LAST_ZONE = 0xFFFF


def allocate(held: Mapping[str, int], ports: Iterable[str]) -> dict[str, int]:
    """Zones for `ports`: the one each already holds, else the lowest free one (ports in id
    order, so the result depends only on its inputs). Ports not in `ports` give theirs back."""
    wanted = sorted(set(ports))
    out = {p: held[p] for p in wanted if p in held and FIRST_ZONE <= held[p] <= LAST_ZONE}
    used = set(out.values())
    if len(used) != len(out):  # two ports claiming one zone (hand-edited OVSDB): first keeps it
        seen: set[int] = set()
        for p in wanted:
            z = out.get(p)
            if z is not None and z in seen:
                del out[p]
            elif z is not None:
                seen.add(z)
        used = set(out.values())
    free = FIRST_ZONE
    for p in wanted:
        if p in out:
            continue
        while free in used:
            free += 1
        if free > LAST_ZONE:
            raise ValueError("more local ports than conntrack zones")
        out[p] = free
        used.add(free)
    return dict(sorted(out.items()))


def parse_external_ids(text: str) -> dict[str, int]:
    """The zones in `ovs-vsctl get bridge br-int external_ids` output ({k=v, "k"="v", ...})."""
    out: dict[str, int] = {}
    body = text.strip().strip("{}")
    for item in body.split(","):
        key, _, value = item.strip().partition("=")
        key, value = key.strip().strip('"'), value.strip().strip('"')
        if key.startswith(KEY_PREFIX) and value.isdigit():
            out[key[len(KEY_PREFIX) :]] = int(value)
    return out


class ZoneStore:
    """The zones of this host's local ports, persisted in the bridge's external_ids.

    Owned by the datapath. `assign` gives every wanted port a zone and writes what changed in
    one ovs-vsctl call; if OVSDB cannot be written (no Open vSwitch here), the zones are kept
    in memory only, which is logged: forwarding works, but an agent restart may renumber them.
    """

    def __init__(self, bridge: BridgeConfig) -> None:
        self.bridge = bridge
        self.zones: dict[str, int] = {}
        self.loaded = False

    async def load(self) -> None:
        try:
            text = await vsctl(self.bridge, "get", "bridge", self.bridge.bridge, "external_ids")
        except (BridgeError, OSError) as exc:
            log.warning("ctzones.load_failed", bridge=self.bridge.bridge, error=str(exc))
            text = ""
        self.zones = parse_external_ids(text)
        self.loaded = True

    async def assign(self, ports: Iterable[str]) -> tuple[dict[str, int], dict[str, int]]:
        """(zones of `ports`, zones given back), with OVSDB updated to match."""
        if not self.loaded:
            await self.load()
        new = allocate(self.zones, ports)
        released = {p: z for p, z in self.zones.items() if new.get(p) != z}
        added = {p: z for p, z in new.items() if self.zones.get(p) != z}
        if added or released:
            # one command per kind, every key in it: one transaction, ~30 ms for 1,000 ports
            # (a command per key costs that per key)
            br = self.bridge.bridge
            args: list[str] = []
            if released:
                args += ["--", "remove", "bridge", br, "external_ids", *(KEY_PREFIX + p for p in released)]
            if added:
                cols = (f'external_ids:"{KEY_PREFIX}{p}"="{z}"' for p, z in added.items())
                args += ["--", "set", "bridge", br, *cols]
            try:
                await vsctl(self.bridge, *args[1:])
            except (BridgeError, OSError) as exc:
                log.warning("ctzones.save_failed", bridge=self.bridge.bridge, error=str(exc))
            else:
                log.info("ctzones.saved", assigned=len(added), released=len(released))
        self.zones = new
        return new, released
