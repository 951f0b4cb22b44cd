"""The one file watcher every reloaded file goes through (servicekit.filewatch)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from servicekit.filewatch import WatchedFile
from servicekit.password import PasswordSource


def _replace_keeping_stamp(path: Path, text: str) -> None:
    """Rename a same-size file over ``path`` with the same mtime: only the inode differs."""
    before = os.stat(path)
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(text)
    os.utime(temporary, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(temporary, path)


def test_a_password_file_renamed_over_within_one_mtime_tick_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_text("old-password\n")
    source = PasswordSource(password_file=path)
    assert source.matches("old-password")
    _replace_keeping_stamp(path, "new-password\n")
    assert source.matches("new-password")
    assert not source.matches("old-password")


def test_a_bad_version_keeps_the_last_value_and_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "number"
    path.write_text("1")
    watched = WatchedFile(
        path, lambda: int(path.read_text()), what="number file", errors=(ValueError,)
    )
    path.write_text("not a number")
    with caplog.at_level(logging.ERROR):
        assert watched.refresh() is False
        assert watched.refresh() is False
        assert watched.current() == 1
    assert caplog.text.count("number file not reloaded, keeping the previous one") == 1
    assert "invalid literal" in watched.last_error
    path.write_text("22")
    assert watched.refresh() is True and watched.value == 22 and watched.last_error == ""


def test_content_check_sees_a_rewrite_that_keeps_inode_mtime_and_size(tmp_path: Path) -> None:
    path = tmp_path / "value"
    path.write_text("aaaa")
    stamp = os.stat(path)
    plain = WatchedFile(path, path.read_text, what="value", errors=(OSError,))
    hashed = WatchedFile(
        path, path.read_text, what="value", errors=(OSError,), compare_content=True
    )
    with open(path, "r+") as handle:  # in place: same inode
        handle.write("bbbb")
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert plain.refresh() is False  # what stat alone cannot tell
    assert hashed.refresh() is True and hashed.value == "bbbb"


def test_current_looks_at_the_disk_at_most_once_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "value"
    path.write_text("1")
    loads = []

    def load() -> str:
        loads.append(1)
        return path.read_text()

    watched = WatchedFile(path, load, what="value", errors=(OSError,), min_interval=3600)
    path.write_text("22")
    assert watched.current() == "1" and len(loads) == 1
    assert watched.refresh() is True and watched.current() == "22"
