"""One user's last days from the query engine: ``/api/v1/users/<name>/history``.

Per UTC day, the increase of the user's recorded counters over that day, evaluated at the day's
end (today: now, over the part of the day gone by)::

    sum(increase(user:gpu_seconds:total{user="NAME"}[86400s]))

GPU-hours are ``user:gpu_seconds:total`` over 3600, mean utilization
``user:gpu_utilization_seconds:total`` over ``user:gpu_seconds:total`` (as in the report),
energy ``user:gpu_energy_joules:total`` over 3.6e6 (kWh). A day without samples of a counter has
null for what needs it. A user with no sample at all in the window is unknown (404).

The name is checked against :data:`USER_NAME` before anything is asked, and goes into the
matcher as a PromQL string literal (JSON's escapes are Go's, as status_api/job.py quotes), so a
name cannot change the query. Answers are cached per user and window for :data:`CACHE_SECONDS`:
a page reloaded by a whole team costs the engine one round of queries; failures are not cached.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
import time
from collections.abc import Callable, Container
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from status_api.engine import EngineClient, EngineError, EngineSettings, Sample, shown

# Login names as useradd, LDAP and Slurm accept them, and nothing that needs quoting.
USER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@$-]{0,63}")
DEFAULT_DAYS = 7
MAX_DAYS = 31
CACHE_SECONDS = 60.0
_CACHE_ENTRIES = 256  # so a crawler walking names cannot grow the cache without bound
DAY = 86400
COUNTERS = ("gpu_seconds", "gpu_utilization_seconds", "energy_joules")
_RECORDED = {
    "gpu_seconds": "user:gpu_seconds:total",
    "gpu_utilization_seconds": "user:gpu_utilization_seconds:total",
    "energy_joules": "user:gpu_energy_joules:total",
}
NO_ENGINE_MESSAGE = (
    "No history: this service polls the nodes directly; history needs a query engine "
    "(--prometheus-url)."
)


class UnknownUser(Exception):
    """The name is not a user name, or the engine has no sample of it in the window."""


def valid_name(name: str) -> bool:
    return USER_NAME.fullmatch(name) is not None


def quoted(value: str) -> str:
    """A PromQL string literal: JSON's escapes are Go's."""
    return json.dumps(value)


def day_windows(now: float, days: int) -> list[tuple[float, float]]:
    """(start, end) of the last ``days`` UTC days, oldest first; the last ends at ``now``."""
    today = now // DAY * DAY
    starts = [today - (days - 1 - i) * DAY for i in range(days)]
    return [(start, min(start + DAY, now)) for start in starts]


def query(counter: str, name: str, seconds: float) -> str:
    """The increase of one of the user's counters over the ``seconds`` before evaluation."""
    window = max(1, int(seconds))
    return f"sum(increase({_RECORDED[counter]}{{user={quoted(name)}}}[{window}s]))"


def _value(samples: list[Sample]) -> float | None:
    # NaN or infinity would make the document invalid JSON: unknown, as for no sample.
    return samples[0][1] if samples and math.isfinite(samples[0][1]) else None


def _rounded(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


def history_document(
    name: str, windows: list[tuple[float, float]], answers: list[list[list[Sample]]], *, at: float
) -> dict[str, Any]:
    """The document from one list of answers per day (one per :data:`COUNTERS`)."""
    if not any(samples for day in answers for samples in day):
        raise UnknownUser(name)
    entries = []
    for (start, end), day in zip(windows, answers):
        seconds, utilization, joules = (_value(samples) for samples in day)
        entries.append(
            {
                "date": datetime.fromtimestamp(start, tz=timezone.utc).strftime("%Y-%m-%d"),
                "start": start,
                "end": end,
                "gpu_hours": _rounded(None if seconds is None else seconds / 3600),
                "mean_utilization": _rounded(
                    utilization / seconds if utilization is not None and seconds else None
                ),
                "energy_kwh": _rounded(None if joules is None else joules / 3.6e6),
            }
        )
    return {
        "user": name,
        "configured": True,
        "generated_at": round(at, 3),
        "message": "",
        "days": entries,
    }


def no_engine_document(name: str, *, at: float) -> dict[str, Any]:
    """The answer without a query engine: no days, and why."""
    return {
        "user": name,
        "configured": False,
        "generated_at": round(at, 3),
        "message": NO_ENGINE_MESSAGE,
        "days": [],
    }


async def _ask(
    settings: EngineSettings, name: str, windows: list[tuple[float, float]]
) -> list[list[list[Sample]]]:
    asked = [
        (query(counter, name, end - start), end) for start, end in windows for counter in COUNTERS
    ]
    async with EngineClient(settings) as client:
        flat = await client.queries_at(asked)
    size = len(COUNTERS)
    return [list(flat[i : i + size]) for i in range(0, len(flat), size)]


def fetch(settings: EngineSettings, name: str, *, days: int, now: float) -> dict[str, Any]:
    """The history document; UnknownUser or EngineError when there is none to give."""
    if not valid_name(name):
        raise UnknownUser(name)
    windows = day_windows(now, days)
    return history_document(name, windows, asyncio.run(_ask(settings, name, windows)), at=now)


@dataclass(frozen=True)
class _Cached:
    at: float
    document: dict[str, Any] | None  # None: unknown user


class UserHistory:
    """Users' histories from the engine of ``settings`` (called per fetch, so a rotated
    password file is seen), cached per user and window for ``ttl`` seconds."""

    def __init__(
        self,
        *,
        settings: Callable[[], EngineSettings],
        ttl: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.time,
        known: Callable[[], Container[str]] | None = None,
    ) -> None:
        self._settings = settings
        # The names the service knows of; others are refused without a query, so guessing
        # names cannot make the engine work (None: every valid name is asked about).
        self._known = known
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[tuple[str, int], _Cached] = {}
        self._lock = threading.Lock()

    def get(self, name: str, days: int) -> dict[str, Any]:
        """The document; UnknownUser for a bad or unseen name, EngineError when the engine fails."""
        if not valid_name(name) or (self._known is not None and name not in self._known()):
            raise UnknownUser(name)  # before the cache and the engine: nothing of it is kept
        now = self._clock()
        key = (name, days)
        with self._lock:
            cached = self._cache.get(key)
        if cached is None or now - cached.at >= self._ttl:
            try:
                document: dict[str, Any] | None = fetch(self._settings(), name, days=days, now=now)
            except UnknownUser:
                document = None
            except EngineError:
                raise
            except Exception as error:  # a bad password file, say: an engine failure too
                raise EngineError(shown(str(error))) from error
            cached = _Cached(now, document)
            with self._lock:
                if len(self._cache) >= _CACHE_ENTRIES:
                    self._cache.clear()
                self._cache[key] = cached
        if cached.document is None:
            raise UnknownUser(name)
        return cached.document
