"""Benchmarks: scripts that start the real services and print numbers."""

from __future__ import annotations

import argparse
from typing import Callable


def positive(kind: type) -> Callable[[str], float]:
    """An argparse type accepting numbers of ``kind`` greater than 0."""

    def parse(text: str) -> float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
        return value

    return parse
