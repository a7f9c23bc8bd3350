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
