"""What free, in use, idle-held, sick, lost and stale mean, written once for every view.

The page and ``/api/v1/cluster`` (polling or ``--prometheus-url``), ``/api/v1/users``, the
recording rules and alerts of ``prometheus/rules/`` (through the threshold series that
:func:`threshold_rules` writes), the Grafana dashboard built on those rules and
``gpu-status-api report`` all count with these words. Every GPU of a node with data is in
exactly one state, checked in this order:

* ``stale``: its node's data is too old to say anything now (the node is stale: no good poll, or
  scrape with a fresh NVML pass, for ``stale_after`` seconds, but one within ``offline_after``);
* ``lost``: it stopped answering NVML (``gpu_up`` 0, no readings);
* ``sick``: a critical problem, as the critical alerts: a critical XID within ``xid_recent``
  seconds, or failed row remapping (status_api/health.py has the list); its processes, if any,
  are at risk, so it is not counted in use;
* ``free``: no process on it, at most ``free_memory_mib`` MiB of its memory used and its
  utilization below ``free_utilization`` percent (unknown utilization, as in MIG mode, does not
  stand in the way); a MIG GPU is free only when none of its MIG devices runs a process: one busy
  slice makes the whole GPU in use (GPUs are counted whole, never in fractions);
* ``in_use``: anything else: a process holds it, or its memory or utilization says something
  does that no process listing shows.

*Idle-held* is a kind of in use: processes hold memory on the GPU (its *holders*, more than 0
bytes) and none of them has computed for ``idle_held_after`` seconds. A process computes when the
node reports its SM utilization above 0; where the node reports no per-process figures for the
GPU, the GPU computes while its utilization is at or above ``free_utilization`` percent. The
period starts at the first look (poll, scrape or rule evaluation) that finds the GPU held without
compute and ends at the first that does not.

*Busy but SM-idle*, also a kind of in use: the GPU reports a kernel running most of the time
(utilization above ``BUSY_UTILIZATION``) while its SMs are almost all idle (GPM SM activity
below ``LOW_SM_ACTIVITY``): one tiny kernel in a loop, a job that waits on its data. Only GPUs
with GPM (Hopper and newer) can be judged; the alert ``GpuLowSmActivity``
(prometheus/rules/efficiency.yml) fires on the same figures after an hour.

A GPU shared by several holders is charged to them in even shares: two users on one GPU are
charged half a GPU each, so the users' GPU-hours add up to the cluster's held GPU-hours. Shares
are taken per grouping: among the users holding the GPU (an owner that could not be read is one
more user, ``""``), among its Slurm jobs, among its Kubernetes namespaces; processes outside any
job or namespace form one more holder whose share no job or namespace gets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from status_api.health import LOST, SICK, XIDS
from status_api.nodedata import USER_MEMORY

FREE, IN_USE, STALE = "free", "in_use", "stale"
# Busy but SM-idle; GpuLowSmActivity in prometheus/rules/efficiency.yml uses the same two numbers
# (a unit test keeps them in step).
BUSY_UTILIZATION = 0.8
LOW_SM_ACTIVITY = 0.1
STATES = (FREE, IN_USE, SICK, LOST, STALE)  # SICK and LOST are also health states


@dataclass(frozen=True)
class Thresholds:
    """The settings behind the words above; the service's flags and the rules' series."""

    stale_after: float = 10.0
    offline_after: float = 30.0
    free_memory_mib: int = 512
    free_utilization: int = 5
    idle_held_after: float = 1800.0
    xid_recent: float = 3600.0  # an XID this recent makes its GPU sick or warning


def holders(users: Iterable[Mapping[str, Any]], *, memory_key: str = USER_MEMORY) -> list[int]:
    """The pids of the processes that hold memory on a GPU (more than 0 MiB)."""
    return [user["pid"] for user in users if (user.get(memory_key) or 0) > 0]


def computes(utilization: float | None, thresholds: Thresholds) -> bool | None:
    """Whether a GPU's utilization (percent) shows compute; None when it is unknown."""
    if utilization is None:
        return None
    return utilization >= thresholds.free_utilization


def looks_free(gpu: Mapping[str, Any], thresholds: Thresholds) -> bool:
    """Free by its own readings (legacy GPU object): no process, little memory, no compute.

    Unknown memory (a lost GPU reports every value as null) is not evidence of a free GPU.
    """
    used = gpu.get("use_mem")
    return (
        not gpu["users"]
        and used is not None
        and used <= thresholds.free_memory_mib
        and not computes(gpu.get("utilize"), thresholds)
    )


def gpu_state(
    gpu: Mapping[str, Any], *, node_online: bool, health: str, thresholds: Thresholds
) -> str:
    """The one state of a GPU of a node with data (online or stale)."""
    if not node_online:
        return STALE
    if health in (LOST, SICK):
        return health
    return FREE if looks_free(gpu, thresholds) else IN_USE


def holds_without_compute(
    gpu: Mapping[str, Any],
    sm_utilization: Mapping[int, float | None] | None,
    thresholds: Thresholds,
) -> bool:
    """Whether processes hold memory on ``gpu`` and none of them computes now.

    ``sm_utilization`` maps the pids of the GPU's processes to their SM utilization where the
    node reports it for this GPU (a pid missing or None did not run), None where it does not.
    """
    pids = holders(gpu["users"])
    if not pids:
        return False
    if sm_utilization is not None:
        return not any((sm_utilization.get(pid) or 0) > 0 for pid in pids)
    return computes(gpu.get("utilize"), thresholds) is False


def is_idle_held(since: float | None, *, as_of: float, thresholds: Thresholds) -> bool:
    """Whether a GPU held without compute since ``since`` is idle-held at ``as_of``."""
    return since is not None and as_of - since >= thresholds.idle_held_after


def shares(
    users: Iterable[Mapping[str, Any]], *, key: str, memory_key: str = USER_MEMORY
) -> dict[str, float]:
    """Each holder's share of one GPU from its processes: the holders are the distinct values
    of their field ``key`` (an empty one is a holder too) among the processes holding memory;
    even shares, so a held GPU's shares add up to 1."""
    distinct = {user.get(key) or "" for user in users if (user.get(memory_key) or 0) > 0}
    return {holder: 1 / len(distinct) for holder in distinct}


SICK_XIDS = tuple(sorted(code for code, (state, _) in XIDS.items() if state == SICK))

# The series prometheus/rules/ read the thresholds from: record name -> Thresholds attribute.
THRESHOLD_SERIES = {
    "cluster:gpu_stale_after_seconds:threshold": "stale_after",
    "cluster:gpu_offline_after_seconds:threshold": "offline_after",
    "cluster:gpu_free_memory_mib:threshold": "free_memory_mib",
    "cluster:gpu_free_utilization_percent:threshold": "free_utilization",
    "cluster:gpu_idle_held_after_seconds:threshold": "idle_held_after",
    "cluster:gpu_xid_recent_seconds:threshold": "xid_recent",
}
RULES_HEADER = """\
# Thresholds of gpu-cluster-monitor for the recording rules and alerts, one series each.
# Written by `gpu-status-api thresholds` from the same flags as gpu-status-api (defaults here);
# rewrite it with the flags the service runs with, then reload Prometheus, rather than editing.
"""


SICK_XID_SERIES = "cluster:gpu_sick_xid:info"


def threshold_rules(thresholds: Thresholds) -> str:
    """The rule file (YAML) that records every threshold as a series of its own, and the XIDs
    that make a GPU sick as one series each (label ``xid``)."""
    lines = [RULES_HEADER, "groups:", "  - name: gpu-cluster-thresholds", "    rules:"]
    for record, attribute in THRESHOLD_SERIES.items():
        value = float(getattr(thresholds, attribute))
        number = int(value) if value.is_integer() else value  # PromQL reads either
        lines += [f"      - record: {record}", f"        expr: vector({number})"]
    for code in SICK_XIDS:
        lines += [
            f"      - record: {SICK_XID_SERIES}",
            "        expr: vector(1)",
            f'        labels: {{xid: "{code}"}}',
        ]
    return "\n".join(lines) + "\n"


THRESHOLDS_QUERY = '{__name__=~"cluster:gpu_.+:threshold"}'


def threshold_mismatches(
    samples: Iterable[tuple[Mapping[str, str], float]], thresholds: Thresholds
) -> list[str]:
    """Where the rules' threshold series (the answer to :data:`THRESHOLDS_QUERY`) differ from
    ``thresholds``, in words; a series missing is a mismatch too."""
    found = {labels.get("__name__", ""): value for labels, value in samples}
    problems = []
    for record, attribute in THRESHOLD_SERIES.items():
        wanted = float(getattr(thresholds, attribute))
        if record not in found:
            problems.append(f"{record} is missing (load rules/thresholds.yml)")
        elif found[record] != wanted:
            problems.append(
                f"{record} is {found[record]:g}, --{attribute.replace('_', '-')} {wanted:g}"
            )
    return problems


def busy_but_sm_idle(utilization_percent: float | None, sm_active: float | None) -> bool:
    """Whether a GPU's utilization says busy while its SM activity says nearly idle; False
    where either figure is unknown (no GPM, MIG mode)."""
    if utilization_percent is None or sm_active is None:
        return False
    return utilization_percent > BUSY_UTILIZATION * 100 and sm_active < LOW_SM_ACTIVITY
