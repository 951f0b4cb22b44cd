"""The real gpu-status-api process against simulated nodes: API, errors, faults, hosts.txt changes.

The simulated nodes (simulator.nodes) are real HTTP servers on loopback that answer, hang,
drip, flood or talk nonsense on purpose; the integration with real exporters is in
test_status_api_exporters.py.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.metrics import value, values
from simulator.nodes import FakeNodes, RecordingListener, legacy_status
from simulator.proc import free_port, wait_http
from tests.support.encoding import GZIP_NEGOTIATION, check_negotiated, encoding_header
from tests.support.status_service import StatusService, child_env, node, status_command


@pytest.fixture
def nodes() -> Iterator[FakeNodes]:
    with FakeNodes(["ok", "ok", "forbidden"], gpus=2) as fake:
        yield fake


def _refused() -> str:
    return f"127.0.0.1:{free_port()}"  # nothing listens there


@pytest.fixture
def service(nodes: FakeNodes, status_service_factory) -> StatusService:
    hosts = [*nodes.hosts_lines(), _refused()]
    svc = status_service_factory(hosts)
    svc.wait_for(lambda d: d["summary"]["nodes_online"] == 2, what="two nodes online")
    return svc


# ---- the JSON views -----------------------------------------------------------------------


def test_cluster_json(service: StatusService, nodes: FakeNodes) -> None:
    document = service.cluster()
    assert list(document) == ["generated_at", "interval", "thresholds", "summary", "error", "nodes"]
    assert document["interval"] == 0.5
    assert abs(document["generated_at"] - time.time()) < 5
    summary = document["summary"]
    assert (summary["nodes_total"], summary["nodes_online"], summary["nodes_offline"]) == (4, 2, 2)
    assert (summary["gpus_total"], summary["gpus_in_use"], summary["gpus_free"]) == (4, 2, 2)
    assert summary["memory_total_mib"] == 4 * 81920

    lines = nodes.hosts_lines()
    assert [n["node"] for n in document["nodes"]] == service.hosts_path.read_text().split()
    first = node(document, lines[0])
    assert first["state"] == "online" and first["error"] == ""
    assert first["hostname"] == "fake0" and first["ips"] == [["eth0", "10.0.0.1"]]
    assert abs(first["last_seen"] - time.time()) < 5
    gpu0, gpu1 = first["gpus"]
    assert (gpu0["free"], gpu1["free"]) == (False, True)
    assert [u["username"] for u in gpu0["users"]] == ["user0", "user1"]
    assert (gpu0["power"], gpu0["power_limit"]) == (100.0, 400.0)  # read from /metrics

    forbidden = node(document, lines[2])
    assert forbidden["state"] == "offline" and forbidden["error"] == "HTTP 403: wrong password"
    refused = document["nodes"][3]
    assert refused["state"] == "offline" and refused["gpus"] == []
    assert refused["error"] == "cannot connect: Connection refused"


def test_legacy_get_status(service: StatusService, nodes: FakeNodes) -> None:
    for method in ("GET", "POST"):
        response = service.session.request(method, service.url + "/get-status", timeout=5)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/json"
        document = response.json()
        assert list(document) == ["Nodes"]
        first, _, forbidden, refused = document["Nodes"]
        assert list(first) == ["hostname", "last_update", "ips", "gpus", "status", "version"]
        assert first["status"] is True and first["version"] == "NVIDIA A100-SXM4-80GB"
        assert list(first["gpus"][0]) == [
            "index", "name", "use_mem", "tot_mem", "utilize", "temp", "users",
        ]  # fmt: skip
        lines = service.hosts_path.read_text().split()
        assert forbidden == {"hostname": lines[2], "status": False, "gpus": []}
        assert refused == {"hostname": lines[3], "status": False, "gpus": []}


def test_etag_gzip_and_head(service: StatusService) -> None:
    plain = service.get("/api/v1/cluster", headers={"Accept-Encoding": "identity"})
    etag = plain.headers["ETag"]
    assert plain.headers.get("Content-Encoding") is None
    again = service.get("/api/v1/cluster", headers={"If-None-Match": etag})
    if again.headers["ETag"] == etag:  # no new round in between
        assert again.status_code == 304 and again.content == b""
    zipped = service.get("/api/v1/cluster", headers={"Accept-Encoding": "gzip"}, stream=True)
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(zipped.raw.read()).startswith(b'{"generated_at":')
    head = service.session.head(service.url + "/get-status", timeout=5)
    assert head.status_code == 200 and head.content == b""
    time.sleep(1.2)  # a new round renders a new document with a new tag
    assert service.get("/api/v1/cluster", headers={"If-None-Match": etag}).status_code == 200


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/v1/cluster", b'{"generated_at":'),
        ("/get-status", b'{"Nodes":'),
        ("/metrics", b"# HELP gpu_status_api_"),
    ],
)
def test_gzip_only_when_accepted_and_always_varying(
    service: StatusService, path: str, expected: bytes
) -> None:
    for header, gzipped in GZIP_NEGOTIATION:
        response = service.get(path, headers=encoding_header(header), stream=True)
        body = check_negotiated(response, gzipped=gzipped, what=f"{path}, {header!r}")
        assert body.startswith(expected), (path, header, body[:80])


def test_metrics(service: StatusService, nodes: FakeNodes) -> None:
    response = service.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = response.text
    ok, _, forbidden = nodes.hosts_lines()
    assert value(text, "gpu_status_api_node_poll_success", node=ok) == 1.0
    assert value(text, "gpu_status_api_node_poll_success", node=forbidden) == 0.0
    assert 0 < value(text, "gpu_status_api_node_poll_duration_seconds", node=ok) < 1.0
    last = value(text, "gpu_status_api_node_last_success_timestamp_seconds", node=ok)
    assert abs(last - time.time()) < 5
    never = values(text, "gpu_status_api_node_last_success_timestamp_seconds", node=forbidden)
    assert never == []
    assert value(text, "gpu_status_api_node_poll_failures_total", node=forbidden) >= 1
    assert value(text, "gpu_status_api_node_polls_total", node=ok) >= 1
    assert value(text, "gpu_status_api_node_state", node=ok, state="online") == 1
    assert value(text, "gpu_status_api_node_state", node=forbidden, state="online") == 0
    assert value(text, "gpu_status_api_nodes", state="online") == 2
    assert value(text, "gpu_status_api_nodes", state="offline") == 2
    assert value(text, "gpu_status_api_rounds_total") >= 1
    assert value(text, "gpu_status_api_round_duration_seconds") < 1.5
    assert len(values(text, "gpu_status_api_build_info")) == 1
    assert abs(value(text, "gpu_status_api_last_round_timestamp_seconds") - time.time()) < 30


# ---- errors are JSON, never tracebacks -----------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nope", 404),
        ("GET", "/api/v1/cluster/extra", 404),
        ("GET", "/static/../cli.py", 404),
        ("POST", "/api/v1/cluster", 405),
        ("DELETE", "/get-status", 405),
        ("PUT", "/metrics", 405),
    ],
)
def test_errors_are_json(service: StatusService, method: str, path: str, status: int) -> None:
    response = service.session.request(method, service.url + path, timeout=5)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert set(response.json()) == {"error"}
    assert "Traceback" not in response.text


def test_big_body_is_refused(service: StatusService) -> None:
    response = service.session.post(service.url + "/get-status", data=b"x" * 100_000, timeout=5)
    assert response.status_code == 413
    assert "error" in response.json()


def test_health_and_page_headers(service: StatusService) -> None:
    assert service.get("/-/healthy").text == "OK\n"
    assert service.get("/-/ready").text == "OK\n"
    page = service.get("/")
    assert page.status_code == 200 and "<title>GPU cluster</title>" in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    for asset in (
        "/static/dom.js",
        "/static/app.js",
        "/static/users.js",
        "/static/user.js",
        "/static/style.css",
    ):
        assert service.get(asset).status_code == 200
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN
    openapi = service.get("/api/v1/openapi.json").json()
    assert set(openapi["paths"]) >= {"/api/v1/cluster", "/get-status"}


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=st.text(alphabet=st.characters(codec="ascii", exclude_characters="?#"), max_size=40),
    method=st.sampled_from(["GET", "POST", "HEAD", "OPTIONS", "PATCH"]),
    header=st.text(alphabet=st.characters(codec="latin-1", exclude_categories=["Cc"]), max_size=60),
)
def test_property_no_request_gets_a_server_error(
    service: StatusService, path: str, method: str, header: str
) -> None:
    value = "x" + header  # a header value may not start with whitespace
    response = service.session.request(
        method,
        service.url + "/" + requests.utils.quote(path),
        headers={"If-None-Match": value, "Accept": value, "Accept-Encoding": value},
        timeout=5,
    )
    assert response.status_code < 500, response.text
    assert "Traceback" not in response.text


# ---- misbehaving nodes ---------------------------------------------------------------------

MISBEHAVING = ["hang", "garbage", "wrong-shape", "drip", "huge", "huge-chunked", "close"]


def test_misbehaving_nodes_cost_bounded_time_and_memory(status_service_factory) -> None:
    with FakeNodes(["ok", *MISBEHAVING, "ok"], gpus=2) as fake:
        service = status_service_factory(fake.hosts_lines(), interval=0.5, timeout=0.8)
        document = service.wait_for(
            lambda d: d["summary"]["nodes_online"] == 2, what="the good nodes online"
        )
        errors = {n["node"]: n["error"] for n in document["nodes"]}
        lines = fake.hosts_lines()
        expected = {
            "hang": "no answer within 0.8 s",
            "garbage": "bad answer: answer is not UTF-8 text",
            "wrong-shape": "bad answer: gpus: expected a list, got 'many'",
            "drip": "no answer within 0.8 s",
            "huge": "answer of 10000000000 bytes is over the 4194304 byte cap",
            "huge-chunked": "answer is over the 4194304 byte cap",
            "close": "connection closed by the node before it answered",
        }
        for line, behaviour in zip(lines[1:-1], MISBEHAVING):
            assert errors[line].startswith(expected[behaviour]), (behaviour, errors[line])
        for n in document["nodes"][1:-1]:
            assert n["poll_seconds"] < 0.8 + 0.3, n
        # Several more rounds: the page stays fast and memory stays bounded.
        process = psutil.Process(service.process.pid)
        for _ in range(8):
            started = time.monotonic()
            assert service.get("/api/v1/cluster").status_code == 200
            assert service.get("/").status_code == 200
            assert time.monotonic() - started < 0.5
            time.sleep(0.4)
        text = service.get("/metrics").text
        assert value(text, "gpu_status_api_round_duration_seconds") < 0.8 + 0.4
        assert value(text, "gpu_status_api_rounds_total") >= 4
        assert process.memory_info().rss < 200 * 1024 * 1024
        assert service.process.alive()


def test_redirects_are_never_followed(status_service_factory, tmp_path: Path) -> None:
    """Any user can bind a node's port and answer 307 towards another local service: that
    service must never see the password, the basic-auth header or anything else."""
    auth_file = tmp_path / "basic-auth"
    auth_file.write_text("scrape-secret\n")
    auth_file.chmod(0o600)
    with RecordingListener() as target, FakeNodes(["redirect", "redirect-metrics", "ok"]) as fake:
        # Hostile text in Location: an escape sequence and far too much of it.
        fake.redirect_to = f"{target.url}/steal\x1b[2J" + "A" * 5000
        service = status_service_factory(
            fake.hosts_lines(), "--power-interval", "0",
            "--node-basic-auth-user", "status-api", "--node-basic-auth-password-file",
            str(auth_file),
        )  # fmt: skip
        redirect, redirect_metrics, ok = fake.hosts_lines()
        shown = (f"{target.url}/steal?[2J" + "A" * 5000)[:100] + "..."
        refused = f"HTTP 307 redirect to {shown} refused: redirects are never followed"

        def settled(document: dict) -> bool:
            good = node(document, ok)
            return good["state"] == "online" and good["gpus"][0]["power"] is not None

        document = service.wait_for(settled, what="the good node online with power")
        time.sleep(1.5)  # a few more rounds, each reading every node's /metrics
        document = service.cluster()
        assert node(document, redirect)["error"] == f"/get-status: {refused}"
        assert node(document, redirect_metrics)["error"] == f"/metrics: {refused}"
        for entry in (redirect, redirect_metrics):
            assert node(document, entry)["state"] == "offline"
        assert "internal admin service" not in service.get("/api/v1/cluster").text
        assert "internal admin service" not in service.get("/get-status").text
        assert target.connections == 0 and target.received == b""
        assert service.process.alive()


def test_flapping_node_goes_stale_offline_and_back(status_service_factory) -> None:
    with FakeNodes(["ok", "ok"], gpus=1) as fake:
        service = status_service_factory(
            fake.hosts_lines(),
            "--stale-after", "1", "--offline-after", "2.5",
            interval=0.3, timeout=0.5,
        )  # fmt: skip
        flapper = fake.hosts_lines()[1]

        def state_of(document: dict) -> str:
            return node(document, flapper)["state"]

        service.wait_for(lambda d: state_of(d) == "online", what="online")
        for cycle in range(2):
            fake.set(1, "close" if cycle == 0 else "hang")
            stale = service.wait_for(lambda d: state_of(d) == "stale", timeout=3, what="stale")
            assert node(stale, flapper)["gpus"], "a stale node keeps its last GPUs"
            assert not any(g["free"] for g in node(stale, flapper)["gpus"])
            service.wait_for(lambda d: state_of(d) == "offline", timeout=5, what="offline")
            legacy = service.legacy()["Nodes"][1]
            assert legacy["status"] is False
            fake.set(1, "ok")
            back = service.wait_for(lambda d: state_of(d) == "online", timeout=3, what="back")
            assert node(back, flapper)["error"] == ""
            assert service.legacy()["Nodes"][1]["status"] is True
        assert node(service.cluster(), fake.hosts_lines()[0])["state"] == "online"


# ---- hosts.txt ------------------------------------------------------------------------------


def test_hosts_file_changes_are_followed(status_service_factory) -> None:
    with FakeNodes(["ok", "ok", "ok"], gpus=1) as fake:
        a, b, c = fake.hosts_lines()
        service = status_service_factory([a, b])
        service.wait_for(lambda d: d["summary"]["nodes_online"] == 2, what="a and b")

        service.write_hosts(f"# added c, removed a\n{b}\n{c}   # new\n")
        document = service.wait_for(
            lambda d: (
                [n["node"] for n in d["nodes"]] == [b, c] and d["summary"]["nodes_online"] == 2
            ),
            what="b and c",
        )
        assert [n["hostname"] for n in service.legacy()["Nodes"]] == ["fake1", "fake2"]
        assert document["summary"]["nodes_total"] == 2

        service.write_hosts(f"{b}\n{c}\n{b}\n")  # a duplicate: keep the last good list
        time.sleep(1.5)
        assert [n["node"] for n in service.cluster()["nodes"]] == [b, c]
        log = service.log()
        assert f"{service.hosts_path}:3:" in log and "same node as line 1" in log
        assert "keeping the previous 2 nodes" in log

        service.write_hosts(f"{c}\n")
        service.wait_for(lambda d: [n["node"] for n in d["nodes"]] == [c], what="only c")


def _start_and_fail(tmp_path: Path, hosts_text: str | None, *args: str) -> tuple[int, str]:
    hosts = tmp_path / "hosts.txt"
    if hosts_text is not None:
        hosts.write_text(hosts_text)
    result = subprocess.run(
        status_command(hosts, free_port(), *args),
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env(),
        check=False,
    )
    return result.returncode, result.stderr


@pytest.mark.parametrize(
    ("hosts_text", "args", "message"),
    [
        ("node1\nnode1:7080\n", (), "hosts.txt:2: 'node1:7080' is the same node as line 1"),
        ("# x\nnode 1\n", (), "hosts.txt:2:"),
        (None, (), "hosts.txt:0: cannot read"),
        ("node1\n", ("--stale-after", "5", "--offline-after", "2"), "--offline-after"),
        ("node1\n", ("--interval", "0"), "must be greater than 0"),
        ("node1\n", ("--node_port", "70000"), "not a port number"),
        ("node1\n", ("--password-file", "/nonexistent/pw"), "/nonexistent/pw"),
        ("node1\n", ("--node-ca-file", "/etc/hostname"), "need --node-scheme https"),
        ("node1\n", ("--node-scheme", "https", "--node-ca-file", "/etc/hostname"), "hostname"),
        ("node1\n", ("--node-basic-auth-user", "prom"), "go together"),
        (
            "node1\n",
            ("--node-basic-auth-user", "a:b", "--node-basic-auth-password-file", "/etc/hostname"),
            "--node-basic-auth-user 'a:b' must not contain ':'",
        ),
    ],
)
def test_service_refuses_to_start_on_bad_input(
    tmp_path: Path, hosts_text: str | None, args: tuple[str, ...], message: str
) -> None:
    code, stderr = _start_and_fail(tmp_path, hosts_text, *args)
    assert code == 2, stderr
    assert message in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("env", "warned"),
    [({}, True), ({"GPU_MONITOR_PASSWORD": "from-env"}, False)],
)
def test_default_node_password_is_warned_about_on_stderr(
    tmp_path: Path, nodes: FakeNodes, env: dict[str, str], warned: bool
) -> None:
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("\n".join(nodes.hosts_lines()) + "\n")
    port = free_port()
    stderr_path = tmp_path / "stderr"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            status_command(hosts, port, "--interval", "0.5"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=child_env(env),
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=20)
    finally:
        process.terminate()
        process.wait(timeout=10)
    text = stderr_path.read_text()
    assert ("no node password configured" in text) is warned, text
    if warned:
        assert "8888" in text and "--password-file" in text


def test_help_and_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "status_api", "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    for flag in ("-c", "--port", "--node_port", "--password-file", "--web-config-file",
                 "--listen-address", "--web.max-requests", "--web.max-requests-per-client",
                 "--node-ca-file"):  # fmt: skip
        assert flag in result.stdout
    version = subprocess.run(
        [sys.executable, "-m", "status_api", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert version.returncode == 0 and version.stdout.startswith("gpu-status-api ")


def test_stops_promptly_on_sigterm_even_mid_round(status_service_factory) -> None:
    with FakeNodes(["ok", "hang"]) as fake:
        service = status_service_factory(fake.hosts_lines(), timeout=5.0)
        time.sleep(0.5)  # the hanging node keeps a round open for 5 s
        started = time.monotonic()
        assert service.stop() == 0
        assert time.monotonic() - started < 3
        assert "Traceback" not in service.log()


# ---- per-process attribution and idle-but-held GPUs --------------------------------------------


def test_attribution_and_idle_held_through_the_service(status_service_factory) -> None:
    """The node's /metrics names each process's job or pod and its SM utilization; a GPU whose
    processes hold memory without computing turns idle_held after --idle-held-after seconds,
    and back as soon as one of them computes."""
    with FakeNodes(["ok"], gpus=2) as fake:
        status = legacy_status("fake0", gpus=2, users_per_gpu=2)
        first, second = (user["pid"] for user in status["gpus"][0]["users"])
        attribution = {
            first: {"slurm_job": "4242", "sm_utilization": 0.0},
            second: {"namespace": "ml", "pod": "train-0", "container": "t", "sm_utilization": 0},
        }
        fake.set_status(0, status, attribution=attribution)
        (line,) = fake.hosts_lines()
        service = status_service_factory(
            [line], "--power-interval", "0", "--idle-held-after", "1.5"
        )
        document = service.wait_for(
            lambda d: node(d, line)["gpus"][0]["users"][0]["slurm_job"] == "4242",
            what="attribution from /metrics",
        )
        gpu = node(document, line)["gpus"][0]
        job, pod = gpu["users"]
        assert (job["sm_utilization"], job["pod"]) == (0, "")
        assert (pod["namespace"], pod["pod"], pod["container"]) == ("ml", "train-0", "t")
        assert gpu["idle_held"] is False  # idle for less than 1.5 s yet
        started = time.time()
        document = service.wait_for(
            lambda d: node(d, line)["gpus"][0]["idle_held"], what="GPU 0 idle but held"
        )
        gpu0, gpu1 = node(document, line)["gpus"]
        assert time.time() - started >= 0.5
        assert gpu0["idle_held_since"] <= time.time() - 1.5
        assert gpu1["idle_held"] is False and gpu1["idle_held_since"] is None  # holds nothing

        attribution[second] = {**attribution[second], "sm_utilization": 0.4}
        fake.set_status(0, status, attribution=attribution)
        document = service.wait_for(
            lambda d: not node(d, line)["gpus"][0]["idle_held"], what="GPU 0 computing again"
        )
        assert node(document, line)["gpus"][0]["users"][1]["sm_utilization"] == 0.4
        assert b"slurm_job" not in service.get("/get-status").content  # legacy view unchanged
