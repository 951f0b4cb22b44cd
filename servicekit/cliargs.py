"""Argument types shared by the command lines: positive numbers and port numbers."""

from __future__ import annotations

import argparse
from typing import Callable


def positive(kind: type) -> Callable[[str], float]:
    """An argparse type accepting numbers of ``kind`` (int or float) greater than 0."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
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
