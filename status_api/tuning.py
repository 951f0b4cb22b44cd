"""Process settings of the status service: descriptors, GIL hand-over, garbage collection."""

from __future__ import annotations

import contextlib
import gc
import sys


def _raise_file_limit() -> None:
    """Keep-alive sockets to every node need descriptors; use the hard limit if allowed."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, 65536), hard))


def tune_process() -> None:
    """Interpreter settings for a process that polls many nodes and serves at the same time."""
    _raise_file_limit()
    # The poller thread is CPU-bound for a while every round; handing the GIL over more often
    # than the default 5 ms keeps the request threads' latency low meanwhile.
    sys.setswitchinterval(0.0005)
    # A round allocates many short-lived containers (every node's JSON); with the default
    # thresholds the cyclic collector ran so often it took half of a round's CPU at 1000 nodes.
    gc.set_threshold(50_000, 20, 100)
