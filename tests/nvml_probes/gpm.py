"""Probes of GPU Performance Monitoring: support, sample buffers, metrics, faults, leaks."""

from __future__ import annotations

import ctypes
import sys
import time
from dataclasses import replace
from typing import Any

import pynvml as N

from simulator.fakenvml import scenario as fake
from tests.nvml_probes.common import SCENARIO, Out, code, handles, probe, raw, value
from tests.nvml_probes.scenarios import GPM_FIGURES, gpm_scenario

# Every metric the scenario can give, then three it cannot: one GPM knows but the file does
# not serve (NVDEC 0), and two ids outside GPM's range.
METRIC_IDS = [
    N.NVML_GPM_METRIC_GRAPHICS_UTIL, N.NVML_GPM_METRIC_SM_UTIL, N.NVML_GPM_METRIC_SM_OCCUPANCY,
    N.NVML_GPM_METRIC_INTEGER_UTIL, N.NVML_GPM_METRIC_ANY_TENSOR_UTIL,
    N.NVML_GPM_METRIC_DRAM_BW_UTIL, N.NVML_GPM_METRIC_FP64_UTIL, N.NVML_GPM_METRIC_FP32_UTIL,
    N.NVML_GPM_METRIC_FP16_UTIL, N.NVML_GPM_METRIC_PCIE_TX_PER_SEC,
    N.NVML_GPM_METRIC_PCIE_RX_PER_SEC, N.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC,
    N.NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC,
    N.NVML_GPM_METRIC_NVDEC_0_UTIL, 0, N.NVML_GPM_METRIC_MAX,
]  # fmt: skip
GAP = 0.02  # seconds between two samples: enough for distinct monotonic stamps


def _request(first: Any, second: Any, ids: list[int] = METRIC_IDS, **fields: Any) -> Any:
    request = N.c_nvmlGpmMetricsGet_t()
    request.version = fields.get("version", N.NVML_GPM_METRICS_GET_VERSION)
    request.numMetrics = fields.get("numMetrics", len(ids))
    request.sample1, request.sample2 = first, second
    for position, metric_id in enumerate(ids):
        request.metrics[position].metricId = metric_id
    return request


def _metrics(first: Any, second: Any, ids: list[int] = METRIC_IDS) -> Any:
    """[value, nvmlReturn, shortName, unit] per metric, or the call's error."""
    try:
        got = N.nvmlGpmMetricsGet(_request(first, second, ids))
    except N.NVMLError as error:
        return {"error": error.value}
    out = []
    for position in range(len(ids)):
        metric = got.metrics[position]
        info = metric.metricInfo
        names = [info.shortName, info.unit]
        out.append([metric.value, metric.nvmlReturn, *(n.decode() if n else None for n in names)])
    return out


def _pair(take: Any, *args: Any) -> tuple[Any, Any]:
    first, second = N.nvmlGpmSampleAlloc(), N.nvmlGpmSampleAlloc()
    take(*args, first)
    time.sleep(GAP)
    take(*args, second)
    return first, second


def _support(h: Any) -> Any:
    got = value(N.nvmlGpmQueryDeviceSupport, h)
    return got if isinstance(got, dict) else int(got.isSupportedDevice)


def _raw_support(h: Any, version: int | None) -> list[int]:
    support = N.c_nvmlGpmSupport_t()
    support.version = version or 0
    rc = raw("nvmlGpmQueryDeviceSupport")(h, ctypes.byref(support) if version else None)
    return [rc, support.isSupportedDevice]


@probe
def gpm_support_and_metrics(out: Out) -> None:
    N.nvmlInit()
    h0, h1, h2, h3 = handles()
    mig1 = N.nvmlDeviceGetMigDeviceHandleByIndex(h3, 0)  # GPU instance 1
    out["support"] = [_support(h) for h in (h0, h1, h2, h3, mig1)]
    out["support_raw"] = [_raw_support(h0, 2), _raw_support(h0, None)]
    first, second = _pair(N.nvmlGpmSampleGet, h0)
    out["metrics"] = _metrics(first, second)
    out["swapped"] = _metrics(second, first)
    out["bad_version"] = code(N.nvmlGpmMetricsGet, _request(first, second, version=2))
    out["too_many"] = code(
        N.nvmlGpmMetricsGet, _request(first, second, numMetrics=N.NVML_GPM_METRIC_MAX + 1)
    )
    unfilled = N.nvmlGpmSampleAlloc()
    out["unfilled"] = _metrics(first, unfilled)
    other = N.nvmlGpmSampleAlloc()
    N.nvmlGpmMigSampleGet(h3, 1, other)
    out["two_scopes"] = _metrics(first, other)
    out["no_metrics"] = _metrics(first, second, [])
    out["refused"] = [code(N.nvmlGpmSampleGet, h, unfilled) for h in (h1, h2)]
    pairs = [
        _pair(N.nvmlGpmMigSampleGet, h3, 1),
        _pair(N.nvmlGpmSampleGet, mig1),  # its GPU instance's figures
        _pair(N.nvmlGpmMigSampleGet, h3, 2),  # no figures given
        _pair(N.nvmlGpmSampleGet, h3),  # the whole GPU: none given
    ]
    out["mig"] = [_metrics(*pair, METRIC_IDS[:6]) for pair in pairs]
    out["mig_errors"] = [
        code(N.nvmlGpmMigSampleGet, h3, 9, unfilled),  # no such GPU instance
        code(N.nvmlGpmMigSampleGet, h0, 1, unfilled),  # not in MIG mode
        code(N.nvmlGpmMigSampleGet, mig1, 1, unfilled),  # a MIG handle
    ]
    N.nvmlGpmSampleFree(first)
    out["freed"] = [
        code(N.nvmlGpmSampleFree, first),
        _metrics(first, second),
        code(N.nvmlGpmSampleGet, h0, first),
        code(N.nvmlGpmSampleGet, h0, None),
        raw("nvmlGpmSampleAlloc")(None),
    ]
    for sample in (second, unfilled, other, *(s for pair in pairs for s in pair)):
        N.nvmlGpmSampleFree(sample)
    N.nvmlShutdown()
    null = N.c_nvmlGpmSample_t()
    out["after_shutdown"] = [
        code(N.nvmlGpmSampleAlloc),
        code(N.nvmlGpmMetricsGet, _request(null, null)),
    ]


@probe
def gpm_figures_follow_the_file(out: Out) -> None:
    """Pairs within one figure give it exactly; a pair across a change gives a mean."""
    N.nvmlInit()
    h0 = N.nvmlDeviceGetHandleByIndex(0)
    samples = [N.nvmlGpmSampleAlloc() for _ in range(4)]
    sm = [N.NVML_GPM_METRIC_SM_UTIL]
    N.nvmlGpmSampleGet(h0, samples[0])
    time.sleep(0.1)
    N.nvmlGpmSampleGet(h0, samples[1])
    figures = replace(GPM_FIGURES, sm_active=80)
    fake.write(SCENARIO, gpm_scenario(gpm_metrics=figures))
    time.sleep(0.1)
    N.nvmlGpmSampleGet(h0, samples[2])
    out["steady"] = _metrics(samples[0], samples[1], sm)[0][0]
    out["changed"] = _metrics(samples[1], samples[2], sm)[0][0]
    out["across"] = _metrics(samples[0], samples[2], sm)[0][0]
    fake.write(SCENARIO, gpm_scenario(gpm="refused"))
    out["refused"] = code(N.nvmlGpmSampleGet, h0, samples[3])
    fake.write(SCENARIO, gpm_scenario(lost=True))
    out["lost"] = [code(N.nvmlGpmSampleGet, h0, samples[3]), _support(h0)]
    fake.write(SCENARIO, gpm_scenario(fail={"nvmlGpmSampleGet": 999}))
    out["failing"] = [code(N.nvmlGpmSampleGet, h, samples[3]) for h in handles()]
    N.nvmlGpmSampleGet(handles()[3], samples[3])  # GPU 3 unaffected by GPU 0's fail
    scenario = gpm_scenario()
    scenario.fail = {"nvmlGpmMetricsGet": 17}
    scenario.block = {"nvmlGpmSampleAlloc": 0.4}
    fake.write(SCENARIO, scenario)
    out["global_fail"] = code(N.nvmlGpmMetricsGet, _request(samples[0], samples[1], sm))
    started = time.monotonic()
    extra = N.nvmlGpmSampleAlloc()
    out["blocked_seconds"] = time.monotonic() - started
    for sample in [*samples, extra]:
        N.nvmlGpmSampleFree(sample)
    N.nvmlShutdown()


@probe
def gpm_leak_reported_at_shutdown(out: Out, leaked: int) -> None:
    N.nvmlInit()
    N.nvmlInit()
    samples = [N.nvmlGpmSampleAlloc() for _ in range(3)]
    for sample in samples[leaked:]:
        N.nvmlGpmSampleFree(sample)
    N.nvmlShutdown()  # the library is still initialised once: nothing reported yet
    print("between the two shutdowns", file=sys.stderr, flush=True)
    N.nvmlShutdown()
    out["leaked"] = leaked
