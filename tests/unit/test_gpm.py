"""GPM figures from a stand-in for pynvml's GPM calls: two samples, base age, status, buffers.

The process tests drive the real bindings on the fake NVML library; here the collector's own
logic is checked with values computed by hand: NVML's percentages become ratios, MiB/s bytes/s.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pynvml
import pytest

from exporter.collector import render
from exporter.gpm import GpmCollector
from exporter.snapshot import CollectorStatus, GpmFigures, GpuSample, MigSample
from tests.unit.builders import gpu, snapshot

pytestmark = pytest.mark.unit

MIB = 1024 * 1024
SM, OCCUPANCY, TENSOR, DRAM = 2, 3, 5, 10
FP64, FP32, FP16, GRAPHICS = 11, 12, 13, 1
PCIE_TX, PCIE_RX, NVLINK_RX, NVLINK_TX = 20, 21, 60, 61


class Buffer:
    """A sample buffer: the figures its scope had when it was filled."""

    def __init__(self) -> None:
        self.figures: dict[int, float] | None = None


class Metric:
    def __init__(self) -> None:
        self.metricId = 0
        self.nvmlReturn = 0
        self.value = 0.0


class Request:
    def __init__(self) -> None:
        self.version = 0
        self.numMetrics = 0
        self.sample1: Buffer | None = None
        self.sample2: Buffer | None = None
        self.metrics = [Metric() for _ in range(pynvml.NVML_GPM_METRIC_MAX)]


class Support:
    def __init__(self, supported: bool) -> None:
        self.isSupportedDevice = int(supported)


class Nvml:
    """GPM calls over per-scope figures: the metrics between two samples are the figures the
    later one holds, and a figure may be an int, an NVML error code for that metric alone."""

    c_nvmlGpmMetricsGet_t = Request
    NVML_GPM_METRICS_GET_VERSION = 1

    def __init__(self) -> None:
        self.figures: dict[tuple[int, int | None], dict[int, Any]] = {}
        self.supported: dict[int, bool | int] = {}  # an int: the query's error code
        self.sample_error: dict[int, int] = {}
        self.metrics_error: int | None = None
        self.live: set[int] = set()
        self.allocated = 0

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlGpmQueryDeviceSupport(self, handle: int) -> Support:
        answer = self.supported.get(handle, True)
        if not isinstance(answer, bool):
            raise pynvml.NVMLError(answer)
        return Support(answer)

    def nvmlGpmSampleAlloc(self) -> Buffer:
        buffer = Buffer()
        self.live.add(id(buffer))
        self.allocated += 1
        return buffer

    def nvmlGpmSampleFree(self, buffer: Buffer) -> None:
        self.live.remove(id(buffer))

    def _fill(self, handle: int, instance: int | None, buffer: Buffer) -> None:
        assert id(buffer) in self.live, "a freed or foreign buffer"
        if handle in self.sample_error:
            raise pynvml.NVMLError(self.sample_error[handle])
        buffer.figures = dict(self.figures.get((handle, instance), {}))

    def nvmlGpmSampleGet(self, handle: int, buffer: Buffer) -> None:
        self._fill(handle, None, buffer)

    def nvmlGpmMigSampleGet(self, handle: int, instance: int, buffer: Buffer) -> None:
        self._fill(handle, instance, buffer)

    def nvmlGpmMetricsGet(self, request: Request) -> Request:
        if self.metrics_error is not None:
            raise pynvml.NVMLError(self.metrics_error)
        assert request.version == 1 and request.sample1 is not request.sample2
        assert request.sample1 and request.sample2 and request.sample2.figures is not None
        for metric in request.metrics[: request.numMetrics]:
            got = request.sample2.figures.get(metric.metricId, pynvml.NVML_ERROR_NOT_SUPPORTED)
            if isinstance(got, float):
                metric.nvmlReturn, metric.value = 0, got
            else:
                metric.nvmlReturn = got
        return request


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


EVERY_FIGURE = {
    SM: 45.5, OCCUPANCY: 30.25, TENSOR: 62.5, DRAM: 12.5, FP64: 1.5, FP32: 20.0, FP16: 0.0,
    GRAPHICS: 91.0, PCIE_TX: 3.0, PCIE_RX: 1.5, NVLINK_TX: 51200.0, NVLINK_RX: 2560.0,
}  # fmt: skip
# The same in base units: percent / 100, MiB/s * 2**20.
EVERY_RATIO = GpmFigures(
    sm_active_ratio=0.455, sm_occupancy_ratio=0.3025, tensor_active_ratio=0.625,
    dram_active_ratio=0.125, fp64_active_ratio=0.015, fp32_active_ratio=0.2,
    fp16_active_ratio=0.0, graphics_active_ratio=0.91,
    pcie_tx_bytes_per_second=3 * MIB, pcie_rx_bytes_per_second=1.5 * MIB,
    nvlink_tx_bytes_per_second=50 * 1024 * MIB, nvlink_rx_bytes_per_second=2.5 * 1024 * MIB,
)  # fmt: skip


def sample(index: int, **overrides: Any) -> GpuSample:
    return GpuSample(index=index, up=True, uuid=f"GPU-{index}", **overrides)


@pytest.fixture
def nvml() -> Nvml:
    nvml = Nvml()
    nvml.figures[(0, None)] = dict(EVERY_FIGURE)
    return nvml


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def gpm(nvml: Nvml, clock: Clock) -> GpmCollector:
    return GpmCollector(max_base_age=6.0, nvml=nvml, clock=clock)


def passes(gpm: GpmCollector, clock: Clock, *samples: GpuSample, count: int = 2) -> list[Any]:
    """``count`` passes 2 s apart over ``samples``; each pass's results."""
    results = []
    for _ in range(count):
        results.append([gpm.read(s, generation=1) for s in samples])
        clock.now += 2.0
    return results


def _close(figures: GpmFigures | None, expected: GpmFigures) -> bool:
    assert figures is not None
    for name, want in dataclasses.asdict(expected).items():
        got = getattr(figures, name)
        if (got is None) != (want is None) or (want is not None and got != pytest.approx(want)):
            return False
    return True


def test_the_first_pass_has_no_figures_the_second_has_them_in_base_units(gpm, clock):
    (first,), (second,) = passes(gpm, clock, sample(0))
    assert (first.gpm_status, first.gpm) == ("ok", None)
    assert second.gpm_status == "ok" and _close(second.gpm, EVERY_RATIO)


def test_a_base_older_than_the_limit_is_never_used(gpm, clock):
    gpm.read(sample(0), generation=1)
    clock.now += 6.5  # more than max_base_age (6 s) later
    assert gpm.read(sample(0), generation=1).gpm is None
    clock.now += 6.0  # exactly the limit: still recent enough
    assert _close(gpm.read(sample(0), generation=1).gpm, EVERY_RATIO)


def test_figures_a_metric_lacks_stay_absent_and_ratios_stay_within_0_and_1(gpm, nvml, clock):
    nvml.figures[(0, None)] = {SM: 101.0, FP64: -1.0, DRAM: pynvml.NVML_ERROR_NOT_SUPPORTED}
    (_,), (second,) = passes(gpm, clock, sample(0))
    assert second.gpm == GpmFigures(sm_active_ratio=1.0, fp64_active_ratio=0.0)
    nvml.figures[(0, None)] = {}
    assert passes(gpm, clock, sample(0))[-1][0].gpm is None  # nothing at all: no figures


@pytest.mark.parametrize(
    ("support", "reason"),
    [
        (False, "the GPU has no GPM (Hopper and newer have it)"),
        (pynvml.NVML_ERROR_FUNCTION_NOT_FOUND, "the driver has no usable GPM"),
        (pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH, "the driver has no usable GPM"),
    ],
)
def test_a_gpu_without_gpm_says_why_once_and_has_no_figures(gpm, nvml, clock, caplog, support,
                                                            reason):  # fmt: skip
    nvml.supported[0] = support
    with caplog.at_level(logging.INFO, logger="exporter.gpm"):
        results = passes(gpm, clock, sample(0), count=3)
    assert [(r.gpm_status, r.gpm) for (r,) in results] == [("not_supported", None)] * 3
    (record,) = caplog.records
    assert record.levelname == "INFO"
    assert record.getMessage().startswith(f"GPU 0: no GPM figures: {reason}")
    assert nvml.allocated == 0  # no buffer for a GPU without GPM
    assert gpm.status([0]) == CollectorStatus("gpm", True, gpm.status([0]).duration_seconds)


def test_refused_counters_are_a_warning_once_and_recover(gpm, nvml, clock, caplog):
    nvml.sample_error[0] = pynvml.NVML_ERROR_IN_USE
    with caplog.at_level(logging.INFO, logger="exporter.gpm"):
        refused = passes(gpm, clock, sample(0), count=2)
        del nvml.sample_error[0]
        recovered = passes(gpm, clock, sample(0), count=2)
    assert [r.gpm_status for (r,) in refused + recovered] == ["refused"] * 2 + ["ok"] * 2
    assert recovered[0][0].gpm is None and _close(recovered[1][0].gpm, EVERY_RATIO)
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert len(messages) == 2 and messages[0][0] == "WARNING" and "DCGM" in messages[0][1]
    assert messages[1] == ("INFO", "GPU 0: GPM figures available again")


def test_an_error_fails_the_collector_for_that_gpu_only(gpm, nvml, clock):
    nvml.figures[(1, None)] = {SM: 10.0}
    passes(gpm, clock, sample(0), sample(1))
    nvml.metrics_error = pynvml.NVML_ERROR_UNKNOWN
    gpu0, gpu1 = passes(gpm, clock, sample(0), sample(1), count=1)[0]
    assert (gpu0.gpm_status, gpu0.gpm, gpu1.gpm_status) == ("error", None, "error")
    assert gpm.status([0, 1]).success is False
    nvml.metrics_error = None
    nvml.sample_error[0] = pynvml.NVML_ERROR_UNKNOWN
    gpu0, gpu1 = passes(gpm, clock, sample(0), sample(1), count=1)[0]
    assert gpu0.gpm_status == "error" and gpu1.gpm == GpmFigures(sm_active_ratio=0.1)
    assert gpm.status([1]).success is True and gpm.status([0, 1]).success is False


def test_a_lost_gpu_keeps_its_sample_untouched(gpm, nvml, clock):
    nvml.sample_error[0] = pynvml.NVML_ERROR_GPU_IS_LOST
    before = sample(0, temperature_celsius=50.0)
    assert gpm.read(before, generation=1) is before


def test_mig_devices_carry_their_gpu_instance_figures(gpm, nvml, clock):
    nvml.figures[(0, 1)] = {SM: 20.0, TENSOR: 5.0}
    nvml.figures[(0, 2)] = {}
    migs = (
        MigSample("MIG-a", gpu_instance=1, compute_instance=0),
        MigSample("MIG-b", gpu_instance=1, compute_instance=1),  # shares GPU instance 1
        MigSample("MIG-c", gpu_instance=2, compute_instance=0),
    )
    mig_gpu = sample(0, mig_mode=True, migs=migs)
    (_,), (second,) = passes(gpm, clock, mig_gpu)
    instance_one = GpmFigures(sm_active_ratio=0.2, tensor_active_ratio=0.05)
    assert [m.gpm for m in second.migs] == [instance_one, instance_one, None]
    assert _close(second.gpm, EVERY_RATIO)
    assert len(nvml.live) == 6  # two buffers for the GPU and for each GPU instance
    passes(gpm, clock, dataclasses.replace(mig_gpu, migs=migs[:1]), count=1)
    assert len(nvml.live) == 4  # GPU instance 2 is gone, and its buffers with it


def test_buffers_are_freed_on_release_forget_and_a_new_session(gpm, nvml, clock):
    nvml.figures[(1, None)] = {SM: 10.0}
    passes(gpm, clock, sample(0), sample(1), count=3)
    assert len(nvml.live) == 4 and nvml.allocated == 4  # reused pass after pass
    gpm.forget(1)
    assert len(nvml.live) == 2
    gpm.release()  # before nvmlShutdown
    assert nvml.live == set()
    # After a re-init: a new session starts over, with nothing to compare the first sample to.
    first = gpm.read(sample(0), generation=2)
    assert (first.gpm_status, first.gpm) == ("ok", None)
    clock.now += 2.0
    assert _close(gpm.read(sample(0), generation=2).gpm, EVERY_RATIO)
    assert len(nvml.live) == 2
    assert gpm.read(sample(0), generation=3).gpm is None
    assert len(nvml.live) == 1  # generation 2's two freed; the new base alone so far


def test_a_gpu_forgotten_while_its_read_runs_is_freed_when_the_read_ends(gpm, nvml, clock):
    passes(gpm, clock, sample(0), count=1)
    sample_get = nvml.nvmlGpmSampleGet

    def forgotten_meanwhile(handle: int, buffer: Buffer) -> None:
        gpm.forget(0)  # the sampler thread, while this read is in NVML
        sample_get(handle, buffer)

    nvml.nvmlGpmSampleGet = forgotten_meanwhile  # type: ignore[method-assign]
    gpm.read(sample(0), generation=1)
    assert nvml.live == set()


def test_another_gpu_in_the_same_slot_starts_over(gpm, nvml, clock):
    passes(gpm, clock, sample(0))
    swapped = dataclasses.replace(sample(0), uuid="GPU-other")
    assert gpm.read(swapped, generation=1).gpm is None


# ---------------------------------------------------------------- exposition


def test_gpm_families_render_per_gpu_and_per_mig_device_and_never_as_zeros():
    figures = GpmFigures(
        sm_active_ratio=0.455,
        tensor_active_ratio=0.625,
        pcie_tx_bytes_per_second=3 * MIB,
        nvlink_rx_bytes_per_second=2.0,
    )
    mig = MigSample("MIG-x", gpu_instance=1, compute_instance=0, gpm=GpmFigures(0.2))
    text = render(
        snapshot(
            gpu(0, gpm_status="ok", gpm=figures),
            gpu(1, gpm_status="not_supported"),
            gpu(2, gpm_status="ok", mig_mode=True, migs=(mig,)),
            gpu(3),  # GPM turned off
        )
    ).decode()
    lines = [line for line in text.splitlines() if "gpm" in line or "_active_" in line
             or "traffic" in line]  # fmt: skip
    g0 = 'gpu="0",uuid="GPU-00000000-aaaa"'
    g2 = 'gpu="2",uuid="GPU-00000002-aaaa"'
    samples = [line for line in lines if not line.startswith("#")]
    assert samples == [
        f"gpu_sm_active_ratio{{{g0}}} 0.455",
        f"gpu_tensor_active_ratio{{{g0}}} 0.625",
        f'gpu_mig_sm_active_ratio{{{g2},mig_uuid="MIG-x",gi="1",ci="0"}} 0.2',
        f'gpu_pcie_traffic_bytes_per_second{{{g0},direction="tx"}} 3145728.0',
        f'gpu_nvlink_traffic_bytes_per_second{{{g0},direction="rx"}} 2.0',
        *(
            f'gpu_exporter_gpm_status{{gpu="{i}",uuid="GPU-0000000{i}-aaaa",status="{s}"}} '
            f"{1.0 if s == state else 0.0}"
            for i, state in ((0, "ok"), (1, "not_supported"), (2, "ok"))
            for s in ("ok", "not_supported", "refused", "error")
        ),
    ]
    assert "# TYPE gpu_fp64_active_ratio gauge" in lines  # every family, empty or not
