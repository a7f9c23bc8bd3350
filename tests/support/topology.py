"""Hosts and VMs for agent tests: OVS sandboxes joined by an underlay, VMs as namespaces.

    host_a = Host.start(tmp / "a", "node-a", "172.31.255.1", of_port=6711)
    host_b = Host.start(tmp / "b", "node-b", "172.31.255.2", of_port=6712)
    join_underlay(host_a, host_b)              # veth + br-ul on each side, tunnel ARP set
    await host_a.start_agent()                 # a Datapath listening inside host A's namespace
    vm = host_a.add_vm(port_id, "10.0.0.5/24", mac, gateway="10.0.0.1")
    vm.exec("ping", "-c", "1", "10.0.0.6")

Every `Host`/`Vm` is torn down by `close()`, processes and namespaces included.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from alcor.agent.config import DhcpConfig
from alcor.agent.datapath import Datapath, DatapathConfig
from alcor.agent.ir import tap_name
from alcor.wire import GoalState
from tests.support.ovs import Netns, OvsSandbox, unique
from tests.support.wait import eventually

UNDERLAY_PREFIX = 24
ROOT = Path(__file__).resolve().parents[2]  # tests.support.probe runs from here


class Stream:
    """A TCP connection out of a VM sending a numbered line every 50 ms; echoes are counted."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.echoes = 0
        self.connected = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("connected"):
                self.connected.set()
            elif line.startswith("echo "):
                self.echoes += 1

    def wait(self, more: int, timeout: float = 5) -> bool:
        """Whether `more` echoes beyond the count now arrive within `timeout`."""
        want = self.echoes + more
        deadline = time.monotonic() + timeout
        while self.echoes < want and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.echoes >= want

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@dataclass
class Vm:
    port_id: str
    netns: Netns
    ip: str
    mac: str

    def exec(self, *cmd: str, check: bool = True, timeout: float = 20) -> str:
        return self.netns.exec(*cmd, check=check, timeout=timeout)

    def ping(self, ip: str, count: int = 1, interval: float = 0.2, wait: float = 2) -> bool:
        out = self.exec(
            "ping", "-c", str(count), "-i", str(interval), "-W", str(wait), "-q", ip, check=False
        )
        return f"{count} received" in out

    def ping6(self, ip: str, count: int = 1, interval: float = 0.2, wait: float = 2) -> bool:
        out = self.exec(
            "ping",
            "-6",
            "-c",
            str(count),
            "-i",
            str(interval),
            "-W",
            str(wait),
            "-q",
            ip,
            check=False,
        )  # fmt: skip
        return f"{count} received" in out

    def add_ipv6(self, cidr_ip: str, gateway: str | None = None) -> None:
        """A static IPv6 address (no DAD, no router advertisements taken) and default route."""
        for knob in ("accept_ra=0", "autoconf=0"):
            self.exec("sysctl", "-qw", f"net.ipv6.conf.eth0.{knob}")
        self.exec("ip", "-6", "addr", "add", cidr_ip, "dev", "eth0", "nodad")
        if gateway:
            self.exec("ip", "-6", "route", "add", "default", "via", gateway, "dev", "eth0")

    def neighbour(self, ip: str) -> str | None:
        """The MAC this VM's kernel resolved `ip` to (ARP or ND), or None."""
        entries = json.loads(
            self.exec("ip", "-j", "neigh", "show", "to", ip, "dev", "eth0") or "[]"
        )
        for e in entries:
            if e.get("lladdr") and "FAILED" not in e.get("state", []):
                return str(e["lladdr"]).lower()
        return None

    # --- traffic (tests/support/probe.py, run inside the VM) ---

    def _probe_cmd(self, *args: str) -> list[str]:
        return [
            "ip",
            "netns",
            "exec",
            self.netns.name,
            sys.executable,
            "-m",
            "tests.support.probe",
            *args,
        ]

    def tcp_ok(self, ip: str, port: int, timeout: float = 1.0, sport: int = 0) -> bool:
        """Whether a TCP connection to ip:port is made and echoes a line."""
        return self._connect("tcp", ip, port, timeout, sport)

    def udp_ok(self, ip: str, port: int, timeout: float = 1.0, sport: int = 0) -> bool:
        """Whether a datagram to ip:port comes back (from an echo server there)."""
        return self._connect("udp", ip, port, timeout, sport)

    def _connect(self, proto: str, ip: str, port: int, timeout: float, sport: int) -> bool:
        cmd = self._probe_cmd("connect", proto, ip, str(port), "--timeout", str(timeout))
        if sport:
            cmd += ["--sport", str(sport)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout + 10)
        return proc.returncode == 0

    @contextlib.contextmanager
    def server(self, proto: str, port: int) -> Iterator[None]:
        """An echo server on this VM while the block runs."""
        proc = subprocess.Popen(
            self._probe_cmd("serve", proto, str(port)), cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            yield
        finally:
            proc.kill()
            proc.wait()

    def stream(self, ip: str, port: int) -> Stream:
        proc = subprocess.Popen(
            self._probe_cmd("stream", ip, str(port)), cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        s = Stream(proc)
        s.connected.wait(5)
        return s

    def send_frames(self, frames: list[bytes], count: int = 1) -> None:
        """Raw Ethernet frames out of eth0, whatever their addresses say (`count` times each)."""
        cmd = self._probe_cmd("send", *(f.hex() for f in frames), "--count", str(count))
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=20)

    @contextlib.contextmanager
    def sniffing(self, grace: float = 0.5) -> Iterator[list[bytes]]:
        """The frames eth0 receives while the block runs and `grace` seconds after it."""
        proc = subprocess.Popen(
            self._probe_cmd("sniff", "60"), cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        frames: list[bytes] = []
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            yield frames
            time.sleep(grace)
            proc.terminate()
            out, _ = proc.communicate(timeout=10)
            frames.extend(bytes.fromhex(line) for line in out.split())
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def arping(self, ip: str, wait: float = 2) -> str | None:
        """The MAC that answered an ARP request for ip, or None."""
        out = self.exec("arping", "-c", "1", "-w", str(wait), "-i", "eth0", ip, check=False)
        for line in out.splitlines():
            if "bytes from" in line:
                return line.split("bytes from ")[1].split()[0].lower()
        return None


@dataclass
class Host:
    name: str  # node id
    ovs: OvsSandbox
    underlay_ip: str
    of_port: int
    vms: dict[str, Vm] = field(default_factory=dict)
    agent: Datapath | None = None
    dhcp: DhcpConfig = field(default_factory=DhcpConfig)  # the agent's [dhcp] settings

    @classmethod
    def start(cls, root: Path, name: str, underlay_ip: str, of_port: int) -> Host:
        ovs = OvsSandbox(root)
        try:
            ovs.start()
        except Exception:
            ovs.stop()
            raise
        return cls(name, ovs, underlay_ip, of_port)

    @property
    def netns(self) -> Netns:
        return self.ovs.netns

    def config(self) -> DatapathConfig:
        return DatapathConfig(
            node_id=self.name,
            listen=f"tcp:127.0.0.1:{self.of_port}",
            netns=self.netns.name,
            ovs_db=self.ovs.db,
            dhcp=self.dhcp,
        )

    async def start_agent(self, *, wait: bool = True) -> Datapath:
        self.agent = Datapath(self.config())
        await self.agent.start()
        if wait:
            await self.agent.wait_connected(10)
        return self.agent

    async def stop_agent(self) -> None:
        if self.agent is not None:
            await self.agent.stop()
            self.agent = None

    def add_vm(
        self,
        port_id: str,
        cidr_ip: str | None,
        mac: str,
        gateway: str | None = None,
        mtu: int = 1400,
    ) -> Vm:
        """A VM: a namespace whose eth0 is a veth; the other end, tap<id[:11]>, is on br-int.
        Without `cidr_ip` eth0 is up with no address, for a DHCP client to configure."""
        vm_ns = Netns(unique("vm"))  # named alct<pid>-vm…
        tap, tmp = tap_name(port_id), unique("v")
        try:
            self.netns.exec("ip", "link", "add", tap, "type", "veth", "peer", "name", tmp)
            self.netns.exec("ip", "link", "set", tmp, "netns", vm_ns.name)
            self.netns.exec("ip", "link", "set", tap, "up")
            vm_ns.exec("ip", "link", "set", tmp, "name", "eth0")
            vm_ns.exec("ip", "link", "set", "eth0", "address", mac, "mtu", str(mtu), "up")
            if cidr_ip:
                vm_ns.exec("ip", "addr", "add", cidr_ip, "dev", "eth0")
            if shutil.which("ethtool"):  # the userspace datapath does not complete checksums
                vm_ns.exec("ethtool", "-K", "eth0", "tx", "off")
            if gateway:
                vm_ns.exec("ip", "route", "add", "default", "via", gateway)
            self.ovs.vsctl("add-port", "br-int", tap)
        except Exception:
            vm_ns.delete()
            raise
        vm = Vm(port_id, vm_ns, cidr_ip.split("/")[0] if cidr_ip else "", mac)
        self.vms[port_id] = vm
        return vm

    def remove_vm(self, port_id: str) -> None:
        vm = self.vms.pop(port_id)
        self.ovs.vsctl("--if-exists", "del-port", "br-int", tap_name(port_id))
        vm.netns.delete()
        self.netns.exec("ip", "link", "del", tap_name(port_id), check=False)

    def configure_underlay_ip(self) -> None:
        """The tunnel endpoint lives on br-ul (the userspace datapath needs it on an OVS bridge)."""
        self.netns.exec(
            "ip", "addr", "replace", f"{self.underlay_ip}/{UNDERLAY_PREFIX}", "dev", "br-ul"
        )
        self.netns.exec("ip", "link", "set", "br-ul", "up")

    def mac_of(self, dev: str) -> str:
        info = json.loads(self.netns.exec("ip", "-j", "link", "show", dev))
        return str(info[0]["address"])

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.stop_agent()
        for vm in list(self.vms.values()):
            vm.netns.delete()
        self.vms.clear()
        self.ovs.stop()


def join_underlay(a: Host, b: Host, mtu: int = 1600) -> None:
    """br-ul on both hosts, a veth between them, each side's tunnel ARP entry for the other.

    `mtu` is the underlay's: 1500 is what `[network] underlay_mtu` assumes by default; the larger
    default here keeps tests that do not look at sizes clear of the VXLAN overhead.
    """
    peer = unique("ul")
    a.netns.exec("ip", "link", "add", "ul0", "type", "veth", "peer", "name", peer)
    a.netns.exec("ip", "link", "set", peer, "netns", b.netns.name)
    b.netns.exec("ip", "link", "set", peer, "name", "ul0")
    for h in (a, b):
        h.netns.exec("ip", "link", "set", "ul0", "mtu", str(mtu), "up")
        h.ovs.vsctl(
            "--may-exist", "add-br", "br-ul", "--", "set", "bridge", "br-ul", "datapath_type=netdev"
        )
        h.ovs.vsctl("--may-exist", "add-port", "br-ul", "ul0")
        h.configure_underlay_ip()
    learn_tunnel_neighbours(a, b)


def learn_tunnel_neighbours(a: Host, b: Host) -> None:
    for h, other in ((a, b), (b, a)):
        h.ovs.appctl("tnl/arp/set", "br-ul", other.underlay_ip, other.mac_of("br-ul"))


@contextlib.asynccontextmanager
async def two_hosts(
    root: Path,
    names: tuple[str, str],
    ips: tuple[str, str],
    of_ports: tuple[int, int],
    mtu: int = 1600,
) -> AsyncIterator[tuple[Host, Host]]:
    """Two hosts joined by an underlay of `mtu`, each with its agent connected; closed on exit."""
    hosts: list[Host] = []
    try:
        for name, ip, port in zip(names, ips, of_ports, strict=True):
            hosts.append(Host.start(root / name, name, ip, of_port=port))
        a, b = hosts
        join_underlay(a, b, mtu)
        await asyncio.gather(a.start_agent(), b.start_agent())
        yield a, b
    finally:
        for h in hosts:
            await h.close()


@dataclass
class HostPair:
    """The two hosts of a two-host test, each applying its own variant of the test's goal state."""

    a: Host
    b: Host

    def vm(self, pid: str) -> Vm:
        return (self.a.vms | self.b.vms)[pid]

    async def apply_each(self, goal_for: Callable[[str], GoalState]) -> None:
        """Each host's agent applies `goal_for(its name)`; every port it reports must be ACTIVE."""
        for h in (self.a, self.b):
            assert h.agent is not None
            statuses = await h.agent.apply(goal_for(h.name))
            bad = {p: s for p, s in statuses.items() if s != ("ACTIVE", "")}
            assert not bad, f"{h.name}: {bad}"


async def wait_taps(*hosts: Host, timeout: float = 5) -> None:
    """Until each agent has learnt the ofport of every VM tap on its host."""
    for h in hosts:
        agent = h.agent
        assert agent is not None
        await eventually(
            lambda agent=agent, h=h: (  # type: ignore[misc]
                agent.switch and all(tap_name(p) in agent.switch.ports for p in h.vms)
            ),
            timeout,
            f"{h.name}: taps not seen",
        )
