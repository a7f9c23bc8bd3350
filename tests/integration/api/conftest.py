"""Every API test runs on both store backends: SQLite and PostgreSQL (a database per test)."""

import pytest

from tests.support.controller import running_controller
from tests.support.stores import BACKENDS


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
async def ctl(tmp_path, backend):
    async with running_controller(tmp_path, backend) as (kernel, client):
        client.kernel = kernel
        yield client


@pytest.fixture
async def net(ctl):
    network = await ctl.create("network", "/v2.0/networks", name="net1")
    subnet = await ctl.create("subnet", "/v2.0/subnets", network_id=network["id"],
                              cidr="10.0.0.0/24", ip_version=4, name="sub1")
    return network, subnet
