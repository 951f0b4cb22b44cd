"""Password files open to other users are warned about at start, by both services.

A password file should be mode 0600 and owned by the user running the service: group or world
permissions let other users of the machine read the password, and a file owned by another user
can be opened up by that user at any time. Tested through the real processes' stderr.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from simulator.fakenvml import scenario as fake
from simulator.proc import free_port
from tests.support.status_service import PASSWORD

NOBODY = 65534
ADVICE = "other users may read the password; make it mode 0600 and owned by the user running"


def _password_file(path: Path, *, mode: int, owner: int | None = None) -> Path:
    path.write_text(PASSWORD + "\n")
    path.chmod(mode)
    if owner is not None:
        os.chown(path, owner, -1)
    return path


def _warnings(log: str) -> list[str]:
    return [line for line in log.splitlines() if "WARNING" in line and ADVICE in line]


def test_exporter_warns_about_a_password_file_open_to_others(
    exporter_factory, tmp_path: Path
) -> None:
    group = _password_file(tmp_path / "group-readable", mode=0o640)
    exporter = exporter_factory(fake.idle(1), "--password-file", str(group), password=None)
    (warning,) = _warnings(exporter.log())
    assert f"--password-file {group} is open to its group (mode 0640)" in warning

    world = _password_file(tmp_path / "world-readable", mode=0o604)
    exporter = exporter_factory(fake.idle(1), "--password-file", str(world), password=None)
    (warning,) = _warnings(exporter.log())
    assert f"--password-file {world} is open to every user (mode 0604)" in warning

    private = _password_file(tmp_path / "private", mode=0o600)
    exporter = exporter_factory(fake.idle(1), "--password-file", str(private), password=None)
    assert _warnings(exporter.log()) == []
    assert exporter.status(PASSWORD)["gpus"]  # the file is used either way


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_exporter_warns_about_a_password_file_of_another_user(
    exporter_factory, tmp_path: Path
) -> None:
    foreign = _password_file(tmp_path / "foreign", mode=0o600, owner=NOBODY)
    exporter = exporter_factory(fake.idle(1), "--password-file", str(foreign), password=None)
    (warning,) = _warnings(exporter.log())
    assert f"--password-file {foreign} is owned by another user (uid {NOBODY})" in warning


def test_status_service_warns_about_both_password_files(
    status_service_factory,
    tmp_path: Path,
) -> None:
    hosts = [f"127.0.0.1:{free_port()}"]  # nothing answers: the warnings come before any poll
    node_password = _password_file(tmp_path / "node-password", mode=0o644)
    basic = _password_file(tmp_path / "basic-auth", mode=0o660)
    auth = ["--node-basic-auth-user", "status-api"]
    exposed = status_service_factory(
        hosts, "--password-file", str(node_password),
        *auth, "--node-basic-auth-password-file", str(basic), password=None,
    )  # fmt: skip
    warnings = _warnings(exposed.log())
    assert len(warnings) == 2, warnings
    assert any(
        f"--password-file {node_password} is open to its group and every user (mode 0644)" in w
        for w in warnings
    ), warnings
    assert any(
        f"--node-basic-auth-password-file {basic} is open to its group (mode 0660)" in w
        for w in warnings
    ), warnings

    node_password.chmod(0o600)
    basic.chmod(0o600)
    private = status_service_factory(
        hosts, "--password-file", str(node_password),
        *auth, "--node-basic-auth-password-file", str(basic), password=None,
    )  # fmt: skip
    assert _warnings(private.log()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_status_service_warns_about_a_basic_auth_file_of_another_user(
    status_service_factory,
    tmp_path: Path,
) -> None:
    basic = _password_file(tmp_path / "basic-auth", mode=0o600, owner=NOBODY)
    service = status_service_factory(
        [f"127.0.0.1:{free_port()}"],
        "--node-basic-auth-user", "status-api", "--node-basic-auth-password-file", str(basic),
    )  # fmt: skip
    (warning,) = _warnings(service.log())
    assert (
        f"--node-basic-auth-password-file {basic} is owned by another user (uid {NOBODY})"
        in warning
    )
