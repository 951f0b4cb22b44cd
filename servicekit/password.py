"""The legacy ``/get-status`` password: its source, its check, and slowing down guessing.

The password never comes from the command line (``ps`` would show it): it is read from a file
(``--password-file``) or the ``GPU_MONITOR_PASSWORD`` environment variable, else the old default.
A password file may hold several passwords, one per line, all accepted: that is how a password is
rotated without downtime (add the new one, switch the clients, remove the old). The file is re-read
when it changes (:mod:`servicekit.filewatch`). Comparison is constant-time; slowing down a client
that keeps guessing wrong is :mod:`servicekit.limiter`'s.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from servicekit.filewatch import WatchedFile

log = logging.getLogger(__name__)

ENV_VAR = "GPU_MONITOR_PASSWORD"
DEFAULT_PASSWORD = "8888"


class PasswordError(Exception):
    """The password file is missing, unreadable or empty."""


def _read_file(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PasswordError(f"cannot read password file {path}: {error}") from error
    passwords = [line.strip() for line in text.splitlines() if line.strip()]
    if not passwords:
        raise PasswordError(f"password file {path} holds no password")
    return passwords


def uses_default(*, password_file: Path | None, env_var: str = ENV_VAR) -> bool:
    """Whether neither a file nor the environment gives a password, so the old default applies."""
    return password_file is None and not os.environ.get(env_var)


def load_password(
    *,
    password_file: Path | None,
    env_var: str = ENV_VAR,
    default: str = DEFAULT_PASSWORD,
) -> str:
    """The password a client sends: first line of the file, else the environment, else default."""
    if password_file is not None:
        return _read_file(password_file)[0]
    return os.environ.get(env_var) or default


def warn_if_exposed(path: Path, *, what: str) -> None:
    """Warn (once, at start) when a password file is open to other users.

    Group or world permissions let others read (or change) the password; a file owned by another
    user can be opened up by that user at any time. root is not "another user": it can read any
    file anyway. The file is still used: a warning, not a refusal, so an upgrade never stops a
    service that ran before.
    """
    try:
        stat = os.stat(path)
    except OSError:
        return  # reading the file reports this with its own error
    problems = []
    others = [
        who for bit, who in ((0o060, "its group"), (0o006, "every user")) if stat.st_mode & bit
    ]
    if others:
        problems.append(f"open to {' and '.join(others)} (mode {stat.st_mode & 0o7777:04o})")
    if stat.st_uid not in (os.geteuid(), 0):
        problems.append(f"owned by another user (uid {stat.st_uid})")
    if problems:
        log.warning(
            "%s %s is %s: other users may read the password; make it mode 0600 and owned by the "
            "user running this service",
            what,
            path,
            " and ".join(problems),
        )


# Keyed per process, so the digests kept in memory are no use outside it.
_DIGEST_KEY = secrets.token_bytes(32)


def _digest(text: str) -> bytes:
    """A fixed-size digest of a password; any str encodes, even a lone surrogate ("\\ud800")."""
    encoded = text.encode("utf-8", errors="surrogatepass")
    return hmac.new(_DIGEST_KEY, encoded, hashlib.sha256).digest()


class PasswordSource:
    """The accepted passwords, re-read from the file when it changes."""

    def __init__(self, *, password_file: Path | None, env_var: str = ENV_VAR) -> None:
        if password_file is not None:
            self.origin = f"file {password_file}"
        elif os.environ.get(env_var):
            self.origin = f"environment variable {env_var}"
        else:
            self.origin = "built-in default"

        def load() -> list[bytes]:
            if password_file is None:
                return [_digest(load_password(password_file=None, env_var=env_var))]
            return [_digest(password) for password in _read_file(password_file)]

        self._digests = WatchedFile(
            password_file,
            load,
            what="password file",
            errors=(PasswordError,),
            keeping=lambda digests: "the previous passwords",
            logger=log,
        )

    @property
    def is_default(self) -> bool:
        return self.origin == "built-in default"

    def matches(self, candidate: str) -> bool:
        """Constant-time check against every accepted password.

        Digests of equal size are compared, so neither the time nor an early mismatch tells how
        long an accepted password is.
        """
        given = _digest(candidate)
        matched = False
        for expected in self._digests.current():
            # No early exit: the time taken does not tell which password came close.
            matched |= hmac.compare_digest(given, expected)
        return matched
