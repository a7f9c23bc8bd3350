"""The real RabbitMQ the tests use (127.0.0.1:5672, guest; tests/run.sh starts it), and private
RabbitMQ nodes for the tests that restart the broker (`PrivateBroker`)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
from pathlib import Path

from tests.conftest import require
from tests.support.wait import eventually

URL = "amqp://guest:guest@127.0.0.1:5672/"


def broker_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


def require_broker() -> None:
    """Skip (laptop) or fail (CI=true) when RabbitMQ is not there."""
    require(broker_up(), "needs RabbitMQ at 127.0.0.1:5672 (rabbitmq-server -detached)")


RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # the script, not the user switcher


def _free_port(low: int, high: int) -> int:
    """A port free on 127.0.0.1 in [low, high) (RabbitMQ's distribution port is port + 20000)."""
    for _ in range(200):
        port = random.randrange(low, high)
        try:
            for p in (port, port + 20000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a private RabbitMQ")


class PrivateBroker:
    """A RabbitMQ node of the test's own (its port, node name and data directory), for tests
    that restart it: the shared broker at 5672 is never stopped. Its data directory survives
    `stop`/`start`, as a restarted broker's would (durable queues, bindings, persistent
    messages)."""

    def __init__(self, base: Path, nofile: int = 0) -> None:
        require(os.access(RABBITMQ_SERVER, os.X_OK), f"{RABBITMQ_SERVER} is not installed")
        self.base = base
        # The node's descriptor limit (`ulimit -n`, as a systemd unit's LimitNOFILE sets it;
        # 0: inherited). Raised up to the hard limit this process may grant.
        self.nofile = nofile
        self.port = _free_port(20000, 40000)
        self.node = f"alcor-test-{self.port}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self.proc: subprocess.Popen[bytes] | None = None
        base.mkdir(parents=True, exist_ok=True)
        (base / "enabled_plugins").write_text("[].\n")
        (base / "rabbitmq-env.conf").write_text("")  # not the system's (its node name)
        (base / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")

    def _env(self) -> dict[str, str]:
        b = str(self.base)
        return {
            **os.environ,
            "RABBITMQ_CONF_ENV_FILE": f"{b}/rabbitmq-env.conf",
            "RABBITMQ_CONFIG_FILE": f"{b}/rabbitmq.conf",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.port + 20000),
            "RABBITMQ_MNESIA_BASE": f"{b}/mnesia",
            "RABBITMQ_LOG_BASE": f"{b}/log",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{b}/enabled_plugins",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def _spawn(self) -> subprocess.Popen[bytes]:
        with open(self.base / "server.out", "ab") as out:
            cmd = [RABBITMQ_SERVER]
            if self.nofile:
                cmd = ["bash", "-c", f'ulimit -n {self.nofile} 2>/dev/null || ulimit -n hard; '
                       f'exec "{RABBITMQ_SERVER}"']
            return subprocess.Popen(
                cmd, env=self._env(), stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def open_files_limit(self) -> int | None:
        """The running node's soft descriptor limit (its Erlang VM's, from /proc)."""
        if self.proc is None:
            return None
        out = subprocess.run(["pgrep", "-s", str(self.proc.pid), "beam.smp"],
                             capture_output=True, text=True).stdout.split()
        for pid in out:
            for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
                if line.startswith("Max open files"):
                    return int(line.split()[3])
        return None

    async def start(self, timeout: float = 120.0) -> None:
        proc = self.proc = await asyncio.to_thread(self._spawn)

        def listening() -> bool:
            if proc.poll() is not None:
                tail = (self.base / "server.out").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"private RabbitMQ exited: {tail}")
            return self.up()

        await eventually(listening, timeout, lambda: f"private RabbitMQ not up on {self.port}")

    async def stop(self, timeout: float = 60.0) -> None:
        """Stop the node as a service manager does (SIGTERM: RabbitMQ shuts down cleanly)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 10)
        await eventually(lambda: not self.up(), 30.0)  # the listener goes with the node

    async def restart(self) -> None:
        await self.stop()
        await self.start()
