"""Private Open vSwitch instances for tests: ovsdb-server + userspace ovs-vswitchd in a temp dir.

Each instance runs its ovs-vswitchd inside its own network namespace (the netdev datapath allows
one ovs-vswitchd per namespace, and this keeps tests off the host's network). Everything is
stopped and removed by `stop()`, which the pytest fixtures call even when a test fails.

    with OvsSandbox.started(tmp_path / "a") as ovs:       # namespace made for it
        ovs.vsctl("add-br", "br-int", "--", "set", "bridge", "br-int", "datapath_type=netdev")
        print(ovs.ofctl("dump-flows", "br-int"))
        print(ovs.trace("br-int", "in_port=1,arp,arp_op=1,arp_tpa=10.0.0.5"))
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"


def have_ovs() -> bool:
    return shutil.which("ovs-vswitchd") is not None and Path(SCHEMA).exists()


def is_root() -> bool:
    return os.geteuid() == 0


def run(
    *cmd: str,
    netns: str | None = None,
    check: bool = True,
    timeout: float = 20,
    env: dict[str, str] | None = None,
) -> str:
    if netns:
        cmd = ("ip", "netns", "exec", netns, *cmd)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def unique(prefix: str) -> str:
    """A short unique name (interface names are limited to 15 characters)."""
    return f"{prefix}{uuid.uuid4().hex[:6]}"


NETNS_PREFIX = "alct"  # namespaces made by these fixtures: alct<pid>-<name>


def reap_stale_namespaces() -> None:
    """Delete namespaces (and everything running in them) left by a test run that was killed."""
    out = run("ip", "netns", "list", check=False)
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(NETNS_PREFIX):
            continue
        pid = name[len(NETNS_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            Netns.adopt(name).delete()


class Netns:
    """A network namespace that is deleted, with everything in it, by `delete()`."""

    def __init__(self, name: str | None = None) -> None:
        # the creating pid is in the name, so a later run can reap what a killed run left
        self.name = f"{NETNS_PREFIX}{os.getpid()}-{name or unique('')}"
        run("ip", "netns", "add", self.name)
        self.exec("ip", "link", "set", "lo", "up")

    @classmethod
    def adopt(cls, name: str) -> Netns:
        ns = cls.__new__(cls)
        ns.name = name
        return ns

    def exec(
        self, *cmd: str, check: bool = True, timeout: float = 20, env: dict[str, str] | None = None
    ) -> str:
        return run(*cmd, netns=self.name, check=check, timeout=timeout, env=env)

    def popen(self, *cmd: str, **kw: object) -> subprocess.Popen[str]:
        return subprocess.Popen(("ip", "netns", "exec", self.name, *cmd), text=True, **kw)  # type: ignore[call-overload]

    def pids(self) -> list[int]:
        out = run("ip", "netns", "pids", self.name, check=False)
        return [int(p) for p in out.split()]

    def delete(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        run("ip", "netns", "delete", self.name, check=False)


class OvsSandbox:
    """One "host": a private ovsdb-server and a userspace ovs-vswitchd in a network namespace."""

    def __init__(
        self, root: Path, netns: Netns | None = None, vswitchd_args: tuple[str, ...] = ()
    ) -> None:
        self.vswitchd_args = vswitchd_args  # e.g. ("--enable-dummy",): OVS's dummy netdevs
        self.dir = Path(root)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._own_netns = netns is None
        self.netns = netns or Netns()
        self.db = f"unix:{self.dir}/db.sock"
        self.env = {
            **os.environ,
            "OVS_RUNDIR": str(self.dir),
            "OVS_LOGDIR": str(self.dir),
            "OVS_DBDIR": str(self.dir),
        }

    @classmethod
    @contextlib.contextmanager
    def started(
        cls, root: Path, netns: Netns | None = None, vswitchd_args: tuple[str, ...] = ()
    ) -> Iterator[OvsSandbox]:
        ovs = cls(root, netns, vswitchd_args)
        try:
            ovs.start()
            yield ovs
        finally:
            ovs.stop()

    # --- lifecycle ---

    def start(self) -> None:
        reap_stale_namespaces()
        d = self.dir
        run("ovsdb-tool", "create", f"{d}/conf.db", SCHEMA)
        # inside the namespace as well: if the test run is killed, reaping the namespace stops it
        self.netns.exec(
            "ovsdb-server",
            f"{d}/conf.db",
            f"--remote=punix:{d}/db.sock",
            f"--unixctl={d}/ovsdb-server.ctl",
            f"--pidfile={d}/ovsdb-server.pid",
            f"--log-file={d}/ovsdb-server.log",
            "--detach",
            "--no-chdir",
            env=self.env,
        )
        self.vsctl("--no-wait", "init")
        self.start_vswitchd()

    def start_vswitchd(self) -> None:
        d = self.dir
        self.netns.exec(
            "ovs-vswitchd",
            *self.vswitchd_args,
            self.db,
            f"--unixctl={d}/ovs-vswitchd.ctl",
            f"--pidfile={d}/ovs-vswitchd.pid",
            f"--log-file={d}/ovs-vswitchd.log",
            "--detach",
            "--no-chdir",
            env=self.env,
        )

    def stop_vswitchd(self) -> None:
        """Stop ovs-vswitchd as a crash or an upgrade would: its flows are gone."""
        self._stop("ovs-vswitchd", "exit", "--cleanup")

    def restart_vswitchd(self) -> None:
        self.stop_vswitchd()
        self.start_vswitchd()

    def stop(self) -> None:
        self._stop("ovs-vswitchd", "exit", "--cleanup")
        self._stop("ovsdb-server", "exit")
        if self._own_netns:
            self.netns.delete()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _stop(self, daemon: str, *command: str) -> None:
        pidfile = self.dir / f"{daemon}.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        run("ovs-appctl", "-t", f"{self.dir}/{daemon}.ctl", *command, check=False, timeout=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.02)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()

    # --- tools ---

    def vsctl(self, *args: str) -> str:
        return run("ovs-vsctl", f"--db={self.db}", "--timeout=10", *args)

    def ofctl(self, *args: str, check: bool = True) -> str:
        """ovs-ofctl against a bridge's management socket; put the bridge name where ofctl wants it."""
        out = [a if a not in self.bridges() else f"unix:{self.dir}/{a}.mgmt" for a in args]
        return run("ovs-ofctl", "-O", "OpenFlow13", *out, check=check)

    def appctl(self, *args: str, daemon: str = "ovs-vswitchd") -> str:
        return run("ovs-appctl", "-t", f"{self.dir}/{daemon}.ctl", *args)

    def bridges(self) -> list[str]:
        return self.vsctl("list-br").split()

    def dump_flows(self, bridge: str = "br-int") -> list[str]:
        lines = self.ofctl("dump-flows", bridge, "--no-stats").splitlines()
        return [ln.strip() for ln in lines if ln.strip() and "OFPST_FLOW" not in ln]

    def trace(self, bridge: str, flow: str) -> str:
        return self.appctl("ofproto/trace", bridge, flow)

    def dp_port(self, iface: str) -> int:
        """The datapath port number of an interface (what trace's "Datapath actions" print)."""
        for line in self.appctl("dpif/show").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == iface and "/" in parts[1]:
                return int(parts[1].rstrip(":").split("/")[1])
        raise KeyError(iface)

    def ofport(self, iface: str) -> int:
        return int(self.vsctl("get", "interface", iface, "ofport").strip())

    def add_veth_port(self, bridge: str, name: str, peer: str, peer_netns: Netns) -> None:
        """A veth pair: `name` in this host's namespace on `bridge`, `peer` in `peer_netns`."""
        self.netns.exec("ip", "link", "add", name, "type", "veth", "peer", "name", peer)
        self.netns.exec("ip", "link", "set", peer, "netns", peer_netns.name)
        self.netns.exec("ip", "link", "set", name, "up")
        self.vsctl("add-port", bridge, name)


def trace_outcome(out: str) -> tuple[str, str]:
    """(final flow, datapath actions) of `ofproto/trace` output that may recirculate through
    conntrack: the last pass's final flow, and every pass's actions except ct() and recirc(),
    comma-separated ("drop" when nothing is left)."""
    lines = out.splitlines()
    finals = [ln for ln in lines if ln.startswith("Final flow:")]
    actions: list[str] = []
    for ln in lines:
        if ln.startswith("Datapath actions:"):
            for a in _split_actions(ln.removeprefix("Datapath actions: ")):
                if not a.startswith(("ct(", "recirc(")) and a != "drop":
                    actions.append(a)
    return (finals[-1] if finals else ""), ",".join(actions) or "drop"


def _split_actions(text: str) -> list[str]:
    """Datapath actions split on the commas outside parentheses."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        depth += (ch == "(") - (ch == ")")
        cur += ch
    return [*out, cur] if cur else out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of ours counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


# --- pytest fixtures (import them into a conftest.py to use them) --------------------------------

try:
    import pytest
except ImportError:  # the sandbox itself works without pytest (bench/)
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def ovs_sandbox(tmp_path: Path) -> Iterator[OvsSandbox]:
        """A private, started OVS (own namespace); skips without root/OVS (fails under CI)."""
        from tests.conftest import require

        require(is_root(), "needs root (network namespaces, Open vSwitch)")
        require(have_ovs(), "needs openvswitch-switch installed")
        with OvsSandbox.started(tmp_path / "ovs") as ovs:
            yield ovs
