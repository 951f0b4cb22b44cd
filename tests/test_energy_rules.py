"""rules/energy.yml in a real Prometheus, scraping a node of known shape live.

A small exporter in the test serves four GPUs and their processes. Its counters move only when
it is scraped, one step per scrape, so what the rules must find does not depend on when
Prometheus happens to scrape or evaluate: one scrape stands for 30 s of a real node, and 20
steps of 9000 J are the hand-computed case of the issue, a GPU at 300 W for 10 minutes shared
75/25 by SM utilization: 37.5 Wh to alice, 12.5 Wh to bob. Halfway through, the exporter
restarts: three scrapes fail, then GPUs 0 to 2 come back with their counters at 0 (a driver
reload) and GPU 3 with its counter grown by the gap (the energy nobody is known to have held).

    GPU 0  300 W  alice (SM 0.75, Slurm job 1001) and bob (SM 0.25, pod vision/train-0)
    GPU 1   80 W  carol, holding it at 0 % SM: all of it is hers
    GPU 2   50 W  no process: the cluster's, nobody's
    GPU 3  200 W  dave, no per-process utilization (an older GPU): all of it is his

``gpu-status-api job`` reads the same energies for the Slurm job and the pod.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from simulator.prometheus import PrometheusServer, running_prometheus
from tests.support.status_service import run_command

STEP_SECONDS = 30  # of the real node that one scrape stands for
WATTS = {"0": 300, "1": 80, "2": 50, "3": 200}
WARM_UP = 5  # scrapes before the run: shares and readings exist before any energy
RUN = 10  # steps before and after the restart
GAP = 3  # scrapes answered 503
PAUSE = 3  # scrapes after the gap before the run goes on
GIB = 1 << 30

PROCESSES = [
    # gpu, pid, user, SM utilization (None: not reported), info labels
    ("0", "100", "alice", 0.75, {"slurm_job": "1001"}),
    ("0", "101", "bob", 0.25, {"namespace": "vision", "pod": "train-0"}),
    ("1", "200", "carol", 0.0, {}),
    ("3", "300", "dave", None, {}),
]


@dataclass
class Node:
    """The exporter's state, advanced by each request it gets."""

    requests: int = 0
    energy: dict[str, float] = field(default_factory=lambda: dict.fromkeys(WATTS, 1e6))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self) -> bytes | None:
        """The next /metrics page, or None for a failed scrape."""
        with self.lock:
            self.requests += 1
            n = self.requests
            first_run = WARM_UP < n <= WARM_UP + RUN
            gap = WARM_UP + RUN < n <= WARM_UP + RUN + GAP
            back = WARM_UP + RUN + GAP + PAUSE
            second_run = back < n <= back + RUN
            if n == WARM_UP + RUN + GAP + 1:
                for gpu in ("0", "1", "2"):
                    self.energy[gpu] = 0.0
            if first_run or second_run:
                for gpu, watts in WATTS.items():
                    self.energy[gpu] += watts * STEP_SECONDS
            if gap:
                self.energy["3"] += WATTS["3"] * STEP_SECONDS
                return None
            return self.page().encode()

    def page(self) -> str:
        lines = []
        for gpu, joules in self.energy.items():
            lines.append(f'gpu_energy_joules_total{{gpu="{gpu}",uuid="GPU-{gpu}"}} {joules!r}')
        for gpu, pid, user, sm, info in PROCESSES:
            ids = f'gpu="{gpu}",uuid="GPU-{gpu}",pid="{pid}"'
            lines.append(f'gpu_process_memory_used_bytes{{{ids},user="{user}"}} {GIB}')
            extra = "".join(f',{key}="{value}"' for key, value in info.items())
            lines.append(f'gpu_process_info{{{ids},user="{user}"{extra}}} 1')
            if sm is not None:
                lines.append(f"gpu_process_sm_utilization_ratio{{{ids}}} {sm}")
        return "\n".join(lines) + "\n"


def _handler(node: Node) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = node.answer()
            if body is None:
                self.send_response(503)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[Node, int]]:
    state = Node()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory, node) -> Iterator[PrometheusServer]:
    state, port = node
    workdir = tmp_path_factory.mktemp("energy-prometheus")
    targets = workdir / "targets.json"
    targets.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"], "labels": {"node": "n1"}}]))
    total = WARM_UP + 2 * RUN + GAP + PAUSE
    with running_prometheus(workdir, targets_file=targets, interval="1s") as server:
        server.wait_for(
            "cluster:gpu_energy_joules:total",
            lambda result: state.requests > total + 3 and bool(result),
            timeout=total * 3 + 30,
        )
        yield server


def _by(server: PrometheusServer, expr: str, label: str) -> dict[str, float]:
    """``expr`` per value of ``label``, at the last evaluation of the rules: increase() there has
    a sample at the window's end and nothing to extrapolate (between evaluations it scales the
    growth by up to one evaluation interval over the time the counter existed in the window)."""
    (last,) = server.query("timestamp(cluster:gpu_energy_joules:total)")
    return {
        sample["metric"].get(label, ""): float(sample["value"][1])
        for sample in server.query(expr, at=float(last["value"][1]))
    }


def _joules(watts: float) -> float:
    return watts * STEP_SECONDS * 2 * RUN


@pytest.mark.prometheus
@pytest.mark.slow
def test_the_hand_computed_case_and_the_other_holders(prometheus):
    users = _by(prometheus, "increase(user:gpu_energy_joules:total[1h]) / 3600", "user")
    assert users["alice"] == pytest.approx(37.5, rel=1e-12)
    assert users["bob"] == pytest.approx(12.5, rel=1e-12)
    assert users["carol"] == pytest.approx(_joules(80) / 3600, rel=1e-12)  # idle, held
    assert users["dave"] == pytest.approx(_joules(200) / 3600, rel=1e-12)  # even split of one
    assert set(users) == {"alice", "bob", "carol", "dave"}
    counters = _by(prometheus, "user:gpu_energy_joules:total", "user")
    assert counters["alice"] == 0.75 * _joules(300)
    assert counters["bob"] == 0.25 * _joules(300)


@pytest.mark.prometheus
@pytest.mark.slow
def test_jobs_namespaces_and_what_nobody_held(prometheus):
    jobs = _by(prometheus, "increase(slurm_job:gpu_energy_joules:total[1h])", "slurm_job")
    assert jobs == {"1001": pytest.approx(0.75 * _joules(300), rel=1e-12)}
    spaces = _by(prometheus, "increase(namespace:gpu_energy_joules:total[1h])", "namespace")
    assert spaces == {"vision": pytest.approx(0.25 * _joules(300), rel=1e-12)}
    (unheld,) = _by(prometheus, "cluster:gpu_unheld_energy_joules:total", "").values()
    gap = GAP * WATTS["3"] * STEP_SECONDS  # GPU 3's counter grew while nobody was seen
    assert unheld == pytest.approx(_joules(50) + gap, rel=1e-12)
    (total,) = _by(prometheus, "cluster:gpu_energy_joules:total", "").values()
    assert total == pytest.approx(sum(_joules(w) for w in WATTS.values()) + gap, rel=1e-12)
    (users,) = _by(prometheus, "sum(user:gpu_energy_joules:total)", "").values()
    assert users + unheld == pytest.approx(total, rel=1e-12)


@pytest.mark.prometheus
@pytest.mark.slow
def test_a_process_energy_sums_from_its_increments(prometheus):
    processes = _by(
        prometheus, "sum_over_time(node_gpu_process:gpu_energy_joules:increase[1h])", "pid"
    )
    assert processes == {
        "100": pytest.approx(0.75 * _joules(300), rel=1e-12),
        "101": pytest.approx(0.25 * _joules(300), rel=1e-12),
        "200": pytest.approx(_joules(80), rel=1e-12),
        "300": pytest.approx(_joules(200), rel=1e-12),
    }


@pytest.mark.prometheus
@pytest.mark.slow
def test_the_job_command_reads_the_energy_of_a_job_and_a_pod(prometheus):
    common = ["--prometheus-url", prometheus.url, "--lookback", "10m", "--step", "1s"]
    result = run_command("job", "1001", *common, "--format", "json")
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert (job["user"], [g["gpu"] for g in job["gpus"]]) == ("alice", ["0"])
    assert job["energy_kwh"] == pytest.approx(0.75 * _joules(300) / 3.6e6, rel=1e-12)
    result = run_command("job", "--pod", "vision/train-0", *common, "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["energy_kwh"] == pytest.approx(
        0.25 * _joules(300) / 3.6e6, rel=1e-12
    )
