"""Fuzzing a real ``gpu-status-api`` from status_api/openapi.yaml, over a real exporter.

The service polls one real ``gpu-exporter`` (fake NVML, real worker processes) and one address
where nothing listens, so its JSON holds an online node with GPUs, processes and power, and an
offline node. schemathesis generates valid and invalid requests for every described operation
(including file names under /static) and checks each answer: never a server error, status codes,
content types, headers and bodies as described, no traceback. Afterwards the service and the
exporter must still be up, with nothing unhandled in their logs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, example, given, settings

from simulator.exporters import Workers, start_exporter
from simulator.fakenvml import scenario as fake
from simulator.proc import free_port
from tests.support.fuzzing import ACCEPT_HEADERS, no_traceback
from tests.support.status_service import PASSWORD, StatusService, node

SPEC = Path(__file__).resolve().parents[1] / "status_api" / "openapi.yaml"

schema = schemathesis.openapi.from_path(SPEC)


@pytest.fixture(scope="module")
def exporter_node(fake_nvml: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    workdir = tmp_path_factory.mktemp("fuzz-status-node")
    with Workers() as workers:
        exporter = start_exporter(
            fake_nvml, workdir, fake.busy(2, workers.start(4)), password=PASSWORD
        )
        try:
            yield exporter
            assert exporter.process.alive(), exporter.log()
            assert "Traceback" not in exporter.log()
        finally:
            exporter.stop()


@pytest.fixture(scope="module")
def service(
    exporter_node,
    module_status_service_factory: Callable[..., StatusService],
) -> Iterator[StatusService]:
    online = f"127.0.0.1:{exporter_node.port}"
    offline = f"127.0.0.1:{free_port()}"
    svc = module_status_service_factory([online, offline], "--power-interval", "0")
    document = svc.wait_for(
        lambda d: (
            node(d, online)["state"] == "online" and node(d, online)["gpus"][0]["power"] is not None
        ),
        what="the exporter online, with power",
    )
    assert node(document, offline)["state"] == "offline"
    assert len([u for g in node(document, online)["gpus"] for u in g["users"]]) == 4
    yield svc
    assert svc.process.alive(), svc.log()
    assert requests.get(f"{svc.url}/-/healthy", timeout=5).status_code == 200
    assert svc.cluster()["summary"]["nodes_online"] == 1
    log = svc.log()
    assert "Traceback" not in log, log
    assert "unhandled error" not in log, log


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_status_api_answers_as_described(case: schemathesis.Case, service: StatusService) -> None:
    case.call_and_validate(base_url=service.url, timeout=10, additional_checks=[no_traceback])


def test_the_description_is_valid_openapi() -> None:
    schema.validate()  # against the OpenAPI 3.0 meta-schema


def test_the_description_matches_the_served_routes(service: StatusService) -> None:
    """Every route the service serves is described, and the served description agrees."""
    described = yaml.safe_load(SPEC.read_text())["paths"]
    served = requests.get(f"{service.url}/api/v1/openapi.json", timeout=5).json()["paths"]
    assert set(served) <= set(described)
    for path, operations in served.items():
        assert set(operations) <= set(described[path]), path
    for path in described:
        concrete = path.replace("{filename}", "app.js").replace("{name}", "alice")
        assert requests.get(service.url + concrete, timeout=5).status_code == 200, path


@pytest.fixture(scope="module")
def bare_service(
    module_status_service_factory: Callable[..., StatusService],
) -> StatusService:
    """A service of its own, whose log the other tests do not inspect."""
    return module_status_service_factory([f"127.0.0.1:{free_port()}"])


@given(accept=ACCEPT_HEADERS)
@example(accept="text/plain; version=1.x")
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_any_accept_header_gets_metrics(bare_service: StatusService, accept: str) -> None:
    response = requests.get(f"{bare_service.url}/metrics", headers={"Accept": accept}, timeout=10)
    assert response.status_code == 200, (accept, response.text[:200])
    assert response.headers["Content-Type"].split(";")[0] in (
        "text/plain",
        "application/openmetrics-text",
    )
