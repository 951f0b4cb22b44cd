"""The "Exporters" row: the exporters' own collectors, sample age and versions."""

from __future__ import annotations

from .panels import (
    NODE,
    STALE_SECONDS,
    Panel,
    state_timeline,
    table,
    target,
    thresholds,
    timeseries,
    value_map,
)


def exporters_row() -> list[Panel]:
    return [
        state_timeline(
            "Exporter collectors",
            "Whether each collector of each node's exporter (nvml, processes, host) succeeded "
            "on its last pass. Failing for 5 minutes raises GpuCollectionFailing.",
            [
                target(
                    f"gpu_exporter_collector_success{{{NODE}}}",
                    "{{node}} {{collector}}",
                )
            ],
            "bool_on_off",
            [value_map(1, "ok", "green"), value_map(0, "failing", "red")],
            width=12,
        ),
        timeseries(
            "Sample age",
            "Seconds since each exporter last finished a sample. The dashed line is the "
            f"GpuCollectionStale alert threshold ({STALE_SECONDS} s): above it, an NVML call "
            "is hanging.",
            [
                target(
                    f"time() - gpu_exporter_last_collect_timestamp_seconds{{{NODE}}}",
                    "{{node}}",
                )
            ],
            "s",
            steps=thresholds((None, "green"), (STALE_SECONDS, "red")),
            threshold_line=True,
            minimum=0,
            width=12,
        ),
        timeseries(
            "Collector duration",
            "How long each collector's last pass took on each node.",
            [
                target(
                    f"gpu_exporter_collector_duration_seconds{{{NODE}}}",
                    "{{node}} {{collector}}",
                )
            ],
            "s",
            minimum=0,
            width=12,
        ),
        table(
            "Exporters",
            "Exporter and driver versions on each node.",
            [
                target(
                    f"gpu_exporter_build_info{{{NODE}}}",
                    instant=True,
                    table=True,
                )
            ],
            "none",
            columns={
                "node": "Node",
                "version": "Exporter",
                "driver_version": "Driver",
                "cuda_version": "CUDA",
                "nvml_version": "NVML",
            },
            width=24,
        ),
    ]
