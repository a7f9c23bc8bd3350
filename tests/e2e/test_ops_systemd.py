"""Under systemd (Type=notify): the program's messages on a NOTIFY_SOCKET the test owns."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.process import Program

pytestmark = pytest.mark.e2e


class Listener:
    """What systemd would hear: every datagram on the socket, read as it arrives (as systemd does)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self.done = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.done:
            try:
                self.messages += self.sock.recv(4096).decode().splitlines()
            except (TimeoutError, OSError):
                continue

    def wait_for(self, wanted: str, after: int = 0, timeout: float = 20.0) -> int:
        """Index of the first `wanted` at or after `after`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, m in enumerate(self.messages[after:], start=after):
                if m == wanted:
                    return i
            time.sleep(0.02)
        raise AssertionError(f"{wanted} never came; got {self.messages}")

    def close(self) -> None:
        self.done = True
        self.thread.join(2)
        self.sock.close()


def test_ready_status_watchdog_and_stopping(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    listener = Listener(path)
    prog = Program(["controller", "--db", str(tmp_path / "alcor.db")], log=tmp_path / "alcor.log",
                   env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000",
                        "ALCOR_STORE__SYNCHRONOUS": "NORMAL"})
    try:
        prog.start()
        ready = listener.wait_for("READY=1")
        # By READY=1 the site was bound: systemd may start dependants, and they can connect.
        with urllib.request.urlopen(prog.url + "/readyz", timeout=2) as r:
            assert r.status == 200
        got = listener.messages
        assert got.index("STATUS=starting store") < got.index("STATUS=starting api") < ready
        # WATCHDOG=1 every WatchdogSec/2 = 0.1 s, for as long as the loop turns.
        first = listener.wait_for("WATCHDOG=1", timeout=2)
        listener.wait_for("WATCHDOG=1", after=first + 1, timeout=2)
        assert any(m.startswith("STATUS=ready") for m in listener.messages)
        code = prog.stop()
        assert code == 0
        stopping = listener.wait_for("STOPPING=1", timeout=5)
        assert stopping > ready
    finally:
        prog.stop()
        listener.close()
