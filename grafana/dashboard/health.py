"""The "Health" row: throttling, ECC, lost GPUs, XIDs, row remapping, PCIe, NVLink, MIG."""

from __future__ import annotations

from .panels import (
    GPU_LEGEND,
    NODE_GPU,
    Panel,
    by_name,
    colored_column,
    per_gpu,
    stat,
    state_timeline,
    table,
    target,
    thresholds,
    timeseries,
    unknown_user,
    value_map,
)


def health_row() -> list[Panel]:
    return [
        state_timeline(
            "Throttling",
            "Reasons holding a GPU's clocks down, while active (idle is left out). "
            "sw_power_cap is normal at full load; thermal and hardware reasons raise the "
            "GpuThrottled alert after 10 minutes.",
            [
                target(
                    f'gpu_throttle_reason{{{NODE_GPU}, reason!="gpu_idle"}} == 1',
                    f"{GPU_LEGEND} {{{{reason}}}}",
                )
            ],
            "bool_on_off",
            [value_map(1, "throttled", "orange")],
            width=12,
        ),
        timeseries(
            "ECC errors",
            "New ECC memory errors per interval. Any uncorrected error raises the "
            "GpuUncorrectableEccErrors alert; GPUs without ECC have no series.",
            [
                target(
                    f"increase(gpu_ecc_errors_total{{{NODE_GPU}}}[$__rate_interval])",
                    f"{GPU_LEGEND} {{{{type}}}}",
                )
            ],
            "none",
            minimum=0,
            bars=True,
            overrides=[
                {
                    "matcher": {"id": "byRegexp", "options": ".*uncorrected"},
                    "properties": [
                        {"id": "color", "value": {"fixedColor": "red", "mode": "fixed"}}
                    ],
                }
            ],
            width=12,
        ),
        stat(
            "Lost GPUs",
            "GPUs that no longer answer NVML (GPU_IS_LOST); each needs a reset or reboot.",
            [target(f"count(gpu_up{{{NODE_GPU}}} == 0) or vector(0)", "lost")],
            "none",
            steps=thresholds((None, "green"), (1, "red")),
            decimals=0,
            width=6,
        ),
        stat(
            "Uncorrected ECC errors in range",
            "Uncorrectable ECC errors counted over the dashboard's time range.",
            [
                target(
                    "sum(increase(gpu_ecc_errors_total"
                    f'{{{NODE_GPU}, type="uncorrected"}}[$__range])) or vector(0)',
                    "uncorrected",
                    instant=True,
                )
            ],
            "none",
            steps=thresholds((None, "green"), (1, "red")),
            decimals=0,
            width=6,
        ),
        *hardware_panels(),
    ]


def hardware_panels() -> list[Panel]:
    """XIDs, memory row remapping, PCIe, NVLink and MIG."""
    ok_or_bad = [value_map(0, "no", "green"), value_map(1, "yes", "red")]
    return [
        timeseries(
            "XID errors",
            "XID error events the driver reported per interval, by code (see the GpuXid* "
            "alerts for what each code means). The counter is kept by the exporter since it "
            "started; the first event of a code on a GPU creates its series and shows under "
            "Last XID rather than here.",
            [
                target(
                    f"increase(gpu_xid_errors_total{{{NODE_GPU}}}[$__rate_interval])",
                    f"{GPU_LEGEND} XID {{{{xid}}}}",
                )
            ],
            "none",
            steps=thresholds((None, "green"), (1, "red")),
            minimum=0,
            bars=True,
            width=12,
        ),
        table(
            "Last XID",
            "The last XID error of each GPU that reported one since its exporter started, "
            "and when.",
            [
                target(per_gpu(f"gpu_last_xid{{{NODE_GPU}}}"), instant=True, table=True),
                target(
                    per_gpu(f"gpu_last_xid_timestamp_seconds{{{NODE_GPU}}}") + " * 1000",
                    ref="B",
                    instant=True,
                    table=True,
                ),
            ],
            "none",
            columns={
                "node": "Node",
                "gpu": "GPU",
                "uuid": "UUID",
                "Value #A": "Last XID",
                "Value #B": "Seen at",
            },
            sort_by="Value #B",
            overrides=[by_name("Seen at", unit="dateTimeAsIso")],
            width=12,
        ),
        table(
            "Memory row remapping",
            "Rows of device memory remapped after ECC errors (A100 and later), whether a remap "
            "waits for a GPU reset (GpuRowRemapPending) and whether remapping failed "
            "(GpuRowRemapFailure: replace the GPU). GPUs without row remapping have no rows.",
            [
                target(
                    per_gpu(f'gpu_remapped_rows{{{NODE_GPU}, cause="correctable"}}'),
                    instant=True,
                    table=True,
                ),
                target(
                    per_gpu(f'gpu_remapped_rows{{{NODE_GPU}, cause="uncorrectable"}}'),
                    ref="B",
                    instant=True,
                    table=True,
                ),
                target(
                    per_gpu(f"gpu_remapped_rows_pending{{{NODE_GPU}}}"),
                    ref="C",
                    instant=True,
                    table=True,
                ),
                target(
                    per_gpu(f"gpu_remapped_rows_failure{{{NODE_GPU}}}"),
                    ref="D",
                    instant=True,
                    table=True,
                ),
            ],
            "none",
            columns={
                "node": "Node",
                "gpu": "GPU",
                "uuid": "UUID",
                "Value #A": "Correctable",
                "Value #B": "Uncorrectable",
                "Value #C": "Reset pending",
                "Value #D": "Failed",
            },
            overrides=[
                colored_column("Uncorrectable", thresholds((None, "green"), (1, "orange"))),
                colored_column("Reset pending", thresholds((None, "green"), (1, "orange"))),
                colored_column("Failed", thresholds((None, "green"), (1, "red"))),
                by_name("Reset pending", mappings=ok_or_bad),
                by_name("Failed", mappings=ok_or_bad),
            ],
            width=12,
        ),
        table(
            "PCIe link",
            "Current PCIe generation and width (lanes) against the most the GPU and slot "
            "support. An idle GPU lowers its link to save power, so below the maximum is only "
            "a problem under load (GpuPcieLinkDegraded); replays count packets sent again "
            "after a link error, over the selected range.",
            [
                target(
                    per_gpu(f"gpu_pcie_link_generation{{{NODE_GPU}}}"), instant=True, table=True
                ),
                target(
                    per_gpu(f"gpu_pcie_link_generation_max{{{NODE_GPU}}}"),
                    ref="B",
                    instant=True,
                    table=True,
                ),
                target(
                    per_gpu(f"gpu_pcie_link_width{{{NODE_GPU}}}"), ref="C", instant=True, table=True
                ),
                target(
                    per_gpu(f"gpu_pcie_link_width_max{{{NODE_GPU}}}"),
                    ref="D",
                    instant=True,
                    table=True,
                ),
                target(
                    per_gpu(f"increase(gpu_pcie_replay_errors_total{{{NODE_GPU}}}[$__range])"),
                    ref="E",
                    instant=True,
                    table=True,
                ),
            ],
            "none",
            columns={
                "node": "Node",
                "gpu": "GPU",
                "uuid": "UUID",
                "Value #A": "Generation",
                "Value #B": "Max generation",
                "Value #C": "Width",
                "Value #D": "Max width",
                "Value #E": "Replays in range",
            },
            overrides=[
                colored_column("Replays in range", thresholds((None, "green"), (1, "orange"))),
            ],
            width=12,
        ),
        timeseries(
            "NVLink errors",
            "NVLink errors per interval, by link and kind (CRC flit and data, replay, "
            "recovery). More than 10 in 10 minutes for 10 minutes raises "
            "GpuNvlinkErrorsRising.",
            [
                target(
                    f"increase(gpu_nvlink_errors_total{{{NODE_GPU}}}[$__rate_interval])",
                    f"{GPU_LEGEND} link {{{{link}}}} {{{{type}}}}",
                )
            ],
            "none",
            steps=thresholds((None, "green"), (1, "orange")),
            minimum=0,
            bars=True,
            width=12,
        ),
        state_timeline(
            "NVLink links",
            "State of each NVLink link of each GPU; a link that was up and stays down raises "
            "GpuNvlinkDown. Links never cabled show as down from the start.",
            [
                target(
                    f"gpu_nvlink_up{{{NODE_GPU}}}",
                    f"{GPU_LEGEND} link {{{{link}}}}",
                )
            ],
            "bool_on_off",
            [value_map(1, "up", "green"), value_map(0, "down", "red")],
            width=12,
        ),
        table(
            "MIG devices",
            "MIG devices of GPUs in MIG mode: GPU instance (GI), compute instance (CI), "
            "profile, and the memory in use of the memory the device has. GPUs in MIG mode "
            "report no device-level utilization.",
            [
                target(
                    f"gpu_mig_memory_used_bytes{{{NODE_GPU}}}"
                    " * on (instance, gpu, uuid, mig_uuid) group_left (profile)"
                    f" gpu_mig_info{{{NODE_GPU}}}",
                    instant=True,
                    table=True,
                ),
                target(
                    f"gpu_mig_memory_total_bytes{{{NODE_GPU}}}"
                    " * on (instance, gpu, uuid, mig_uuid) group_left (profile)"
                    f" gpu_mig_info{{{NODE_GPU}}}",
                    ref="B",
                    instant=True,
                    table=True,
                ),
            ],
            "bytes",
            columns={
                "node": "Node",
                "gpu": "GPU",
                "gi": "GI",
                "ci": "CI",
                "profile": "Profile",
                "mig_uuid": "MIG UUID",
                "Value #A": "Memory used",
                "Value #B": "Memory",
            },
            overrides=[by_name(name, unit="none") for name in ("GPU", "GI", "CI")],
            width=12,
        ),
        table(
            "Processes on MIG devices",
            "Processes holding memory on a MIG device, with the device's profile and the "
            "process's user, Slurm job and pod.",
            [
                target(
                    unknown_user(
                        f'gpu_process_memory_used_bytes{{{NODE_GPU}, mig_uuid!="", '
                        'user=~"$user"}'
                        " * on (instance, gpu, uuid, mig_uuid) group_left (profile, gi, ci)"
                        f" gpu_mig_info{{{NODE_GPU}}}"
                        " * on (instance, gpu, uuid, mig_uuid, pid)"
                        " group_left (slurm_job, namespace, pod)"
                        f" gpu_process_info{{{NODE_GPU}}}"
                    ),
                    instant=True,
                    table=True,
                )
            ],
            "bytes",
            columns={
                "node": "Node",
                "gpu": "GPU",
                "gi": "GI",
                "ci": "CI",
                "profile": "Profile",
                "user": "User",
                "pid": "PID",
                "slurm_job": "Slurm job",
                "pod": "Pod",
                "Value": "GPU memory",
            },
            sort_by="Value",
            width=12,
        ),
    ]
