"""Rules of the source that a reviewer would otherwise have to remember, read with `ast`."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_no_asyncio_wait_for() -> None:
    """On Python 3.11, `asyncio.wait_for` returns normally when a cancel meets an inner wait that
    has just ended: the cancel is lost and the cancelled task runs on (an agent stream stopped as
    its switch connected never finished stopping). `async with asyncio.timeout(...)` does not."""
    offenders = []
    for path in [*(ROOT / "alcor").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "wait_for":
                if isinstance(node.value, ast.Name) and node.value.id == "asyncio":
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
