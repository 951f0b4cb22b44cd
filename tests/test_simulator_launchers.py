"""The simulator's launchers report a process that does not come up with their own errors.

The demo runs them outside pytest: a failed start must be a :class:`StartError` (or, for
promtool, a :class:`ToolError`) it can report, never an ``AssertionError``.
"""

from __future__ import annotations

import sys

import pytest

from simulator.proc import ManagedProcess, StartError, ToolError, free_port, wait_started
from simulator.prometheus import find_binary, promtool


def test_a_process_that_exits_is_a_start_error_with_its_log(tmp_path):
    command = [sys.executable, "-c", "import sys; print('no GPU here'); sys.exit(3)"]
    process = ManagedProcess(command, log_path=tmp_path / "dead.log")
    try:
        with pytest.raises(StartError) as raised:
            url = f"http://127.0.0.1:{free_port()}/-/ready"
            wait_started(process, url, what="the dead service", timeout=1.0)
    finally:
        process.stop()
    assert not isinstance(raised.value, AssertionError)
    message = str(raised.value)
    assert message.startswith("the dead service did not start: ")
    assert "the dead service log:\nno GPU here" in message


def test_log_tail_keeps_the_end_of_the_log(tmp_path):
    command = [sys.executable, "-c", "print('x' * 5000 + 'END')"]
    process = ManagedProcess(command, log_path=tmp_path / "long.log")
    process.process.wait(timeout=30)
    try:
        with pytest.raises(StartError) as raised:
            url = f"http://127.0.0.1:{free_port()}/"
            wait_started(process, url, what="long", timeout=0.5, log_tail=100)
    finally:
        process.stop()
    log = str(raised.value).split("long log:\n", 1)[1]
    assert len(log) == 100 and log.rstrip().endswith("END")


def test_a_missing_binary_is_a_start_error():
    with pytest.raises(StartError, match="no-such-prometheus-binary not found on PATH"):
        find_binary("no-such-prometheus-binary")


def test_a_failing_promtool_is_a_promtool_error(tmp_path):
    find_binary("promtool")  # CI installs it: a missing one fails here, it is never skipped
    with pytest.raises(ToolError, match="check config") as raised:
        promtool("check", "config", str(tmp_path / "missing.yml"))
    assert not isinstance(raised.value, AssertionError)
