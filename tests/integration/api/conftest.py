import pytest

from tests.support.controller import running_controller


@pytest.fixture
async def ctl(tmp_path):
    async with running_controller(tmp_path) as (kernel, client):
        client.kernel = kernel
        yield client


@pytest.fixture
async def net(ctl):
    network = await ctl.create("network", "/v2.0/networks", name="net1")
    subnet = await ctl.create("subnet", "/v2.0/subnets", network_id=network["id"],
                              cidr="10.0.0.0/24", ip_version=4, name="sub1")
    return network, subnet
