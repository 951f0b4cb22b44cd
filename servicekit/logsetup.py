"""Logging of both services: one line per event on stderr, which journald and kubectl collect."""

from __future__ import annotations

import logging
import sys


def configure_logging(*, quiet: bool) -> None:
    """INFO and above, or only warnings and errors with ``quiet`` (the old ``--disable_log``)."""
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
