"""Typed builders for the scenario files the fake NVML library serves.

A :class:`FakeScenario` renders to the line format described in ``README.md``; ``None`` in a
field leaves it out of the file, which the library answers with NVML_ERROR_NOT_SUPPORTED.

MIG devices (:class:`FakeMig`, :func:`make_mig_gpu`), per-process utilization samples
(:class:`FakeProcessUtilization`), GPU health (:class:`FakePcieLink`, :class:`FakeNvLink`,
:class:`FakeRemappedRows`, :class:`FakeXid`) and GPU Performance Monitoring
(:class:`FakeGpmMetrics`) are described in ``README.md`` too.

Command line, for demos and benchmarks::

    python -m simulator.fakenvml.scenario busy --gpus 8 --pids 101,102,103 --out busy.scn
    python -m simulator.fakenvml.scenario idle --gpus 2 --out idle.scn
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
from typing import Any, Union

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
    "encoder_utilization", "decoder_utilization",
    "pcie_replay", "ecc_aggregate_corrected", "ecc_aggregate_uncorrected", "event_types",
)  # fmt: skip
_MIG_PROFILE = re.compile(r"(?:[1-8]c\.)?[1-8]g\.[^\s]+")
_MIG_PROFILE_LIMIT = 31
RETIREMENT_CAUSES = ("sbe", "dbe")  # multiple single-bit, double-bit ECC errors
_ENTRY_POINT = re.compile(r"nvml[A-Za-z0-9_]+")
GPM_MODES = ("supported", "unsupported", "refused")
_GPM_MAX_BYTES_PER_SECOND = 1 << 48
THROTTLE_GPU_IDLE = 0x1
PSTATE_UNKNOWN = 32  # NVML_PSTATE_UNKNOWN: what a driver answers when it cannot tell


def gpu_uuid(index: int) -> str:
    return f"GPU-5f2b1c7e-{index:04x}-4000-8000-{index:012x}"


def gpu_serial(index: int) -> str:
    return str(1652922001234 + index)


def gpu_pci_bus_id(index: int) -> str:
    return f"00000000:{0x18 + index:02X}:00.0"


def mig_uuid(gpu_index: int, mig_index: int) -> str:
    return f"MIG-5f2b1c7e-{gpu_index:04x}-5000-8000-{mig_index:012x}"


@dataclass
class FakeProcess:
    """A process on a GPU, as NVML lists it."""

    pid: int
    used_bytes: int
    kind: str = "compute"  # or "graphics"
    # On a GPU in MIG mode, the MIG device it runs in; both or neither.
    gpu_instance: int | None = None
    compute_instance: int | None = None


@dataclass
class FakeMig:
    """A MIG device: a compute instance inside a GPU instance, served at its list index."""

    gpu_instance: int
    compute_instance: int
    profile: str  # "1g.10gb", "3g.40gb+me", "1c.3g.40gb": what follows "MIG " in its name
    uuid: str
    memory_total: int  # bytes
    memory_used: int = 0  # bytes


@dataclass
class FakeProcessUtilization:
    """One ``nvmlDeviceGetProcessUtilization`` sample, in percent."""

    pid: int
    sm: int
    memory: int
    encoder: int = 0
    decoder: int = 0


@dataclass
class FakePcieLink:
    """``pcie_link``: the link's maximum and current generation and width (lanes)."""

    max_gen: int = 5
    max_width: int = 16
    gen: int = 5
    width: int = 16


@dataclass
class FakeNvLink:
    """One NVLink link: its state and error counters (``nvlink`` line)."""

    active: bool = True
    crc_flit: int = 0
    crc_data: int = 0
    replay: int = 0
    recovery: int = 0


@dataclass
class FakeRemappedRows:
    """``remapped_rows``: rows remapped for corrected / uncorrected errors, and the flags."""

    corrected: int = 0
    uncorrected: int = 0
    pending: bool = False
    failure: bool = False


@dataclass
class FakeXid:
    """An injected XID; ``id`` None means the line's position among the GPU's XIDs."""

    code: int
    id: int | None = None


@dataclass
class FakeGpmMetrics:
    """What GPM reports between two samples (``gpm_metric`` lines); ``None``: NOT_SUPPORTED.

    Activities are percentages from 0 to 100 (at most three decimals), as NVML reports them;
    traffic is in bytes per second (NVML reports MiB/s: the library divides by 2**20).
    """

    graphics_active: float | None = None
    sm_active: float | None = None
    sm_occupancy: float | None = None
    integer_active: float | None = None
    tensor_active: float | None = None
    dram_active: float | None = None
    fp64_active: float | None = None
    fp32_active: float | None = None
    fp16_active: float | None = None
    pcie_tx: int | None = None
    pcie_rx: int | None = None
    nvlink_tx: int | None = None
    nvlink_rx: int | None = None


_GPM_TRAFFIC = ("pcie_tx", "pcie_rx", "nvlink_tx", "nvlink_rx")


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
    encoder_utilization: int | None = None  # percent
    decoder_utilization: int | None = None  # percent
    processes: list[FakeProcess] = field(default_factory=list)
    # Samples, or a period alone, make nvmlDeviceGetProcessUtilization supported.
    process_utilization: list[FakeProcessUtilization] = field(default_factory=list)
    process_utilization_period: int | None = None  # microseconds; 0: new stamp on reload only
    mig_mode: tuple[int, int] | None = None  # (current, pending); None: no MIG at all
    migs: list[FakeMig] = field(default_factory=list)
    # GPU health; absent (NOT_SUPPORTED) unless given.
    pcie_replay: int | None = None
    ecc_aggregate_corrected: int | None = None  # absent: the volatile counter
    ecc_aggregate_uncorrected: int | None = None
    event_types: int | None = None  # nvmlEventType* bits; absent: the library's default
    pcie_link: FakePcieLink | None = None
    pcie_throughput: tuple[int, int] | None = None  # TX, RX in KB/s
    nvlinks: list[FakeNvLink] | None = None  # link i is nvlinks[i]
    remapped_rows: FakeRemappedRows | None = None  # Ampere and later ...
    retired_pages: dict[str, int] | None = None  # ... or before: cause (sbe|dbe) -> pages
    retired_pages_pending: bool | None = None
    xids: list[FakeXid] = field(default_factory=list)
    # GPU Performance Monitoring: None is a GPU without it (before Hopper); "refused": the GPU
    # has it but another client (DCGM profiling) holds the counters.
    gpm: str | None = None  # "supported", "unsupported" or "refused"
    gpm_metrics: FakeGpmMetrics | None = None  # the whole GPU
    gpm_mig_metrics: dict[int, FakeGpmMetrics] = field(default_factory=dict)  # by GPU instance
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


def make_gpu(index: int, **overrides: Any) -> FakeGpu:
    """The default GPU with a unique uuid, serial, PCI bus id and minor number for ``index``."""
    gpu = FakeGpu(
        uuid=gpu_uuid(index),
        serial=gpu_serial(index),
        pci_bus_id=gpu_pci_bus_id(index),
        minor_number=index,
    )
    return replace(gpu, **overrides)


def make_mig_gpu(
    index: int,
    profiles: Sequence[str] = ("3g.40gb", "2g.20gb", "1g.10gb"),
    **overrides: Any,
) -> FakeGpu:
    """``make_gpu(index)`` in MIG mode with one MIG device per profile, each in its own GPU
    instance (ids from 1, compute instance 0), with the memory its profile names."""
    migs = [
        FakeMig(
            gpu_instance=n + 1,
            compute_instance=0,
            profile=profile,
            uuid=mig_uuid(index, n),
            memory_total=_profile_gib(profile) * GIB,
        )
        for n, profile in enumerate(profiles)
    ]
    return replace(make_gpu(index, mig_mode=(1, 1), migs=migs), **overrides)


def _profile_gib(profile: str) -> int:
    match = re.search(r"(\d+)gb", profile)
    if match is None:
        raise ValueError(f"MIG profile {profile!r} names no memory size such as 10gb")
    return int(match.group(1))


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


def _integer(key: str, value: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must be a non-negative integer, got {value!r}")
    return str(value)


def _number(key: str, value: int) -> bytes:
    return f"{key} {_integer(key, value)}".encode()


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


def _numbers(key: str, *values: int | bool) -> bytes:
    text = " ".join(_integer(key, int(v) if isinstance(v, bool) else v) for v in values)
    return f"{key} {text}".encode()


def _health_lines(gpu: FakeGpu) -> list[bytes]:
    lines = []
    if gpu.pcie_link is not None:
        link = gpu.pcie_link
        lines.append(_numbers("pcie_link", link.max_gen, link.max_width, link.gen, link.width))
    if gpu.pcie_throughput is not None:
        lines.append(_numbers("pcie_throughput", *gpu.pcie_throughput))
    if gpu.nvlinks is not None:
        lines.append(_number("nvlink_links", len(gpu.nvlinks)))
        for index, nvlink in enumerate(gpu.nvlinks):
            counters = (nvlink.crc_flit, nvlink.crc_data, nvlink.replay, nvlink.recovery)
            lines.append(_numbers("nvlink", index, nvlink.active, *counters))
    if gpu.remapped_rows is not None:
        rows = gpu.remapped_rows
        values = (rows.corrected, rows.uncorrected, rows.pending, rows.failure)
        lines.append(_numbers("remapped_rows", *values))
    for cause, count in (gpu.retired_pages or {}).items():
        if cause not in RETIREMENT_CAUSES:
            raise ValueError(f"retired_pages cause must be sbe or dbe, got {cause!r}")
        lines.append(_numbers(f"retired_pages {cause}", count))
    if gpu.retired_pages_pending is not None:
        lines.append(_numbers("retired_pages_pending", gpu.retired_pages_pending))
    for xid in gpu.xids:
        given_id = () if xid.id is None else (xid.id,)
        lines.append(_numbers("xid", xid.code, *given_id))
    return lines


def _percent(key: str, value: float) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise ValueError(f"{key} must be a percentage from 0 to 100, got {value!r}")
    milli = round(value * 1000)
    if abs(milli - value * 1000) > 1e-6:
        raise ValueError(f"{key} {value!r} has more than three decimals")
    whole, fraction = divmod(milli, 1000)
    return f"{whole}.{fraction:03d}" if fraction else str(whole)


def _gpm_metric_lines(prefix: str, metrics: FakeGpmMetrics) -> list[bytes]:
    lines = []
    for name, value in vars(metrics).items():
        if value is None:
            continue
        if name in _GPM_TRAFFIC:
            text = _integer(name, value)
            if value > _GPM_MAX_BYTES_PER_SECOND:
                raise ValueError(f"{name} {value} is more than 2**48 bytes per second")
        else:
            text = _percent(name, value)
        lines.append(f"{prefix} {name} {text}".encode())
    return lines


def _gpm_lines(gpu: FakeGpu) -> list[bytes]:
    """After the mig lines: a GPU instance's figures need its mig line above them."""
    if gpu.gpm is None:
        if gpu.gpm_metrics is not None or gpu.gpm_mig_metrics:
            raise ValueError("gpm_metrics and gpm_mig_metrics need gpm set")
        return []
    if gpu.gpm not in GPM_MODES:
        raise ValueError(f"gpm must be one of {', '.join(GPM_MODES)}, got {gpu.gpm!r}")
    lines = [f"gpm {gpu.gpm}".encode()]
    if gpu.gpm_metrics is not None:
        lines += _gpm_metric_lines("gpm_metric", gpu.gpm_metrics)
    for gpu_instance, metrics in gpu.gpm_mig_metrics.items():
        prefix = f"gpm_mig_metric {_integer('gpm_mig_metrics GPU instance', gpu_instance)}"
        lines += _gpm_metric_lines(prefix, metrics)
    return lines


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
    lines += _mig_lines(gpu)
    for process in gpu.processes:
        lines.append(_process_line(process))
    if gpu.process_utilization_period is not None:
        lines.append(_number("process_utilization_period", gpu.process_utilization_period))
    for sample in gpu.process_utilization:
        numbers = (sample.pid, sample.sm, sample.memory, sample.encoder, sample.decoder)
        values = " ".join(_integer("process_utilization", n) for n in numbers)
        lines.append(f"process_utilization {values}".encode())
    lines += _health_lines(gpu)
    lines += _gpm_lines(gpu)
    lines += _faults(gpu.fail, gpu.block)
    if gpu.lost:
        lines.append(b"lost")
    return lines


def _process_line(process: FakeProcess) -> bytes:
    if process.kind not in ("compute", "graphics"):
        raise ValueError(f"process kind must be compute or graphics, got {process.kind!r}")
    line = _number(f"process {process.kind} {process.pid}", process.used_bytes)
    gpu_instance, compute_instance = process.gpu_instance, process.compute_instance
    if gpu_instance is None and compute_instance is None:
        return line
    if gpu_instance is None or compute_instance is None:
        raise ValueError(f"process {process.pid} needs both gpu_instance and compute_instance")
    gi, ci = (
        _integer(f"process {process.pid} instance", n) for n in (gpu_instance, compute_instance)
    )
    return line + f" {gi} {ci}".encode()


def _mig_lines(gpu: FakeGpu) -> list[bytes]:
    """mig_mode, then the MIG devices: the library wants them above the processes in them."""
    if gpu.mig_mode is None:
        if gpu.migs:
            raise ValueError("migs need mig_mode (1, pending)")
        return []
    current, pending = gpu.mig_mode
    if current not in (0, 1) or pending not in (0, 1):
        raise ValueError(f"mig_mode must be two of 0 and 1, got {gpu.mig_mode!r}")
    lines = [f"mig_mode {current} {pending}".encode()]
    for mig in gpu.migs:
        if not _MIG_PROFILE.fullmatch(mig.profile) or len(mig.profile) > _MIG_PROFILE_LIMIT:
            raise ValueError(f"MIG profile {mig.profile!r} is not like 1g.10gb or 1c.2g.20gb")
        if not mig.uuid or any(c.isspace() for c in mig.uuid) or len(mig.uuid.encode()) > 95:
            raise ValueError(f"MIG uuid {mig.uuid!r} must be 1 to 95 bytes without blanks")
        numbers = (mig.gpu_instance, mig.compute_instance, mig.memory_total, mig.memory_used)
        gi, ci, total, used = (_integer("mig", n) for n in numbers)
        lines.append(f"mig {gi} {ci} {mig.profile} {mig.uuid} {total} {used}".encode())
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
    "FakeGpmMetrics",
    "FakeGpu",
    "FakeMig",
    "FakeNvLink",
    "FakePcieLink",
    "FakeProcess",
    "FakeProcessUtilization",
    "FakeRemappedRows",
    "FakeScenario",
    "FakeXid",
    "busy",
    "idle",
    "make_gpu",
    "make_mig_gpu",
    "mig_uuid",
    "render",
    "write",
]

if __name__ == "__main__":
    sys.exit(main())
