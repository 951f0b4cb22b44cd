"""The "Efficiency" row: how busy the GPUs really are, from the exporter's GPM figures.

Utilization only says a kernel was running; SM activity, occupancy, tensor and DRAM activity
(GPM, Hopper and newer) say how much of the GPU it kept busy. Per GPU and per MIG device over
time, and per user and Slurm job over the selected range from the counters of
``prometheus/rules/efficiency.yml``. GPUs without GPM have none of these series, so they are
absent here rather than drawn at 0.
"""

from __future__ import annotations

from .panels import (
    GPU_LEGEND,
    LOW_SM_RATIO,
    NODE_GPU,
    Panel,
    by_name,
    colored_column,
    table,
    target,
    thresholds,
    timeseries,
    unknown_user,
)

MIG_LEGEND = f"{GPU_LEGEND} GI {{{{gi}}}}"
# (metric after gpu_ or gpu_mig_, title, what the figure means; the DCGM field it matches)
FIGURES = (
    (
        "sm_active_ratio",
        "SM activity",
        "Share of the time an SM had a warp resident, averaged over the SMs "
        f"(DCGM_FI_PROF_SM_ACTIVE). Below {LOW_SM_RATIO:.0%} at high utilization means one "
        "small kernel keeps the GPU busy while most SMs wait (GpuLowSmActivity).",
    ),
    (
        "sm_occupancy_ratio",
        "SM occupancy",
        "Warps resident on the SMs as a share of the most they can hold "
        "(DCGM_FI_PROF_SM_OCCUPANCY): low occupancy with high SM activity points at kernels "
        "limited by registers or shared memory.",
    ),
    (
        "tensor_active_ratio",
        "Tensor activity",
        "Share of the time any tensor pipe was active (DCGM_FI_PROF_PIPE_TENSOR_ACTIVE): "
        "matrix math in FP16, BF16, TF32, FP8 or INT8; 0 for a job that trains without them.",
    ),
    (
        "dram_active_ratio",
        "DRAM activity",
        "Device memory bandwidth used as a share of the peak (DCGM_FI_PROF_DRAM_ACTIVE); "
        "high DRAM and low SM activity is a memory-bound job.",
    ),
)
GPM_NOTE = (
    " From NVML GPM between two exporter passes: GPUs before Hopper, or whose GPM counters "
    "DCGM profiling holds, have no series."
)


def efficiency_row() -> list[Panel]:
    return [
        *activity_panels(scope="GPU", metric_prefix="gpu_", legend=GPU_LEGEND),
        # A MIG device gets its own GPU instance's figures; the whole GPU has none in MIG mode.
        *activity_panels(
            scope="MIG device",
            metric_prefix="gpu_mig_",
            legend=MIG_LEGEND,
            note=" Per MIG device, from its GPU instance (GI): what its user's work does with "
            "the slice.",
        ),
        *per_holder_tables(),
        low_sm_table(),
    ]


def activity_panels(*, scope: str, metric_prefix: str, legend: str, note: str = "") -> list[Panel]:
    """One time series of each GPM figure, per ``scope`` (GPU or MIG device)."""
    return [
        timeseries(
            f"{title} per {scope}",
            meaning + note + GPM_NOTE,
            [target(f"{metric_prefix}{metric}{{{NODE_GPU}}}", legend)],
            "percentunit",
            minimum=0,
            maximum=1,
            width=12,
        )
        for metric, title, meaning in FIGURES
    ]


def range_ratio(level: str, figure: str, selector: str) -> str:
    """Mean ``figure`` over the range of the devices each ``level`` held, weighted by time held
    (rules/efficiency.yml); 0 / 0, no value, for a holder without a GPM device in the range."""
    return (
        f"increase({level}:gpu_{figure}_seconds:total{selector}[$__range])"
        f" / increase({level}:gpu_gpm_held_seconds:total{selector}[$__range])"
    )


def held_hours(level: str, selector: str) -> str:
    return f"increase({level}:gpu_gpm_held_seconds:total{selector}[$__range]) / 3600"


def holder_table(
    title: str,
    description: str,
    level: str,
    selector: str,
    *,
    named: str,
    header: str,
    name_unknown: bool = False,
) -> Panel:
    """SM and tensor activity over the range, and the GPU-hours they are weighted by, of one
    holder per row (user or Slurm job)."""
    exprs = [
        range_ratio(level, "sm_active", selector),
        range_ratio(level, "tensor_active", selector),
        held_hours(level, selector),
    ]
    if name_unknown:
        exprs = [unknown_user(expr) for expr in exprs]
    return table(
        title,
        description,
        [target(expr, ref=ref, instant=True, table=True) for expr, ref in zip(exprs, "ABC")],
        "percentunit",
        columns={
            named: header,
            "Value #A": "SM activity",
            "Value #B": "Tensor activity",
            "Value #C": "GPU-hours with GPM",
        },
        sort_by="Value #C",
        overrides=[
            colored_column(
                "SM activity", thresholds((None, "orange"), (LOW_SM_RATIO, "green")), min=0, max=1
            ),
            by_name("GPU-hours with GPM", unit="h", decimals=2),
        ],
        width=12,
    )


def per_holder_tables() -> list[Panel]:
    weighting = (
        "Mean over the selected range of the devices (GPUs or MIG devices) each {} held, "
        "weighted by the time each was held, from the counters of rules/efficiency.yml (whole "
        "cluster, not filtered by node). Only devices with GPM figures count, and their "
        "device-hours are the last column; a GPU shared by two holders counts fully for each."
    )
    return [
        holder_table(
            "SM and tensor activity per user in the selected range",
            weighting.format("user") + " Sorted by those hours: the biggest users first.",
            "user",
            '{user=~"$user"}',
            named="user",
            header="User",
            name_unknown=True,
        ),
        holder_table(
            "SM and tensor activity per Slurm job in the selected range",
            weighting.format("Slurm job")
            + " Processes outside any job are left out; jobs come from the processes' cgroups.",
            "slurm_job",
            "",
            named="slurm_job",
            header="Slurm job",
        ),
    ]


def low_sm_table() -> Panel:
    return table(
        "Held GPUs with low SM activity",
        f"Devices a user holds now whose SM activity is below {LOW_SM_RATIO:.0%} (the "
        "GpuLowSmActivity threshold), one row per user and device; the MIG UUID is set for a "
        "MIG device. Worth a look at the job: too small batches, data loading on the CPU, or a "
        "MIG slice would do. GPUs without GPM are not listed.",
        [
            target(
                unknown_user(
                    f'node_gpu_user:gpu_sm_active_ratio:held{{{NODE_GPU}, user=~"$user"}}'
                    f" < {LOW_SM_RATIO}"
                ),
                instant=True,
                table=True,
            )
        ],
        "percentunit",
        columns={
            "node": "Node",
            "gpu": "GPU",
            "mig_uuid": "MIG UUID",
            "user": "User",
            "Value": "SM activity",
        },
        overrides=[by_name("GPU", unit="none")],
        width=24,
    )
