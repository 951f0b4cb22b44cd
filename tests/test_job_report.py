"""``gpu-status-api job`` against a real Prometheus holding a job and a pod of known shape.

The raw exporter series (and the per-process energy increments rules/energy.yml would have
written, every 15 s) are generated here, backfilled with ``promtool tsdb create-blocks-from
openmetrics`` and served by a real Prometheus. Backfilled series have no staleness markers,
which a live Prometheus writes when a series goes away; a 14 s lookback stands in for them.

    Slurm job 4242 of alice, one hour on n1, scraped every 15 s (240 samples):
      GPU 0: utilization 75 %, SM activity 25 %, 10 GiB then 20 GiB of 80 GiB,
             3600 J per 15 s (80 % of a 300 W GPU shared with carol's job 888)
      GPU 1: utilization 50 % for half an hour, then 0 (idle), 4 GiB of 80 GiB,
             2250 J per 15 s, then 900 J (150 W, then 60 W)
      after the job, bob's job 777 holds 30 GiB on GPU 1: not the job's
    Pod vision/train-0 of dave, half an hour on n2 GPU 0: 100 %, 8 GiB of 40 GiB, 250 W.

By hand: 2 GPU-hours; mean utilization (240 x 0.75 + 120 x 0.5 + 120 x 0) / 480 = 50 %; SM
activity 25 % (GPU 0 alone reports it); 0.5 idle hours; peak memory 20 GiB and 4 GiB; energy
(240 x 3600 + 120 x 2250 + 120 x 900) J = 1,242,000 J = 0.345 kWh.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest

from simulator.proc import free_port
from simulator.prometheus import backfilled_prometheus
from tests.support.status_service import run_command

STEP = 15
GIB = 1 << 30
# Whole hours, well behind Prometheus' head: the job runs from T0 for an hour.
END = (int(time.time()) // 3600 - 3) * 3600
T0 = END - 2 * 3600
SAMPLES = 3600 // STEP


def _labels(node: str, gpu: str, **extra: str) -> dict[str, str]:
    return {"instance": f"{node}:7080", "job": "gpu", "node": node, "gpu": gpu,
            "uuid": f"GPU-{node}-{gpu}", **extra}  # fmt: skip


def _series() -> dict[str, list[tuple[dict[str, str], list[tuple[int, float]]]]]:
    """Every generated series by family: labels and (time, value) samples."""
    families: dict[str, list[tuple[dict[str, str], list[tuple[int, float]]]]] = {}

    def add(name: str, labels: dict[str, str], points: list[tuple[int, float]]) -> None:
        families.setdefault(name, []).append((labels, points))

    job = [T0 + STEP * k for k in range(SAMPLES)]
    half = SAMPLES // 2
    around = [T0 + STEP * k for k in range(-40, SAMPLES + 40)]  # the GPUs live longer
    alice = {"user": "alice", "slurm_job": "4242"}
    for gpu, pid in (("0", "500"), ("1", "501")):
        add("gpu_process_info", _labels("n1", gpu, pid=pid, **alice), [(t, 1) for t in job])
    add(
        "gpu_process_memory_used_bytes",
        _labels("n1", "0", pid="500", user="alice"),
        [(t, 10 * GIB if k < half else 20 * GIB) for k, t in enumerate(job)],
    )
    add(
        "gpu_process_memory_used_bytes",
        _labels("n1", "1", pid="501", user="alice"),
        [(t, 4 * GIB) for t in job],
    )
    # carol's job 888 shares GPU 0 all along; bob's job 777 takes GPU 1 after alice's.
    add("gpu_process_info", _labels("n1", "0", pid="700", user="carol", slurm_job="888"),
        [(t, 1) for t in job])  # fmt: skip
    add("gpu_process_memory_used_bytes", _labels("n1", "0", pid="700", user="carol"),
        [(t, 40 * GIB) for t in job])  # fmt: skip
    after = [T0 + 3600 + STEP * k for k in range(40)]
    add("gpu_process_info", _labels("n1", "1", pid="600", user="bob", slurm_job="777"),
        [(t, 1) for t in after])  # fmt: skip
    add("gpu_process_memory_used_bytes", _labels("n1", "1", pid="600", user="bob"),
        [(t, 30 * GIB) for t in after])  # fmt: skip
    add("gpu_utilization_ratio", _labels("n1", "0"), [(t, 0.75) for t in around])
    add(
        "gpu_utilization_ratio",
        _labels("n1", "1"),
        [(t, 0.5 if T0 <= t < T0 + half * STEP else 0.0) for t in around],
    )
    add("gpu_sm_active_ratio", _labels("n1", "0"), [(t, 0.25) for t in around])
    for gpu in ("0", "1"):
        add("gpu_memory_total_bytes", _labels("n1", gpu), [(t, 80 * GIB) for t in around])
    # The pod.
    pod_times = job[:half]
    pod = {"namespace": "vision", "pod": "train-0", "container": "0123456789ab"}
    add("gpu_process_info", _labels("n2", "0", pid="800", user="dave", **pod),
        [(t, 1) for t in pod_times])  # fmt: skip
    add("gpu_process_memory_used_bytes", _labels("n2", "0", pid="800", user="dave"),
        [(t, 8 * GIB) for t in pod_times])  # fmt: skip
    add("gpu_utilization_ratio", _labels("n2", "0"), [(t, 1.0) for t in around])
    add("gpu_memory_total_bytes", _labels("n2", "0"), [(t, 40 * GIB) for t in around])
    # Energy increments as the rules write them: at the evaluation after each listing.
    name = "node_gpu_process:gpu_energy_joules:increase"
    energy = [
        (_labels("n1", "0", pid="500", **alice), [(t + STEP, 3600.0) for t in job]),
        (
            _labels("n1", "1", pid="501", **alice),
            [(t + STEP, 2250.0 if k < half else 900.0) for k, t in enumerate(job)],
        ),
        (
            _labels("n1", "0", pid="700", user="carol", slurm_job="888"),
            [(t + STEP, 900.0) for t in job],
        ),
        (
            _labels("n2", "0", pid="800", user="dave", **pod),
            [(t + STEP, 3750.0) for t in pod_times],
        ),
    ]
    for labels, points in energy:
        labels = {k: v for k, v in labels.items() if k != "job"}
        add(name, labels, points)
    return families


def _openmetrics() -> str:
    lines = []
    for name, series in _series().items():
        for labels, points in series:
            text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            lines += [f"{name}{{{text}}} {value!r} {t}" for t, value in points]
    return "\n".join([*lines, "# EOF"]) + "\n"


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with backfilled_prometheus(
        tmp_path_factory.mktemp("job-prometheus"),
        _openmetrics(),
        ready="count(last_over_time(gpu_process_info[1d]))",
        count=5,
        extra_args=["--query.lookback-delta=14s"],
    ) as prometheus:
        yield prometheus.url


def run_job(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_command("job", *args, timeout=timeout)


def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _approx(value: float) -> object:
    return pytest.approx(value, rel=1e-9)


@pytest.mark.prometheus
def test_json_matches_the_hand_computed_numbers(prometheus_url):
    result = run_job("4242", "--prometheus-url", prometheus_url, "--until", str(END),
                     "--format", "json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["job"] == "4242"
    assert document["user"] == "alice"
    assert document["nodes"] == ["n1"]
    assert document["gpu_hours"] == _approx(2.0)
    assert document["mean_utilization"] == _approx(0.5)
    assert document["sm_active"] == _approx(0.25)
    assert document["idle_hours"] == _approx(0.5)
    assert document["peak_memory_bytes"] == 20 * GIB
    assert document["energy_kwh"] == _approx(1_242_000 / 3.6e6)
    assert document["first_seen"] == _iso(T0)
    assert document["last_seen"] == _iso(T0 + 3600 - STEP)
    gpu0, gpu1 = document["gpus"]
    assert (gpu0["node"], gpu0["gpu"], gpu0["uuid"]) == ("n1", "0", "GPU-n1-0")
    assert gpu0["gpu_hours"] == _approx(1.0)
    assert gpu0["mean_utilization"] == _approx(0.75)
    assert gpu0["sm_active"] == _approx(0.25)
    assert gpu0["idle_hours"] == 0
    assert gpu0["peak_memory_bytes"] == 20 * GIB  # carol's 40 GiB on the same GPU is hers
    assert gpu0["memory_total_bytes"] == 80 * GIB
    assert gpu0["energy_kwh"] == _approx(240 * 3600 / 3.6e6)
    assert gpu1["mean_utilization"] == _approx(0.25)
    assert gpu1["sm_active"] is None
    assert gpu1["idle_hours"] == _approx(0.5)
    assert gpu1["peak_memory_bytes"] == 4 * GIB  # bob's 30 GiB came after
    assert gpu1["energy_kwh"] == _approx((120 * 2250 + 120 * 900) / 3.6e6)
    assert document["advice"] == [
        "GPU n1/1 was idle 50 % of the job: ask for fewer GPUs.",
        "Kernels ran 50 % of the time but kept only 25 % of the SMs busy: larger batches or "
        "fewer, bigger kernels would use the GPUs better.",
    ]


@pytest.mark.prometheus
def test_text_shows_the_same_numbers_and_the_advice(prometheus_url):
    result = run_job("4242", "--prometheus-url", prometheus_url, "--until", str(END))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for line in (
        "Job 4242",
        "  user              alice",
        "  GPUs              2 (n1/0, n1/1)",
        f"  first seen        {datetime.fromtimestamp(T0, tz=timezone.utc):%Y-%m-%d %H:%M:%S} UTC",
        "  GPU-hours         2.00",
        "  mean utilization  50.0 %",
        "  SM activity       25.0 %",
        "  idle hours        0.50",
        "  energy            0.345 kWh",
        "  - GPU n1/1 was idle 50 % of the job: ask for fewer GPUs.",
    ):
        assert line in text.splitlines(), f"{line!r} not in\n{text}"
    table = [line.split() for line in text.splitlines() if line.startswith("  n1/")]
    assert table == [
        ["n1/0", "1.00", "75.0", "%", "25.0", "%", "0.00", "h", "20.0", "GiB", "of", "80.0",
         "GiB", "0.240", "kWh"],
        ["n1/1", "1.00", "25.0", "%", "-", "0.50", "h", "4.0", "GiB", "of", "80.0", "GiB",
         "0.105", "kWh"],
    ]  # fmt: skip


@pytest.mark.prometheus
def test_a_pod(prometheus_url):
    result = run_job("--pod", "vision/train-0", "--prometheus-url", prometheus_url,
                     "--until", str(END), "--format", "json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["job"] == "vision/train-0"
    assert (document["namespace"], document["pod"]) == ("vision", "train-0")
    assert document["user"] == "dave"
    assert [(g["node"], g["gpu"]) for g in document["gpus"]] == [("n2", "0")]
    assert document["gpu_hours"] == _approx(0.5)
    assert document["mean_utilization"] == _approx(1.0)
    assert document["idle_hours"] == 0
    assert document["peak_memory_bytes"] == 8 * GIB
    assert document["energy_kwh"] == _approx(120 * 3750 / 3.6e6)
    assert document["advice"] == [
        "At most 20 % of a GPU's memory was used: a GPU with less memory, or a MIG slice, would do."
    ]


@pytest.mark.prometheus
@pytest.mark.parametrize("arguments", [["31337"], ["--pod", "vision/nope"]])
def test_a_job_never_seen_is_an_error_with_exit_1(prometheus_url, arguments):
    result = run_job(*arguments, "--prometheus-url", prometheus_url, "--until", str(END))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "has no GPU process of" in result.stderr
    assert arguments[-1] in result.stderr


@pytest.mark.prometheus
def test_a_job_outside_the_lookback_is_not_seen(prometheus_url):
    result = run_job("4242", "--prometheus-url", prometheus_url, "--until", str(END),
                     "--lookback", "30m")  # fmt: skip
    assert result.returncode == 1
    assert "in the 30m before" in result.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "give a Slurm job id or --pod NAMESPACE/NAME"),
        (["1", "--pod", "a/b"], "give a Slurm job id or --pod NAMESPACE/NAME"),
        (["--pod", "nopod"], "must be NAMESPACE/NAME"),
        (["1", "--lookback", "30days"], "--lookback '30days' is not a Prometheus duration"),
        (["1", "--step", "0s"], "--step '0s' is not a Prometheus duration"),
        (["1", "--format", "xml"], "invalid choice: 'xml'"),
        (["1", "--until", "yesterday"], "--until 'yesterday' is neither"),
    ],
)
def test_bad_arguments_exit_2(arguments, message):
    result = run_job(*arguments, "--prometheus-url", "http://127.0.0.1:9")
    assert result.returncode == 2, result
    assert message in result.stderr, result.stderr


def test_unreachable_engine_exits_1():
    result = run_job("1", "--prometheus-url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "cannot query http://127.0.0.1:" in result.stderr


@pytest.mark.unit
def test_label_values_are_quoted_and_escaped_for_promql():
    from status_api.job import Target, _regex_alternatives

    assert Target(slurm_job='4"2\\').selector() == 'slurm_job="4\\"2\\\\"'
    assert Target(namespace="a", pod="b").selector() == 'namespace="a", pod="b"'
    assert _regex_alternatives(["GPU-1.a", "GPU_2"]) == "GPU\\-1\\.a|GPU_2"


@pytest.mark.unit
def test_no_advice_for_a_busy_job_that_fills_its_gpus():
    from status_api.job import GpuUsage, Job, Target, advice

    gpu = GpuUsage(node="n1", gpu="0", uuid="GPU-0", instance="n1:7080", held_seconds=3600,
                   idle_seconds=0, utilization_sum=0.9 * 240, utilization_steps=240,
                   sm_sum=0.8 * 240, sm_steps=240, peak_memory_bytes=60 * GIB,
                   memory_total_bytes=80 * GIB)  # fmt: skip
    assert advice(Job(target=Target(slurm_job="1"), users=["alice"], gpus=[gpu])) == []
    gpu.idle_seconds = 1800
    assert advice(Job(target=Target(slurm_job="1"), users=["alice"], gpus=[gpu])) == [
        "GPU n1/0 was idle 50 % of the job: check that the job uses its GPU."
    ]
