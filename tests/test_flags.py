"""Both command lines take node_exporter's flag names, and every older name still does the same.

Each case starts the real process: the address and port it binds, the web config it enforces and
the log lines it writes are what is compared, not the parsed arguments.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import bcrypt
import pytest
import requests

from exporter.cli import build_parser as exporter_parser
from simulator.exporters import nvml_env, write_scenario
from simulator.fakenvml import scenario as fake
from simulator.proc import ManagedProcess, free_port, wait_http
from status_api.cli import build_parser as status_parser
from tests.support.status_service import child_env

# Another loopback address: a service bound to it is not reachable on 127.0.0.1, so the host part
# of each flag is seen to take effect, not only the port.
HOST = "127.0.0.2"

Starter = Callable[..., ManagedProcess]


def _listen(style: str, port: int) -> list[str]:
    return {
        "web.listen-address": ["--web.listen-address", f"{HOST}:{port}"],
        "web.listen-address=": [f"--web.listen-address={HOST}:{port}"],
        "listen-address and port": ["--listen-address", HOST, "--port", str(port)],
        # Each older flag sets its part of the newer one; the later flag wins.
        "port after web.listen-address": ["--web.listen-address", f"{HOST}:1", "--port", str(port)],
        "web.listen-address after both": [
            "--listen-address", "127.0.0.1", "--port", "1",
            "--web.listen-address", f"{HOST}:{port}",
        ],
    }[style]  # fmt: skip


LISTEN_STYLES = [
    "web.listen-address",
    "web.listen-address=",
    "listen-address and port",
    "port after web.listen-address",
    "web.listen-address after both",
]


@pytest.fixture
def start(fake_nvml: Path, tmp_path: Path) -> Iterator[Starter]:
    """``start(program, *args)``: gpu-exporter (on the fake NVML) or gpu-status-api."""
    started: list[ManagedProcess] = []

    def run(program: str, *args: str) -> ManagedProcess:
        n = len(started)
        if program == "exporter":
            scenario = tmp_path / f"scenario-{n}.scn"
            write_scenario(scenario, fake.idle(1))
            command = [sys.executable, "-m", "exporter", "--interval", "0.5", *args]
            env = child_env(nvml_env(fake_nvml, scenario))
        else:
            hosts = tmp_path / f"hosts-{n}.txt"
            hosts.write_text("127.0.0.1:1\n")
            command = [sys.executable, "-m", "status_api", "-c", str(hosts), *args]
            command += ["--interval", "0.5", "--timeout", "0.5"]
            env = child_env()
        process = ManagedProcess(command, log_path=tmp_path / f"{program}-{n}.log", env=env)
        started.append(process)
        return process

    yield run
    for process in started:
        process.stop()


def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("program", ["exporter", "status_api"])
@pytest.mark.parametrize("style", LISTEN_STYLES)
def test_every_listen_flag_binds_the_same_address(start: Starter, program: str, style: str):
    port = free_port(HOST)
    process = start(program, *_listen(style, port))
    try:
        wait_http(f"http://{HOST}:{port}/-/healthy", timeout=20)
    except TimeoutError as error:
        raise AssertionError(f"{error}\n{process.log()}") from None
    assert _refused("127.0.0.1", port), "bound to every interface, not to the host given"


def _users_config(tmp_path: Path) -> Path:
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()
    path = tmp_path / "web-config.yml"
    path.write_text(f"basic_auth_users:\n  prom: '{hashed}'\n")
    return path


@pytest.mark.parametrize("program", ["exporter", "status_api"])
@pytest.mark.parametrize("flag", ["--web.config.file", "--web-config-file"])
def test_both_web_config_flags_enforce_the_file(
    start: Starter, tmp_path: Path, program: str, flag: str
):
    port = free_port()
    start(program, "--web.listen-address", f"127.0.0.1:{port}", flag, str(_users_config(tmp_path)))
    url = f"http://127.0.0.1:{port}/metrics"
    wait_http(f"http://127.0.0.1:{port}/-/healthy", timeout=20)
    assert requests.get(url, timeout=5).status_code == 401
    assert requests.get(url, auth=("prom", "secret"), timeout=5).status_code == 200


# (flags, whether INFO lines are written, whether WARNING lines are). Both programs warn at start
# that no password is configured, and log "listening on" at INFO.
LOG_LEVELS = [
    ([], True, True),
    (["--log.level", "debug"], True, True),
    (["--log.level", "info"], True, True),
    (["--log.level", "warn"], False, True),
    (["--disable_log"], False, True),
    (["--log.level=error"], False, False),
]


@pytest.mark.parametrize("program", ["exporter", "status_api"])
@pytest.mark.parametrize(("flags", "info", "warning"), LOG_LEVELS, ids=str)
def test_log_level_flags_filter_the_log(
    start: Starter, program: str, flags: list[str], info: bool, warning: bool
):
    port = free_port()
    process = start(program, "--web.listen-address", f"127.0.0.1:{port}", *flags)
    wait_http(f"http://127.0.0.1:{port}/-/healthy", timeout=20)
    log = process.log()
    assert ("INFO" in log and "listening on" in log) is info, log
    assert ("WARNING" in log and "no " in log and "password configured" in log) is warning, log


@pytest.mark.parametrize("parser", [exporter_parser, status_parser])
@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("7080", "is not host:port"),
        ("::1:7080", "IPv6 address goes in brackets"),
        ("[node1]:7080", "not a bracketed IPv6 address"),
        ("127.0.0.1:99999", "is not a port number"),
        ("127.0.0.1:", "is not a port number"),
    ],
)
def test_a_bad_listen_address_is_a_usage_error(
    parser: Callable, value: str, complaint: str, capsys: pytest.CaptureFixture[str]
):
    with pytest.raises(SystemExit) as exit_status:
        parser().parse_args(["--web.listen-address", value])
    assert exit_status.value.code == 2
    assert complaint in capsys.readouterr().err


@pytest.mark.parametrize("parser", [exporter_parser, status_parser])
def test_help_shows_the_node_exporter_names_first(parser: Callable):
    text = parser().format_help()
    assert "--web.config.file FILE, --web-config-file FILE" in text
    assert text.index("--web.listen-address") < text.index("--listen-address HOST")
    assert "--log.level" in text
