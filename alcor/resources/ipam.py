"""Address management, pure: IP pools, the allocator of one subnet, MACs and VNIs.

Nothing here materialises a pool of every address: an allocator keeps the set of addresses taken and a
cursor, so a /8 costs the same as a /24 and allocation is amortised O(1). Callers run in the event loop
holding the store's write lock, so check-then-take cannot race.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from alcor.errors import BadRequest, Conflict, NeutronError

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
Pool = tuple[int, int]  # inclusive range of integer addresses


def usable_range(net: IPNet) -> Pool:
    """First and last address a port may get (v4 leaves out network and broadcast)."""
    first, last = int(net.network_address), int(net.broadcast_address)
    if net.version == 4 and net.prefixlen <= 30:
        return first + 1, last - 1
    if net.version == 6 and net.prefixlen <= 126:
        return first + 1, last
    return first, last


def default_pools(net: IPNet, gateway: int | None) -> list[Pool]:
    lo, hi = usable_range(net)
    if gateway is None or not lo <= gateway <= hi:
        return [(lo, hi)] if lo <= hi else []
    pools = []
    if lo <= gateway - 1:
        pools.append((lo, gateway - 1))
    if gateway + 1 <= hi:
        pools.append((gateway + 1, hi))
    return pools


def default_gateway(net: IPNet) -> int | None:
    lo, hi = usable_range(net)
    return lo if lo <= hi else None


def parse_pools(net: IPNet, given: Iterable[dict[str, str]]) -> list[Pool]:
    """Validate requested allocation pools: inside the subnet, well-formed, not overlapping."""
    pools: list[Pool] = []
    lo, hi = usable_range(net)
    for p in given:
        start, end = ipaddress.ip_address(p["start"]), ipaddress.ip_address(p["end"])
        if start.version != net.version or end.version != net.version:
            raise BadRequest(f"Invalid input for operation: IP version of pool {p['start']}-{p['end']} "
                             f"does not match the subnet's.", type="InvalidInput")
        if int(start) > int(end):
            raise BadRequest(f"The allocation pool {p['start']}-{p['end']} spans beyond the subnet "
                             f"cidr {net}.", type="InvalidAllocationPool")
        if int(start) < lo or int(end) > hi:
            raise BadRequest(f"The allocation pool {p['start']}-{p['end']} spans beyond the subnet "
                             f"cidr {net}.", type="OutOfBoundsAllocationPool")
        pools.append((int(start), int(end)))
    pools.sort()
    for a, b in zip(pools, pools[1:], strict=False):
        if b[0] <= a[1]:
            raise Conflict(
                f"Found overlapping allocation pools: {fmt_pool(net, a)} and {fmt_pool(net, b)} "
                f"for subnet {net}.", type="OverlappingAllocationPools")
    return pools


def fmt_pool(net: IPNet, pool: Pool) -> str:
    return f"{ipaddress.ip_address(pool[0])}-{ipaddress.ip_address(pool[1])}"


def pools_json(pools: list[Pool]) -> list[dict[str, str]]:
    return [{"start": str(ipaddress.ip_address(a)), "end": str(ipaddress.ip_address(b))} for a, b in pools]


def check_gateway(net: IPNet, gateway: int | None, pools: list[Pool]) -> None:
    if gateway is None:
        return
    lo, hi = usable_range(net)
    if not lo <= gateway <= hi:
        raise BadRequest(f"Invalid input for operation: Gateway is not valid on subnet {net}.",
                         type="InvalidInput")
    for a, b in pools:
        if a <= gateway <= b:
            raise Conflict(f"Gateway ip {ipaddress.ip_address(gateway)} conflicts with allocation pool "
                           f"{fmt_pool(net, (a, b))}", type="GatewayConflictWithAllocationPools")


class IpExhausted(NeutronError):
    status = 409
    type = "IpAddressGenerationFailure"


@dataclass
class SubnetAllocator:
    """Addresses of one subnet: which are taken, and where to look next."""

    subnet_id: str
    network_id: str
    net: IPNet
    pools: list[Pool]
    gateway: int | None
    taken: set[int] = field(default_factory=set)
    slaac: bool = False  # v6 addresses come from the MAC (EUI-64), not from the pools
    _pool_size: int = 0
    _in_pools: int = 0
    _cursor: int = 0  # index into pools
    _next: int = 0    # next address to try in that pool

    def __post_init__(self) -> None:
        self.set_pools(self.pools)

    def set_pools(self, pools: list[Pool]) -> None:
        self.pools = pools
        self._pool_size = sum(b - a + 1 for a, b in pools)
        self._in_pools = sum(1 for ip in self.taken if self.in_pools(ip))
        self._cursor = 0
        self._next = pools[0][0] if pools else 0

    def in_pools(self, ip: int) -> bool:
        return any(a <= ip <= b for a, b in self.pools)

    def contains(self, ip: int) -> bool:
        return int(self.net.network_address) <= ip <= int(self.net.broadcast_address)

    @property
    def free(self) -> int:
        return self._pool_size - self._in_pools

    def take(self, ip: int) -> bool:
        """Reserve a specific address; False if it is already taken."""
        if ip in self.taken:
            return False
        self.taken.add(ip)
        if self.in_pools(ip):
            self._in_pools += 1
        return True

    def release(self, ip: int) -> None:
        if ip in self.taken:
            self.taken.discard(ip)
            if self.in_pools(ip):
                self._in_pools -= 1

    def allocate(self) -> int:
        """The next free address of the pools (next-fit, wrapping). Raises IpExhausted."""
        if self.free <= 0:
            raise IpExhausted(f"No more IP addresses available on network {self.network_id}.")
        n = len(self.pools)
        for _ in range(n + 1):
            a, b = self.pools[self._cursor]
            ip = max(self._next, a)
            while ip <= b:
                if ip not in self.taken:
                    self.take(ip)
                    self._next = ip + 1
                    return ip
                ip += 1
            self._cursor = (self._cursor + 1) % n
            self._next = self.pools[self._cursor][0]
        raise IpExhausted(f"No more IP addresses available on network {self.network_id}.")


MAC_PREFIX = (0xFA, 0x16, 0x3E)


def random_mac(rng: random.Random, prefix: tuple[int, int, int] = MAC_PREFIX) -> str:
    tail = rng.getrandbits(24)
    return "%02x:%02x:%02x:%02x:%02x:%02x" % (*prefix, tail >> 16, (tail >> 8) & 0xFF, tail & 0xFF)


@dataclass
class VniAllocator:
    lo: int
    hi: int
    used: set[int] = field(default_factory=set)
    _next: int = 0

    def allocate(self) -> int | None:
        span = self.hi - self.lo + 1
        if len(self.used) >= span:
            return None
        start = self._next if self.lo <= self._next <= self.hi else self.lo
        vni = start
        while vni in self.used:
            vni = self.lo if vni == self.hi else vni + 1
        self.used.add(vni)
        self._next = self.lo if vni == self.hi else vni + 1
        return vni
