"""The systemd units in deploy/systemd, checked as a node would meet them.

No init system runs here: each unit goes through ``systemd-analyze verify`` and ``security``,
and every command line is parsed by the programs' real argument parsers, so a renamed flag,
port or path fails here instead of on a node.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from exporter.cli import build_parser as exporter_parser
from status_api.cli import build_parser as status_parser
from status_api.cli import build_targets_parser
from status_api.report import build_parser as report_parser
from tests.support.deploy import BIN, SYSTEMD, parses, read_env_file, run, tool

UNITS = sorted(path.name for path in SYSTEMD.glob("*.service"))
TIMERS = sorted(path.name for path in SYSTEMD.glob("*.timer"))


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
    for name in [*UNITS, *TIMERS]:
        text = (SYSTEMD / name).read_text(encoding="utf-8")
        for program in ("gpu-exporter", "gpu-status-api"):
            installed = BIN / program
            assert installed.exists(), f"{installed} missing: install the package first"
            text = text.replace(f"/usr/local/bin/{program}", str(installed))
        (directory / name).write_text(text, encoding="utf-8")
    return directory


def _verify(unit: Path) -> list[str]:
    """systemd-analyze verify's complaints about ``unit`` (it exits 0 on many of them)."""
    result = run(tool("systemd-analyze"), "verify", "--man=no", str(unit))
    complaints = [line for line in result.stderr.splitlines() if unit.name in line]
    if result.returncode != 0:
        complaints.append(f"exit {result.returncode}: {result.stderr.strip()}")
    return complaints


def test_four_units_and_a_timer_are_shipped() -> None:
    assert set(UNITS) == {
        "gpu-exporter.service",
        "gpu-status-api.service",
        "gpu-status-api-targets.service",
        "gpu-status-api-report.service",
    }
    assert TIMERS == ["gpu-status-api-report.timer"]


@pytest.mark.parametrize("name", [*UNITS, *TIMERS])
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
    result = run(
        tool("systemd-analyze"),
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
    # The state file lives in the one directory the sandbox lets the service write.
    words = exec_arguments(one["ExecStart"], {})
    state_file = Path(words[words.index("--state-file") + 1])
    assert state_file.parent == Path("/var/lib") / one["StateDirectory"]
    assert one["ProtectSystem"] == "strict"


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
    args = parses(parser(), words[1:])
    assert args.port in (7070, 7080)
    assert environment["GPU_MONITOR_PASSWORD"] not in words, "password on the command line"


def test_targets_unit_command_line_parses() -> None:
    exec_start = read_unit(SYSTEMD / "gpu-status-api-targets.service")["Service"]["ExecStart"][-1]
    words = exec_arguments(exec_start, {})
    assert words[1] == "targets"
    args = parses(build_targets_parser(), words[2:])
    assert args.watch and args.output == Path("/etc/prometheus/targets/gpu-nodes.json")


def test_report_unit_mails_weekly_with_the_example_arguments() -> None:
    """The timer starts the report service once a week; its command line, with the example
    environment file, is a valid ``report --mail`` that needs nothing else to send."""
    timer = {key: values[-1] for key, values in read_unit(SYSTEMD / TIMERS[0])["Timer"].items()}
    assert timer["Unit"] == "gpu-status-api-report.service" and timer["Persistent"] == "true"
    result = run(
        tool("systemd-analyze"), "calendar", "--iterations=2", "--base-time=2026-01-01 00:00:00",
        timer["OnCalendar"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    runs = re.findall(r"(?:Next elapse|Iter\. #2): \w+ (\d+-\d+-\d+)", result.stdout)
    assert runs == ["2026-01-05", "2026-01-12"], result.stdout  # Mondays, a week apart

    service = read_unit(SYSTEMD / "gpu-status-api-report.service")["Service"]
    one = {key: values[-1] for key, values in service.items()}
    assert one["Type"] == "oneshot" and one["DynamicUser"] == "yes"
    assert one["EnvironmentFile"].endswith("/gpu-status-api-report.env")
    environment = read_env_file(SYSTEMD / "gpu-status-api-report.env.example")
    words = exec_arguments(one["ExecStart"], environment)
    assert words[1] == "report"
    args = parses(report_parser(), words[2:])
    assert args.mail and args.since == "7d" and not args.dry_run
    assert args.smtp_server and args.mail_from and args.admin_mail and args.mail_domain
