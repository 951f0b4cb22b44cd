"""The "Jobs and pods" row: Slurm jobs, Kubernetes namespaces and pods, per-process use."""

from __future__ import annotations

from .panels import (
    IDLE_RATIO,
    NODE_GPU,
    Panel,
    bar_gauge,
    by_name,
    colored_column,
    table,
    target,
    thresholds,
    timeseries,
    unknown_user,
)


def jobs_row() -> list[Panel]:
    """Slurm jobs, Kubernetes namespaces and pods, from the attribution recording rules."""
    job_gpu = f'{NODE_GPU}, slurm_job=~".+"'
    pod_gpu = f'{NODE_GPU}, pod=~".+"'
    return [
        timeseries(
            "GPUs per Slurm job",
            "GPUs on which a Slurm job's processes hold memory (several processes of one job "
            "on one GPU count once). The job comes from the process's cgroup; processes "
            "outside any job are left out.",
            [
                target(
                    "count by (slurm_job) "
                    f"(node_gpu_slurm_job:gpu_process_memory_used_bytes:sum{{{job_gpu}}} > 0)",
                    "job {{slurm_job}}",
                )
            ],
            "none",
            minimum=0,
            decimals=0,
            stack=True,
            width=8,
        ),
        timeseries(
            "GPU memory per Slurm job",
            "GPU memory held by each Slurm job's processes on the selected nodes and GPUs.",
            [
                target(
                    "sum by (slurm_job) "
                    f"(node_gpu_slurm_job:gpu_process_memory_used_bytes:sum{{{job_gpu}}})",
                    "job {{slurm_job}}",
                )
            ],
            "bytes",
            minimum=0,
            stack=True,
            width=8,
        ),
        bar_gauge(
            "GPU-hours per Slurm job in the selected range",
            "GPU-hours each Slurm job used over the dashboard's time range, from the "
            "slurm_job:gpu_seconds:total counter (whole cluster, not filtered by node).",
            [
                target(
                    "sort_desc(increase(slurm_job:gpu_seconds:total[$__range]) / 3600)",
                    "job {{slurm_job}}",
                    instant=True,
                )
            ],
            "h",
            width=8,
        ),
        timeseries(
            "GPUs per namespace",
            "GPUs on which the pods of each Kubernetes namespace hold memory (a GPU shared by "
            "two pods of one namespace counts once). Pods come from the kubelet.",
            [
                target(
                    "count by (namespace) (group by (node, gpu, uuid, namespace) "
                    f"(node_gpu_pod:gpu_process_memory_used_bytes:sum{{{pod_gpu}}} > 0))",
                    "{{namespace}}",
                )
            ],
            "none",
            minimum=0,
            decimals=0,
            stack=True,
            width=8,
        ),
        timeseries(
            "GPU memory per pod",
            "GPU memory held by the processes of each Kubernetes pod.",
            [
                target(
                    "sum by (namespace, pod) "
                    f"(node_gpu_pod:gpu_process_memory_used_bytes:sum{{{pod_gpu}}})",
                    "{{namespace}}/{{pod}}",
                )
            ],
            "bytes",
            minimum=0,
            stack=True,
            width=8,
        ),
        bar_gauge(
            "GPU-hours per namespace in the selected range",
            "GPU-hours each Kubernetes namespace used over the dashboard's time range, from "
            "the namespace:gpu_seconds:total counter (whole cluster, not filtered by node).",
            [
                target(
                    "sort_desc(increase(namespace:gpu_seconds:total[$__range]) / 3600)",
                    "{{namespace}}",
                    instant=True,
                )
            ],
            "h",
            width=8,
        ),
        table(
            "Per-process SM utilization",
            "Share of the last sample period a kernel of each process ran, with the process's "
            "user, Slurm job and pod. Only on GPUs whose driver reports per-process "
            "utilization; a process with memory and 0% here holds the GPU without using it.",
            [
                target(
                    unknown_user(
                        f"gpu_process_sm_utilization_ratio{{{NODE_GPU}}}"
                        " * on (instance, gpu, uuid, pid)"
                        " group_left (user, slurm_job, namespace, pod)"
                        f' gpu_process_info{{{NODE_GPU}, user=~"$user"}}'
                    ),
                    instant=True,
                    table=True,
                )
            ],
            "percentunit",
            columns={
                "node": "Node",
                "gpu": "GPU",
                "user": "User",
                "pid": "PID",
                "slurm_job": "Slurm job",
                "namespace": "Namespace",
                "pod": "Pod",
                "Value": "SM utilization",
            },
            sort_by="Value",
            overrides=[
                colored_column(
                    "SM utilization",
                    thresholds((None, "orange"), (IDLE_RATIO, "green")),
                    min=0,
                    max=1,
                )
            ],
            width=12,
        ),
        table(
            "Idle GPUs held by processes",
            "Processes holding memory on an idle-held GPU (no process on it has computed for "
            "the idle-held threshold, 30 minutes unless changed, as on the status page): the "
            "GpuIdleButHeld alert. Basis process: judged by the processes' own SM utilization "
            "(per-process utilization reported); basis gpu: by the whole GPU's utilization, "
            f"idle below {IDLE_RATIO:.0%}.",
            [
                target(
                    unknown_user(
                        f'ALERTS{{alertname="GpuIdleButHeld", {NODE_GPU}, user=~"$user"}}'
                    ),
                    instant=True,
                    table=True,
                )
            ],
            "none",
            columns={
                "node": "Node",
                "gpu": "GPU",
                "user": "User",
                "pid": "PID",
                "slurm_job": "Slurm job",
                "namespace": "Namespace",
                "pod": "Pod",
                "basis": "Basis",
                "alertstate": "State",
            },
            overrides=[
                by_name(
                    "State",
                    mappings=[
                        {
                            "type": "value",
                            "options": {
                                "pending": {"color": "orange", "index": 0},
                                "firing": {"color": "red", "index": 1},
                            },
                        }
                    ],
                    **{"custom.cellOptions": {"type": "color-text"}},
                )
            ],
            width=12,
        ),
    ]
