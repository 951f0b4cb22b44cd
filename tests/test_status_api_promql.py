"""``gpu-status-api --prometheus-url``: the cluster from PromQL equals the cluster from polling.

On one simulated cluster (two real exporters on the fake NVML), a real Prometheus and a real
single-node VictoriaMetrics scrape the same file_sd targets; three services run side by side:
polling the nodes, reading Prometheus, reading VictoriaMetrics. Their /api/v1/cluster documents
agree on nodes, GPUs, users (their job, pod, MIG device and SM utilization), SM activity (GPM),
health, MIG devices and free GPUs (node localhost has health readings and a MIG GPU). Stopping
the engine shows its error and keeps the last state; an engine URL that redirects is refused
without the redirect being followed.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from simulator.victoriametrics import running_victoriametrics
from tests.support.cluster import monitored_cluster
from tests.support.status_service import StatusService

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

# Generous: the nodes must not age out while the test compares (the machine may be loaded).
STATES = ("--stale-after", "30", "--offline-after", "60")
# What both modes must agree on per process: the legacy fields and what /metrics adds.
USER_FIELDS = ("pid", "username", "mem", "slurm_job", "container", "pod", "namespace",
               "mig_uuid", "sm_utilization")  # fmt: skip


def projection(document: dict[str, Any]) -> dict[str, Any]:
    """What both modes must agree on, by node address (the modes name nodes differently: the
    hosts.txt entry when polling, the target's ``node`` label from PromQL)."""
    nodes = {}
    for node in document["nodes"]:
        gpus = [
            {
                **{key: gpu[key] for key in ("index", "name", "use_mem", "tot_mem", "utilize",
                                              "temp", "power", "power_limit", "sm_active",
                                              "state", "free", "idle_held", "sm_idle")},
                "users": sorted(tuple(u[key] for key in USER_FIELDS) for u in gpu["users"]),
                "health": gpu["health"],
                "mig": gpu["mig"],
            }
            for gpu in node["gpus"]
        ]  # fmt: skip
        nodes[node["address"]] = {"state": node["state"], "hostname": node["hostname"],
                                  "gpus": gpus}  # fmt: skip
    counted = ("nodes_total", "nodes_online", "gpus_total", "gpus_in_use", "gpus_free",
               "gpus_idle_held", "gpus_sick", "gpus_lost", "gpus_stale")  # fmt: skip
    summary = {key: document["summary"][key] for key in counted}
    return {"nodes": nodes, "summary": summary}


def legacy_projection(document: dict[str, Any]) -> list[Any]:
    return sorted(
        (node["status"], [(g["index"], g["use_mem"], len(g["users"])) for g in node["gpus"]])
        for node in document["Nodes"]
    )


def all_in(document: dict[str, Any]) -> bool:
    """Both nodes online, with their power read (polling reads it on the first round) and the
    SM activity of the GPU with GPM (published from the exporter's second pass on)."""
    nodes = document["nodes"]
    return (
        len(nodes) == 2
        and all(node["state"] == "online" for node in nodes)
        and all(gpu["power"] is not None for node in nodes for gpu in node["gpus"][:1])
        and any(gpu["sm_active"] is not None for node in nodes for gpu in node["gpus"])
    )


def engine_service(start, url: str, *args: str) -> StatusService:
    return start([], "--prometheus-url", url, *STATES, *args, password=None)


def test_promql_mode_matches_polling(
    exporter_factory,
    worker_pids,
    tmp_path,
    status_service_factory,
):
    # health: a pending row remap, a slow PCIe link, MIG pending, an XID, per-process SM
    # utilization and a MIG GPU on localhost
    with monitored_cluster(exporter_factory, worker_pids, tmp_path, health=True) as cluster:
        targets = tmp_path / "targets" / "gpu-nodes.json"  # written by monitored_cluster
        with running_victoriametrics(tmp_path / "vm", targets_file=targets) as victoria:
            # Every family scraped, the process info included (the last family of a scrape).
            victoria.wait_for('up{job="gpu"} == 1', lambda result: len(result) == 2, timeout=60)
            victoria.wait_for("gpu_process_info", lambda result: len(result) >= 7, timeout=30)
            polling = status_service_factory(
                [f"{node}:{e.port}" for node, e in cluster.exporters.items()], *STATES
            )
            from_prometheus = engine_service(status_service_factory, cluster.prometheus.url)
            from_victoria = engine_service(status_service_factory, victoria.url)

            expected = projection(polling.wait_for(all_in, timeout=30, what="polling"))
            check_health_shown(expected)
            # the vocabulary's states: localhost's GPU 3 is lost, GPU 2 free, the others in use
            assert expected["summary"] == {"nodes_total": 2, "nodes_online": 2, "gpus_total": 7,
                                           "gpus_in_use": 5, "gpus_free": 1, "gpus_idle_held": 0,
                                           "gpus_sick": 0, "gpus_lost": 1,
                                           "gpus_stale": 0}  # fmt: skip
            for service in (from_prometheus, from_victoria):
                document = service.wait_for(all_in, timeout=30, what="engine mode")
                assert document["error"] == ""
                assert projection(document) == expected, service.log()[-2000:]
                assert {node["node"] for node in document["nodes"]} == {"localhost", "127.0.0.1"}
                assert legacy_projection(service.legacy()) == legacy_projection(polling.legacy())

            # The monitored cluster's rules shorten the idle-held threshold; this service does
            # not: it says so. VictoriaMetrics evaluates no rules: nothing to compare there.
            mismatch = "cluster:gpu_idle_held_after_seconds:threshold is 2, --idle-held-after 1800"
            assert mismatch in from_prometheus.log()
            assert "other thresholds" not in from_victoria.log()
            check_engine_stopped(cluster.prometheus.process, from_prometheus, expected)


def check_health_shown(expected: dict[str, Any]) -> None:
    """What /metrics adds is there to compare: health, SM utilization, MIG devices."""
    (gpus,) = [node["gpus"] for address, node in expected["nodes"].items()
               if address.startswith("localhost:")]  # fmt: skip
    reasons = gpus[0]["health"]["reasons"]
    assert "memory row remap pending: reset the GPU" in reasons
    assert "PCIe link at Gen4 x8, capable of Gen5 x16" in reasons
    assert "MIG mode changes at the next reset (turns on)" in reasons
    assert [user[-1] for user in gpus[0]["users"]] == [0.75, 0.0, 0.0]
    # SM activity where the GPU has GPM (GPU 1: 25 %), none where it has not
    assert [gpu["sm_active"] for gpu in gpus[:3]] == [None, 0.25, None]
    assert not any(gpu["sm_idle"] for gpu in gpus)  # 40 % utilization is not "busy"
    assert gpus[3]["health"]["reasons"] == ["lost: the GPU stopped answering NVML"]
    assert [device["profile"] for device in gpus[4]["mig"]] == ["3g.40gb", "1g.10gb"]
    assert gpus[4]["users"][0][USER_FIELDS.index("mig_uuid")] == gpus[4]["mig"][1]["uuid"]


def check_engine_stopped(process, service: StatusService, expected: dict[str, Any]) -> None:
    """The engine gone: the error shows at cluster level, the nodes keep their last state."""
    process.stop()
    document = service.wait_for(lambda d: d["error"] != "", timeout=20, what="engine error")
    assert "cannot connect" in document["error"], document["error"]
    assert projection(document) == expected
    assert service.get("/-/ready").status_code == 200


class _Counting(http.server.BaseHTTPRequestHandler):
    """Answers every request with ``reply`` (a status and headers); counts what it got."""

    reply: tuple[int, dict[str, str]] = (200, {})
    hits: list[str]

    def _answer(self) -> None:
        self.hits.append(self.path)
        status, headers = self.reply
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


def _serve(reply: tuple[int, dict[str, str]]) -> Iterator[tuple[str, list[str]]]:
    hits: list[str] = []
    handler = type("Handler", (_Counting,), {"reply": reply, "hits": hits})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


def test_redirecting_engine_is_refused(status_service_factory):
    target_server = _serve((200, {}))
    target, target_hits = next(target_server)
    redirect_server = _serve((307, {"Location": f"{target}/api/v1/query"}))
    redirect, redirect_hits = next(redirect_server)
    try:
        service = engine_service(status_service_factory, redirect)
        document = service.wait_for(lambda d: d["error"] != "", timeout=20, what="error")
        assert "redirect" in document["error"] and "refused" in document["error"]
        assert document["nodes"] == []
        assert redirect_hits and target_hits == []
        assert service.legacy() == {"Nodes": []}
    finally:
        for server in (target_server, redirect_server):
            server.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--prometheus-url", "ftp://host:9090"), "expected http(s)://host"),
        (
            ("--prometheus-url", "http://h:9090", "--prometheus-basic-auth-user", "u"),
            "go together",
        ),
        (("--prometheus-url", "http://h:9090", "--prometheus-ca-file", "/x"), "needs an https"),
        # ps shows the command line to every user: as the report, the service refuses this.
        (("--prometheus-url", "http://u:p@h:9090"), "must not hold credentials"),
    ],
)
def test_bad_engine_options_fail_at_start(status_service_factory, args, message):
    service = status_service_factory([], *args, password=None, wait_ready=False)
    assert service.process.process.wait(timeout=30) == 2
    assert message in service.log()


def _sample(family: str, value: float, **labels: str) -> tuple[dict[str, str], float]:
    return {"__name__": family, "job": "gpu", **labels}, value


@pytest.mark.unit
def test_down_and_stalled_targets_fail_like_polls():
    from status_api.promsource import build_results

    scraped = 1_000_000.0
    targets = {"a:7080": "a", "b:7080": "b", "c:7080": "c"}
    collected = "gpu_exporter_last_collect_timestamp_seconds"
    gpu = {"instance": "a:7080", "gpu": "0"}
    answers = {
        "up": [
            _sample("up", 1, instance="a:7080", node="a"),
            _sample("up", 0, instance="b:7080", node="b"),
            _sample("up", 1, instance="c:7080"),
        ],
        "scraped": [({"instance": i}, scraped) for i in targets],
        "node": [
            _sample(collected, scraped - 1, instance="a:7080"),
            _sample(collected, scraped - 60, instance="c:7080"),
        ],
        "gpu": [
            _sample("gpu_info", 1, **gpu, name="H100"),
            _sample("gpu_memory_used_bytes", 3 * 2**20 + 5, **gpu),
            _sample("gpu_utilization_ratio", 0.426, **gpu),
            _sample("gpu_power_watts", 123.44, **gpu),
        ],
        "process": [
            _sample("gpu_process_info", 1, **gpu, pid="42", user="ann", command="python train.py")
        ],
        "attribution": [
            _sample("gpu_process_info", 1, **gpu, pid="42", slurm_job="7", pod='a"b\\n'),
            _sample("gpu_process_sm_utilization_ratio", 0.75, **gpu, pid="42"),
        ],
        "health": [
            _sample("gpu_up", 1, **gpu),
            _sample("gpu_remapped_rows_pending", 1, **gpu),
            _sample("gpu_last_xid", 79, **gpu),
            _sample("gpu_pcie_link_width", float("nan"), **gpu),
            _sample("gpu_mig_info", 1, **gpu, mig_uuid="MIG-1", gi="2", ci="0", profile="1g.10gb"),
            _sample("gpu_mig_memory_used_bytes", 5 * 2**20, **gpu, mig_uuid="MIG-1"),
        ],
    }
    hosts, results = build_results(answers, stale_after=10)
    assert [host.text for host in hosts] == ["a", "b", "c:7080"]
    a, b, c = results
    assert a.ok and a.finished_at == scraped and a.power == {0: {"power": 123.4}}
    assert a.status["gpus"] == [{
        "index": 0, "name": "H100", "use_mem": 3, "tot_mem": None, "utilize": 43, "temp": None,
        "users": [{"pid": 42, "username": "ann", "mem(MiB)": None, "command": "python train.py"}],
    }]  # fmt: skip
    # What polling reads from /metrics: attribution, health, MIG (a NaN reading is no reading).
    process = a.processes[(0, 42)]
    assert (process.slurm_job, process.pod, process.sm_utilization) == ("7", 'a"b\\n', 0.75)
    health = a.health[0]
    assert (health.up, health.remap_pending, health.last_xid) == (True, True, 79)
    assert health.pcie_width is None and health.retired_pending is None
    assert [device.document() for device in a.migs[0]] == [{
        "uuid": "MIG-1", "gpu_instance": 2, "compute_instance": 0, "profile": "1g.10gb",
        "memory_used_mib": 5, "memory_total_mib": None,
    }]  # fmt: skip
    assert not b.ok and "up == 0" in b.error
    assert not c.ok and "60 s old" in c.error


@pytest.mark.parametrize("engine", ["prometheus", "victoriametrics"])
def test_answers_carry_only_the_labels_the_round_reads(tmp_path, engine):
    """The per-GPU and per-process answers are the largest of a round (20 MB at 2,000 nodes):
    the engine drops every label the round does not read before encoding them, each answer holds
    one family (or a few of health), and the round still builds every GPU, its name and its
    processes. What polling reads from /metrics is asked every --power-interval, what only changes
    with the hardware once a minute, both at once for a node that is up and was not when they
    were asked."""
    import asyncio
    import time

    from simulator.nodes import FakeNodes
    from simulator.prometheus import running_prometheus
    from status_api.engine import EngineClient, EngineSettings
    from status_api.hosts import parse_hosts
    from status_api.promsource import (
        METRICS,
        SLOW,
        Cadence,
        _round,
        build_results,
        merged,
        queries,
    )
    from status_api.targets import render

    class Recording(EngineClient):
        """The real client, noting which queries each call asks."""

        asked: ClassVar[list[list[str]]] = []

        async def queries(self, exprs, *, at):
            self.asked.append(list(exprs))
            return await super().queries(exprs, at=at)

    with FakeNodes(["ok", "ok"], gpus=2, exporter_metrics=True) as nodes:
        targets = tmp_path / "targets.json"
        targets.write_bytes(render(parse_hosts("\n".join(nodes.hosts_lines()))))
        run = running_prometheus if engine == "prometheus" else running_victoriametrics
        with run(tmp_path / engine, targets_file=targets) as server:
            server.wait_for('gpu_process_info{job="gpu"}', lambda r: len(r) == 4, timeout=60)

            async def ask() -> dict[str, list[tuple[dict[str, str], float]]]:
                async with EngineClient(EngineSettings(server.url)) as client:
                    wanted = queries("gpu")
                    answers = await client.queries(list(wanted.values()), at=time.time())
                    return dict(zip(wanted, answers))

            raw = asyncio.run(ask())

            async def rounds(cadence: Cadence, count: int) -> list:
                async with Recording(EngineSettings(server.url)) as client:
                    return [
                        await _round(client, job="gpu", stale_after=60, cadence=cadence)
                        for _ in range(count)
                    ]

            (_, first), (_, second) = asyncio.run(rounds(Cadence(), 2))
            first_asked, second_asked = Recording.asked
            late = Cadence()  # answers taken when no node was up: every node is new
            late.remember({name: [] for name in SLOW | METRICS}, set(), time.monotonic())
            Recording.asked = []
            ((_, third),) = asyncio.run(rounds(late, 1))
            third_asked = Recording.asked
    # One family per answer: decoding one holds the interpreter lock briefly, so the page is
    # served in between. (Families the fake nodes do not have, such as XIDs, are empty.)
    families = {
        name: {labels.get("__name__") for labels, _ in samples} for name, samples in raw.items()
    }
    split = {name: names for name, names in families.items() if "/" in name}
    grouped = {
        "health/memory_flags": {
            "gpu_remapped_rows_pending",
            "gpu_remapped_rows_failure",
            "gpu_retired_pages_pending",
        },
        "health/mig_modes": {"gpu_mig_mode", "gpu_mig_mode_pending"},
    }
    assert len([name for name, names in split.items() if names]) >= 10, families
    for name, names in split.items():
        assert names <= grouped.get(name, {name.partition("/")[2]}), (name, names)
    answers = merged(raw)
    gpu_labels = {key for labels, _ in answers["gpu"] for key in labels}
    process_labels = {key for labels, _ in answers["process"] for key in labels}
    health_labels = {key for labels, _ in answers["health"] for key in labels}
    attribution_labels = {key for labels, _ in answers["attribution"] for key in labels}
    assert gpu_labels == {"__name__", "instance", "gpu", "name", "uuid"}  # these two: gpu_info
    # mig_uuid is empty off MIG, and an empty label is no label
    assert process_labels == {"__name__", "instance", "gpu", "pid", "user"}
    assert health_labels <= {"__name__", "instance", "gpu"}  # healthy nodes: no health answers
    assert "uuid" not in attribution_labels and "job" not in attribution_labels
    assert {"slurm_job", "user", "pid"} <= attribution_labels  # commands: only behind basic auth
    # The slow and /metrics families: asked in the first round, not in the second, and at once
    # (a second call in the same round) when a node is up that was not when they were asked.
    tiered = {queries("gpu")[name] for name in SLOW | METRICS}
    assert tiered <= set(first_asked) and len(tiered) == len(SLOW | METRICS)
    assert not tiered & set(second_asked) and len(second_asked) == len(queries("gpu")) - len(tiered)
    assert not tiered & set(third_asked[0]) and set(third_asked[1]) == tiered

    def seen(results: list) -> list:
        return [
            [(gpu["name"], gpu["tot_mem"], len(gpu["users"]), r.power[gpu["index"]]["power"])
             for gpu in r.status["gpus"]]
            for r in results
        ]  # fmt: skip

    assert seen(first) == seen(second) == seen(third)
    assert seen(first)[0][0][:3] == ("NVIDIA A100-SXM4-80GB", 81920, 2)
    _, results = build_results(answers, stale_after=60)
    assert [result.ok for result in results] == [True, True]
    for result in results:
        # Idle-held GPUs are tracked by uuid, as when polling.
        assert sorted(result.uuids) == [0, 1], result.uuids
        assert all(uuid.startswith("GPU-") for uuid in result.uuids.values())
        gpus = result.status["gpus"]
        assert [gpu["name"] for gpu in gpus] == ["NVIDIA A100-SXM4-80GB"] * 2
        assert [len(gpu["users"]) for gpu in gpus] == [2, 0]
        assert gpus[0]["users"][0]["mem(MiB)"] == 1200
        assert gpus[0]["tot_mem"] == 81920 and gpus[0]["utilize"] == 87
