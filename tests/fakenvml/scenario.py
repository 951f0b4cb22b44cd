"""Typed builders for the scenario files the fake NVML library serves.

A :class:`FakeScenario` renders to the line format described in ``README.md``; ``None`` in a
field leaves it out of the file, which the library answers with NVML_ERROR_NOT_SUPPORTED.

Command line, for demos and benchmarks::

    python -m tests.fakenvml.scenario busy --gpus 8 --pids 101,102,103 --out busy.scn
    python -m tests.fakenvml.scenario idle --gpus 2 --out idle.scn
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Union

MIB = 1024 * 1024
GIB = 1024 * MIB

Text = Union[str, bytes]

# NVML buffer sizes less the terminating NUL; the library rejects longer values.
_TEXT_LIMITS = {
    "name": 95,
    "uuid": 95,
    "serial": 29,
    "pci_bus_id": 31,
    "driver_version": 79,
    "nvml_version": 79,
}
_NUMERIC_FIELDS = (
    "minor_number", "memory_total", "memory_used", "memory_reserved", "utilization_gpu",
    "utilization_memory", "temperature", "power_usage", "power_limit", "energy", "fan_speed",
    "clock_sm", "clock_mem", "pstate", "ecc_corrected", "ecc_uncorrected", "throttle_reasons",
)  # fmt: skip
_ENTRY_POINT = re.compile(r"nvml[A-Za-z0-9_]+")
THROTTLE_GPU_IDLE = 0x1
PSTATE_UNKNOWN = 32  # NVML_PSTATE_UNKNOWN: what a driver answers when it cannot tell


def gpu_uuid(index: int) -> str:
    return f"GPU-5f2b1c7e-{index:04x}-4000-8000-{index:012x}"


def gpu_serial(index: int) -> str:
    return str(1652922001234 + index)


def gpu_pci_bus_id(index: int) -> str:
    return f"00000000:{0x18 + index:02X}:00.0"


@dataclass
class FakeProcess:
    """A process on a GPU, as NVML lists it."""

    pid: int
    used_bytes: int
    kind: str = "compute"  # or "graphics"


@dataclass
class FakeGpu:
    """One GPU; ``None`` means the field is absent (NOT_SUPPORTED). Units follow NVML."""

    name: Text = "NVIDIA H100 80GB HBM3"
    uuid: str | None = gpu_uuid(0)
    serial: str | None = gpu_serial(0)
    pci_bus_id: str | None = gpu_pci_bus_id(0)
    minor_number: int | None = 0
    memory_total: int | None = 80 * GIB  # bytes
    memory_used: int | None = 24 * GIB  # bytes allocated
    memory_reserved: int | None = 512 * MIB  # bytes set aside by the driver
    utilization_gpu: int | None = 57  # percent
    utilization_memory: int | None = 31  # percent
    temperature: int | None = 64  # celsius
    power_usage: int | None = 312_000  # milliwatts
    power_limit: int | None = 700_000  # milliwatts
    energy: int | None = 123_456_789  # millijoules since the driver loaded
    fan_speed: int | None = 40  # percent
    clock_sm: int | None = 1980  # MHz
    clock_mem: int | None = 2619  # MHz
    pstate: int | None = 0
    ecc_corrected: int | None = 0
    ecc_uncorrected: int | None = 0
    throttle_reasons: int | None = 0  # nvmlClocksEventReason* bits
    processes: list[FakeProcess] = field(default_factory=list)
    fail: dict[str, int] = field(default_factory=dict)  # entry point -> nvmlReturn_t
    block: dict[str, float] = field(default_factory=dict)  # entry point -> seconds
    lost: bool = False

    @property
    def memory_free(self) -> int | None:
        """What NVML reports as free: total - used - reserved."""
        if self.memory_total is None or self.memory_used is None:
            return None
        return self.memory_total - self.memory_used - (self.memory_reserved or 0)


@dataclass
class FakeScenario:
    """The whole machine: driver facts, global faults and the GPUs in index order."""

    gpus: list[FakeGpu] = field(default_factory=list)
    driver_version: str | None = "550.54.15"
    nvml_version: str | None = "12.550.54.15"
    cuda_driver_version: int | None = 12040
    fail: dict[str, int] = field(default_factory=dict)
    block: dict[str, float] = field(default_factory=dict)


def make_gpu(index: int, **overrides: object) -> FakeGpu:
    """The default GPU with a unique uuid, serial, PCI bus id and minor number for ``index``."""
    gpu = FakeGpu(
        uuid=gpu_uuid(index),
        serial=gpu_serial(index),
        pci_bus_id=gpu_pci_bus_id(index),
        minor_number=index,
    )
    return replace(gpu, **overrides)


def idle(n_gpus: int = 1) -> FakeScenario:
    """``n_gpus`` GPUs with nothing running."""
    gpus = [
        make_gpu(
            i,
            memory_used=0,
            utilization_gpu=0,
            utilization_memory=0,
            temperature=31 + i % 4,
            power_usage=69_000 + 1_000 * (i % 3),
            fan_speed=30,
            clock_sm=345,
            throttle_reasons=THROTTLE_GPU_IDLE,
        )
        for i in range(n_gpus)
    ]
    return FakeScenario(gpus=gpus)


def busy(n_gpus: int, pids: Sequence[int], *, seed: int = 0) -> FakeScenario:
    """``pids`` spread round-robin over ``n_gpus`` loaded GPUs; same seed, same scenario."""
    if n_gpus < 1:
        raise ValueError(f"busy() needs at least one GPU, got {n_gpus}")
    scenario = idle(n_gpus)
    for index, gpu in enumerate(scenario.gpus):
        own = list(pids[index::n_gpus])
        if own:
            scenario.gpus[index] = _loaded(gpu, own, random.Random(f"{seed}:{index}"))
    return scenario


def _loaded(gpu: FakeGpu, pids: list[int], rng: random.Random) -> FakeGpu:
    assert gpu.memory_total is not None
    overhead = 300 * MIB
    room = gpu.memory_total - (gpu.memory_reserved or 0) - overhead
    per_process_mib = room // len(pids) // MIB
    if per_process_mib < 1:
        raise ValueError(f"{len(pids)} processes do not fit in one GPU's memory")
    processes = [
        FakeProcess(pid, min(rng.randrange(256, 2049), per_process_mib) * MIB) for pid in pids
    ]
    return replace(
        gpu,
        processes=processes,
        memory_used=sum(p.used_bytes for p in processes) + overhead,
        utilization_gpu=rng.randrange(35, 101),
        utilization_memory=rng.randrange(10, 71),
        temperature=rng.randrange(45, 85),
        power_usage=rng.randrange(200, 681) * 1000,
        energy=rng.randrange(10**8, 10**10),
        fan_speed=rng.randrange(35, 81),
        clock_sm=rng.randrange(1590, 1981, 15),
        throttle_reasons=0,
    )


# ---------------------------------------------------------------- rendering


def _text(key: str, value: Text) -> bytes:
    raw = value if isinstance(value, bytes) else value.encode()
    if not raw:
        raise ValueError(f"{key} is empty; use None to leave it out")
    for bad, what in ((b"\n", "a newline"), (b"\r", "a carriage return"), (b"\0", "a NUL byte")):
        if bad in raw:
            raise ValueError(f"{key} {raw!r} holds {what}, which the line format cannot carry")
    if raw[:1] in (b" ", b"\t") or raw[-1:] in (b" ", b"\t"):
        raise ValueError(f"{key} {raw!r} starts or ends with a blank, which the format drops")
    if len(raw) > _TEXT_LIMITS[key]:
        raise ValueError(f"{key} {raw!r} is longer than {_TEXT_LIMITS[key]} bytes")
    return key.encode() + b" " + raw


def _number(key: str, value: int) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must be a non-negative integer, got {value!r}")
    return f"{key} {value}".encode()


def _faults(fail: dict[str, int], block: dict[str, float]) -> list[bytes]:
    lines = []
    for entry_point, code in fail.items():
        _check_entry_point(entry_point)
        lines.append(_number(f"fail {entry_point}", code))
    for entry_point, seconds in block.items():
        _check_entry_point(entry_point)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
            raise ValueError(f"block {entry_point} needs seconds >= 0, got {seconds!r}")
        lines.append(f"block {entry_point} {float(seconds)!r}".encode())
    return lines


def _check_entry_point(name: str) -> None:
    if not _ENTRY_POINT.fullmatch(name):
        raise ValueError(f"{name!r} is not an NVML entry point name")


def _gpu_lines(gpu: FakeGpu) -> list[bytes]:
    lines = [b"[gpu]"]
    for key in ("name", "uuid", "serial", "pci_bus_id"):
        value = getattr(gpu, key)
        if value is not None:
            lines.append(_text(key, value))
    for key in _NUMERIC_FIELDS:
        value = getattr(gpu, key)
        if value is not None:
            lines.append(_number(key, value))
    for process in gpu.processes:
        if process.kind not in ("compute", "graphics"):
            raise ValueError(f"process kind must be compute or graphics, got {process.kind!r}")
        lines.append(_number(f"process {process.kind} {process.pid}", process.used_bytes))
    lines += _faults(gpu.fail, gpu.block)
    if gpu.lost:
        lines.append(b"lost")
    return lines


def render(scenario: FakeScenario) -> bytes:
    """The scenario in the library's line format."""
    lines = [b"# fake NVML scenario"]
    for key in ("driver_version", "nvml_version"):
        value = getattr(scenario, key)
        if value is not None:
            lines.append(_text(key, value))
    if scenario.cuda_driver_version is not None:
        lines.append(_number("cuda_driver_version", scenario.cuda_driver_version))
    lines += _faults(scenario.fail, scenario.block)
    for gpu in scenario.gpus:
        lines.append(b"")
        lines += _gpu_lines(gpu)
    return b"\n".join(lines) + b"\n"


def write(path: Path, scenario: FakeScenario) -> None:
    """Replace ``path`` atomically, so a reader sees the old or the new scenario, never half."""
    path = Path(path)
    data = render(scenario)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            os.fchmod(stream.fileno(), 0o644)  # readable by an exporter running as another user
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


# ---------------------------------------------------------------- command line


def _pids(text: str) -> list[int]:
    try:
        pids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        message = f"pids must be integers separated by commas: {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if any(pid <= 0 for pid in pids):
        raise argparse.ArgumentTypeError(f"pids must be positive: {text!r}")
    return pids


def _gpu_count(text: str) -> int:
    count = int(text)
    if not 1 <= count <= 64:
        raise argparse.ArgumentTypeError(f"--gpus must be from 1 to 64, got {count}")
    return count


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a fake NVML scenario file.")
    commands = parser.add_subparsers(dest="command", required=True)
    idle_parser = commands.add_parser("idle", help="GPUs with nothing running")
    busy_parser = commands.add_parser("busy", help="loaded GPUs running the given pids")
    busy_parser.add_argument("--pids", type=_pids, required=True, help="comma-separated pids")
    busy_parser.add_argument("--seed", type=int, default=0)
    for sub in (idle_parser, busy_parser):
        sub.add_argument("--gpus", type=_gpu_count, default=1)
        sub.add_argument("--out", type=Path, help="file to write (default: standard output)")
    args = parser.parse_args(argv)
    if args.command == "idle":
        scenario = idle(args.gpus)
    else:
        scenario = busy(args.gpus, args.pids, seed=args.seed)
    if args.out is None:
        sys.stdout.buffer.write(render(scenario))
    else:
        write(args.out, scenario)
    return 0


__all__ = [
    "FakeGpu",
    "FakeProcess",
    "FakeScenario",
    "busy",
    "idle",
    "make_gpu",
    "render",
    "write",
]

if __name__ == "__main__":
    sys.exit(main())
