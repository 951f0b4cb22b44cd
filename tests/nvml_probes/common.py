"""What every probe uses: pynvml, the scenario file, and ways to call NVML and keep the code."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import pynvml as N

Out = dict[str, Any]
Probe = Callable[..., None]

# The file the fake library serves; probes rewrite it to change what the library reports.
SCENARIO = Path(os.environ.get("FAKE_NVML_SCENARIO", "/nonexistent"))

PROBES: dict[str, Probe] = {}


def probe(function: Probe) -> Probe:
    """Register ``function`` under its own name for ``python -m tests.nvml_probes NAME``."""
    assert function.__name__ not in PROBES, f"two probes named {function.__name__}"
    PROBES[function.__name__] = function
    return function


def code(fn: Callable[..., Any], *args: Any) -> int:
    """0, or the nvmlReturn_t of the NVMLError a pynvml call raised."""
    try:
        fn(*args)
        return 0
    except N.NVMLError as error:
        return int(error.value)


def value(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except N.NVMLError as error:
        return {"error": error.value}


def timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    started = time.monotonic()
    result = value(fn, *args)
    return result, time.monotonic() - started


def text(field: str | bytes) -> str:
    """pynvml hands char arrays back as str or bytes depending on the structure."""
    return field.decode() if isinstance(field, bytes) else field


def raw(name: str) -> Any:
    """The library's own entry point, for calls pynvml does not make the way a test needs."""
    return N._nvmlGetFunctionPointer(name)


def handles() -> list[Any]:
    return [N.nvmlDeviceGetHandleByIndex(i) for i in range(N.nvmlDeviceGetCount())]
