"""Numbers on the command lines: every float option of both services refuses nan and infinity.

``--interval nan`` made the exporter's sampler busy-loop a core and ``--interval inf`` killed its
thread; the same values reached the status service's timers. The float options are found from
the parsers themselves, so an option added later is covered without editing this file.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from exporter import cli as exporter_cli
from servicekit.cliargs import MAX_SECONDS, finite, non_negative, positive, tcp_port
from status_api import cli as status_cli


def float_options(parser: argparse.ArgumentParser) -> list[str]:
    """The options whose type turns "0.5" into a float."""
    found = []
    for action in parser._actions:
        if action.type is None or not action.option_strings:
            continue
        try:
            parsed = action.type("0.5")
        except (argparse.ArgumentTypeError, ValueError, TypeError):
            continue
        if isinstance(parsed, float):
            found.append(action.option_strings[0])
    return found


# (command prefix, option): the exporter, the status service, its "targets" subcommand.
COMMANDS = {
    "gpu-exporter": ["-m", "exporter"],
    "gpu-status-api": ["-m", "status_api"],
    "gpu-status-api targets": ["-m", "status_api", "targets"],
}
PARSERS = {
    "gpu-exporter": exporter_cli.build_parser(),
    "gpu-status-api": status_cli.build_parser(),
    "gpu-status-api targets": status_cli.build_targets_parser(),
}
FLOAT_OPTIONS = [
    (command, option) for command, parser in PARSERS.items() for option in float_options(parser)
]


def test_the_float_options_are_the_known_ones() -> None:
    # Guards the discovery above: a broken discovery would make the process tests vacuous.
    assert sorted(FLOAT_OPTIONS) == sorted(
        [
            ("gpu-exporter", "--interval"),
            ("gpu-exporter", "--nvml-timeout"),
            ("gpu-status-api", "--interval"),
            ("gpu-status-api", "--timeout"),
            ("gpu-status-api", "--connect-timeout"),
            ("gpu-status-api", "--power-interval"),
            ("gpu-status-api", "--stale-after"),
            ("gpu-status-api", "--offline-after"),
            ("gpu-status-api", "--idle-held-after"),
            ("gpu-status-api", "--xid-recent"),
            ("gpu-status-api", "--prometheus-timeout"),
            ("gpu-status-api targets", "--watch-interval"),
        ]
    )


def test_no_option_takes_a_bare_float() -> None:
    for parser in PARSERS.values():
        for action in parser._actions:
            assert action.type is not float, f"{action.option_strings} takes float(): nan passes"


@pytest.mark.parametrize("text", ["nan", "inf", "-Infinity", "1e999"])
@pytest.mark.parametrize(("command", "option"), FLOAT_OPTIONS)
def test_non_finite_values_are_refused_at_start(command: str, option: str, text: str) -> None:
    result = subprocess.run(
        [sys.executable, *COMMANDS[command], f"{option}={text}"],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result.stderr
    assert f"argument {option}: '{text}' is not a finite number" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("command", "option"), FLOAT_OPTIONS)
def test_values_beyond_any_timer_are_refused_at_start(command: str, option: str) -> None:
    result = subprocess.run(
        [sys.executable, *COMMANDS[command], option, "1e300"],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result.stderr
    assert f"argument {option}: '1e300' is over" in result.stderr


# ---------------------------------------------------------------- the types in-process


@pytest.mark.parametrize("text", ["nan", "NaN", "-nan", "inf", "+inf", "-inf", "Infinity", "1e400"])
def test_finite_and_positive_refuse_non_finite_floats(text: str) -> None:
    for parse in (finite, positive(float)):
        with pytest.raises(argparse.ArgumentTypeError, match="is not a finite number"):
            parse(text)


def test_finite_takes_zero_and_negative_numbers() -> None:
    assert finite("0") == 0.0
    assert finite("-1.5") == -1.5
    assert finite(str(MAX_SECONDS)) == MAX_SECONDS
    with pytest.raises(argparse.ArgumentTypeError, match="is over"):
        finite(f"-{MAX_SECONDS * 2}")
    with pytest.raises(argparse.ArgumentTypeError, match="is not a number"):
        finite("ten")


def test_positive_floats() -> None:
    parse = positive(float)
    assert parse("0.25") == 0.25
    assert parse("1e-9") == 1e-9
    for text in ("0", "-0.0", "-3"):
        with pytest.raises(argparse.ArgumentTypeError, match="must be greater than 0"):
            parse(text)
    with pytest.raises(argparse.ArgumentTypeError, match="is over"):
        parse("1e300")


def test_non_negative_numbers() -> None:
    parse = non_negative(float)
    assert parse("0") == 0.0
    assert parse("0.25") == 0.25
    assert parse("1e300") == 1e300  # a price or a rate, not a wait: no timer bound
    for text in ("nan", "inf", "-inf"):
        with pytest.raises(argparse.ArgumentTypeError, match="is not a finite number"):
            parse(text)
    for text in ("-0.01", "-3"):
        with pytest.raises(argparse.ArgumentTypeError, match="must be 0 or more"):
            parse(text)
    assert non_negative(int)("0") == 0
    with pytest.raises(argparse.ArgumentTypeError, match="is not a number"):
        non_negative(int)("1.5")


def test_positive_ints() -> None:
    parse = positive(int)
    assert parse("40") == 40
    for text in ("nan", "inf", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="is not a number"):
            parse(text)
    with pytest.raises(argparse.ArgumentTypeError, match="must be greater than 0"):
        parse("0")
    assert parse(str(10**30)) == 10**30  # ints have no timer bound: they are counts and sizes


def test_tcp_port() -> None:
    assert tcp_port()("7080") == 7080
    assert tcp_port(allow_any=True)("0") == 0
    for text in ("0", "65536", "-1", "nan", "80.0"):
        with pytest.raises(argparse.ArgumentTypeError, match="is not a port number"):
            tcp_port()(text)
