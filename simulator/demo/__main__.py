"""``python -m simulator.demo``: the demo's command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from servicekit.cliargs import positive, tcp_port
from simulator.demo.runner import run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulator.demo",
        description="Run three simulated GPU nodes, the status page and Prometheus, no GPU needed.",
    )
    parser.add_argument(
        "--port", type=tcp_port(allow_any=True), default=7070,
        help="port of the status page (default 7070; a free one if busy; 0: any free one)",
    )  # fmt: skip
    parser.add_argument(
        "--duration", type=positive(float),
        help="stop by itself after this many seconds (default: run until Ctrl-C)",
    )  # fmt: skip
    parser.add_argument(
        "--no-prometheus", action="store_true", help="do not start Prometheus even if installed"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
