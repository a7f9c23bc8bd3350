"""The shipped systemd units: valid for systemd, Type=notify, watchdog on, the right command."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require

CONFIG = Path(__file__).resolve().parents[3] / "config"
UNITS = {"alcor-controller.service": "controller", "alcor-agent.service": "agent"}


def unit(name: str) -> configparser.ConfigParser:
    p = configparser.ConfigParser(strict=False, interpolation=None)
    p.optionxform = str  # type: ignore[assignment,method-assign]
    p.read(CONFIG / name)
    return p


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_is_notify_with_a_watchdog(name: str) -> None:
    service = unit(name)["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert int(service["WatchdogSec"]) > 0
    assert service["ExecStart"].split()[-1] == UNITS[name]
    assert service["RestartPreventExitStatus"] == "2"  # a config error is not fixed by restarting


@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_accepts_the_unit(name: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    require(analyze is not None, "systemd-analyze (Debian: systemd) is not installed")
    # Point ExecStart at this checkout's program, so verify checks the unit rather than /opt.
    alcor = Path(sys.executable).with_name("alcor")
    text = (CONFIG / name).read_text().replace("/opt/alcor/.venv/bin/alcor", str(alcor))
    (tmp_path / name).write_text(text)
    r = subprocess.run([analyze, "verify", str(tmp_path / name)], capture_output=True, text=True,
                       timeout=60)
    problems = [line for line in (r.stdout + r.stderr).splitlines() if name in line]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr
