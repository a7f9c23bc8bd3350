"""The OpenAPI document against the real program: schemathesis drives `python main.py` (the dev run).

Bounded: a few examples per operation (ALCOR_SCHEMATHESIS_EXAMPLES, default 12), positive data from
the document's schemas. Every response must not be a 500 and must match the document: its status
code, its content type and its body schema.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.process import Program  # noqa: E402

pytestmark = pytest.mark.e2e
EXAMPLES = int(os.environ.get("ALCOR_SCHEMATHESIS_EXAMPLES", "12"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]

# The document's custom format for subnets: what `alcor.resources.schema.cidr` accepts.
_v4 = st.builds(lambda a, n: str(ipaddress.ip_network((a, n), strict=False)),
                st.integers(0, 2**32 - 1), st.integers(8, 30))
_v6 = st.builds(lambda a, n: str(ipaddress.ip_network((a, n), strict=False)),
                st.integers(0, 2**128 - 1), st.integers(48, 126))
schemathesis.openapi.format("cidr", st.one_of(_v4, _v6))


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Program:
    tmp: Path = tmp_path_factory.mktemp("schemathesis")
    prog = Program(["dev", "--db", str(tmp / "alcor.db")], log=tmp / "alcor.log",
                   env={"ALCOR_STORE__SYNCHRONOUS": "NORMAL", "ALCOR_LOG__LEVEL": "warning"}).start()
    yield prog
    prog.stop()


def test_no_500_and_every_response_matches_the_document(program: Program) -> None:
    schema = schemathesis.openapi.from_url(program.url + "/openapi.json")
    failures: list[str] = []
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) > 30
    for op in operations:
        if op.path == "/v2.0/alcor/changes" or op.path == "/v2.0/alcor/topology":
            strategy = op.as_strategy().map(_no_wait)  # a long-poll would only spend the budget
        else:
            strategy = op.as_strategy()

        @given(case=strategy)
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def run(case):  # type: ignore[no-untyped-def]
            case.call_and_validate(base_url=program.url, checks=CHECKS)

        try:
            run()
        except (Exception, BaseExceptionGroup) as e:  # collect every operation's failure, then report them together
            failures.append(f"{op.method.upper()} {op.path}: {str(e)[:1500]}")
    assert not failures, "\n\n".join(failures)


def _no_wait(case):  # type: ignore[no-untyped-def]
    if case.query:
        case.query.pop("wait", None)
    return case
