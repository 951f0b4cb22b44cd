"""Real cgroups shaped like Slurm jobs and containers, made for one test and removed after it.

Needs root and writable cgroup mounts; every step that cannot be done skips the test with the
reason. Processes moved into a cgroup are moved back to the hierarchy's root on cleanup.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

CGROUP_ROOT = Path("/sys/fs/cgroup")


def v2_root() -> Path | None:
    for candidate in (CGROUP_ROOT / "unified", CGROUP_ROOT):
        if (candidate / "cgroup.subtree_control").exists():
            return candidate  # only the unified hierarchy's root has this file
    return None


def v1_root(controller: str) -> Path | None:
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


def require_root(root: Path | None, what: str) -> Path:
    """``root``, or skip the test saying which hierarchy is missing."""
    if root is None:
        pytest.skip(f"no {what} mounted under {CGROUP_ROOT}")
    return root


@pytest.fixture
def placement() -> Iterator[Placement]:
    """A :class:`Placement` whose cgroups are removed after the test; skipped without root."""
    if os.geteuid() != 0:
        pytest.skip("creating cgroups and moving processes needs root")
    place = Placement()
    try:
        yield place
    finally:
        place.cleanup()
