"""Attribution of real processes placed in real cgroups shaped like Slurm jobs and containers.

Needs root and writable cgroup mounts (cgroup v1 controllers under /sys/fs/cgroup/<controller>,
the unified hierarchy at /sys/fs/cgroup/unified or /sys/fs/cgroup); skipped with the reason
otherwise. Every cgroup made here is removed again and every process moved back and killed.
Names carry this run's pid so that concurrent runs never share a leaf.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.attribution import CgroupAttributor
from exporter.snapshot import Attribution

pytestmark = pytest.mark.cgroups

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _v2_root() -> Path | None:
    for candidate in (CGROUP_ROOT / "unified", CGROUP_ROOT):
        if (candidate / "cgroup.subtree_control").exists():
            return candidate  # only the unified hierarchy's root has this file
    return None


def _v1_root(controller: str) -> Path | None:
    root = CGROUP_ROOT / controller
    if (root / "tasks").exists():  # a v1 hierarchy; v2 has no tasks file
        return root
    return None


class Placement:
    """Cgroups made for one test, and the processes moved into them."""

    def __init__(self) -> None:
        self._made: list[Path] = []  # in creation order: parents before children
        self._moved: list[tuple[Path, int]] = []  # (hierarchy root, pid)

    def make(self, root: Path, relative: str) -> Path:
        """Create ``root/relative`` and the missing parents; skip the test where that fails."""
        path = root
        for part in relative.strip("/").split("/"):
            path = path / part
            if path.is_dir():
                continue
            try:
                path.mkdir()
            except FileExistsError:
                continue  # a concurrent run made it a moment ago; it removes it, not us
            except OSError as error:
                pytest.skip(f"cgroups are not writable here ({path}: {error.strerror})")
            self._made.append(path)
        return path

    def move(self, root: Path, cgroup: Path, pid: int) -> None:
        try:
            (cgroup / "cgroup.procs").write_text(f"{pid}\n")
        except OSError as error:
            pytest.skip(f"cannot move a process into {cgroup}: {error.strerror}")
        self._moved.append((root, pid))

    def cleanup(self) -> None:
        for root, pid in self._moved:
            with contextlib.suppress(OSError):  # gone already, or killed below anyway
                (root / "cgroup.procs").write_text(f"{pid}\n")
        for path in reversed(self._made):
            with contextlib.suppress(OSError):  # a concurrent run still has a child in it
                path.rmdir()


@pytest.fixture
def placement() -> Iterator[Placement]:
    if os.geteuid() != 0:
        pytest.skip("creating cgroups and moving processes needs root")
    place = Placement()
    try:
        yield place
    finally:
        place.cleanup()


@pytest.fixture
def sleeper() -> Iterator[int]:
    """A real process that stays put until the test is done."""
    child = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
    try:
        yield child.pid
    finally:
        child.kill()
        child.wait()


def _require(root: Path | None, what: str) -> Path:
    if root is None:
        pytest.skip(f"no {what} mounted under {CGROUP_ROOT}")
    return root


def _job_id(base: int) -> str:
    return str(base * 100_000 + os.getpid() % 100_000)


def test_slurm_v1_job(placement: Placement, sleeper: int) -> None:
    root = _require(_v1_root("freezer"), "cgroup v1 freezer hierarchy")
    job = _job_id(4242)
    step = placement.make(root, f"slurm/uid_1000/job_{job}/step_0")
    placement.move(root, step, sleeper)
    assert CgroupAttributor().attribution(sleeper) == Attribution(slurm_job=job)


def test_slurm_v2_job(placement: Placement, sleeper: int) -> None:
    root = _require(_v2_root(), "cgroup v2 hierarchy")
    job = _job_id(4343)
    step = placement.make(root, f"system.slice/slurmstepd.scope/job_{job}/step_batch")
    placement.move(root, step, sleeper)
    assert CgroupAttributor().attribution(sleeper) == Attribution(slurm_job=job)


def test_docker_container_v2(placement: Placement, sleeper: int) -> None:
    root = _require(_v2_root(), "cgroup v2 hierarchy")
    container = secrets.token_hex(32)
    scope = placement.make(root, f"system.slice/docker-{container}.scope")
    placement.move(root, scope, sleeper)
    assert CgroupAttributor().attribution(sleeper) == Attribution(container=container[:12])


def test_docker_container_v1(placement: Placement, sleeper: int) -> None:
    root = _require(_v1_root("freezer"), "cgroup v1 freezer hierarchy")
    container = secrets.token_hex(32)
    cgroup = placement.make(root, f"docker/{container}")
    placement.move(root, cgroup, sleeper)
    assert CgroupAttributor().attribution(sleeper) == Attribution(container=container[:12])


def test_hybrid_host_prefers_the_unified_hierarchy(placement: Placement, sleeper: int) -> None:
    """In a v1 Slurm job and a v2 container at once: the v2 line is the one believed."""
    v1 = _require(_v1_root("freezer"), "cgroup v1 freezer hierarchy")
    v2 = _require(_v2_root(), "cgroup v2 hierarchy")  # with a v1 hierarchy: a hybrid host
    job, container = _job_id(4444), secrets.token_hex(32)
    placement.move(v1, placement.make(v1, f"slurm/uid_1000/job_{job}/step_0"), sleeper)
    placement.move(v2, placement.make(v2, f"system.slice/docker-{container}.scope"), sleeper)
    attributor = CgroupAttributor()
    assert attributor.attribution(sleeper) == Attribution(container=container[:12])


def test_a_killed_process_has_no_attribution(placement: Placement) -> None:
    root = _require(_v2_root(), "cgroup v2 hierarchy")
    container = secrets.token_hex(32)
    scope = placement.make(root, f"system.slice/docker-{container}.scope")
    child = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
    try:
        placement.move(root, scope, child.pid)
        attributor = CgroupAttributor()
        assert attributor.resolve({child.pid}) == {child.pid: Attribution(container=container[:12])}
    finally:
        child.kill()
        child.wait()
    assert attributor.resolve({child.pid}) == {child.pid: Attribution()}
    assert attributor.cached_pids() == set()


def test_cleanup_moves_back_and_removes_what_it_made(sleeper: int) -> None:
    if os.geteuid() != 0:
        pytest.skip("creating cgroups and moving processes needs root")
    root = _require(_v2_root(), "cgroup v2 hierarchy")
    container = secrets.token_hex(32)
    place = Placement()
    try:
        scope = place.make(root, f"system.slice/docker-{container}.scope")
        place.move(root, scope, sleeper)
    finally:
        place.cleanup()
    assert not scope.exists()
    assert "0::/\n" in Path(f"/proc/{sleeper}/cgroup").read_text()
