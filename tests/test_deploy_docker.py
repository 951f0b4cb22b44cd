"""The Dockerfile in deploy/docker, checked as an image build would meet it.

No container engine runs here: the Dockerfile goes through hadolint, and its shape and COPY
sources are checked against the repository and its .dockerignore.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.deploy import DOCKERFILE, REPO, run, tool


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
    result = run(tool("hadolint"), "--no-color", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_mistakes(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get install curl\n", encoding="utf-8")
    result = run(tool("hadolint"), "--no-color", str(bad))
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
