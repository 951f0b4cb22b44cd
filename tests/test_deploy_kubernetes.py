"""The Kubernetes manifests in deploy/kubernetes, checked as a cluster would meet them.

No cluster runs here: the manifests go through the Kubernetes API schemas
(``kubernetes-validate``) and the ServiceMonitor CRD's schema, every command line is parsed by
the exporter's real argument parser, and the manifests are checked against each other and
against prometheus/, so a renamed flag, port or label fails here instead of in a cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from exporter.cli import build_parser as exporter_parser
from tests.support.deploy import KUBERNETES, REPO, SCHEMAS, TIMEOUT, parses, schema_errors

# The oldest and the newest Kubernetes release whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.25", kubernetes_validate.utils.latest_version())


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
    assert schema_errors(servicemonitor_validator, _one("ServiceMonitor")) == []


def test_servicemonitor_schema_reports_mistakes(
    servicemonitor_validator: jsonschema.protocols.Validator,
) -> None:
    broken = json.loads(json.dumps(_one("ServiceMonitor")))
    endpoint = broken["spec"]["endpoints"][0]
    endpoint["interval"] = "15 seconds"
    endpoint["relabelings"][0]["action"] = "rename"
    endpoint["scrapeTimout"] = "5s"
    errors = "\n".join(schema_errors(servicemonitor_validator, broken))
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
    # Non-root by default for the pod; only the exporter container is root (for the kubelet's
    # socket, see docs/deployment.md), and root without a single capability.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert (security["runAsUser"], security["runAsNonRoot"]) == (0, False)
    assert security["allowPrivilegeEscalation"] is False
    assert security["privileged"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}  # nothing added back
    assert "seccompProfile" not in security  # the pod's RuntimeDefault applies
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for mount in container["volumeMounts"]:  # root may write nowhere on the node
        if "hostPath" in volumes[mount["name"]]:
            assert mount["readOnly"] is True, mount
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
    args = parses(exporter_parser(), arguments)
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
    socket = Path(parses(exporter_parser(), arguments).pod_resources_socket)
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


def _identity() -> tuple[int, int, list[int]]:
    """(uid, gid, supplementary groups) of the exporter container, as the kubelet sets them."""
    pod = _one("DaemonSet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    merged = {**pod["securityContext"], **container["securityContext"]}
    groups = [merged[key] for key in ("fsGroup",) if key in merged]
    return merged["runAsUser"], merged.get("runAsGroup", merged["runAsUser"]), groups


def _list_as(uid: int, gid: int, groups: list[int], socket: Path) -> str:
    """The exporter's kubelet client run as ``uid`` with no capabilities, as in the container."""
    code = (
        "from exporter.kubelet import PodResourcesClient\n"
        "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n"
        f"client = PodResourcesClient(socket_path={str(socket)!r}, timeout=5.0)\n"
        "print(sorted(client.gpu_devices()), client.last_error)\n"
    )
    command = [
        "setpriv", f"--reuid={uid}", f"--regid={gid}",
        f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups",
        "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
        sys.executable, "-c", code,
    ]  # fmt: skip
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    capabilities, answer = result.stdout.splitlines()
    assert int(capabilities, 16) == 0, "the client ran with capabilities"
    return answer


def test_daemonset_user_reaches_the_kubelets_root_owned_socket() -> None:
    """The container's user, without capabilities, can list pods on a socket like the kubelet's.

    The kubelet's pod-resources socket is root's, srwxr-xr-x in a 0755 directory; connecting to
    a unix socket needs write permission on it. Here a real gRPC server on such a socket, and
    the exporter's client run with the DaemonSet's uid, gid and groups and every capability
    dropped (as ``capabilities: drop: [ALL]`` and ``allowPrivilegeEscalation: false`` make it).
    """
    pytest.importorskip("grpc", reason="grpcio is not installed (the kubernetes or test extra)")
    if os.geteuid() != 0:
        pytest.skip("making a root-owned socket and switching users needs root")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    from tests.support.kubelet import PodDevices, running_kubelet

    uuid = "GPU-8f2c1d90-3e5a-4b17-9c2e-5da9abb51763"
    with running_kubelet([PodDevices("ml", "train-0", "worker", [uuid])]) as kubelet:
        socket = kubelet.socket_path
        os.chown(socket.parent, 0, 0)
        socket.parent.chmod(0o755)
        socket.chmod(0o755)
        assert _list_as(*_identity(), socket) == f"[{uuid!r}] "
        # The image's own user (and any other non-root one) is refused: why the container is root.
        refused = _list_as(65532, 65532, [65532], socket)
        assert refused.startswith("[] ") and "Permission denied" in refused
