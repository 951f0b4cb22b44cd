"""GPU use per user, Slurm job and namespace: ``/api/v1/users``.

What is held now comes from the cluster view of the round (:mod:`status_api.cluster`): per group,
the GPUs its processes hold (a GPU counts once per group, however many of the group's processes
share it), the memory those processes hold (MiB), how many of those GPUs are idle but held, and
the GPUs charged to it now (``gpu_share``): a GPU held by several groups is split evenly among
them, as the recording rules charge GPU-hours (status_api/vocabulary.py).
Nodes without data (offline) are left out, as in the summary. A process whose owner is unknown
is counted under the user ``""``; a process outside any Slurm job (or namespace) is in no job (or
namespace) group.

With a query engine (``--prometheus-url``), :class:`UsageHistory` adds GPU-hours over the last
day, week and 30 days from the recording rules (``<by>:gpu_seconds:total``, as the ``report``
command reads them, with its client). It asks in its own thread every few minutes, not every
round: nine ``increase()`` queries over 30 days are far heavier than a round. Until the first
answer, after a failed refresh, or without an engine, the GPU-hours are null and the document
says why. Groups with GPU time in the last 30 days but nothing held now are listed too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Callable

from status_api.engine import EngineError, EngineSettings, run_queries
from status_api.report import increase_query
from status_api.vocabulary import shares

log = logging.getLogger(__name__)

# (list in the document, field naming the group there and the recording rules' label,
#  process field in /api/v1/cluster)
GROUPINGS = (
    ("users", "user", "username"),
    ("slurm_jobs", "slurm_job", "slurm_job"),
    ("namespaces", "namespace", "namespace"),
)
WINDOWS = ("1d", "7d", "30d")
DEFAULT_REFRESH = 300.0
_MAX_ERROR = 300  # characters of an engine error shown on a public page


@dataclass
class Held:
    """What one group holds now."""

    gpus: int = 0
    memory_mib: int = 0
    idle_held_gpus: int = 0
    gpu_share: float = 0.0


@dataclass(frozen=True)
class History:
    """GPU-hours per grouping label, window and group, from one refresh.

    ``hours`` is empty before the first answer and after a failed refresh (``error`` says why);
    ``configured`` is False when the service has no query engine at all.
    """

    configured: bool = False
    hours: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    updated_at: float | None = None
    error: str = ""


NO_ENGINE = History()


def held_now(nodes: Iterable[dict[str, Any]]) -> dict[str, dict[str, Held]]:
    """Per list name (``users``, ...): what each group holds, from the cluster view's nodes."""
    groups: dict[str, dict[str, Held]] = {name: {} for name, _, _ in GROUPINGS}
    for node in nodes:
        if node["state"] == "offline":
            continue
        for gpu in node["gpus"]:
            for name, _, process_field in GROUPINGS:
                memory: dict[str, int] = {}
                for process in gpu["users"]:
                    key = process.get(process_field) or ""
                    if key or name == "users":
                        memory[key] = memory.get(key, 0) + (process.get("mem") or 0)
                for key, mib in memory.items():
                    held = groups[name].setdefault(key, Held())
                    held.gpus += 1
                    held.memory_mib += mib
                    held.idle_held_gpus += bool(gpu.get("idle_held"))
                for key, share in shares(gpu["users"], key=process_field, memory_key="mem").items():
                    if key or name == "users":
                        groups[name].setdefault(key, Held()).gpu_share += share
    return groups


def _hours(history: History, label: str, key: str) -> dict[str, float | None]:
    """A group's GPU-hours per window: 0 where the engine answered without it, null where
    there is no answer."""
    answered = history.hours.get(label, {})
    return {
        window: round(answered[window].get(key, 0.0), 3) if window in answered else None
        for window in WINDOWS
    }


def users_document(
    nodes: Iterable[dict[str, Any]], history: History, *, generated_at: float, interval: float
) -> dict[str, Any]:
    """The ``/api/v1/users`` document; every list sorted by GPUs held, then GPU-hours over the
    longest window, then name."""
    held = held_now(nodes)
    document: dict[str, Any] = {
        "generated_at": round(generated_at, 3),
        "interval": interval,
        "gpu_hours": {
            "configured": history.configured,
            "windows": list(WINDOWS),
            "updated_at": None if history.updated_at is None else round(history.updated_at, 3),
            "error": history.error,
        },
    }
    for name, label, _ in GROUPINGS:
        recorded = history.hours.get(label, {}).get(WINDOWS[-1], {})
        keys = set(held[name]) | {
            key for key, hours in recorded.items() if hours > 0 and (key or name == "users")
        }
        entries: list[dict[str, Any]] = []
        for key in keys:
            now = held[name].get(key, Held())
            entries.append(
                {
                    label: key,
                    "gpus": now.gpus,
                    "memory_mib": now.memory_mib,
                    "idle_held_gpus": now.idle_held_gpus,
                    "gpu_share": round(now.gpu_share, 4),
                    "gpu_hours": _hours(history, label, key),
                }
            )
        entries.sort(key=lambda e: (-e["gpus"], -(e["gpu_hours"][WINDOWS[-1]] or 0.0), e[label]))
        document[name] = entries
    return document


def fetch_history(settings: EngineSettings, *, at: float) -> History:
    """GPU-hours of every grouping and window at ``at``; one failed query fails them all
    (a partial table would read as "no use"), with the error noted."""
    hours: dict[str, dict[str, dict[str, float]]] = {}
    asked = [(label, window) for _, label, _ in GROUPINGS for window in WINDOWS]
    try:
        answers = run_queries(
            settings,
            [increase_query(label, "gpu_seconds", window) for label, window in asked],
            at=at,
        )
    except EngineError as error:
        return History(configured=True, updated_at=at, error=_shown(f"{settings.url}: {error}"))
    for (label, window), samples in zip(asked, answers):
        hours.setdefault(label, {})[window] = {
            labels.get(label, ""): value / 3600 for labels, value in samples
        }
    return History(configured=True, hours=hours, updated_at=at)


def _shown(text: str) -> str:
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return text if len(text) <= _MAX_ERROR else text[:_MAX_ERROR] + "..."


class UsageHistory:
    """Refreshes the GPU-hours every ``refresh`` seconds in a background thread.

    ``settings`` is called before every refresh (a rotated password file is seen); what it
    raises is a failed refresh like any other. :attr:`latest` is replaced, never mutated, so the
    renderer reads it without a lock. Each query is bounded by the engine timeout, so a refresh
    ends and :meth:`stop` returns in bounded time.
    """

    def __init__(
        self, *, settings: Callable[[], EngineSettings], refresh: float = DEFAULT_REFRESH
    ) -> None:
        self._settings = settings
        self._refresh = refresh
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.latest = History(configured=True, error="waiting for the first answer")

    def __call__(self) -> History:
        return self.latest

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="usage-history", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def refresh_now(self) -> History:
        at = time.time()
        try:
            history = fetch_history(self._settings(), at=at)
        except Exception as error:  # a bad password file, say: noted, never fatal
            log.debug("GPU-hours refresh failed", exc_info=True)
            history = History(configured=True, updated_at=at, error=_shown(str(error)))
        if history.error and history.error != self.latest.error:
            log.error("GPU-hours from the query engine: %s", history.error)
        self.latest = history
        return history

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh_now()
            self._stop.wait(self._refresh)
