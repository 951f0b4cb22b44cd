"""The compose bundle in deploy/compose, checked as ``docker compose`` would meet it.

No container engine runs here: compose.yaml goes through the Compose Specification's JSON
schema, every command line is parsed by the programs' real argument parsers, and the bundle is
checked against prometheus/ and grafana/, so a renamed flag, port or path fails here. The
shipped examples hold placeholders, never a real secret.
"""

from __future__ import annotations

import fnmatch
import json
import posixpath
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from status_api.cli import build_parser as status_parser
from status_api.cli import build_targets_parser
from tests.support.deploy import (
    COMPOSE_DIR,
    REPO,
    SCHEMAS,
    SYSTEMD,
    parses,
    read_env_file,
    schema_errors,
)

_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$(?P<plain>\w+)")


def interpolate(value: Any, environment: dict[str, str]) -> Any:
    """``value`` with ${VAR}, ${VAR:-default} and ${VAR:?error} replaced, as compose does."""
    if isinstance(value, dict):
        return {key: interpolate(item, environment) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, environment) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name = match["name"] or match["plain"]
        current = environment.get(name)
        operator = match["op"] or ""
        if operator.endswith("?") and not current:
            raise AssertionError(f"compose needs {name}: {match['arg']}")
        if operator in (":-",) and not current:
            return match["arg"]
        if operator == "-" and current is None:
            return match["arg"]
        return current or ""

    return _VARIABLE.sub(replace, value.replace("$$", "\0")).replace("\0", "$")


def _variables(text: str) -> set[str]:
    return {match["name"] or match["plain"] for match in _VARIABLE.finditer(text)}


@pytest.fixture(scope="module")
def compose_text() -> str:
    return (COMPOSE_DIR / "compose.yaml").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def compose(compose_text: str) -> dict[str, Any]:
    return yaml.safe_load(compose_text)


@pytest.fixture(scope="module")
def compose_env() -> dict[str, str]:
    return read_env_file(COMPOSE_DIR / ".env.example")


@pytest.fixture(scope="module")
def compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text(encoding="utf-8"))
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)


def test_compose_file_follows_the_compose_specification(
    compose: dict[str, Any],
    compose_env: dict[str, str],
    compose_validator: jsonschema.protocols.Validator,
) -> None:
    """As written, and after interpolation with the example .env, as compose validates it."""
    assert schema_errors(compose_validator, compose) == []
    assert schema_errors(compose_validator, interpolate(compose, compose_env)) == []
    assert schema_errors(compose_validator, interpolate(compose, {})) == []


def test_compose_schema_reports_mistakes(
    compose: dict[str, Any], compose_validator: jsonschema.protocols.Validator
) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["grafana"]["restart_policy"] = "always"
    broken["services"]["prometheus"]["ports"] = "9090:9090"
    errors = "\n".join(schema_errors(compose_validator, broken))
    assert "restart_policy" in errors and "services/prometheus/ports" in errors


def test_compose_variables_are_all_in_env_example(
    compose_text: str, compose_env: dict[str, str]
) -> None:
    used = _variables(compose_text)
    assert used, "compose.yaml should take its settings from .env"
    assert used == set(compose_env), "compose.yaml and .env.example list different variables"


def test_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"prometheus", "grafana", "gpu-status-api", "gpu-targets"}
    published = [port for service in services.values() for port in service.get("ports", [])]
    assert any(port.endswith(":7070:7070") for port in published)
    for name in ("gpu-status-api", "gpu-targets"):
        service = services[name]
        assert service["build"]["dockerfile"] == "deploy/docker/Dockerfile"
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        assert service["user"] == "65532:65532"


def test_grafana_has_no_anonymous_admin(
    compose: dict[str, Any], compose_env: dict[str, str]
) -> None:
    for environment in ({}, compose_env, {"GRAFANA_ANONYMOUS_VIEWER": "true"}):
        grafana = interpolate(compose, environment)["services"]["grafana"]["environment"]
        assert grafana["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
        assert grafana["GF_USERS_ALLOW_SIGN_UP"] == "false"
    grafana = interpolate(compose, {})["services"]["grafana"]
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    # The admin password comes from a secret file; no value sits in the file or the environment.
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana["environment"]
    secret_path = grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"]
    assert secret_path == "/run/secrets/grafana_admin_password"
    assert grafana["secrets"] == ["grafana_admin_password"]
    assert "file" in compose["secrets"]["grafana_admin_password"]


def test_compose_command_lines_parse(compose: dict[str, Any], compose_env: dict[str, str]) -> None:
    services = interpolate(compose, compose_env)["services"]
    status = parses(status_parser(), services["gpu-status-api"]["command"][1:])
    assert status.port == 7070 and status.node_port == 7080
    assert status.password_file == Path("/run/secrets/gpu_monitor_password")
    targets_command = services["gpu-targets"]["command"]
    assert targets_command[:2] == ["gpu-status-api", "targets"]
    targets = parses(build_targets_parser(), targets_command[2:])
    assert targets.watch
    volumes = services["gpu-targets"]["volumes"]
    assert f"gpu-targets:{targets.output.parent}" in volumes


def _bind_sources(compose: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/")):
                yield name, source, target


def test_compose_paths_exist(compose: dict[str, Any], compose_env: dict[str, str]) -> None:
    """Every folder and file compose mounts or builds from is in the checkout."""
    resolved = interpolate(compose, compose_env)
    sources = list(_bind_sources(resolved))
    assert {"../../prometheus", "../../grafana/provisioning", "../../grafana/dashboards"} <= {
        source for _, source, _ in sources
    }
    for service, source, _ in sources:
        assert (COMPOSE_DIR / source).exists(), f"{service} mounts {source}, which is missing"
    for service in resolved["services"].values():
        if "build" in service:
            context = COMPOSE_DIR / service["build"]["context"]
            assert (context / service["build"]["dockerfile"]).is_file()
    # The targets volume is mounted inside the read-only prometheus/ folder: the mount point
    # must exist there, or the container cannot start.
    assert (REPO / "prometheus" / "targets").is_dir()


def test_compose_prometheus_reads_the_generated_targets(compose: dict[str, Any]) -> None:
    """prometheus.yml's file_sd pattern covers the file the target generator writes."""
    command = interpolate(compose["services"]["gpu-targets"]["command"], {})
    generator = parses(build_targets_parser(), command[2:])
    prometheus = compose["services"]["prometheus"]
    config_dir = next(
        target for source, target in (v.split(":")[:2] for v in prometheus["volumes"])
        if source == "../../prometheus"
    )  # fmt: skip
    targets_dir = next(
        v.split(":")[1] for v in prometheus["volumes"] if v.startswith("gpu-targets:")
    )
    written = posixpath.join(targets_dir, generator.output.name)
    config = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    patterns = [
        posixpath.join(config_dir, pattern)
        for job in config["scrape_configs"]
        for sd in job.get("file_sd_configs", [])
        for pattern in sd["files"]
    ]
    assert any(fnmatch.fnmatch(written, pattern) for pattern in patterns), patterns


def test_compose_grafana_provisioning_matches_the_mounts(compose: dict[str, Any]) -> None:
    """The dashboard provider reads where compose mounts the dashboards; the data source
    reaches Prometheus by its compose service name."""
    grafana = compose["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("../"))
    dashboards_target = mounts["../../grafana/dashboards"]
    providers = list((REPO / "grafana" / "provisioning" / "dashboards").glob("*.y*ml"))
    assert providers, "grafana/provisioning/dashboards has no provider file"
    paths = [
        provider["options"]["path"]
        for path in providers
        for provider in yaml.safe_load(path.read_text(encoding="utf-8"))["providers"]
    ]
    assert all(
        path == dashboards_target or path.startswith(dashboards_target + "/") for path in paths
    ), paths
    sources = list((REPO / "grafana" / "provisioning" / "datasources").glob("*.y*ml"))
    assert sources, "grafana/provisioning/datasources has no data source file"
    urls = [
        source.get("url", "")
        for path in sources
        for source in yaml.safe_load(path.read_text(encoding="utf-8"))["datasources"]
        if source.get("type") == "prometheus"
    ]
    service = "prometheus"
    (listen,) = [
        arg for arg in compose["services"][service]["command"] if "--web.listen-address=" in arg
    ]
    port = listen.rsplit(":", 1)[1]
    assert urls == [f"http://{service}:{port}"] * len(urls) and urls, urls


def test_examples_hold_no_real_secret() -> None:
    """The shipped examples show placeholders; compose takes passwords from files only."""
    for path in (SYSTEMD / "gpu-exporter.env.example", SYSTEMD / "gpu-status-api.env.example"):
        assert read_env_file(path)["GPU_MONITOR_PASSWORD"] == "change-me"
    compose_settings = read_env_file(COMPOSE_DIR / ".env.example")
    assert not [key for key in compose_settings if "PASSWORD" in key and not key.endswith("_FILE")]
