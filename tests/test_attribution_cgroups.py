"""Attribution of real processes placed in real cgroups shaped like Slurm jobs and containers.

Needs root and writable cgroup mounts (cgroup v1 controllers under /sys/fs/cgroup/<controller>,
the unified hierarchy at /sys/fs/cgroup/unified or /sys/fs/cgroup); skipped with the reason
otherwise. Every cgroup made here is removed again and every process moved back and killed.
Names carry this run's pid so that concurrent runs never share a leaf.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.attribution import read_attribution
from exporter.snapshot import Attribution
from tests.support.cgroups import Placement, require_root, v1_root, v2_root

pytestmark = pytest.mark.cgroups


@pytest.fixture
def sleeper() -> Iterator[int]:
    """A real process that stays put until the test is done."""
    child = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
    try:
        yield child.pid
    finally:
        child.kill()
        child.wait()


def _job_id(base: int) -> str:
    return str(base * 100_000 + os.getpid() % 100_000)


def test_slurm_v1_job(placement: Placement, sleeper: int) -> None:
    root = require_root(v1_root("freezer"), "cgroup v1 freezer hierarchy")
    job = _job_id(4242)
    step = placement.make(root, f"slurm/uid_1000/job_{job}/step_0")
    placement.move(root, step, sleeper)
    assert read_attribution(sleeper) == Attribution(slurm_job=job)


def test_slurm_v2_job(placement: Placement, sleeper: int) -> None:
    root = require_root(v2_root(), "cgroup v2 hierarchy")
    job = _job_id(4343)
    step = placement.make(root, f"system.slice/slurmstepd.scope/job_{job}/step_batch")
    placement.move(root, step, sleeper)
    assert read_attribution(sleeper) == Attribution(slurm_job=job)


def test_docker_container_v2(placement: Placement, sleeper: int) -> None:
    root = require_root(v2_root(), "cgroup v2 hierarchy")
    container = secrets.token_hex(32)
    scope = placement.make(root, f"system.slice/docker-{container}.scope")
    placement.move(root, scope, sleeper)
    assert read_attribution(sleeper) == Attribution(container=container[:12])


def test_docker_container_v1(placement: Placement, sleeper: int) -> None:
    root = require_root(v1_root("freezer"), "cgroup v1 freezer hierarchy")
    container = secrets.token_hex(32)
    cgroup = placement.make(root, f"docker/{container}")
    placement.move(root, cgroup, sleeper)
    assert read_attribution(sleeper) == Attribution(container=container[:12])


def test_hybrid_host_prefers_the_unified_hierarchy(placement: Placement, sleeper: int) -> None:
    """In a v1 Slurm job and a v2 container at once: the v2 line is the one believed."""
    v1 = require_root(v1_root("freezer"), "cgroup v1 freezer hierarchy")
    v2 = require_root(v2_root(), "cgroup v2 hierarchy")  # with a v1 hierarchy: a hybrid host
    job, container = _job_id(4444), secrets.token_hex(32)
    placement.move(v1, placement.make(v1, f"slurm/uid_1000/job_{job}/step_0"), sleeper)
    placement.move(v2, placement.make(v2, f"system.slice/docker-{container}.scope"), sleeper)
    assert read_attribution(sleeper) == Attribution(container=container[:12])


def test_a_killed_process_has_no_attribution(placement: Placement) -> None:
    root = require_root(v2_root(), "cgroup v2 hierarchy")
    container = secrets.token_hex(32)
    scope = placement.make(root, f"system.slice/docker-{container}.scope")
    child = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
    try:
        placement.move(root, scope, child.pid)
        assert read_attribution(child.pid) == Attribution(container=container[:12])
    finally:
        child.kill()
        child.wait()
    assert read_attribution(child.pid) == Attribution()


def test_cleanup_moves_back_and_removes_what_it_made(sleeper: int) -> None:
    if os.geteuid() != 0:
        pytest.skip("creating cgroups and moving processes needs root")
    root = require_root(v2_root(), "cgroup v2 hierarchy")
    container = secrets.token_hex(32)
    place = Placement()
    try:
        scope = place.make(root, f"system.slice/docker-{container}.scope")
        place.move(root, scope, sleeper)
    finally:
        place.cleanup()
    assert not scope.exists()
    assert "0::/\n" in Path(f"/proc/{sleeper}/cgroup").read_text()
