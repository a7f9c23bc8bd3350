"""Agent tests need root and Open vSwitch; they skip on a laptop and fail under CI=true."""

import pytest

from tests.conftest import require
from tests.support.ovs import have_ovs, is_root, ovs_sandbox  # noqa: F401  (a fixture)


@pytest.fixture(autouse=True, scope="session")
def _needs_ovs_and_root() -> None:
    # session scope: checked before module-scoped fixtures (the two-host cloud) try to start OVS
    require(is_root(), "agent integration tests need root (network namespaces, OVS)")
    require(have_ovs(), "agent integration tests need openvswitch-switch installed")
