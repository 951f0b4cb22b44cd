"""dcgm-exporter's dashboard and alerts work unchanged on an exporter run with --metrics.dcgm-names.

A real exporter on the fake NVML (a busy GPU with GPM figures and an XID, an idle hot GPU that the
kubelet hands to a pod, a GPU in MIG mode whose second instance another pod holds) is scraped by
a real Prometheus. The queries of the community dashboard for dcgm-exporter (Grafana.com 12239,
"NVIDIA DCGM Exporter Dashboard": its older revision selecting by ``instance``, its newer one by
``Hostname``) run as Grafana would run them, with the variables set to every value and to one
GPU, and each must answer the values computed by hand from the scenario. Two typical DCGM alert
rules are checked with ``promtool test rules`` on the series the exporter publishes, and fire in
the running Prometheus.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from simulator.fakenvml import scenario as fake
from simulator.prometheus import PrometheusServer, promtool, running_prometheus, shorten_for
from tests.support.cluster import write_targets
from tests.support.kubelet import PodDevices, running_kubelet

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

GIB, MIB = fake.GIB, fake.MIB
HOSTNAME = "gpu-node-a"
ENERGY_MJ = 123_456_789
XID = 48  # double-bit ECC error
TRAINING = fake.FakeGpmMetrics(
    graphics_active=97, sm_active=71.5, sm_occupancy=38.25, tensor_active=44, dram_active=52.5,
    fp64_active=0, fp32_active=12.5, fp16_active=3, pcie_tx=2 * GIB, pcie_rx=6 * GIB,
    nvlink_tx=120 * GIB, nvlink_rx=118 * GIB,
)  # fmt: skip
TRAIN = PodDevices("ml", "train-0", "worker", [fake.gpu_uuid(1)])
INFER = PodDevices("ml", "infer-0", "server", [fake.mig_uuid(2, 1)], "nvidia.com/mig-1g.10gb")


def scenario(worker: int, *, energy: int = ENERGY_MJ) -> fake.FakeScenario:
    busy = fake.make_gpu(
        0, processes=[fake.FakeProcess(worker, 6 * GIB)], memory_used=6 * GIB + 300 * MIB,
        utilization_gpu=80, utilization_memory=35, temperature=70, power_usage=312_500,
        energy=energy, clock_sm=1980, pcie_replay=3,
        remapped_rows=fake.FakeRemappedRows(corrected=2, uncorrected=1),
        xids=[fake.FakeXid(XID)], gpm="supported", gpm_metrics=TRAINING,
    )  # fmt: skip
    # idle but held by a pod; hot
    held = fake.make_gpu(
        1, memory_used=0, utilization_gpu=0, temperature=88, power_usage=70_000, clock_sm=345
    )
    mig = fake.make_mig_gpu(
        2, profiles=("3g.40gb", "1g.10gb"), memory_used=6 * GIB, power_usage=250_000,
        gpm="supported",
        gpm_mig_metrics={
            1: fake.FakeGpmMetrics(graphics_active=40, sm_active=30, tensor_active=20),
            2: fake.FakeGpmMetrics(graphics_active=12.5, sm_active=10, tensor_active=5),
        },
    )  # fmt: skip
    mig.migs[0].memory_used = 5 * GIB
    mig.migs[1].memory_used = 1 * GIB
    return fake.FakeScenario(gpus=[busy, held, mig])


# By (gpu, GPU_I_ID): what each query must answer, computed from the scenario. A GPU instance's
# series carry GPU_I_ID; the GPU's own have none ("").
TEMPERATURES = {("0", ""): 70, ("1", ""): 88, ("2", ""): 64}  # GPU 2: the default 64 °C
POWER = {("0", ""): 312.5, ("1", ""): 70, ("2", ""): 250}  # W from mW
SM_HERTZ = {("0", ""): 1980e6, ("1", ""): 345e6, ("2", ""): 1980e6}  # MHz x 10^6
UTILIZATION = {("0", ""): 80, ("1", ""): 0}  # %; none in MIG mode
FB_USED = {  # MiB
    ("0", ""): 6 * 1024 + 300, ("1", ""): 0, ("2", ""): 6 * 1024,
    ("2", "1"): 5 * 1024, ("2", "2"): 1024,
}  # fmt: skip
FB_FREE = {  # MiB: total - used - the 512 MiB the driver reserves
    ("0", ""): 80 * 1024 - 6444 - 512,
    ("1", ""): 80 * 1024 - 512,
    ("2", ""): 80 * 1024 - 6144 - 512,
}  # fmt: skip
TENSOR = {("0", ""): 0.44, ("2", "1"): 0.20, ("2", "2"): 0.05}
GRAPHICS = {("0", ""): 0.97, ("2", "1"): 0.40, ("2", "2"): 0.125}
SM_ACTIVE = {("0", ""): 0.715, ("2", "1"): 0.30, ("2", "2"): 0.10}


def only(expected: dict[tuple[str, str], float], gpu: str) -> dict[tuple[str, str], float]:
    return {key: value for key, value in expected.items() if key[0] == gpu}


# The older revision of Grafana.com 12239: variables instance and gpu, queries as it has them.
CLASSIC = [
    ('DCGM_FI_DEV_GPU_TEMP{instance=~"$instance", gpu=~"$gpu"}', TEMPERATURES),
    ('avg(DCGM_FI_DEV_GPU_TEMP{instance=~"$instance", gpu=~"$gpu"})', "avg", TEMPERATURES),
    ('DCGM_FI_DEV_POWER_USAGE{instance=~"$instance", gpu=~"$gpu"}', POWER),
    ('sum(DCGM_FI_DEV_POWER_USAGE{instance=~"$instance", gpu=~"$gpu"})', "sum", POWER),
    ('DCGM_FI_DEV_SM_CLOCK{instance=~"$instance", gpu=~"$gpu"} * 1000000', SM_HERTZ),
    ('DCGM_FI_DEV_GPU_UTIL{instance=~"$instance", gpu=~"$gpu"}', UTILIZATION),
    ('DCGM_FI_DEV_FB_USED{instance=~"$instance", gpu=~"$gpu"}', FB_USED),
    ('DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{instance=~"$instance", gpu=~"$gpu"}', TENSOR),
]
# The newer revision: variables Hostname and gpu, aggregated by the MIG labels.
BY_HOST = '{Hostname=~"$Hostname", gpu=~"$gpu"}'
MIG_KEYS = "(Hostname, gpu, GPU_I_ID, GPU_I_PROFILE)"
NEWER = [
    (f"max(DCGM_FI_DEV_GPU_TEMP{BY_HOST}) by (Hostname, gpu, uuid)", TEMPERATURES),
    (f"avg(DCGM_FI_DEV_GPU_TEMP{BY_HOST})", "avg", TEMPERATURES),
    (f"max(DCGM_FI_DEV_POWER_USAGE{BY_HOST}) by (Hostname, gpu, uuid)", POWER),
    (f"sum(max(DCGM_FI_DEV_POWER_USAGE{BY_HOST}) by (gpu))", "sum", POWER),
    (f"max(DCGM_FI_DEV_SM_CLOCK{BY_HOST} * 1000000) by (Hostname, UUID, gpu)", SM_HERTZ),
    (f"max(DCGM_FI_PROF_GR_ENGINE_ACTIVE{BY_HOST}) by {MIG_KEYS}", GRAPHICS),
    (f"max(DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{BY_HOST}) by {MIG_KEYS}", TENSOR),
    (f"max(DCGM_FI_DEV_FB_USED{BY_HOST}) by {MIG_KEYS}", FB_USED),
]
# What other dashboards built on these names ask: the variables' series, SM activity, traffic.
OTHERS = [
    ('DCGM_FI_DEV_FB_FREE{Hostname=~"$Hostname", gpu=~"$gpu"}', FB_FREE),
    ('DCGM_FI_PROF_SM_ACTIVE{instance=~"$instance", gpu=~"$gpu"}', SM_ACTIVE),
    ('DCGM_FI_PROF_DRAM_ACTIVE{instance=~"$instance", gpu=~"$gpu"}', {("0", ""): 0.525}),
    ('DCGM_FI_PROF_PCIE_RX_BYTES{instance=~"$instance", gpu=~"$gpu"}', {("0", ""): 6 * GIB}),
    ('DCGM_FI_PROF_NVLINK_TX_BYTES{instance=~"$instance", gpu=~"$gpu"}', {("0", ""): 120 * GIB}),
]
ALERTS = {
    "groups": [
        {
            "name": "dcgm",
            "rules": [
                {"alert": "DcgmXidError", "expr": "DCGM_FI_DEV_XID_ERRORS > 0",
                 "labels": {"severity": "critical"},
                 "annotations": {"summary": "XID {{ $value }} on GPU {{ $labels.gpu }}"}},
                {"alert": "DcgmGpuTemperatureHigh", "expr": "DCGM_FI_DEV_GPU_TEMP > 85",
                 "for": "5m", "labels": {"severity": "warning"}},
            ],
        }
    ]
}  # fmt: skip


def regex_of(values: list[str]) -> str:
    """A multi-value variable as Grafana puts it in ``=~"..."``: escaped values, alternated."""
    escaped = [re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\\\1", value) for value in values]
    return "(" + "|".join(escaped) + ")"


def interpolate(query: str, variables: dict[str, list[str]]) -> str:
    for name, values in variables.items():
        query = query.replace(f"${{{name}}}", regex_of(values)).replace(
            f"${name}", regex_of(values)
        )
    return query


def by_gpu(result: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    return {
        (sample["metric"].get("gpu", ""), sample["metric"].get("GPU_I_ID", "")): float(
            sample["value"][1]
        )
        for sample in result
    }


def check(
    prometheus: PrometheusServer, query: str, expected: Any, variables: dict[str, list[str]]
) -> None:
    """``query`` answers ``expected`` as an instant query and has data as a range query."""
    *_, by_hand = expected
    gpus = variables["gpu"]
    wanted = {key: value for key, value in by_hand.items() if key[0] in gpus}
    if len(expected) == 2:  # an aggregation over the selected GPU series
        values = list(wanted.values())
        wanted = {("", ""): sum(values) / (len(values) if expected[0] == "avg" else 1)}
    expr = interpolate(query, variables)
    assert by_gpu(prometheus.query(expr)) == pytest.approx(wanted, rel=1e-9), expr
    now = time.time()
    series = prometheus.query_range(expr, start=now - 5, end=now, step=1)
    assert {(s["metric"].get("gpu", ""), s["metric"].get("GPU_I_ID", "")) for s in series} == set(
        wanted
    ), expr


def test_dcgm_dashboard_and_alerts_work_unchanged(exporter_factory, worker_pids, tmp_path):
    (worker,) = worker_pids(1)
    with running_kubelet([TRAIN, INFER]) as kubelet:
        exporter = exporter_factory(
            scenario(worker), "--metrics.dcgm-names", "--hostname", HOSTNAME,
            "--collector.kubelet.pod-resources-socket", str(kubelet.socket_path),
        )  # fmt: skip
        targets = write_targets(tmp_path, {"localhost": exporter.port})
        live_rules = tmp_path / "dcgm-alerts-live.yml"
        live_rules.write_text(yaml.safe_dump(shorten_for(ALERTS, "1s"), sort_keys=False))
        with running_prometheus(
            tmp_path / "prometheus", targets_file=targets, extra_rule_files=[live_rules]
        ) as prometheus:
            # GPM needs two passes, XIDs come as events: wait for both in Prometheus
            prometheus.wait_for(
                f'DCGM_FI_DEV_XID_ERRORS == {XID} and on(gpu) DCGM_FI_PROF_SM_ACTIVE{{gpu="0"}}',
                lambda result: len(result) == 1,
            )
            prometheus.wait_for('DCGM_FI_PROF_SM_ACTIVE{GPU_I_ID="2"}', lambda r: len(r) == 1)
            time.sleep(5)  # five seconds of history for the range queries
            instance = f"localhost:{exporter.port}"
            check_variables(prometheus, instance)
            every = {"instance": [instance], "Hostname": [HOSTNAME], "gpu": ["0", "1", "2"]}
            for variables in (every, {**every, "gpu": ["0"]}, {**every, "gpu": ["2"]}):
                for query, *expected in CLASSIC + NEWER + OTHERS:
                    check(prometheus, query, expected, variables)
            check_labels(prometheus, instance)
            check_alerts_fire(prometheus)
            check_energy_counter(prometheus, exporter, worker)
        check_alerts_with_promtool(openmetrics(exporter), instance, tmp_path)


def check_variables(prometheus: PrometheusServer, instance: str) -> None:
    assert prometheus.label_values("instance", "DCGM_FI_DEV_GPU_TEMP") == [instance]
    assert prometheus.label_values("gpu", "DCGM_FI_DEV_GPU_TEMP") == ["0", "1", "2"]
    assert prometheus.label_values("Hostname", "DCGM_FI_DEV_FB_FREE") == [HOSTNAME]
    match = f'DCGM_FI_DEV_FB_FREE{{Hostname=~"{regex_of([HOSTNAME])}"}}'
    assert prometheus.label_values("gpu", match) == ["0", "1", "2"]


def check_labels(prometheus: PrometheusServer, instance: str) -> None:
    (busy,) = prometheus.query('DCGM_FI_DEV_GPU_UTIL{gpu="0"}')
    assert busy["metric"] == {
        "__name__": "DCGM_FI_DEV_GPU_UTIL", "gpu": "0", "UUID": fake.gpu_uuid(0),
        "pci_bus_id": fake.gpu_pci_bus_id(0), "device": "nvidia0",
        "modelName": "NVIDIA H100 80GB HBM3", "Hostname": HOSTNAME,
        "DCGM_FI_DRIVER_VERSION": "550.54.15", "instance": instance, "job": "gpu",
        "node": "localhost",
    }  # fmt: skip
    # the kubelet's pod on the idle GPU it was handed, and on the MIG instance another pod holds
    (held,) = prometheus.query('DCGM_FI_DEV_GPU_TEMP{pod="train-0"}')
    assert (held["metric"]["gpu"], held["metric"]["namespace"]) == ("1", "ml")
    assert held["metric"]["container"] == "worker"
    (slice_,) = prometheus.query('DCGM_FI_DEV_FB_USED{pod="infer-0", container="server"}')
    assert (slice_["metric"]["GPU_I_ID"], slice_["metric"]["GPU_I_PROFILE"]) == ("2", "1g.10gb")
    assert float(slice_["value"][1]) == 1024
    # what Prometheus sets stays Prometheus's: no clash renamed the exporter's labels
    clashes = 'count({__name__=~"DCGM_.+", exported_job!=""} or {__name__=~"DCGM_.+", exported_instance!=""})'  # noqa: E501
    assert prometheus.query(clashes) == []
    assert by_gpu(prometheus.query("DCGM_FI_DEV_XID_ERRORS")) == {
        ("0", ""): XID, ("1", ""): 0, ("2", ""): 0,
    }  # fmt: skip
    health = {
        "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": 3,
        "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": 2,
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": 1,
        "DCGM_FI_DEV_ROW_REMAP_FAILURE": 0,
    }
    for name, value in health.items():
        assert by_gpu(prometheus.query(name)) == {("0", ""): value}, name


def check_alerts_fire(prometheus: PrometheusServer) -> None:
    firing = prometheus.wait_for(
        'ALERTS{alertstate="firing", alertname=~"Dcgm.+"}', lambda result: len(result) == 2
    )
    assert {(a["metric"]["alertname"], a["metric"]["gpu"]) for a in firing} == {
        ("DcgmXidError", "0"),
        ("DcgmGpuTemperatureHigh", "1"),
    }


def check_energy_counter(prometheus: PrometheusServer, exporter: Any, worker: int) -> None:
    energy = 'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="0"}'
    assert by_gpu(prometheus.query(energy)) == {("0", ""): ENERGY_MJ}
    exporter.set_scenario(scenario(worker, energy=ENERGY_MJ + 5_000_000))  # 5 kJ more
    prometheus.wait_for(f"{energy} == {ENERGY_MJ + 5_000_000}", lambda result: len(result) == 1)
    grown = f"max_over_time({energy}[1m]) - min_over_time({energy}[1m])"
    assert by_gpu(prometheus.query(grown)) == {("0", ""): 5_000_000}
    (increase,) = prometheus.query(f"increase({energy}[1m])")
    assert float(increase["value"][1]) >= 5_000_000  # extrapolated, never below the delta


def series_text(name: str, labels: dict[str, str]) -> str:
    pairs = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return f"{name}{{{pairs}}}"


def check_alerts_with_promtool(body: str, instance: str, tmp_path: Path) -> None:
    """The alert rules, unit-tested by promtool on the series the exporter published."""
    target = {"instance": instance, "job": "gpu", "node": "localhost"}
    input_series, xid, hot = [], [], []
    for family in text_string_to_metric_families(body):
        if family.name not in ("DCGM_FI_DEV_XID_ERRORS", "DCGM_FI_DEV_GPU_TEMP"):
            continue
        for sample in family.samples:
            labels = {**sample.labels, **target}
            input_series.append(
                {"series": series_text(sample.name, labels), "values": f"{sample.value:g}x10"}
            )
            if family.name == "DCGM_FI_DEV_XID_ERRORS" and sample.value > 0:
                xid.append({"exp_labels": {**labels, "severity": "critical"},
                            "exp_annotations": {"summary": f"XID {sample.value:g} on GPU "
                                                           f"{labels['gpu']}"}})  # fmt: skip
            if family.name == "DCGM_FI_DEV_GPU_TEMP" and sample.value > 85:
                hot.append({"exp_labels": {**labels, "severity": "warning"}})
    # hand-computed: GPU 0 had XID 48, GPU 1 is at 88 °C
    assert [alert["exp_labels"]["gpu"] for alert in xid] == ["0"]
    assert [alert["exp_labels"]["gpu"] for alert in hot] == ["1"]
    rules = tmp_path / "dcgm-alerts.yml"
    rules.write_text(yaml.safe_dump(ALERTS, sort_keys=False))
    alert_tests = [
        {"eval_time": "1m", "alertname": "DcgmXidError", "exp_alerts": xid},
        {"eval_time": "4m", "alertname": "DcgmGpuTemperatureHigh", "exp_alerts": []},  # pending
        {"eval_time": "6m", "alertname": "DcgmGpuTemperatureHigh", "exp_alerts": hot},
    ]
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": input_series, "alert_rule_test": alert_tests}],
    }
    test_file = tmp_path / "dcgm-alerts-test.yml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    assert "SUCCESS" in promtool("test", "rules", str(test_file))


def openmetrics(exporter: Any) -> str:
    """The exporter's /metrics as Prometheus asks for it."""
    response = requests.get(
        f"{exporter.url}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        timeout=5,
    )
    response.raise_for_status()
    return response.text
