"""Configuration layering and errors; the kernel's start order and reverse stop."""

import pytest

from alcor import config
from alcor.config import ConfigError
from alcor.kernel import Kernel, order


def test_defaults_file_and_env(tmp_path):
    f = tmp_path / "alcor.toml"
    f.write_text('[api]\nport = 9797\n[store]\npath = "/tmp/x.db"\n')
    cfg = config.load(f, env={"ALCOR_API__HOST": "0.0.0.0", "ALCOR_KERNEL__PLUGINS": "a, b"})
    assert cfg["api"]["port"] == 9797 and cfg["api"]["host"] == "0.0.0.0"
    assert cfg["store"]["path"] == "/tmp/x.db" and cfg["kernel"]["plugins"] == ["a", "b"]
    assert cfg["network"]["underlay_mtu"] == 1500
    assert config.load(env={"ALCOR_NETWORK__UNDERLAY_MTU": "9000"})["network"]["underlay_mtu"] == 9000


@pytest.mark.parametrize("text,env,needle", [
    ('[api]\nport = "x"\n', {}, "api.port"),
    ('[api]\nprot = 1\n', {}, "unknown key"),
    ('[nope]\na = 1\n', {}, "unknown section"),
    ('[api\n', {}, "not valid TOML"),
    ('', {"ALCOR_API__PORT": "many"}, "ALCOR_API__PORT"),
    ('', {"ALCOR_LOG__LEVEL": "loud"}, "log.level"),
    ('[network]\nvni_min = 0\n', {}, "vni_min"),
    ('[network]\nunderlay_mtu = 100\n', {}, "network.underlay_mtu"),
    ('', {"ALCOR_NETWORK__UNDERLAY_MTU": "jumbo"}, "ALCOR_NETWORK__UNDERLAY_MTU"),
    ('[network]\nmtu = 1450\n', {}, "unknown key"),  # the maximum follows from underlay_mtu
    ('[api]\nauth = "token"\n', {}, "api.tokens"),
])
def test_errors_are_one_line(tmp_path, text, env, needle):
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        config.load(f, env=env)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "missing.toml", env={})


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
    k = Kernel(config.load(env={}), mods)
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
        load_plugin("does_not_exist", config.load(env={}))
