"""The password source (file, environment, default; rotation, re-reading) and the limiter."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from servicekit.limiter import FailureThrottle
from servicekit.password import (
    DEFAULT_PASSWORD,
    ENV_VAR,
    PasswordError,
    PasswordSource,
    load_password,
    uses_default,
)

pytestmark = pytest.mark.unit


def _rewrite(path: Path, text: str) -> None:
    """Write and move the modification time, so a rewrite within one clock tick is seen too."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 10**9, before + 10**9))


def test_file_first_then_environment_then_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    password_file = tmp_path / "password"
    password_file.write_text("\n  from-file  \nsecond\n")
    monkeypatch.setenv(ENV_VAR, "from-env")
    from_file = PasswordSource(password_file=password_file)
    assert from_file.origin == f"file {password_file}"
    assert load_password(password_file=password_file) == "from-file"  # what a client sends
    assert from_file.matches("from-file") and from_file.matches("second")
    assert not from_file.matches("from-env")

    from_env = PasswordSource(password_file=None)
    assert from_env.origin == f"environment variable {ENV_VAR}"
    assert (from_env.matches("from-env"), from_env.matches(DEFAULT_PASSWORD)) == (True, False)
    assert not uses_default(password_file=None)

    monkeypatch.delenv(ENV_VAR)
    default = PasswordSource(password_file=None)
    assert default.is_default and default.origin == "built-in default"
    assert default.matches("8888") and not default.matches("")
    assert uses_default(password_file=None)
    assert load_password(password_file=None) == "8888"


def test_empty_env_var_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "")
    assert PasswordSource(password_file=None).is_default


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "holds no password"), ("\n   \n\n", "holds no password"), (b"\xff\xfe", "cannot read")],
)
def test_a_file_without_a_password_is_refused(
    tmp_path: Path, content: str | bytes, message: str
) -> None:
    password_file = tmp_path / "password"
    if isinstance(content, bytes):
        password_file.write_bytes(content)
    else:
        password_file.write_text(content)
    with pytest.raises(PasswordError) as caught:
        PasswordSource(password_file=password_file)
    assert message in str(caught.value)
    assert str(password_file) in str(caught.value)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PasswordError, match="cannot read password file"):
        PasswordSource(password_file=tmp_path / "absent")


def test_rotation_by_rewriting_the_file(tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text("old\n")
    source = PasswordSource(password_file=password_file)
    assert source.matches("old") and not source.matches("new")
    _rewrite(password_file, "old\nnew\n")  # both accepted while clients switch
    assert source.matches("old") and source.matches("new")
    _rewrite(password_file, "new\n")
    assert not source.matches("old") and source.matches("new")


def test_a_broken_rewrite_keeps_the_previous_passwords(tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text("kept\n")
    source = PasswordSource(password_file=password_file)
    _rewrite(password_file, "\n")
    assert source.matches("kept")
    password_file.unlink()
    assert source.matches("kept")


# ---- the limiter --------------------------------------------------------------------------------


def test_burst_then_wait_as_long_as_the_refill_needs() -> None:
    throttle = FailureThrottle(burst=3, refill_per_second=0.5)
    assert [throttle.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = throttle.take("a")
    assert 1.5 < wait <= 2.0  # one token at 0.5 per second, less the time that passed


def test_tokens_come_back_with_time() -> None:
    throttle = FailureThrottle(burst=1, refill_per_second=50.0)  # a token every 20 ms
    assert throttle.take("a") == 0.0
    assert throttle.take("a") > 0
    time.sleep(0.1)
    assert throttle.take("a") == 0.0


def test_the_bookkeeping_is_bounded_and_forgets_the_least_recent_taker() -> None:
    throttle = FailureThrottle(burst=1, refill_per_second=0.001, max_addresses=3)
    for key in ("a", "b", "c"):
        assert throttle.take(key) == 0.0
    throttle.give_back("a")  # a right password: a is now the most recent
    assert throttle.take("d") == 0.0  # b, the least recent, is forgotten
    assert throttle.take("b") == 0.0  # so b starts with a full bucket; c is forgotten
    assert throttle.take("c") == 0.0  # and c too; a was forgotten for it
    assert throttle.take("d") > 0  # d is still remembered: empty


def test_a_refused_take_keeps_the_client_the_most_recent() -> None:
    throttle = FailureThrottle(burst=1, refill_per_second=0.001, max_addresses=3)
    assert throttle.take("guesser") == 0.0
    for key in ("b", "c"):
        assert throttle.take(key) == 0.0
    assert throttle.take("guesser") > 0  # refused: still guessing while blocked
    assert throttle.take("d") == 0.0  # b, the least recent, is forgotten, not the guesser
    assert throttle.take("guesser") > 0  # its empty bucket is remembered
