"""Suite-wide rules.

A test that needs a real part this machine lacks (root, Open vSwitch, RabbitMQ) skips with a clear
reason on a developer's laptop; under CI=true such a skip is a failure, so CI always runs them.
"""

import os

import pytest

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip (laptop) or fail (CI) when a real part the test needs is missing."""
    if condition:
        return
    if CI:
        pytest.fail(f"CI=true and a required part is missing: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    # Any skip under CI (including one from a fixture) turns into a failure.
    if CI and report.skipped and call.when in ("setup", "call") and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which must run every test: {report.longrepr}"




@pytest.fixture(scope="session")
def keystone(tmp_path_factory):
    """A real Keystone for the whole session (tests/support/keystone.py): projects p1 and p2,
    users alice (member p1), rita (reader p1), bob (member p2), adam (admin p1), and the service
    users neutron and nova."""
    from tests.support import keystone as ks

    why = ks.available()
    require(why is None, why or "")
    with ks.running_keystone(tmp_path_factory.mktemp("keystone")) as k:
        yield k
