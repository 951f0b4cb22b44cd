"""Who sees processes' command lines, through the real exporter process.

A command line can carry a secret (``--token=...``). /get-status shows it behind its password;
/metrics shows it only behind basic auth or when the operator asks with --metrics.command-line.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import bcrypt
import pytest
import requests
import yaml

from simulator.exporters import Workers
from simulator.fakenvml import scenario as fake
from simulator.metrics import label_sets
from simulator.proc import wait_http, wait_until

SECRET = "--api-token=hunter2-7f3a9c"
ARGV = [sys.executable, "-c", "import time; time.sleep(600)", SECRET]
COMMAND = " ".join(ARGV)
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


@pytest.fixture
def secret_pid() -> Iterator[int]:
    with Workers() as workers:
        yield workers.spawn(ARGV)


def scenario(pid: int) -> fake.FakeScenario:
    return fake.busy(1, [pid])


def commands_in_status(exporter) -> list[str]:
    return [user["command"] for gpu in exporter.status()["gpus"] for user in gpu["users"]]


def wait_for_command_in_status(exporter) -> None:
    # Until the interpreter has started, /proc still shows the command line before exec.
    wait_until(
        lambda: commands_in_status(exporter) == [COMMAND],
        timeout=15,
        what="the worker's command line in /get-status",
    )


def test_metrics_leave_command_lines_out_by_default(exporter_factory, secret_pid):
    exporter = exporter_factory(scenario(secret_pid), "--max-command-length", "1000")
    wait_for_command_in_status(exporter)  # the sampler has read the secret by now
    text = exporter.metrics()
    (info,) = label_sets(text, "gpu_process_info")
    assert "command" not in info
    assert {"gpu", "uuid", "pid", "user"} <= set(info)
    assert info["pid"] == str(secret_pid) and info["user"]
    assert "hunter2" not in text
    openmetrics = requests.get(
        f"{exporter.url}/metrics", headers={"Accept": OPENMETRICS}, timeout=5
    )
    assert openmetrics.headers["Content-Type"].startswith("application/openmetrics-text")
    assert "gpu_process_info{" in openmetrics.text and "hunter2" not in openmetrics.text
    # The legacy JSON, behind its password, keeps the command line.
    assert commands_in_status(exporter) == [COMMAND]


def test_the_flag_puts_command_lines_on_metrics(exporter_factory, secret_pid):
    exporter = exporter_factory(
        scenario(secret_pid), "--metrics.command-line", "--max-command-length", "1000"
    )
    wait_for_command_in_status(exporter)
    (info,) = label_sets(exporter.metrics(), "gpu_process_info")
    assert info["command"] == COMMAND
    assert "command lines are published on /metrics" in exporter.log()


def write_web_config(tmp_path, document: dict) -> str:
    path = tmp_path / "web-config.yml"
    path.write_text(yaml.safe_dump(document))
    return str(path)


def test_metrics_behind_basic_auth_have_command_lines(exporter_factory, secret_pid, tmp_path):
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    config = write_web_config(tmp_path, {"basic_auth_users": {"prom": hashed}})
    exporter = exporter_factory(
        scenario(secret_pid),
        "--web-config-file",
        config,
        "--max-command-length",
        "1000",
        wait_ready=False,
    )
    wait_http(f"{exporter.url}/-/ready", timeout=20)
    exporter.session.auth = ("prom", "s3cret")
    wait_for_command_in_status(exporter)
    (info,) = label_sets(exporter.metrics(), "gpu_process_info")
    assert info["command"] == COMMAND
    assert requests.get(f"{exporter.url}/metrics", timeout=5).status_code == 401


def test_a_web_config_without_users_does_not_publish_command_lines(
    exporter_factory, secret_pid, tmp_path
):
    config = write_web_config(
        tmp_path, {"http_server_config": {"headers": {"X-Frame-Options": "deny"}}}
    )
    exporter = exporter_factory(scenario(secret_pid), "--web-config-file", config)
    wait_for_command_in_status(exporter)
    text = exporter.metrics()
    assert label_sets(text, "gpu_process_info")
    assert "hunter2" not in text and "command=" not in text
