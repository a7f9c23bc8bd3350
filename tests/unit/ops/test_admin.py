"""The `alcor` operator commands: which command lines are ours, and how they print."""

from __future__ import annotations

import io

from alcor.admin import change_line, table, wants


def test_admin_commands_and_roles_do_not_collide() -> None:
    assert wants(["status"])
    assert wants(["--url", "http://x:1", "changes", "--follow"])
    assert wants(["node", "show", "compute-1"])
    assert wants(["agent", "flows"])
    assert wants(["-c", "/etc/alcor/alcor.toml", "agent", "flows", "--json"])
    # The roles stay roles: no arguments is the dev run, `agent` alone runs the agent.
    assert not wants([])
    assert not wants(["agent"])
    assert not wants(["controller", "--port", "9797"])
    assert not wants(["--config", "status", "dev"])  # "status" here is the config file's name


def test_table_aligns_columns() -> None:
    out = io.StringIO()
    table(["NODE", "STATE"], [["compute-1", "in sync"], ["c2", "lagging 3"]], out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "NODE       STATE"
    assert lines[2] == "c2         lagging 3"


def test_change_line_names_the_resource() -> None:
    line = change_line({"rev": 42, "time": 0.0, "type": "port", "op": "update", "id": "p-1",
                        "revision_number": 3, "vpc_id": "0123456789", "body": {"name": "web"}})
    assert line.startswith("rev 42 ")
    assert "port" in line and "update" in line and "p-1" in line
    assert "rn=3" in line and "vpc=01234567" in line and "name=web" in line
