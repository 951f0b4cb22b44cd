"""Fuzzing the status service's HTTP endpoints from the OpenAPI description the project ships.

schemathesis generates requests from ``status_api/static/openapi.json`` (valid and invalid ones)
and checks every answer: never a server error, status codes, content types and bodies as
described. The service also has to stay up throughout.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Callable

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from status_api.app import STATIC
from tests.support.fake_nodes import FakeNodes
from tests.support.proc import free_port
from tests.support.status_service import (  # noqa: F401 - fixture
    StatusService,
    module_status_service_factory,
)

schema = schemathesis.openapi.from_path(STATIC / "openapi.json")


@pytest.fixture(scope="module")
def service(
    module_status_service_factory: Callable[..., StatusService],  # noqa: F811
) -> Iterator[StatusService]:
    with FakeNodes(["ok", "garbage"], gpus=2) as nodes:
        svc = module_status_service_factory([*nodes.hosts_lines(), f"127.0.0.1:{free_port()}"])
        svc.wait_for(lambda d: d["summary"]["nodes_online"] == 1, what="one node online")
        yield svc
        assert svc.process.alive(), svc.log()
        assert "Traceback" not in svc.log()


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_endpoints_match_their_description(case: schemathesis.Case, service: StatusService) -> None:
    case.call_and_validate(base_url=service.url, timeout=10)
