"""Logging of both services: one line per event on stderr, which journald and kubectl collect."""

from __future__ import annotations

import logging
import sys

from servicekit.cliargs import LOG_LEVELS


def configure_logging(*, level: str = "info") -> None:
    """Log ``level`` (a ``--log.level`` name: debug, info, warn, error) and above."""
    logging.basicConfig(
        level=LOG_LEVELS[level],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
