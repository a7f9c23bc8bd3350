"""The program started as a user starts it: `python main.py …` in a child process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Program:
    def __init__(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        port: int | None = None,
        log: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.args = [sys.executable, str(ROOT / "main.py"), *args, "--port", str(self.port)]
        # A dev run's embedded agent gets its own OpenFlow and health ports and leaves the host's
        # Open vSwitch alone, so several programs (and a developer's own dev run) can coexist.
        isolated = {
            "ALCOR_AGENT__OPENFLOW_LISTEN": f"tcp:127.0.0.1:{free_port()}",
            "ALCOR_AGENT__HTTP": f"127.0.0.1:{free_port()}",
            "ALCOR_AGENT__MANAGE_BRIDGE": "false",
        }
        self.env = {**os.environ, "ALCOR_LOG__FORMAT": "json", **isolated, **(env or {})}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Program:
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            self.args, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.args} exited with {self.proc.returncode}; log: {self.log}"
                )
            try:
                with urllib.request.urlopen(self.url + "/", timeout=1) as r:
                    json.load(r)
                    return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"{self.args} did not answer on {self.url} in {timeout}s")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
