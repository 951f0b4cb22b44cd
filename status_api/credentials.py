"""The credentials the status service sends to the nodes, re-read when their files change.

The legacy ``/get-status`` password and the exporters' basic-auth password both come from files
(or the environment), never the command line; a rotation needs no restart, and a file that turns
unreadable or empty keeps the previous password, with one error in the log, so a half-done edit
does not lock every node out.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from servicekit.filewatch import WatchedFile
from servicekit.password import PasswordError, load_password

log = logging.getLogger("status_api")


def first_line(path: Path, what: str) -> str:
    """The first non-blank line of ``path``; ValueError names the file when there is none."""
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read {what} {path}: {error}") from None
    for line in lines:
        if line:
            return line
    raise ValueError(f"{what} {path} is empty")


def _reloaded(path: Path | None, load: Callable[[], str], *, what: str) -> Callable[[], str]:
    watched = WatchedFile(
        path,
        load,
        what=what,
        errors=(PasswordError, ValueError),
        keeping=lambda value: "the previous password",
        logger=log,
    )
    return watched.current


def node_password(path: Path | None) -> Callable[[], str]:
    """The /get-status password: ``path``'s first line, else the environment, else the default."""
    return _reloaded(path, lambda: load_password(password_file=path), what="password file")


def basic_auth(
    user: str, path: Path, *, flag: str = "--node-basic-auth-user"
) -> Callable[[], tuple[str, str]]:
    """Basic-auth credentials (for the exporters, or the query engine with ``flag``), the
    password re-read when its file changes."""
    if ":" in user:  # the header joins user and password with ":"
        raise ValueError(f"{flag} {user!r} must not contain ':'")
    password = _reloaded(
        path,
        lambda: first_line(path, "basic-auth password file"),
        what="basic-auth password file",
    )
    return lambda: (user, password())
