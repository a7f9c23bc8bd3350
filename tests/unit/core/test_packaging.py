"""What `pip install` puts into site-packages: alcor and alcor_plugins, never a bare `plugins`."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_every_package_of_the_tree_is_installed_under_the_projects_names() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    tree = set()
    for top, name in (("alcor", "alcor"), ("plugins", "alcor_plugins")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            tree.add(".".join((name, *rel)))
    assert listed == tree
    assert cfg["options"]["package_dir"].split() == ["alcor_plugins", "=", "plugins"]


def test_outside_the_source_tree_plugins_import_as_alcor_plugins_only(tmp_path: Path) -> None:
    code = (
        "import importlib.util as u, alcor_plugins.zeta as z;"
        "print(u.find_spec('plugins'), z.ZetaConfig.SECTION, z.__file__)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    spec, section, origin = out.stdout.split()
    assert (spec, section) == ("None", "zeta")
    assert Path(origin) == ROOT / "plugins" / "zeta" / "__init__.py"
