"""The kernel's start order and reverse stop; plugins by name."""

import pytest

from alcor.config import Config, ConfigError
from alcor.kernel import Kernel, order


class Mod:
    def __init__(self, name, requires=(), log=None):
        self.name, self.requires, self.log = name, tuple(requires), log

    async def start(self, kernel):
        self.log.append(("start", self.name))

    async def stop(self):
        self.log.append(("stop", self.name))


async def test_start_in_dependency_order_stop_in_reverse():
    log = []
    mods = [Mod("api", ["ports", "store"], log), Mod("ports", ["store"], log), Mod("store", [], log)]
    k = Kernel(Config(), mods)
    await k.start()
    await k.stop()
    assert log == [("start", "store"), ("start", "ports"), ("start", "api"),
                   ("stop", "api"), ("stop", "ports"), ("stop", "store")]


def test_missing_and_cyclic_dependencies():
    with pytest.raises(ConfigError, match="needs 'x'"):
        order([Mod("a", ["x"])])
    with pytest.raises(ConfigError, match="cycle"):
        order([Mod("a", ["b"]), Mod("b", ["a"])])


def test_unknown_plugin():
    from alcor.kernel import load_plugin
    with pytest.raises(ConfigError, match="no plugin named"):
        load_plugin("does_not_exist", Config())
