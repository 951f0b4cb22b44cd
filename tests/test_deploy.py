"""The deployment files: systemd units, the compose bundle, Kubernetes manifests, the Dockerfile.

No init system, container engine or cluster runs here, so each file goes through the checker a
deployment would meet first: ``systemd-analyze verify`` and ``security`` for the units, the
Compose Specification's JSON schema for compose.yaml, the Kubernetes API schemas
(``kubernetes-validate``) and the ServiceMonitor CRD's schema for the manifests, hadolint for the
Dockerfile. Every command line in these files is parsed by the programs' real argument parsers,
and the files are checked against each other and against prometheus/ and grafana/, so a renamed
flag, port or path fails here instead of on a node.
"""

from __future__ import annotations

import fnmatch
import json
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from exporter.cli import build_parser as exporter_parser
from status_api.cli import build_parser as status_parser
from status_api.cli import build_targets_parser

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
SYSTEMD = DEPLOY / "systemd"
COMPOSE_DIR = DEPLOY / "compose"
KUBERNETES = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
BIN = Path(sys.executable).parent
UNITS = sorted(path.name for path in SYSTEMD.glob("*.service"))
# The oldest and the newest Kubernetes release whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.25", kubernetes_validate.utils.latest_version())
TIMEOUT = 60


def _tool(name: str) -> str:
    """Path of a command-line tool the tests need; fail (never skip) when it is missing."""
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    assert path, f"{name} is not installed; scripts/test.sh installs it"
    return str(path)


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=False)


def _parses(parser: Any, arguments: list[str]) -> Any:
    """``arguments`` parsed by the program's own parser; a usage error fails with the text."""
    try:
        return parser.parse_args(arguments)
    except SystemExit as error:
        raise AssertionError(f"{parser.prog} rejects {arguments}") from error


# --- systemd ------------------------------------------------------------------------------------


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values in order]}}; repeated keys keep every value."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"{path.name}:{number}: not key=value"
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= and compose's .env read simple values."""
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            words = shlex.split(value)
            values[key.strip()] = " ".join(words)
    return values


def exec_arguments(exec_start: str, environment: dict[str, str]) -> list[str]:
    """ExecStart= as systemd expands it: ``$VAR`` splits into words, ``${VAR}`` stays one."""
    words: list[str] = []
    for token in shlex.split(exec_start):
        if re.fullmatch(r"\$[A-Za-z_][A-Za-z0-9_]*", token):
            words.extend(environment.get(token[1:], "").split())
        else:
            words.append(re.sub(r"\$\{(\w+)\}", lambda m: environment.get(m[1], ""), token))
    return words


@pytest.fixture(scope="module")
def unit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The units, unchanged but for ExecStart pointing at this checkout's installed programs.

    systemd-analyze verify refuses a unit whose program does not exist; the real console scripts
    of the package stand in for /usr/local/bin, so everything else is checked as shipped.
    """
    directory = tmp_path_factory.mktemp("units")
    for name in UNITS:
        text = (SYSTEMD / name).read_text(encoding="utf-8")
        for program in ("gpu-exporter", "gpu-status-api"):
            installed = BIN / program
            assert installed.exists(), f"{installed} missing: install the package first"
            text = text.replace(f"/usr/local/bin/{program}", str(installed))
        (directory / name).write_text(text, encoding="utf-8")
    return directory


def _verify(unit: Path) -> list[str]:
    """systemd-analyze verify's complaints about ``unit`` (it exits 0 on many of them)."""
    result = _run(_tool("systemd-analyze"), "verify", "--man=no", str(unit))
    complaints = [line for line in result.stderr.splitlines() if unit.name in line]
    if result.returncode != 0:
        complaints.append(f"exit {result.returncode}: {result.stderr.strip()}")
    return complaints


def test_three_units_are_shipped() -> None:
    assert set(UNITS) == {
        "gpu-exporter.service",
        "gpu-status-api.service",
        "gpu-status-api-targets.service",
    }


@pytest.mark.parametrize("name", UNITS)
def test_unit_passes_systemd_analyze_verify(unit_dir: Path, name: str) -> None:
    assert _verify(unit_dir / name) == []


def test_verify_check_reports_mistakes(unit_dir: Path, tmp_path: Path) -> None:
    """The check above is not blind: a misspelt key and a bad value are reported."""
    broken = tmp_path / "gpu-exporter.service"
    text = (unit_dir / "gpu-exporter.service").read_text(encoding="utf-8")
    broken.write_text(
        text.replace("DevicePolicy=closed", "DevicePolicy=closd") + "[Service]\nRestrt=always\n",
        encoding="utf-8",
    )
    complaints = "\n".join(_verify(broken))
    assert "closd" in complaints and "Restrt" in complaints


@pytest.mark.parametrize("name", UNITS)
def test_unit_exposure_is_low(unit_dir: Path, name: str) -> None:
    """systemd's own sandbox review rates each service 2.0 or lower (0 safe .. 10 exposed)."""
    result = _run(
        _tool("systemd-analyze"),
        "security",
        "--offline=true",
        "--threshold=20",
        "--no-pager",
        str(unit_dir / name),
    )
    level = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert level, result.stdout + result.stderr
    assert result.returncode == 0, f"exposure {level[1]} is over 2.0:\n{result.stdout}"


def test_exporter_unit_sandbox_keeps_what_the_exporter_needs() -> None:
    service = read_unit(SYSTEMD / "gpu-exporter.service")["Service"]
    one = {key: values[-1] for key, values in service.items()}
    assert one["Restart"] == "on-failure"
    assert one["StandardOutput"] == one["StandardError"] == "journal"
    assert one["EnvironmentFile"].endswith("/gpu-exporter.env")
    # Unprivileged, without any capability, file system read-only.
    assert one["DynamicUser"] == "yes" and one["NoNewPrivileges"] == "yes"
    assert one["CapabilityBoundingSet"] == "" and one["AmbientCapabilities"] == ""
    assert one["ProtectSystem"] == "strict" and one["ProtectHome"] == "yes"
    # NVML needs the NVIDIA devices: no private /dev, and the device ACL lets them through.
    assert one.get("PrivateDevices", "no") == "no"
    assert one["DevicePolicy"] == "closed"
    allowed = " ".join(service["DeviceAllow"])
    assert "/dev/nvidiactl rw" in allowed and "char-nvidia rw" in allowed
    # Other users' processes stay visible with their owners.
    assert one.get("ProtectProc", "default") == "default"
    assert one.get("ProcSubset", "all") == "all"
    assert one.get("PrivateUsers", "no") == "no"
    assert "AF_NETLINK" in one["RestrictAddressFamilies"]


def test_status_api_unit_sandbox() -> None:
    service = read_unit(SYSTEMD / "gpu-status-api.service")["Service"]
    one = {key: values[-1] for key, values in service.items()}
    assert one["Restart"] == "on-failure"
    assert one["EnvironmentFile"].endswith("/gpu-status-api.env")
    assert one["DynamicUser"] == "yes" and one["CapabilityBoundingSet"] == ""
    assert one["PrivateDevices"] == "yes" and one["ProtectProc"] == "invisible"


@pytest.mark.parametrize(
    ("unit", "env_file", "parser"),
    [
        ("gpu-exporter.service", "gpu-exporter.env.example", exporter_parser),
        ("gpu-status-api.service", "gpu-status-api.env.example", status_parser),
    ],
)
def test_unit_command_line_parses(unit: str, env_file: str, parser: Any) -> None:
    """ExecStart= with the example environment file is a valid command line of the program."""
    environment = read_env_file(SYSTEMD / env_file)
    assert environment["GPU_MONITOR_PASSWORD"], "the example must show where the password goes"
    exec_start = read_unit(SYSTEMD / unit)["Service"]["ExecStart"][-1]
    words = exec_arguments(exec_start, environment)
    assert words[0].startswith("/usr/local/bin/")
    assert len(words) > 1, "the example arguments did not reach the command line"
    args = _parses(parser(), words[1:])
    assert args.port in (7070, 7080)
    assert environment["GPU_MONITOR_PASSWORD"] not in words, "password on the command line"


def test_targets_unit_command_line_parses() -> None:
    exec_start = read_unit(SYSTEMD / "gpu-status-api-targets.service")["Service"]["ExecStart"][-1]
    words = exec_arguments(exec_start, {})
    assert words[1] == "targets"
    args = _parses(build_targets_parser(), words[2:])
    assert args.watch and args.output == Path("/etc/prometheus/targets/gpu-nodes.json")


# --- compose ------------------------------------------------------------------------------------

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


def _schema_errors(validator: jsonschema.protocols.Validator, document: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    ]


def test_compose_file_follows_the_compose_specification(
    compose: dict[str, Any],
    compose_env: dict[str, str],
    compose_validator: jsonschema.protocols.Validator,
) -> None:
    """As written, and after interpolation with the example .env, as compose validates it."""
    assert _schema_errors(compose_validator, compose) == []
    assert _schema_errors(compose_validator, interpolate(compose, compose_env)) == []
    assert _schema_errors(compose_validator, interpolate(compose, {})) == []


def test_compose_schema_reports_mistakes(
    compose: dict[str, Any], compose_validator: jsonschema.protocols.Validator
) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["grafana"]["restart_policy"] = "always"
    broken["services"]["prometheus"]["ports"] = "9090:9090"
    errors = "\n".join(_schema_errors(compose_validator, broken))
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
    status = _parses(status_parser(), services["gpu-status-api"]["command"][1:])
    assert status.port == 7070 and status.node_port == 7080
    assert status.password_file == Path("/run/secrets/gpu_monitor_password")
    targets_command = services["gpu-targets"]["command"]
    assert targets_command[:2] == ["gpu-status-api", "targets"]
    targets = _parses(build_targets_parser(), targets_command[2:])
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
    generator = _parses(build_targets_parser(), command[2:])
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


# --- Kubernetes ---------------------------------------------------------------------------------


def _manifests() -> dict[str, list[dict[str, Any]]]:
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
        for path in sorted(KUBERNETES.glob("*.yaml"))
        if path.name != "kustomization.yaml"
    }


MANIFESTS = _manifests()
CORE_DOCUMENTS = [
    pytest.param(doc, id=f"{doc['kind']}/{doc['metadata']['name']}")
    for docs in MANIFESTS.values()
    for doc in docs
    if doc["apiVersion"] != "monitoring.coreos.com/v1"
]


def _objects(kind: str) -> list[dict[str, Any]]:
    return [doc for docs in MANIFESTS.values() for doc in docs if doc["kind"] == kind]


def _one(kind: str) -> dict[str, Any]:
    (found,) = _objects(kind)
    return found


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("document", CORE_DOCUMENTS)
def test_manifest_validates_against_kubernetes_schema(
    document: dict[str, Any], version: str
) -> None:
    """Strict: an unknown or misspelt field is an error, as with kubectl's field validation."""
    kubernetes_validate.validate(document, version, strict=True)


def test_kubernetes_validation_reports_mistakes() -> None:
    daemonset = json.loads(json.dumps(_one("DaemonSet")))
    daemonset["spec"]["template"]["spec"]["hostPid"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="hostPid"):
        kubernetes_validate.validate(daemonset, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.fixture(scope="module")
def servicemonitor_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / "servicemonitor.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_servicemonitor_validates_against_its_crd_schema(
    servicemonitor_validator: jsonschema.protocols.Validator,
) -> None:
    assert _schema_errors(servicemonitor_validator, _one("ServiceMonitor")) == []


def test_servicemonitor_schema_reports_mistakes(
    servicemonitor_validator: jsonschema.protocols.Validator,
) -> None:
    broken = json.loads(json.dumps(_one("ServiceMonitor")))
    endpoint = broken["spec"]["endpoints"][0]
    endpoint["interval"] = "15 seconds"
    endpoint["relabelings"][0]["action"] = "rename"
    endpoint["scrapeTimout"] = "5s"
    errors = "\n".join(_schema_errors(servicemonitor_validator, broken))
    assert "15 seconds" in errors and "rename" in errors and "scrapeTimout" in errors


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text("utf-8"))
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(MANIFESTS)
    namespace = _one("Namespace")["metadata"]["name"]
    assert kustomization["namespace"] == namespace
    image = _one("DaemonSet")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.split(":")[0] in {entry["name"] for entry in kustomization["images"]}


def test_daemonset_runs_the_exporter_as_required() -> None:
    pod = _one("DaemonSet")["spec"]["template"]["spec"]
    assert pod["hostPID"] is True and pod["runtimeClassName"] == "nvidia"
    assert pod["nodeSelector"] and pod["tolerations"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "metrics"
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert "memory" in container["resources"]["limits"]
    (port,) = container["ports"]
    assert port == {"name": "metrics", "containerPort": 7080, "protocol": "TCP"}


def test_daemonset_command_line_parses_and_reads_the_secret_file() -> None:
    pod = _one("DaemonSet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["gpu-exporter"]
    arguments = [arg.replace("$(NODE_NAME)", "gpu-node-1") for arg in container["args"]]
    args = _parses(exporter_parser(), arguments)
    assert args.port == 7080 and args.hostname == "gpu-node-1"
    # The password file lies in the mounted Secret volume.
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    (secret_volume,) = [name for name, volume in volumes.items() if "secret" in volume]
    items = volumes[secret_volume]["secret"]["items"]
    assert str(args.password_file) in {f"{mounts[secret_volume]}/{item['path']}" for item in items}
    assert not any("GPU_MONITOR_PASSWORD" in env["name"] for env in container["env"])


def test_daemonset_passes_the_kubelet_socket_from_a_read_only_mount() -> None:
    pod = _one("DaemonSet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    arguments = [arg.replace("$(NODE_NAME)", "gpu-node-1") for arg in container["args"]]
    socket = Path(_parses(exporter_parser(), arguments).pod_resources_socket)
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    mount = mounts[str(socket.parent)]
    assert mount["readOnly"] is True
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes[mount["name"]]["hostPath"]["path"] == str(socket.parent)


def test_service_and_servicemonitor_select_the_exporter_pods() -> None:
    pod_labels = _one("DaemonSet")["spec"]["template"]["metadata"]["labels"]
    service = _one("Service")
    monitor = _one("ServiceMonitor")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert [port["name"] for port in service["spec"]["ports"]] == ["metrics"]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert [endpoint["port"] for endpoint in monitor["spec"]["endpoints"]] == ["metrics"]


def test_servicemonitor_job_matches_the_prometheus_configuration() -> None:
    """The alert rules and the dashboard select the job of prometheus/prometheus.yml."""
    config = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    (job,) = [
        job["job_name"]
        for job in config["scrape_configs"]
        if any("gpu-nodes" in f for sd in job.get("file_sd_configs", []) for f in sd["files"])
    ]
    monitor = _one("ServiceMonitor")
    service = _one("Service")
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == job


# --- Dockerfile ---------------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or (line.startswith("#") and not pending):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path.name} ends in a continuation line"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in logical]


def test_dockerfile_passes_hadolint() -> None:
    result = _run(_tool("hadolint"), "--no-color", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_mistakes(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get install curl\n", encoding="utf-8")
    result = _run(_tool("hadolint"), "--no-color", str(bad))
    assert result.returncode != 0 and "DL3007" in result.stdout, result.stdout


def test_dockerfile_shape() -> None:
    """Multi-stage, runs unprivileged, checks its health, carries no NVML library."""
    instructions = _instructions(DOCKERFILE)
    stages = [arguments for name, arguments in instructions if name == "FROM"]
    assert len(stages) >= 2, "the build tools must stay out of the runtime image"
    final = instructions[max(i for i, (name, _) in enumerate(instructions) if name == "FROM") :]
    users = [arguments for name, arguments in final if name == "USER"]
    assert users, "the runtime stage must set USER"
    assert users[-1].split(":")[0] not in ("0", "root")
    assert any(name == "HEALTHCHECK" and "/-/healthy" in args for name, args in final)
    assert ("CMD", '["gpu-exporter"]') in final
    # The NVIDIA runtime brings the driver's library; the image must not ship its own.
    for name, arguments in instructions:
        for forbidden in ("libnvidia", "nvidia-utils", "cuda"):
            assert forbidden not in arguments.lower(), f"{name} {arguments}"


def test_dockerfile_copies_only_what_exists_and_is_not_ignored() -> None:
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    included = {
        line[1:].rstrip("/") for line in ignore.splitlines() if line.startswith("!")
    }  # fmt: skip
    for name, arguments in _instructions(DOCKERFILE):
        if name != "COPY" or arguments.startswith("--from"):
            continue
        *sources, _ = arguments.split()
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            assert source.rstrip("/") in included, f"COPY {source}: excluded by .dockerignore"
    for package in ("exporter", "status_api"):
        assert package in included, f"package {package} is not sent to the image build"


def test_examples_hold_no_real_secret() -> None:
    """The shipped examples show placeholders; compose takes passwords from files only."""
    for path in (SYSTEMD / "gpu-exporter.env.example", SYSTEMD / "gpu-status-api.env.example"):
        assert read_env_file(path)["GPU_MONITOR_PASSWORD"] == "change-me"
    compose_settings = read_env_file(COMPOSE_DIR / ".env.example")
    assert not [key for key in compose_settings if "PASSWORD" in key and not key.endswith("_FILE")]
