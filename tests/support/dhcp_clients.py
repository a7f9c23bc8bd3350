"""Real DHCP clients in VM namespaces: ISC dhclient and busybox udhcpc, each with a hook script
that records what the client got (its environment) and configures eth0 with it, as a cloud
image's own script would.

    client = dhclient(vm, tmp_path).start()      # dhclient -d: stays, and renews
    client.wait_for("BOUND")
    client.leases[-1]["new_ip_address"]          # what the client was told
    client.stop()
    run = udhcpc(vm, tmp_path).run()             # busybox udhcpc -q: exits once bound
    run.leases[-1]["staticroutes"]
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.topology import Vm

DHCLIENT_CONF = """
timeout 8;
option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;
request subnet-mask, broadcast-address, routers, domain-name, domain-name-servers,
        interface-mtu, rfc3442-classless-static-routes, dhcp-lease-time,
        dhcp-renewal-time, dhcp-rebinding-time;
"""

# What Debian's dhclient-script does for an address, an MTU and the routes, without touching
# the host's /etc/resolv.conf or hostname (the namespaces share the host's files).
DHCLIENT_SCRIPT = r"""#!/bin/bash
{ echo "reason=$reason"; env | grep -E '^(new|old)_' | sort; echo "--"; } >> "@OUT@"
case "$reason" in
  PREINIT) ip link set dev "$interface" up ;;
  BOUND|RENEW|REBIND|REBOOT)
    ip addr replace "$new_ip_address/$new_subnet_mask" broadcast "$new_broadcast_address" \
      dev "$interface"
    [ -n "$new_interface_mtu" ] && ip link set dev "$interface" mtu "$new_interface_mtu"
    if [ -n "$new_rfc3442_classless_static_routes" ]; then
      . /etc/dhcp/dhclient-exit-hooks.d/rfc3442-classless-routes
    elif [ -n "$new_routers" ]; then
      ip route replace default via "${new_routers%% *}" dev "$interface"
    fi ;;
  EXPIRE|FAIL|RELEASE|STOP) ip addr flush dev "$interface" ;;
esac
exit 0
"""

UDHCPC_SCRIPT = r"""#!/bin/sh
{ echo "reason=$1"; env | grep -E '^(ip|subnet|mask|router|dns|domain|mtu|staticroutes|lease|serverid|broadcast|tftp|bootfile|siaddr|ntpsrv)=' | sort; echo "--"; } >> "@OUT@"
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set dev "$interface" up ;;
  bound|renew)
    ip addr replace "$ip/$mask" dev "$interface"
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    if [ -n "$staticroutes" ]; then
      set -- $staticroutes
      while [ $# -ge 2 ]; do ip route replace "$1" via "$2" dev "$interface"; shift 2; done
    elif [ -n "$router" ]; then
      ip route replace default via "${router%% *}" dev "$interface"
    fi ;;
esac
exit 0
"""


def have_clients() -> bool:
    return shutil.which("dhclient") is not None and shutil.which("busybox") is not None


@dataclass
class Client:
    vm: Vm
    argv: list[str]
    out: Path
    proc: subprocess.Popen[str] | None = None
    returncode: int | None = None
    output: str = ""
    extra: list[Path] = field(default_factory=list)
    lease_file: Path | None = None  # dhclient's -lf: what `dhclient -r` releases

    @property
    def leases(self) -> list[dict[str, str]]:
        """Every event the hook script saw, oldest first, as its environment."""
        if not self.out.exists():
            return []
        events = []
        # Only whole blocks: the script appends one in several writes, and a block read while
        # it is being written (no "--" yet) is the next read's.
        for block in self.out.read_text().split("--\n")[:-1]:
            env = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            if env:
                events.append(env)
        return events

    def reasons(self) -> list[str]:
        return [e.get("reason", "") for e in self.leases]

    def run(self, timeout: float = 30) -> Client:
        """Run to completion (a client told to exit once bound or failed)."""
        proc = self.vm.netns.popen(*self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            self.output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            self.output, _ = proc.communicate()
        self.returncode = proc.returncode
        return self

    def start(self) -> Client:
        self.proc = self.vm.netns.popen(
            *self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        return self

    def wait_for(self, reason: str, count: int = 1, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.reasons().count(reason) >= count:
                return True
            time.sleep(0.1)
        return False

    def wait_lease_written(self, timeout: float = 30) -> bool:
        """dhclient runs its script (BOUND) before it writes the lease file; a client stopped in
        between leaves `dhclient -r` nothing to release."""
        assert self.lease_file is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.lease_file.exists() and "fixed-address" in self.lease_file.read_text():
                return True
            time.sleep(0.05)
        return False

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            with contextlib.suppress(Exception):
                self.output = self.proc.stdout.read()
        self.proc = None


def _script(tmp: Path, name: str, text: str, out: Path) -> Path:
    path = tmp / name
    path.write_text(text.replace("@OUT@", str(out)))
    path.chmod(0o755)
    return path


def dhclient(vm: Vm, tmp: Path, *, once: bool = True, extra: tuple[str, ...] = ()) -> Client:
    """ISC dhclient on the VM's eth0, in the foreground; `once`: one attempt (-1) of 8 s, after
    which it exits with status 2 if it got nothing."""
    tmp.mkdir(parents=True, exist_ok=True)
    tag = vm.port_id[:8]
    out = tmp / f"dhclient-{tag}.env"
    conf = tmp / f"dhclient-{tag}.conf"
    conf.write_text(DHCLIENT_CONF)
    script = _script(tmp, f"dhclient-{tag}.sh", DHCLIENT_SCRIPT, out)
    lease_file = tmp / f"dhclient-{tag}.leases"
    argv = [
        "dhclient", "-d", "-v", "-cf", str(conf), "-sf", str(script),
        "-lf", str(lease_file), "-pf", str(tmp / f"dhclient-{tag}.pid"),
        *(["-1"] if once else []), *extra, "eth0",
    ]  # fmt: skip
    return Client(vm, argv, out, lease_file=lease_file)


def dhclient_release(vm: Vm, tmp: Path) -> Client:
    """dhclient -r: release the lease it holds (sends DHCPRELEASE)."""
    c = dhclient(vm, tmp, once=False, extra=("-r",))
    c.argv.remove("-d")
    return c


def udhcpc(vm: Vm, tmp: Path, *, quit_when_bound: bool = True, tries: int = 3) -> Client:
    """busybox udhcpc on the VM's eth0, asking for the MTU, static routes and domain too."""
    tmp.mkdir(parents=True, exist_ok=True)
    tag = vm.port_id[:8]
    out = tmp / f"udhcpc-{tag}.env"
    script = _script(tmp, f"udhcpc-{tag}.sh", UDHCPC_SCRIPT, out)
    argv = [
        "busybox", "udhcpc", "-f", "-i", "eth0", "-s", str(script), "-t", str(tries), "-T", "1",
        "-A", "1", "-O", "mtu", "-O", "staticroutes", "-O", "domain", "-O", "dns",
        "-O", "router", "-O", "lease", "-O", "broadcast",
        *(["-q", "-n"] if quit_when_bound else []),
    ]  # fmt: skip
    return Client(vm, argv, out)


# A raw client for what dhclient and udhcpc do not send on demand (DECLINE, INFORM, a flood):
# frames from alcor.agent.dhcp.client_frame, sent on the VM's eth0 as a client's raw socket does.
_RAW = r"""
import socket, sys, time
frames = [bytes.fromhex(h) for h in sys.argv[4:]]
wait, flood, pps = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
s.bind(("eth0", 0))
if flood:
    n, start = 0, time.monotonic()
    while (now := time.monotonic()) < start + flood:
        if n > (now - start) * pps:
            time.sleep(0.002)
            continue
        s.send(frames[n % len(frames)])
        n += 1
    print("sent", n)
    sys.exit(0)
for f in frames:
    s.send(f)
s.settimeout(0.1)
end = time.monotonic() + wait
while time.monotonic() < end:
    try:
        data = s.recv(4096)
    except socket.timeout:
        continue
    if len(data) > 42 and data[23] == 17 and data[36:38] == b"\x00\x44":  # UDP to port 68
        print(data.hex())
"""


def raw_exchange(vm: Vm, frames: list[bytes], wait: float = 1.0) -> list[bytes]:
    """Send `frames` from the VM's eth0; the DHCP replies that came back within `wait` s."""
    out = vm.exec(
        sys.executable, "-c", _RAW, str(wait), "0", "0", *(f.hex() for f in frames),
        timeout=wait + 20,
    )  # fmt: skip
    return [bytes.fromhex(line) for line in out.split()]


def raw_flood(vm: Vm, frames: list[bytes], seconds: float, pps: int) -> subprocess.Popen[str]:
    """Send `frames` round and round, `pps` a second for `seconds`; the process prints
    "sent N" when done."""
    return vm.netns.popen(
        sys.executable, "-c", _RAW, "0", str(seconds), str(pps), *(f.hex() for f in frames),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
