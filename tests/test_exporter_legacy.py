"""The legacy POST /get-status endpoint of a real gpu-exporter: schema, values, bad input."""

from __future__ import annotations

import getpass
import json
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta

import pytest
import requests

from simulator.exporters import nvml_env, write_scenario
from simulator.fakenvml import scenario as fake

MIB = 1024 * 1024


def test_schema_and_key_order(exporter_factory, worker_pids):
    scenario = fake.busy(2, worker_pids(3))
    exporter = exporter_factory(scenario, "--hostname", "gpu-node-1")
    raw = exporter.session.post(
        f"{exporter.url}/get-status", json={"passwd": exporter.password}, timeout=5
    )
    assert raw.status_code == 200
    assert raw.headers["Content-Type"] == "application/json"
    status = json.loads(raw.text)
    assert list(status) == ["hostname", "last_update", "ips", "gpus"]
    assert status["hostname"] == "gpu-node-1"
    updated = datetime.fromisoformat(status["last_update"])
    assert abs(datetime.now() - updated) < timedelta(seconds=10)
    assert all(len(pair) == 2 for pair in status["ips"])
    assert not any(ip.startswith("127.") for _, ip in status["ips"])
    assert len(status["gpus"]) == 2
    for gpu_json, gpu in zip(status["gpus"], scenario.gpus):
        assert list(gpu_json) == ["index", "name", "use_mem", "tot_mem", "utilize", "temp", "users"]
        assert gpu_json["name"] == gpu.name
        assert gpu_json["use_mem"] == gpu.memory_used // MIB
        assert gpu_json["tot_mem"] == gpu.memory_total // MIB
        assert gpu_json["utilize"] == gpu.utilization_gpu
        assert gpu_json["temp"] == gpu.temperature
        assert [u["pid"] for u in gpu_json["users"]] == [p.pid for p in gpu.processes]
        for user, process in zip(gpu_json["users"], gpu.processes):
            # "mem(MiB)", as node_info.py wrote it: old clients read exactly that key.
            assert list(user) == ["pid", "username", "mem(MiB)", "command"]
            assert user["username"] == getpass.getuser()
            assert user["mem(MiB)"] == process.used_bytes // MIB
            assert user["command"] == "sleep 600"


def test_wrong_password_is_403_json(exporter_factory):
    exporter = exporter_factory(fake.idle(1))
    response = requests.post(f"{exporter.url}/get-status", json={"passwd": "nope"}, timeout=5)
    assert response.status_code == 403
    assert response.json() == {"error": "wrong password"}


def test_malformed_bodies_are_400_with_a_reason(exporter_factory):
    exporter = exporter_factory(fake.idle(1))
    url = f"{exporter.url}/get-status"
    cases = {
        b"": "missing",
        b"{not json": "not valid JSON",
        b"[1, 2]": "JSON object",
        b'{"password": "x"}': '"passwd"',
        b'{"passwd": 8888}': '"passwd"',
        b"\xff\xfe": "not valid JSON",
    }
    for body, reason in cases.items():
        response = requests.post(url, data=body, timeout=5)
        assert response.status_code == 400, body
        assert reason in response.json()["error"], (body, response.text)
        assert "Traceback" not in response.text


def test_oversized_body_is_413(exporter_factory):
    exporter = exporter_factory(fake.idle(1))
    body = json.dumps({"passwd": "x" * 10_000})
    response = requests.post(f"{exporter.url}/get-status", data=body, timeout=5)
    assert response.status_code == 413
    assert "error" in response.json()


def test_methods_and_unknown_paths_answer_json(exporter_factory):
    exporter = exporter_factory(fake.idle(1))
    wrong_method = requests.get(f"{exporter.url}/get-status", timeout=5)
    assert wrong_method.status_code == 405
    assert "error" in wrong_method.json()
    missing = requests.get(f"{exporter.url}/nothing-here", timeout=5)
    assert missing.status_code == 404
    assert "error" in missing.json()
    landing = requests.get(exporter.url, timeout=5)
    assert landing.status_code == 200
    assert 'href="metrics"' in landing.text
    assert requests.get(f"{exporter.url}/-/healthy", timeout=5).status_code == 200


def test_repeated_wrong_passwords_are_slowed_down(exporter_factory):
    exporter = exporter_factory(fake.idle(1))
    url = f"{exporter.url}/get-status"
    codes = [requests.post(url, json={"passwd": "guess"}, timeout=5).status_code for _ in range(8)]
    assert codes[:5] == [403] * 5
    assert set(codes[5:]) == {429}
    locked = requests.post(url, json={"passwd": exporter.password}, timeout=5)
    assert locked.status_code == 429  # even the right password waits: guessing gains nothing
    assert int(locked.headers["Retry-After"]) >= 1


def _status_code(sock: socket.socket) -> int:
    """The status of the HTTP response arriving on ``sock``."""
    received = b""
    while b"\r\n" not in received:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"connection closed after {received!r}")
        received += chunk
    return int(received.split(b" ", 2)[1])


def test_concurrent_wrong_guesses_cannot_race_the_limiter(exporter_factory):
    # All 30 from one address: the per-client cap is raised so every request reaches the limiter.
    exporter = exporter_factory(fake.idle(1), "--web.max-requests-per-client", "40")
    body = json.dumps({"passwd": "guess"}).encode()
    head = (
        f"POST /get-status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sockets = [
        socket.create_connection(("127.0.0.1", exporter.port), timeout=20) for _ in range(30)
    ]
    try:
        for sock in sockets:
            sock.sendall(head)
        # Every request is now past its headers and in the app, waiting for its body; before the
        # fix all of them passed the limiter's check here, and all 30 passwords were tried.
        time.sleep(0.5)
        for sock in sockets:
            sock.sendall(body)
        codes = [_status_code(sock) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    assert set(codes) <= {403, 429}, codes
    assert codes.count(403) <= 5, codes
    assert codes.count(429) >= 25, codes


def test_password_file_rotation_without_restart(exporter_factory, tmp_path):
    exporter = exporter_factory(fake.idle(1), password="old-secret")
    password_file = next(tmp_path.glob("password-*"))
    password_file.write_text("old-secret\nnew-secret\n")
    assert exporter.status("new-secret")["gpus"]
    assert exporter.status("old-secret")["gpus"]
    password_file.write_text("new-secret\n")
    response = requests.post(f"{exporter.url}/get-status", json={"passwd": "old-secret"}, timeout=5)
    assert response.status_code == 403


def test_debug_prints_the_legacy_json_once_and_exits(fake_nvml, tmp_path):
    scenario_path = tmp_path / "idle.scn"
    write_scenario(scenario_path, fake.idle(1))
    env = nvml_env(fake_nvml, scenario_path)
    debug = subprocess.run(
        [sys.executable, "-m", "exporter", "--debug"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert debug.returncode == 0, debug.stderr
    status = json.loads(debug.stdout)
    assert list(status) == ["hostname", "last_update", "ips", "gpus"]
    assert status["gpus"][0]["name"] == fake.idle(1).gpus[0].name


def test_password_never_accepted_on_the_command_line(fake_nvml):
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--password", "secret"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "not taken on the command line" in result.stderr


def test_password_from_the_environment(exporter_factory):
    exporter = exporter_factory(
        fake.idle(1), password=None, env={"GPU_MONITOR_PASSWORD": "from-env"}
    )
    assert exporter.status("from-env")["gpus"]
    assert "no password configured" not in exporter.log()


def test_default_password_works_and_warns(exporter_factory):
    exporter = exporter_factory(fake.idle(1), password=None)
    assert exporter.status("8888")["gpus"]
    assert "no password configured" in exporter.log()


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--interval", "0"),
        ("--interval", "-1"),
        ("--nvml-timeout", "x"),
        ("--port", "70000"),
        ("--web.max-requests-per-client", "0"),
    ],
)
def test_nonsense_numbers_are_refused_at_start(flag, value):
    result = subprocess.run(
        [sys.executable, "-m", "exporter", flag, value],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert f"argument {flag}" in result.stderr
    assert "Traceback" not in result.stderr
