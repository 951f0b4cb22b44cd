"""GPU Performance Monitoring (GPM): how busy the SMs, the tensor and FP pipes and DRAM really were.

NVML has these figures on Hopper and newer GPUs (drivers from 520 on): a GPM sample holds the
GPU's performance counters, and ``nvmlGpmMetricsGet`` turns two samples into the figures of the
time between them. So each GPU (and each GPU instance of a GPU in MIG mode) keeps two sample
buffers: every pass fills the spare one, computes the figures from the previous sample to it,
and keeps it as the next base. The first pass after start, or after NVML is re-initialised, has
no base and publishes nothing; a base older than ``max_base_age`` (the sampler passes three
intervals) is never used, so a figure always describes the recent past.

A GPU without GPM (before Hopper, a driver without it) or whose counters another client holds
(DCGM profiling) gets no figures and a status saying why, logged once per change. GPM runs in
the GPU's own read thread after its other fields, and anything it raises costs the GPM figures
of that GPU only. The buffers are freed when GPUs go away, before every nvmlShutdown, and at
exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pynvml

from exporter.snapshot import CollectorStatus, GpmFigures, GpuSample, MigSample

log = logging.getLogger(__name__)

_MIB = 1024 * 1024  # NVML gives traffic in MiB/s, and activities in percent

# (GpmFigures attribute, NVML metric id, True for a percentage, False for MiB/s)
_METRICS: tuple[tuple[str, int, bool], ...] = (
    ("sm_active_ratio", pynvml.NVML_GPM_METRIC_SM_UTIL, True),
    ("sm_occupancy_ratio", pynvml.NVML_GPM_METRIC_SM_OCCUPANCY, True),
    ("tensor_active_ratio", pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL, True),
    ("dram_active_ratio", pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL, True),
    ("fp64_active_ratio", pynvml.NVML_GPM_METRIC_FP64_UTIL, True),
    ("fp32_active_ratio", pynvml.NVML_GPM_METRIC_FP32_UTIL, True),
    ("fp16_active_ratio", pynvml.NVML_GPM_METRIC_FP16_UTIL, True),
    ("graphics_active_ratio", pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL, True),
    ("pcie_tx_bytes_per_second", pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC, False),
    ("pcie_rx_bytes_per_second", pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC, False),
    ("nvlink_tx_bytes_per_second", pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC, False),
    ("nvlink_rx_bytes_per_second", pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC, False),
)

# Answers to a sample of a GPU that has GPM, meaning "not now, not for us": the counters are
# held by another client (DCGM profiling) or kept from unprivileged users.
_REFUSALS = frozenset(
    {
        pynvml.NVML_ERROR_NOT_SUPPORTED,
        pynvml.NVML_ERROR_NO_PERMISSION,
        pynvml.NVML_ERROR_IN_USE,
    }
)
_WHOLE_GPU = -1  # the scope key of the GPU itself; GPU instances are keyed by their id


@dataclass
class _Scope:
    """The two sample buffers of one GPU or GPU instance, and when the base was taken."""

    base: Any = None
    base_at: float = 0.0  # time.monotonic()
    spare: Any = None


@dataclass
class _GpuState:
    """One GPU's GPM state; its lock is held by the one read thread working on the GPU."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    generation: int = -1  # the NVML session its buffers belong to
    uuid: str | None = None
    supported: str | None = None  # None until asked; else "ok" or why not, for the status
    status: str | None = None
    logged: str | None = None  # the status last logged, so each change is logged once
    scopes: dict[int, _Scope] = field(default_factory=dict)
    seconds: float = 0.0  # how long the last pass's GPM calls took


class GpmUnavailable(Exception):
    """This GPU gives no GPM figures now; ``status`` is one of snapshot.GPM_STATUSES."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class GpmCollector:
    """GPM figures per GPU and per MIG GPU instance, one sample each per pass.

    ``read`` runs in the GPU's read thread (one at a time per GPU); ``release`` and ``forget``
    come from the sampler thread and free only buffers no read is using at that moment.
    ``nvml`` is the pynvml module, or a stand-in in the unit tests.
    """

    def __init__(
        self,
        *,
        max_base_age: float,
        nvml: Any = pynvml,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_base_age = max_base_age
        self._nvml = nvml
        self._clock = clock
        self._gpus: dict[int, _GpuState] = {}
        self._gpus_lock = threading.Lock()

    def read(self, sample: GpuSample, *, generation: int) -> GpuSample:
        """``sample`` with its GPM status and figures (and its MIG devices' figures)."""
        state = self._state(sample.index)
        if not state.lock.acquire(blocking=False):
            return sample  # a call on this GPU is still running; never two at once
        started = time.perf_counter()
        try:
            if state.generation != generation or state.uuid != sample.uuid:
                self._free(state)  # another session or another GPU: start afresh
                state.generation, state.uuid = generation, sample.uuid
            return self._read(state, sample)
        finally:
            state.seconds = time.perf_counter() - started
            with self._gpus_lock:
                forgotten = self._gpus.get(sample.index) is not state
            if forgotten:  # the GPU went away while this read ran: nobody else will free them
                self._free(state)
            state.lock.release()

    def status(self, indices: list[int]) -> CollectorStatus:
        """The collector line for a pass over ``indices``: failed if a GPU's GPM erred; the
        duration is the sum of the GPUs' GPM calls (they run in parallel, one per GPU)."""
        states = [self._gpus[i] for i in indices if i in self._gpus]
        success = all(state.status != "error" for state in states)
        return CollectorStatus("gpm", success, sum(state.seconds for state in states))

    def forget(self, index: int) -> None:
        """A GPU is no longer listed: free its buffers (or leave it to its running read)."""
        with self._gpus_lock:
            state = self._gpus.pop(index, None)
        if state is not None:
            self._release(state)

    def release(self) -> None:
        """Free every buffer no read is using, before nvmlShutdown; the next read starts over."""
        with self._gpus_lock:
            states = list(self._gpus.values())
        for state in states:
            self._release(state)

    # -- one GPU ------------------------------------------------------------------------------

    def _state(self, index: int) -> _GpuState:
        with self._gpus_lock:
            return self._gpus.setdefault(index, _GpuState())

    def _release(self, state: _GpuState) -> None:
        if state.lock.acquire(blocking=False):
            try:
                self._free(state)
            finally:
                state.lock.release()
        else:  # a read is in NVML now: it frees them when it sees the session changed
            state.generation = -1

    def _free(self, state: _GpuState) -> None:
        for scope in state.scopes.values():
            self._free_scope(scope)
        state.scopes.clear()
        state.supported = None

    def _free_scope(self, scope: _Scope) -> None:
        for buffer in (scope.base, scope.spare):
            if buffer is not None:
                with contextlib.suppress(pynvml.NVMLError):
                    self._nvml.nvmlGpmSampleFree(buffer)
        scope.base = scope.spare = None

    def _read(self, state: _GpuState, sample: GpuSample) -> GpuSample:
        nvml = self._nvml
        try:
            if state.supported is None:
                state.supported = self._support(nvml.nvmlDeviceGetHandleByIndex(sample.index))
            if state.supported != "ok":
                raise GpmUnavailable("not_supported", state.supported)
            handle = nvml.nvmlDeviceGetHandleByIndex(sample.index)
            figures = self._whole_gpu(state, handle, in_mig_mode=bool(sample.mig_mode))
            migs = self._mig_figures(state, handle, sample)
        except GpmUnavailable as unavailable:
            self._report(sample.index, state, unavailable.status, str(unavailable))
            return dataclasses.replace(sample, gpm_status=unavailable.status)
        except pynvml.NVMLError as error:
            if error.value == pynvml.NVML_ERROR_GPU_IS_LOST:
                return sample  # the next pass reports the GPU down
            self._report(sample.index, state, "error", f"GPM failed: {error}")
            return dataclasses.replace(sample, gpm_status="error")
        except Exception as error:  # a malformed answer costs this GPU's GPM figures only
            log.debug("GPU %d: GPM read failed", sample.index, exc_info=True)
            self._report(sample.index, state, "error", f"GPM failed: {error!r}")
            return dataclasses.replace(sample, gpm_status="error")
        self._report(sample.index, state, "ok", "GPM figures available")
        return dataclasses.replace(sample, gpm_status="ok", gpm=figures, migs=migs)

    def _support(self, handle: Any) -> str:
        """ "ok", or why this GPU has no GPM, in words for the log."""
        try:
            support = self._nvml.nvmlGpmQueryDeviceSupport(handle)
        except pynvml.NVMLError as error:
            if error.value == pynvml.NVML_ERROR_GPU_IS_LOST:
                raise
            # FUNCTION_NOT_FOUND: a driver before GPM; ARGUMENT_VERSION_MISMATCH: a driver whose
            # GPM structures differ from the ones pynvml knows.
            return f"the driver has no usable GPM ({error})"
        if not support.isSupportedDevice:
            return "the GPU has no GPM (Hopper and newer have it)"
        return "ok"

    def _whole_gpu(self, state: _GpuState, handle: Any, *, in_mig_mode: bool) -> GpmFigures | None:
        try:
            take = functools.partial(self._nvml.nvmlGpmSampleGet, handle)
            return self._step(state, _WHOLE_GPU, take)
        except GpmUnavailable:
            if in_mig_mode:  # a driver may keep the whole GPU from us, not its instances
                return None
            raise

    def _step(self, state: _GpuState, key: int, take: Callable[[Any], Any]) -> GpmFigures | None:
        """Sample one scope into its spare buffer; the figures since its base, if recent."""
        scope = state.scopes.setdefault(key, _Scope())
        if scope.spare is None:
            scope.spare = self._nvml.nvmlGpmSampleAlloc()
        try:
            take(scope.spare)
        except pynvml.NVMLError as error:
            if key == _WHOLE_GPU and error.value in _REFUSALS:
                raise GpmUnavailable(
                    "refused", f"GPM refused ({error}): another client, such as DCGM "
                    "profiling, may hold the counters"
                ) from error  # fmt: skip
            raise
        now = self._clock()
        base, base_at = scope.base, scope.base_at
        scope.base, scope.base_at, scope.spare = scope.spare, now, base
        if base is None or now - base_at > self._max_base_age:
            return None  # nothing recent to compare with: this sample is the next base
        return self._between(base, scope.base)

    def _between(self, first: Any, second: Any) -> GpmFigures | None:
        nvml = self._nvml
        request = nvml.c_nvmlGpmMetricsGet_t()
        request.version = nvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(_METRICS)
        request.sample1, request.sample2 = first, second
        for position, (_, metric_id, _) in enumerate(_METRICS):
            request.metrics[position].metricId = metric_id
        answer = nvml.nvmlGpmMetricsGet(request)
        figures: dict[str, float] = {}
        for position, (attribute, _, is_percent) in enumerate(_METRICS):
            metric = answer.metrics[position]
            if metric.nvmlReturn == pynvml.NVML_SUCCESS:
                figures[attribute] = _converted(float(metric.value), is_percent)
        return GpmFigures(**figures) if figures else None

    def _mig_figures(
        self, state: _GpuState, handle: Any, sample: GpuSample
    ) -> tuple[MigSample, ...]:
        """The MIG devices with their GPU instance's figures; one sample per GPU instance."""
        instances = {m.gpu_instance for m in sample.migs if m.gpu_instance is not None}
        for gone in set(state.scopes) - instances - {_WHOLE_GPU}:
            self._free_scope(state.scopes.pop(gone))
        by_instance: dict[int, GpmFigures | None] = {}
        for instance in sorted(instances):
            try:
                take = functools.partial(self._nvml.nvmlGpmMigSampleGet, handle, instance)
                by_instance[instance] = self._step(state, instance, take)
            except pynvml.NVMLError as error:
                if error.value == pynvml.NVML_ERROR_GPU_IS_LOST:
                    raise
                log.debug("GPU %d: no GPM sample of GPU instance %d: %s", sample.index,
                          instance, error)  # fmt: skip
        return tuple(
            dataclasses.replace(mig, gpm=by_instance.get(mig.gpu_instance))
            if mig.gpu_instance in by_instance
            else mig
            for mig in sample.migs
        )

    def _report(self, index: int, state: _GpuState, status: str, reason: str) -> None:
        """Keep the status; log it when it changes (a GPU without GPM says so once)."""
        state.status = status
        if state.logged == status:
            return
        first = state.logged is None
        state.logged = status
        if status == "ok":
            if not first:
                log.info("GPU %d: %s again", index, reason)
        elif status == "not_supported":
            log.info("GPU %d: no GPM figures: %s", index, reason)
        else:
            log.warning("GPU %d: no GPM figures: %s", index, reason)


def _converted(value: float, is_percent: bool) -> float:
    """A percentage as a ratio within 0..1, MiB/s as bytes/s not below 0 (counters wrapping or
    racing cannot say more). Dividing by 100, not multiplying by 0.01, keeps 45.5 % at 0.455."""
    value = max(value, 0.0)
    return min(value / 100.0, 1.0) if is_percent else value * _MIB


__all__ = ["GpmCollector", "GpmUnavailable"]
