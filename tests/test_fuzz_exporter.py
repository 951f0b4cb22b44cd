"""Fuzzing a real ``gpu-exporter`` from the OpenAPI description it ships, exporter/openapi.yaml.

schemathesis generates valid and invalid requests for every operation and checks each answer:
never a server error, status codes, content types, headers and bodies as described, and no
traceback in any body. Each case connects from its own loopback address, so the wrong-password
throttle does not turn every later answer into 429 and the bodies reach the parser. The run is
repeated on an exporter with basic auth, where every third case sends no credentials. One exporter
serves each variant; afterwards it must still be alive, serving, and have logged no error.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from simulator.exporters import ClientAddresses, ExporterProcess, Workers, start_exporter
from simulator.fakenvml import scenario as fake
from simulator.metrics import parse_samples
from tests.support.fuzzing import ACCEPT_HEADERS, no_traceback

SPEC = Path(__file__).resolve().parents[1] / "exporter" / "openapi.yaml"
USER, USER_PASSWORD = "fuzz", "fuzz-secret"
N_GPUS = 4

schema = schemathesis.openapi.from_path(SPEC)
clients = ClientAddresses(base=10_000)
sequence = itertools.count()


class Target:
    """The exporter under test and the credentials its clients present."""

    def __init__(self, exporter: ExporterProcess, auth: tuple[str, str] | None) -> None:
        self.exporter = exporter
        self.auth = auth
        self.url = exporter.url

    def auth_for_next_case(self) -> tuple[str, str] | None:
        if self.auth is None or next(sequence) % 3 == 0:
            return None
        return self.auth


def _web_config(workdir: Path) -> Path:
    hashed = bcrypt.hashpw(USER_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    path = workdir / "web-config.yml"
    path.write_text(yaml.safe_dump({"basic_auth_users": {USER: hashed}}))
    return path


@pytest.fixture(scope="module", params=["plain", "basic-auth"])
def target(request, fake_nvml: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    workdir = tmp_path_factory.mktemp(f"fuzz-exporter-{request.param}")
    args = ["--web.max-requests", "8"]
    auth = None
    if request.param == "basic-auth":
        args += ["--web-config-file", str(_web_config(workdir))]
        auth = (USER, USER_PASSWORD)
    with Workers() as workers:
        scenario = fake.busy(N_GPUS, workers.start(8))
        exporter = start_exporter(fake_nvml, workdir, scenario, *args)
        try:
            yield Target(exporter, auth)
            _assert_still_serving(exporter, auth)
        finally:
            exporter.stop()


def _assert_still_serving(exporter: ExporterProcess, auth: tuple[str, str] | None) -> None:
    assert exporter.process.alive(), exporter.log()
    assert requests.get(f"{exporter.url}/-/healthy", timeout=5).status_code == 200
    response = requests.get(f"{exporter.url}/metrics", auth=auth, timeout=5)
    assert response.status_code == 200
    gpus = [name for name, _, _ in parse_samples(response.text) if name == "gpu_up"]
    assert len(gpus) == N_GPUS
    log = exporter.log()
    for marker in ("Traceback", "unhandled error", " ERROR "):
        assert marker not in log, log


@schema.parametrize()
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_exporter_answers_as_described(case: schemathesis.Case, target: Target) -> None:
    with clients.session() as session:
        case.call_and_validate(
            base_url=target.url,
            session=session,
            auth=target.auth_for_next_case(),
            timeout=10,
            additional_checks=[no_traceback],
        )


def test_the_description_is_valid_openapi() -> None:
    schema.validate()  # against the OpenAPI 3.0 meta-schema


def test_the_description_covers_every_route(target: Target) -> None:
    """A route the description forgets would never be fuzzed."""
    described = {(op.ok().path, op.ok().method.upper()) for op in schema.get_all_operations()}
    assert described == {
        ("/metrics", "GET"),
        ("/get-status", "POST"),
        ("/", "GET"),
        ("/-/healthy", "GET"),
        ("/-/ready", "GET"),
    }
    for path, method in described:
        response = requests.request(
            method, target.url + path, auth=target.auth, json={"passwd": "x"}, timeout=5
        )
        assert response.status_code != 404, (path, method)


@given(accept=ACCEPT_HEADERS, gzip=st.booleans())
@example(accept="text/plain; version=1.x", gzip=False)
@example(accept="application/openmetrics-text; version=zzz", gzip=True)
@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_any_accept_header_gets_parseable_metrics(target: Target, accept: str, gzip: bool) -> None:
    """Content negotiation never fails: an Accept header it cannot read gets the classic text."""
    headers = {"Accept": accept, "Accept-Encoding": "gzip" if gzip else "identity"}
    response = requests.get(
        f"{target.url}/metrics", headers=headers, auth=target.auth or None, timeout=10
    )
    assert response.status_code == 200, (accept, response.text[:300])
    content_type = response.headers["Content-Type"]
    assert content_type.split(";")[0] in ("text/plain", "application/openmetrics-text")
    if content_type.startswith("text/plain"):
        assert "gpu_up" in response.text
        if "version=0.0.4" in content_type:
            assert len(parse_samples(response.text)) > N_GPUS
    else:
        assert response.text.rstrip().endswith("# EOF")
