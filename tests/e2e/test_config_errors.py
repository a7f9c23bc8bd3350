"""A bad key or value stops the program as a user starts it: one line on stderr, exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.process import ROOT


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "main.py", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.e2e
@pytest.mark.parametrize(
    "env, message",
    [
        # Regressions: a typo of max_changes was silently ignored; linger=abc was a traceback.
        (
            {"ALCOR_SOUTHBOUND__MAX_CHANGE": "10"},
            "alcor: config error: environment ALCOR_SOUTHBOUND__MAX_CHANGE: unknown key "
            "southbound.max_change (did you mean max_changes?)",
        ),
        (
            {"ALCOR_SOUTHBOUND__LINGER": "abc"},
            "alcor: config error: environment ALCOR_SOUTHBOUND__LINGER: expected a number, "
            "got 'abc'",
        ),
        (
            {"ALCOR_RABBITMQ__PERSISTENT": "no"},
            "alcor: config error: environment ALCOR_RABBITMQ__PERSISTENT: expected true, false, "
            "1 or 0, got 'no'",
        ),
        (
            {"ALCOR_AGNET__BRIDGE": "br-x"},
            "alcor: config error: environment ALCOR_AGNET__BRIDGE: unknown section [agnet] "
            "(did you mean agent?)",
        ),
    ],
)
def test_a_bad_environment_override_is_one_line_and_exit_2(env: dict[str, str], message: str) -> None:
    for role in ("dev", "controller", "agent"):
        out = run(role, env=env)
        assert (out.returncode, out.stderr, out.stdout) == (2, message + "\n", ""), role


@pytest.mark.e2e
def test_the_operator_commands_check_the_config_too() -> None:
    out = run("status", env={"ALCOR_SOUTHBOUND__LINGER": "abc"})
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "LINGER" in out.stderr
