"""Every query of the Grafana dashboard returns data from a real Prometheus.

Grafana cannot run here, so the test does what Grafana would: it interpolates each panel's
query with the variables set to All and to one node, GPU and user, sends it to Prometheus
(a range query for time series, an instant query for instant targets) and requires an answer
without error and with data. The scenario is built so that no panel is legitimately empty: one
GPU has ECC errors, throttling and every health reading, one is lost, one is in MIG mode, one
process has an owner that cannot be read, workers sit in Slurm job cgroups where cgroups can be
made, a stand-in kubelet names the pod holding one GPU, and GPUs report GPM figures (one held at
low SM activity), whose per-GPU, per-MIG-device and per-holder means are checked against the
hand-computed ones. Variable queries must return the
cluster's nodes, GPUs and users.

Panels of data that an exporter may not publish (yet) are the only ones allowed to go
unchecked, and only when the exporters' /metrics show it missing at run time: Slurm jobs (no
``slurm_job`` on any ``gpu_process_info``: no cgroups here, or an exporter that does not read
them), pods (no ``pod``: no stand-in kubelet, which needs grpcio; with one running, the pod
panels must have data), per-process utilization. The test then ends skipped,
naming each such panel and what was missing, after every other panel passed.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from simulator.metrics import label_sets
from tests.support import dashboard as dash
from tests.support.cluster import (
    GIB,
    GPM_GPU,
    GPM_MIG,
    HEALTH_XID,
    KUBELET_POD,
    MIG_GPU,
    UNKNOWN_PID,
    Cluster,
    monitored_cluster,
)

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

DASHBOARD = dash.load()
RATE_INTERVAL = "1m"  # what Grafana derives from the data source's timeInterval of 15 s

# Panels whose data only an exporter with that feature publishes: panel title -> feature.
SLURM, PODS, PROCESS_SM = "slurm_job", "pod", "per-process SM utilization"
NEEDS = {
    "GPUs per Slurm job": SLURM,
    "GPU memory per Slurm job": SLURM,
    "GPU-hours per Slurm job in the selected range": SLURM,
    "GPUs per namespace": PODS,
    "GPU memory per pod": PODS,
    "GPU-hours per namespace in the selected range": PODS,
    "Per-process SM utilization": PROCESS_SM,
    "Idle GPUs held by processes": PROCESS_SM,  # the GPU-wide basis has no idle GPU held here
    "SM and tensor activity per Slurm job in the selected range": SLURM,
    "Energy per Slurm job in the selected range": SLURM,
    "Energy per namespace in the selected range": PODS,
}
# A GPU in MIG mode has no device-level utilization, and the kubelet names a pod for GPU 1
# only, so no one GPU has data for every panel: the MIG panels are checked with the MIG GPU
# selected, the pod panels and the idle-held one with GPU 1.
POD_GPU = "1"
ONE_GPU = {
    "MIG devices": str(MIG_GPU),
    "Processes on MIG devices": str(MIG_GPU),
    "GPUs per namespace": POD_GPU,
    "GPU memory per pod": POD_GPU,
    "Idle GPUs held by processes": "1",  # the idle-held GPU (its worker at 0% SM)
    "Held GPUs with low SM activity": "1",  # its GPM figures: 2.5% SM activity
    **{
        f"{figure} per MIG device": str(MIG_GPU)
        for figure in ("SM activity", "SM occupancy", "Tensor activity", "DRAM activity")
    },
}


def test_every_panel_query_and_variable_returns_data(exporter_factory, worker_pids, tmp_path):
    started = time.time()
    with monitored_cluster(
        exporter_factory, worker_pids, tmp_path, hot=True, health=True, gpm=True
    ) as cluster:
        # XIDs arrive as events, on their own thread: wait until Prometheus has one.
        cluster.prometheus.wait_for("gpu_last_xid", lambda result: len(result) == 1)
        missing = missing_features(cluster)
        # GPM figures need two exporter passes; then two evaluations of the held counter (the
        # user and the unknown owner), as for GPU-seconds: the range ratios have a value.
        cluster.prometheus.wait_for(
            "user:gpu_gpm_held_seconds:total > 0", lambda result: len(result) == 2
        )
        if SLURM not in missing:
            cluster.prometheus.wait_for(
                "slurm_job:gpu_gpm_held_seconds:total > 0", lambda result: len(result) == 2
            )
        if PODS not in missing:
            # Two evaluations of the namespace counter, as for the users' before: a rate.
            cluster.prometheus.wait_for(
                "namespace:gpu_seconds:total > 0", lambda result: len(result) == 1
            )
        if PROCESS_SM not in missing:
            # GPU 1's worker holds it without computing: idle-held after the shortened threshold
            cluster.prometheus.wait_for(
                'ALERTS{alertname="GpuIdleButHeld", alertstate="firing"}', bool, timeout=30
            )
        check_variable_queries(cluster)
        range_ = f"{math.ceil(time.time() - started)}s"
        everything = {"node": None, "gpu": None, "user": None}
        one = {"node": ["localhost"], "gpu": ["0"], "user": [cluster.user]}
        all_results = run_every_panel(cluster, everything, range_, missing)
        one_results = run_every_panel(cluster, one, range_, missing)
        check_values(cluster, all_results, one_results)
        check_attribution(cluster, all_results, missing)
        check_efficiency(cluster, all_results, one_results, missing)
        check_energy(cluster, all_results, missing)
    unchecked = sorted(title for title, feature in NEEDS.items() if feature in missing)
    if unchecked:
        pytest.skip(
            "every other panel returned data; not checked: "
            + "; ".join(f"{title!r} ({missing[NEEDS[title]]})" for title in unchecked)
        )


def missing_features(cluster: Cluster) -> dict[str, str]:
    """Feature -> why it is missing, from what the exporters publish on /metrics now."""
    texts = [exporter.metrics() for exporter in cluster.exporters.values()]
    infos = [labels for text in texts for labels in label_sets(text, "gpu_process_info")]
    missing = {}
    # With a kubelet running, pods are the exporter's to report: the pod panels must have data.
    for feature in (SLURM,) if cluster.pods else (SLURM, PODS):
        if not any(labels.get(feature) for labels in infos):
            missing[feature] = f"no gpu_process_info with a non-empty {feature} label"
    if not any("gpu_process_sm_utilization_ratio{" in text for text in texts):
        missing[PROCESS_SM] = "no gpu_process_sm_utilization_ratio series"
    if SLURM in missing and cluster.slurm_jobs:
        missing[SLURM] += " although the workers are in Slurm job cgroups"
    elif SLURM in missing:
        missing[SLURM] += " (no cgroups could be made for the workers)"
    if PODS in missing:
        missing[PODS] += " (no kubelet: grpcio is not installed)"
    return missing


def variable_query(name: str) -> tuple[str, str]:
    """(match expression, label) of a ``label_values(expr, label)`` variable."""
    query = dash.variables(DASHBOARD)[name]["query"]
    inner, label = query[len("label_values(") : -1].rsplit(", ", 1)
    return inner, label


def check_variable_queries(cluster: Cluster) -> None:
    prometheus = cluster.prometheus

    def values(name: str, **selection: list[str] | None) -> list[str]:
        inner, label = variable_query(name)
        match = dash.render(inner, DASHBOARD, selection, range_="1h", rate_interval="1m")
        return prometheus.label_values(label, match)

    assert values("node") == ["127.0.0.1", "localhost"]
    assert values("gpu", node=None) == ["0", "1", "2", "3", "4"]
    assert values("gpu", node=["127.0.0.1"]) == ["0", "1"]
    assert values("gpu", node=["127.0.0.1", "localhost"]) == ["0", "1", "2", "3", "4"]
    # The process whose owner is unknown has an empty user, which label_values leaves out.
    assert values("user") == [cluster.user]


def run_every_panel(
    cluster: Cluster,
    selection: dict[str, list[str] | None],
    range_: str,
    missing: dict[str, str],
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Each target's result by (panel title, refId); fails listing every empty or failed one.

    Panels that need a ``missing`` feature are run too (the query must not fail) but may be
    empty.
    """
    prometheus = cluster.prometheus
    now = time.time()
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    problems = []
    for panel in dash.panels(DASHBOARD):
        chosen = dict(selection)
        if selection["gpu"] is not None and panel["title"] in ONE_GPU:
            chosen["gpu"] = [ONE_GPU[panel["title"]]]
        may_be_empty = NEEDS.get(panel["title"]) in missing
        for target in panel["targets"]:
            expr = dash.render(
                target["expr"], DASHBOARD, chosen, range_=range_, rate_interval=RATE_INTERVAL
            )
            where = f"{panel['title']!r} {target['refId']} with {chosen}: {expr}"
            try:
                if target["instant"]:
                    result = prometheus.query(expr, at=now)
                else:
                    result = prometheus.query_range(expr, start=now - 30, end=now, step=1)
            except AssertionError as error:
                problems.append(f"{where}\n  error: {error}")
                continue
            if not result and not may_be_empty:
                problems.append(f"{where}\n  no data")
            results[(panel["title"], target["refId"])] = result
    assert not problems, "\n".join(problems)
    return results


def latest(result: list[dict[str, Any]]) -> list[float]:
    """The last value of each series of an instant or range result."""
    return [
        float(series["value"][1]) if "value" in series else float(series["values"][-1][1])
        for series in result
    ]


def check_values(
    cluster: Cluster,
    everything: dict[tuple[str, str], list[dict[str, Any]]],
    one: dict[tuple[str, str], list[dict[str, Any]]],
) -> None:
    """Spot checks that the data is the scenario's, not merely present."""
    assert latest(everything[("Nodes", "A")]) == [2]
    assert latest(everything[("Nodes", "B")]) == [0]
    assert latest(everything[("GPUs in use", "A")]) == [5]
    assert latest(everything[("GPUs free", "A")]) == [1]
    assert latest(everything[("Lost GPUs", "A")]) == [1]
    assert latest(everything[("Active users", "A")]) == [2]
    assert latest(everything[("Alerts firing", "A")])[0] >= 1

    rows = everything[("Processes on GPUs", "A")]
    assert len(rows) == 7
    assert {row["metric"]["user"] for row in rows} == {cluster.user, "(unknown)"}
    assert all({"node", "gpu", "user", "pid"} <= set(row["metric"]) for row in rows)
    mine = one[("Processes on GPUs", "A")]
    assert {row["metric"]["pid"] for row in mine} == {
        str(p) for p in cluster.workers["localhost"][:2]
    }
    assert all("sleep" in row["metric"]["command"] for row in mine)
    # The other node does not publish command lines: its rows are there, without the column.
    theirs = [row for row in rows if row["metric"]["node"] == "127.0.0.1"]
    assert len(theirs) == 2 and all("command" not in row["metric"] for row in theirs)

    hours = {
        s["metric"]["user"]: float(s["value"][1])
        for s in everything[("GPU-hours in the selected range", "A")]
    }
    assert set(hours) == {cluster.user, "(unknown)"}
    assert hours[cluster.user] > hours["(unknown)"] > 0

    reasons = {s["metric"]["reason"] for s in one[("Throttling", "A")]}
    assert reasons == {"sw_power_cap", "hw_thermal_slowdown"}
    ecc_types = {s["metric"]["type"] for s in one[("ECC errors", "A")]}
    assert ecc_types == {"corrected", "uncorrected"}

    check_health(cluster, one)


def by_gpu(result: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    return {(s["metric"]["node"], s["metric"]["gpu"]): latest([s])[0] for s in result}


def check_health(cluster: Cluster, one: dict[tuple[str, str], list[dict[str, Any]]]) -> None:
    """The health panels show node localhost's readings (tests/support/cluster.py)."""
    gpu0 = ("localhost", "0")
    pcie = [by_gpu(one[("PCIe link", ref)])[gpu0] for ref in "ABCD"]
    assert pcie == [4, 5, 8, 16]
    assert by_gpu(one[("PCIe link", "E")])[gpu0] >= 0
    remap = [by_gpu(one[("Memory row remapping", ref)])[gpu0] for ref in "ABCD"]
    assert remap == [2, 1, 1, 0]
    links = {s["metric"]["link"]: latest([s])[0] for s in one[("NVLink links", "A")]}
    assert links == {"0": 1, "1": 0}
    assert by_gpu(one[("Last XID", "A")]) == {gpu0: HEALTH_XID}
    assert abs(by_gpu(one[("Last XID", "B")])[gpu0] / 1000 - time.time()) < 600
    xids = {s["metric"]["xid"] for s in one[("XID errors", "A")]}
    assert xids == {str(HEALTH_XID)}
    migs = {s["metric"]["profile"]: latest([s])[0] for s in one[("MIG devices", "A")]}
    assert migs == {"3g.40gb": 5 * 1024**3, "1g.10gb": 1 * 1024**3}
    totals = {s["metric"]["profile"]: latest([s])[0] for s in one[("MIG devices", "B")]}
    assert totals == {"3g.40gb": 40 * 1024**3, "1g.10gb": 10 * 1024**3}
    (on_mig,) = one[("Processes on MIG devices", "A")]
    assert on_mig["metric"]["pid"] == str(cluster.workers["localhost"][3])
    assert (on_mig["metric"]["profile"], on_mig["metric"]["gi"]) == ("1g.10gb", "2")
    assert latest([on_mig]) == [1024**3]


def check_attribution(
    cluster: Cluster,
    everything: dict[tuple[str, str], list[dict[str, Any]]],
    missing: dict[str, str],
) -> None:
    """Jobs, pods and per-process utilization are the scenario's, where exporters publish them."""
    local = cluster.workers["localhost"]
    if SLURM not in missing:
        first, second = cluster.slurm_jobs
        gpus = {
            s["metric"]["slurm_job"]: latest([s])[0]
            for s in everything[("GPUs per Slurm job", "A")]
        }
        assert gpus == {first: 2, second: 1}  # GPU 0 and the MIG GPU; GPU 1
        memory = {
            s["metric"]["slurm_job"]: latest([s])[0]
            for s in everything[("GPU memory per Slurm job", "A")]
        }
        assert memory == {first: 6 * 1024**3, second: 4 * 1024**3}
    if PODS not in missing:
        assert KUBELET_POD.device_ids == [cluster.scenarios["localhost"].gpus[1].uuid]
        namespace, pod = KUBELET_POD.namespace, KUBELET_POD.pod
        per_namespace = {
            s["metric"]["namespace"]: latest([s])[0]
            for s in everything[("GPUs per namespace", "A")]
        }
        assert per_namespace == {namespace: 1}
        per_pod = {
            (s["metric"]["namespace"], s["metric"]["pod"]): latest([s])[0]
            for s in everything[("GPU memory per pod", "A")]
        }
        assert per_pod == {(namespace, pod): 4 * GIB}  # GPU 1's one worker
        hours = {
            s["metric"]["namespace"]: latest([s])[0]
            for s in everything[("GPU-hours per namespace in the selected range", "A")]
        }
        assert set(hours) == {namespace} and hours[namespace] > 0
    if PROCESS_SM not in missing:
        sm = {
            s["metric"]["pid"]: latest([s])[0]
            for s in everything[("Per-process SM utilization", "A")]
        }
        # a process without a sample of its own reads 0, like the unreadable one here
        idle = {str(local[1]): 0, str(UNKNOWN_PID): 0, str(local[2]): 0}
        assert sm == {str(local[0]): pytest.approx(0.75), **idle}
        # GPU 0 computes (one of its processes does): only GPU 1's worker holds an idle GPU
        held = {s["metric"]["pid"] for s in everything[("Idle GPUs held by processes", "A")]}
        assert held == {str(local[2])}


def percent_ratios(figures: dict[Any, Any], attribute: str) -> dict[Any, float]:
    """The 0-1 ratio the exporter publishes for each scenario's GPM percentage."""
    return {key: getattr(metrics, attribute) / 100 for key, metrics in figures.items()}


def check_efficiency(
    cluster: Cluster,
    everything: dict[tuple[str, str], list[dict[str, Any]]],
    one: dict[tuple[str, str], list[dict[str, Any]]],
    missing: dict[str, str],
) -> None:
    """The GPM figures of tests/support/cluster.py, and their means per holder by hand.

    Per GPU only GPU 0 and GPU 1 of node localhost have GPM; per MIG device both GPU instances
    of the MIG GPU. Held devices with GPM: the user's GPU 0, GPU 1 and MIG GPU instance 2, the
    unknown owner's GPU 0. The figures are constant, so over the range the time-weighted mean
    is each holder's plain mean.
    """
    figures = {
        "SM activity": "sm_active",
        "SM occupancy": "sm_occupancy",
        "Tensor activity": "tensor_active",
        "DRAM activity": "dram_active",
    }
    for title, attribute in figures.items():
        per_gpu = by_gpu(everything[(f"{title} per GPU", "A")])
        expected = {("localhost", str(gpu)): ratio for gpu, ratio in
                    percent_ratios(GPM_GPU, attribute).items()}  # fmt: skip
        assert per_gpu == pytest.approx(expected), title
        assert by_gpu(one[(f"{title} per GPU", "A")]) == {
            ("localhost", "0"): pytest.approx(expected[("localhost", "0")])
        }
        per_mig = {
            s["metric"]["gi"]: latest([s])[0] for s in everything[(f"{title} per MIG device", "A")]
        }
        expected_mig = {str(gi): ratio for gi, ratio in
                        percent_ratios(GPM_MIG, attribute).items()}  # fmt: skip
        assert per_mig == pytest.approx(expected_mig), title

    user = cluster.user
    # SM activity: the user's GPU 0, GPU 1, MIG GPU instance 2 at 50%, 2.5%, 60%: 1.125 / 3;
    # tensor activity at 12.5%, 0%, 20%: 0.325 / 3. The unknown owner: GPU 0 alone.
    table = "SM and tensor activity per user in the selected range"
    by_user = {
        ref: {s["metric"]["user"]: latest([s])[0] for s in everything[(table, ref)]}
        for ref in "ABC"
    }
    assert by_user["A"] == pytest.approx({user: 1.125 / 3, "(unknown)": 0.5}, rel=1e-6)
    assert by_user["B"] == pytest.approx({user: 0.325 / 3, "(unknown)": 0.125}, rel=1e-6)
    # GPU-hours held with GPM: three devices to one, over the same evaluations
    assert by_user["C"][user] == pytest.approx(3 * by_user["C"]["(unknown)"], rel=1e-6)
    assert by_user["C"]["(unknown)"] > 0
    mine = {s["metric"]["user"]: latest([s])[0] for s in one[(table, "A")]}
    assert mine == pytest.approx({user: 1.125 / 3}, rel=1e-6)

    low = [
        ((s["metric"]["node"], s["metric"]["gpu"], s["metric"]["user"]), latest([s])[0])
        for s in everything[("Held GPUs with low SM activity", "A")]
    ]
    assert low == [(("localhost", "1", user), pytest.approx(0.025))]

    if SLURM not in missing:
        first, second = cluster.slurm_jobs  # GPU 0 and MIG GPU instance 2; GPU 1
        table = "SM and tensor activity per Slurm job in the selected range"
        by_job = {
            ref: {s["metric"]["slurm_job"]: latest([s])[0] for s in everything[(table, ref)]}
            for ref in "AB"
        }
        assert by_job["A"] == pytest.approx({first: 0.55, second: 0.025}, rel=1e-6)
        assert by_job["B"] == pytest.approx({first: 0.1625, second: 0.0}, rel=1e-6)


def check_energy(
    cluster: Cluster,
    everything: dict[tuple[str, str], list[dict[str, Any]]],
    missing: dict[str, str],
) -> None:
    """Power is the scenario's; energy goes to the holders the rules know.

    The fake energy counters stand still, so every kWh here is 0: the split's arithmetic is
    checked to the joule by tests/test_energy_rules.py, this checks the panels' queries and
    labels.
    """
    power = {s["metric"]["node"]: latest([s])[0] for s in everything[("Power per node", "A")]}
    expected = {
        node: sum(gpu.power_usage / 1000 for gpu in scenario.gpus
                  if not gpu.lost and gpu.power_usage is not None)
        for node, scenario in cluster.scenarios.items()
    }  # fmt: skip
    assert power == pytest.approx(expected)

    users = {
        s["metric"]["user"]: latest([s])[0]
        for s in everything[("Energy per user in the selected range", "A")]
    }
    assert set(users) == {cluster.user, "(unknown)"}
    assert all(kwh >= 0 for kwh in users.values())
    (total,) = latest(everything[("Energy in the selected range", "A")])
    (unheld,) = latest(everything[("Energy in the selected range", "B")])
    assert total >= unheld >= 0
    assert total == pytest.approx(sum(users.values()) + unheld, abs=1e-9)
    (all_gpus,) = everything[("Power of GPUs nobody holds", "A")]
    (nobody,) = everything[("Power of GPUs nobody holds", "B")]
    assert latest([all_gpus])[0] >= latest([nobody])[0] >= 0
    if SLURM not in missing:
        jobs = everything[("Energy per Slurm job in the selected range", "A")]
        assert {s["metric"]["slurm_job"] for s in jobs} == set(cluster.slurm_jobs)
    if PODS not in missing:
        spaces = everything[("Energy per namespace in the selected range", "A")]
        assert {s["metric"]["namespace"] for s in spaces} == {KUBELET_POD.namespace}
