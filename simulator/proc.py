"""Start and stop real processes for the tests and the demo, and wait for their HTTP endpoints.

A process that does not come up raises :class:`StartError`, so a caller (the demo) can report
it without catching the tests' ``AssertionError``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

import requests


class ToolError(RuntimeError):
    """A command-line tool (promtool, amtool) failed; the message holds its command and output."""


def run_tool(command: Sequence[str], *, cwd: Path | None = None, timeout: float = 60) -> str:
    """Run ``command`` to its end and return its output; :class:`ToolError` when it fails."""
    completed = subprocess.run(
        list(command),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    output = completed.stdout + completed.stderr
    if completed.returncode != 0:
        raise ToolError(f"{' '.join(command)} failed ({completed.returncode}):\n{output}")
    return output


class StartError(RuntimeError):
    """A process did not come up; the message names it and ends with its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, *, timeout: float = 15.0, status: int = 200, **kwargs: object) -> None:
    """Poll ``url`` until it answers ``status``; raise TimeoutError with the last problem."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = requests.get(url, timeout=1, **kwargs)  # type: ignore[arg-type]
            if response.status_code == status:
                return
            last = f"HTTP {response.status_code}"
        except requests.RequestException as error:
            last = str(error)
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer {status} within {timeout} s: {last}")


def wait_until(
    predicate: Callable[[], object], *, timeout: float = 10.0, interval: float = 0.1, what: str = ""
) -> object:
    """Call ``predicate`` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


def wait_started(
    process: ManagedProcess,
    url: str,
    *,
    what: str,
    timeout: float = 30.0,
    log_tail: int | None = None,
    verify: str | bool = True,
) -> None:
    """Wait for ``url`` to answer 200; :class:`StartError` with ``process``'s log if it does not.

    ``log_tail`` keeps only the last characters of the log (None: all of it).
    """
    try:
        wait_http(url, timeout=timeout, verify=verify)
    except TimeoutError as error:
        log = process.log()
        if log_tail is not None:
            log = log[-log_tail:]
        raise StartError(f"{what} did not start: {error}\n{what} log:\n{log}") from None


class ManagedProcess:
    """A child process with its output in a log file, stopped for sure at ``stop``."""

    def __init__(
        self, command: Sequence[str], *, log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.command = list(command)
        self.log_path = log_path
        self._env = env
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self._env,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def kill(self, signum: int = signal.SIGKILL) -> None:
        """Send ``signum`` to the whole process group and wait for its end: SIGKILL as a crash
        or the OOM killer would, SIGTERM as systemd stops a service. The log stays open for
        :meth:`restart`."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)
            self.process.wait(timeout=30)

    def restart(self) -> None:
        """Start the same command with the same environment again (after :meth:`kill`); its
        output goes on in the same log."""
        if self.process.poll() is None:
            raise RuntimeError(f"{self.command[0]} is still running")
        self.process = self._spawn()

    def stop(self, *, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL the whole process group; returns the exit code."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout)
        self._log.close()
        return self.process.returncode
