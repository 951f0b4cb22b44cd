"""The "Nodes" row: each GPU's readings over time."""

from __future__ import annotations

from .panels import (
    GPU_LEGEND,
    HOT_CELSIUS,
    MEMORY_FULL_RATIO,
    NODE_GPU,
    Panel,
    target,
    thresholds,
    timeseries,
)


def node_row() -> list[Panel]:
    return [
        timeseries(
            "GPU utilization",
            "Share of the sample period during which a kernel ran on the GPU.",
            [target(f"gpu_utilization_ratio{{{NODE_GPU}}}", GPU_LEGEND)],
            "percentunit",
            minimum=0,
            maximum=1,
            width=12,
        ),
        timeseries(
            "GPU memory bandwidth utilization",
            "Share of the sample period during which device memory was read or written.",
            [target(f"gpu_memory_utilization_ratio{{{NODE_GPU}}}", GPU_LEGEND)],
            "percentunit",
            minimum=0,
            maximum=1,
            width=12,
        ),
        timeseries(
            "GPU memory used",
            "Device memory in use on each GPU, by all processes and the driver.",
            [target(f"gpu_memory_used_bytes{{{NODE_GPU}}}", GPU_LEGEND)],
            "bytes",
            minimum=0,
            width=12,
        ),
        timeseries(
            "GPU memory used (share)",
            "Memory in use as a share of the GPU's memory. The dashed line is the "
            "GpuMemoryNearlyFull alert threshold (95%).",
            [
                target(
                    f"gpu_memory_used_bytes{{{NODE_GPU}}} / gpu_memory_total_bytes{{{NODE_GPU}}}",
                    GPU_LEGEND,
                )
            ],
            "percentunit",
            steps=thresholds((None, "green"), (MEMORY_FULL_RATIO, "red")),
            threshold_line=True,
            minimum=0,
            maximum=1,
            width=12,
        ),
        timeseries(
            "GPU temperature",
            f"Core temperature. The dashed line is the GpuHot alert threshold ({HOT_CELSIUS} °C).",
            [target(f"gpu_temperature_celsius{{{NODE_GPU}}}", GPU_LEGEND)],
            "celsius",
            steps=thresholds((None, "green"), (HOT_CELSIUS, "red")),
            threshold_line=True,
            width=12,
        ),
        timeseries(
            "GPU power",
            "Power drawn by each GPU; dashed: the power limit the driver enforces.",
            [
                target(f"gpu_power_watts{{{NODE_GPU}}}", GPU_LEGEND),
                target(f"gpu_power_limit_watts{{{NODE_GPU}}}", f"{GPU_LEGEND} limit", ref="B"),
            ],
            "watt",
            minimum=0,
            overrides=[
                {
                    "matcher": {"id": "byFrameRefID", "options": "B"},
                    "properties": [
                        {
                            "id": "custom.lineStyle",
                            "value": {"dash": [10, 10], "fill": "dash"},
                        },
                        {"id": "custom.fillOpacity", "value": 0},
                    ],
                }
            ],
            width=12,
        ),
    ]
