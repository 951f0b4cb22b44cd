"""Argument types shared by the command lines: finite and positive numbers, port numbers.

Every float option of these command lines is a number of seconds that ends up in a timer, so a
float must be finite (``nan`` compares false with everything and turns a wait into a busy loop;
``inf`` makes the wait raise) and no larger than the longest wait a timer takes.
"""

from __future__ import annotations

import argparse
import math
import threading
from typing import Callable

# The longest timeout threading (and so every wait in these services) accepts: about 292 years.
MAX_SECONDS = threading.TIMEOUT_MAX


def _number(kind: type, text: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if kind is float:
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if abs(value) > MAX_SECONDS:
            raise argparse.ArgumentTypeError(f"{text!r} is over {MAX_SECONDS:.0f} seconds")
    return value


def finite(text: str) -> float:
    """An argparse type accepting any finite float, zero and negative numbers included."""
    return _number(float, text)


def positive(kind: type) -> Callable[[str], float]:
    """An argparse type accepting numbers of ``kind`` (int or float) greater than 0."""

    def parse(text: str) -> float:
        value = _number(kind, text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
        return value

    return parse


def tcp_port(*, allow_any: bool = False) -> Callable[[str], int]:
    """An argparse type for a TCP port; with ``allow_any``, 0 asks the OS for a free one."""
    lowest = 0 if allow_any else 1

    def parse(text: str) -> int:
        if not text.isdigit() or not lowest <= int(text) <= 65535:
            raise argparse.ArgumentTypeError(f"{text!r} is not a port number ({lowest}-65535)")
        return int(text)

    return parse
