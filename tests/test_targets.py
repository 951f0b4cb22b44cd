"""``gpu-status-api targets``: hosts.txt to Prometheus file_sd JSON, once and with --watch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simulator.proc import ManagedProcess, wait_until
from status_api.hosts import parse_hosts
from status_api.targets import render, target_groups, write_atomically

HOSTS = """# lab
node1
node2:7081   # another port
10.0.0.12
[fd00::12]:9100
"""
EXPECTED = [
    {"targets": ["node1:7080"], "labels": {"node": "node1"}},
    {"targets": ["node2:7081"], "labels": {"node": "node2"}},
    {"targets": ["10.0.0.12:7080"], "labels": {"node": "10.0.0.12"}},
    {"targets": ["[fd00::12]:9100"], "labels": {"node": "[fd00::12]"}},
]


def _targets_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "status_api", "targets", *args]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _targets_command(*args), capture_output=True, text=True, timeout=30, check=False
    )


def test_target_groups_keep_order_and_label_the_node() -> None:
    assert target_groups(parse_hosts(HOSTS)) == EXPECTED
    assert json.loads(render(parse_hosts(HOSTS))) == EXPECTED
    assert render([]) == b"[]\n"


def test_write_atomically_replaces_by_rename(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "targets.json"
    assert write_atomically(path, b"[1]\n") is True
    first_inode = path.stat().st_ino
    assert write_atomically(path, b"[1]\n") is False  # same content: not rewritten
    assert path.stat().st_ino == first_inode
    assert write_atomically(path, b"[2]\n") is True
    assert path.read_bytes() == b"[2]\n"
    assert path.stat().st_ino != first_inode  # a new file was renamed over the old one
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in path.parent.iterdir()) == ["targets.json"]  # no temp left


def test_cli_writes_the_file(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts.txt"
    hosts.write_text(HOSTS)
    output = tmp_path / "targets" / "gpu-nodes.json"
    result = _run("-c", str(hosts), "-o", str(output))
    assert result.returncode == 0, result.stderr
    assert json.loads(output.read_text()) == EXPECTED


def test_cli_prints_without_output_and_honours_node_port(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("node1\nnode2:7081\n")
    result = _run("-c", str(hosts), "--node_port", "9400")
    assert result.returncode == 0, result.stderr
    assert [group["targets"] for group in json.loads(result.stdout)] == [
        ["node1:9400"],
        ["node2:7081"],
    ]


def test_cli_refuses_a_broken_hosts_file(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("node1\nnode 2\n")
    output = tmp_path / "targets.json"
    result = _run("-c", str(hosts), "-o", str(output))
    assert result.returncode == 2
    assert f"{hosts}:2:" in result.stderr
    assert not output.exists()
    missing = _run("-c", str(tmp_path / "nope.txt"))
    assert missing.returncode == 2
    assert "nope.txt:0: cannot read" in missing.stderr
    watch_without_output = _run("-c", str(hosts), "--watch")
    assert watch_without_output.returncode == 2
    assert "--watch needs --output" in watch_without_output.stderr


def _replace(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(text)
    os.replace(temporary, path)


def test_watch_regenerates_and_keeps_the_last_good_file(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("node1\n")
    output = tmp_path / "targets.json"
    process = ManagedProcess(
        _targets_command("-c", str(hosts), "-o", str(output), "--watch", "--watch-interval", "0.1"),
        log_path=tmp_path / "targets.log",
    )
    try:

        def targets() -> list[list[str]] | None:
            try:
                return [group["targets"] for group in json.loads(output.read_text())]
            except (OSError, ValueError):
                return None  # not there yet; a half-written file would fail the test below

        wait_until(lambda: targets() == [["node1:7080"]], timeout=15, what="first file")
        _replace(hosts, "node1\nnode2:7081\n")
        wait_until(lambda: targets() == [["node1:7080"], ["node2:7081"]], timeout=10, what="node2")

        _replace(hosts, "node1\nnode2:7081\nbroken line\n")
        wait_until(lambda: "hosts.txt:3:" in process.log(), timeout=10, what="error logged")
        assert targets() == [["node1:7080"], ["node2:7081"]]

        hosts.write_text("node3\n")  # in place this time
        wait_until(lambda: targets() == [["node3:7080"]], timeout=10, what="node3")
        assert process.alive()
    finally:
        code = process.stop()
    assert code == 0, process.log()


@pytest.mark.parametrize("rounds", [40])
def test_watch_never_exposes_a_partial_file(tmp_path: Path, rounds: int) -> None:
    """Read the target file continuously while hosts.txt keeps changing: always valid JSON."""
    hosts = tmp_path / "hosts.txt"
    many = [f"node{i}.lab.example.org" for i in range(2000)]
    hosts.write_text("\n".join(many) + "\n")
    output = tmp_path / "targets.json"
    process = ManagedProcess(
        _targets_command(
            "-c", str(hosts), "-o", str(output), "--watch", "--watch-interval", "0.02"
        ),
        log_path=tmp_path / "targets.log",
    )
    try:
        wait_until(output.exists, timeout=15, what="first file")
        sizes = set()
        for i in range(rounds):
            _replace(hosts, "\n".join(many[: 1000 + (i % 2) * 1000]) + "\n")
            deadline = time.monotonic() + 0.1
            while time.monotonic() < deadline:
                document = json.loads(output.read_bytes())  # raises on a torn file
                sizes.add(len(document))
        assert sizes == {1000, 2000}
    finally:
        process.stop()
