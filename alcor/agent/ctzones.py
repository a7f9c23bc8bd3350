"""A conntrack zone per local port, kept in the switch's OVSDB so it survives agent restarts.

Each filtered local port's connections live in a zone of its own (egress in the sender's zone,
ingress in the receiver's), as ovn-controller does: VPCs with overlapping CIDRs never share a
connection entry. A zone must not change while the port lives, or its established connections
would look new (and be judged by the rules again) after an agent restart; so the agent writes
each assignment to the integration bridge's `external_ids` (`alcor-ct-zone-<port id>=<zone>`)
before any flow uses it, and reads them back on start. `allocate` is the pure part:

    >>> allocate({"p1": 1, "gone": 2}, ["p1", "p3", "p2"], reserved=[2])
    {'p1': 1, 'p2': 3, 'p3': 4}

A port that leaves gives its zone back only once the agent has flushed the zone's connections
(NXT_CT_FLUSH_ZONE): until then no other port gets it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import structlog

from alcor.agent.bridge import BridgeConfig, BridgeError, vsctl

log = structlog.get_logger("alcor.agent.ctzones")

KEY_PREFIX = "alcor-ct-zone-"
FIRST_ZONE = 1  # zone 0 is the default zone everything untracked shares
LAST_ZONE = 0xFFFF


def allocate(
    held: Mapping[str, int], ports: Iterable[str], reserved: Iterable[int] = ()
) -> dict[str, int]:
    """Zones for `ports`: the one each already holds, else the lowest zone nobody holds and not
    `reserved` (zones given back whose connections are not flushed yet), ports in id order, so
    the result depends only on its inputs."""
    wanted = sorted(set(ports))
    out: dict[str, int] = {}
    used = set(reserved)
    for p in wanted:  # two ports claiming one zone (a hand-edited OVSDB): the first keeps it
        z = held.get(p)
        if z is not None and FIRST_ZONE <= z <= LAST_ZONE and z not in used:
            out[p] = z
            used.add(z)
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

    Owned by the datapath. `assign` gives every wanted port a zone and writes the new ones in one
    ovs-vsctl call. A port that left keeps its entry, and its zone stays out of use, until
    `forget` is told its connections were flushed (so an agent restart in between still knows
    the zone must be flushed). If OVSDB cannot be written (no Open vSwitch here), the zones live
    in memory only, which is logged: forwarding works, but an agent restart may renumber them.
    """

    def __init__(self, bridge: BridgeConfig) -> None:
        self.bridge = bridge
        self.zones: dict[str, int] = {}  # every entry, ports that left included until forgotten
        self.loaded = False
        self._settled = False

    async def load(self) -> None:
        try:
            text = await vsctl(self.bridge, "get", "bridge", self.bridge.bridge, "external_ids")
        except (BridgeError, OSError) as exc:
            log.warning("ctzones.load_failed", bridge=self.bridge.bridge, error=str(exc))
            text = ""
        self.zones = parse_external_ids(text)
        self.loaded = True
        self._settled = False

    async def assign(self, ports: Iterable[str]) -> tuple[dict[str, int], dict[str, int]]:
        """(zones of `ports`, zones of ports that left and are not forgotten yet)."""
        if not self.loaded:
            await self.load()
        wanted = set(ports)
        gone = {p: z for p, z in self.zones.items() if p not in wanted}
        if self._settled and not gone and wanted == self.zones.keys():
            return dict(self.zones), {}  # the same ports as last time (most goal states)
        new = allocate(self.zones, wanted, gone.values())
        added = {p: z for p, z in new.items() if self.zones.get(p) != z}
        if added:
            # every key in one command, one transaction: ~30 ms for 1,000 ports
            cols = (f'external_ids:"{KEY_PREFIX}{p}"="{z}"' for p, z in added.items())
            await self._vsctl("set", "bridge", self.bridge.bridge, *cols)
            log.info("ctzones.assigned", ports=len(added))
        self.zones = {**gone, **new}
        self._settled = True  # every zone held is one allocate() gave (none hand-edited)
        return new, gone

    async def forget(self, ports: Iterable[str]) -> None:
        """Ports that left, whose zones' connections are flushed: their zones are free again."""
        keys = [KEY_PREFIX + p for p in ports if self.zones.pop(p, None) is not None]
        if keys:
            await self._vsctl("remove", "bridge", self.bridge.bridge, "external_ids", *keys)
            log.info("ctzones.released", ports=len(keys))

    async def _vsctl(self, *args: str) -> None:
        try:
            # --no-wait: ovs-vswitchd does not read these keys, so waiting for it to reconfigure
            # (hundreds of ms with 1,000 ports on the bridge) adds nothing to their durability
            await vsctl(self.bridge, "--no-wait", *args)
        except (BridgeError, OSError) as exc:
            log.warning("ctzones.save_failed", bridge=self.bridge.bridge, error=str(exc))
