"""gpu-status-api against real gpu-exporter processes on the fake NVML library.

Several exporters with different scenarios, a node that refuses connections and one that never
answers: the combined JSON shows each correctly and on time; a node that goes down turns stale
then offline, and turns online again when it comes back; scenario changes show up. A mixed fleet:
nodes that still run the old node_info.py beside new exporters. Also polling exporters that serve
HTTPS with basic auth.
"""

from __future__ import annotations

import getpass
import os
import sys
import threading
import time
from pathlib import Path

import bcrypt
import pytest
import requests
import schemathesis
import trustme
import yaml

from simulator.exporters import nvml_env, write_scenario
from simulator.fakenvml import scenario as fake
from simulator.nodes import FakeNodes
from simulator.proc import ManagedProcess, free_port, wait_http, wait_until
from tests.support.old_node import OldNode, node_info_status, sample_gpus
from tests.support.status_service import PASSWORD, node

MIB = 1024 * 1024
REPO = Path(__file__).resolve().parents[1]
USER_KEYS = ["pid", "username", "mem(MiB)", "command"]


def _entry(exporter) -> str:  # type: ignore[no-untyped-def]
    return f"127.0.0.1:{exporter.port}"


def test_cluster_of_real_exporters(
    exporter_factory,
    worker_pids,
    status_service_factory,
) -> None:
    pids = worker_pids(12)
    busy = fake.busy(4, pids, seed=3)
    busy.gpus[2].temperature = 91
    busy_node = exporter_factory(busy, "--hostname", "gpu-busy", password=PASSWORD)
    idle_node = exporter_factory(fake.idle(2), "--hostname", "gpu-idle", password=PASSWORD)
    unsupported = fake.idle(1)
    unsupported.gpus[0].temperature = None
    unsupported.gpus[0].power_usage = None
    odd_node = exporter_factory(unsupported, "--hostname", "gpu-odd", password=PASSWORD)
    wrong_password = exporter_factory(fake.idle(1), "--hostname", "gpu-locked", password="other")
    refused = f"127.0.0.1:{free_port()}"
    with FakeNodes(["hang"]) as silent:
        hosts = [_entry(busy_node), _entry(idle_node), _entry(odd_node),
                 _entry(wrong_password), refused, *silent.hosts_lines()]  # fmt: skip
        started = time.monotonic()
        service = status_service_factory(hosts, interval=0.5, timeout=1.0)
        document = service.wait_for(
            lambda d: d["summary"]["nodes_online"] == 3, timeout=10, what="exporters online"
        )
        # The first round already has everything; dead nodes cost at most the timeout.
        assert time.monotonic() - started < 8
        assert [n["node"] for n in document["nodes"]] == hosts

        summary = document["summary"]
        assert (summary["nodes_total"], summary["nodes_online"], summary["nodes_offline"]) == (
            6, 3, 3,
        )  # fmt: skip
        assert summary["gpus_total"] == 4 + 2 + 1
        assert summary["gpus_in_use"] == 4
        assert summary["gpus_free"] == 3
        assert summary["memory_total_mib"] == sum(
            g.memory_total // MIB for s in (busy, fake.idle(2), unsupported) for g in s.gpus
        )

        busy_doc = node(document, hosts[0])
        assert busy_doc["hostname"] == "gpu-busy" and busy_doc["state"] == "online"
        for gpu_doc, gpu in zip(busy_doc["gpus"], busy.gpus):
            assert gpu_doc["use_mem"] == gpu.memory_used // MIB
            assert gpu_doc["tot_mem"] == gpu.memory_total // MIB
            assert gpu_doc["utilize"] == gpu.utilization_gpu
            assert gpu_doc["temp"] == gpu.temperature
            assert gpu_doc["power"] == pytest.approx(gpu.power_usage / 1000, abs=0.1)
            assert gpu_doc["power_limit"] == pytest.approx(gpu.power_limit / 1000, abs=0.1)
            assert [u["pid"] for u in gpu_doc["users"]] == [p.pid for p in gpu.processes]
            assert {u["username"] for u in gpu_doc["users"]} == {getpass.getuser()}
            assert all(u["command"] == "sleep 600" for u in gpu_doc["users"])
            assert gpu_doc["free"] is False
        assert busy_doc["gpus"][2]["temp"] == 91

        idle_doc = node(document, hosts[1])
        assert [g["free"] for g in idle_doc["gpus"]] == [True, True]
        odd_gpu = node(document, hosts[2])["gpus"][0]
        assert odd_gpu["temp"] is None and odd_gpu["power"] is None and odd_gpu["free"] is True

        locked = node(document, hosts[3])
        assert locked["state"] == "offline" and locked["error"] == "HTTP 403: wrong password"
        assert node(document, refused)["error"] == "cannot connect: Connection refused"
        hung = node(document, hosts[5])
        assert hung["error"] == "no answer within 1 s"
        assert hung["poll_seconds"] < 1.0 + 0.3

        # The legacy view holds each exporter's own answer, plus status and version.
        legacy = service.legacy()["Nodes"]
        own = busy_node.status()
        assert {k: legacy[0][k] for k in ("hostname", "ips", "gpus")} == {
            k: own[k] for k in ("hostname", "ips", "gpus")
        }
        assert legacy[0]["status"] is True and legacy[0]["version"] == busy.gpus[0].name
        assert legacy[4] == {"hostname": refused, "status": False, "gpus": []}
        assert legacy[3] == {"hostname": hosts[3], "status": False, "gpus": []}

        # A scenario change on a node shows up within a couple of rounds.
        idle_node.set_scenario(fake.busy(2, pids[:2], seed=9))
        changed = service.wait_for(
            lambda d: d["summary"]["gpus_free"] == 1, timeout=6, what="idle node taken"
        )
        assert not any(g["free"] for g in node(changed, hosts[1])["gpus"])


# ---- a fleet mid-upgrade: old node_info.py nodes beside new exporters -----------------------


def test_mixed_fleet_of_old_node_info_and_new_exporters(
    exporter_factory,
    worker_pids,
    status_service_factory,
) -> None:
    scenario = fake.busy(2, worker_pids(2), seed=4)
    new = exporter_factory(scenario, "--hostname", "gpu-new", password=PASSWORD)
    old_status = node_info_status("gpu-old", sample_gpus())
    locked_status = node_info_status("gpu-old-locked", sample_gpus())
    with (
        OldNode(old_status, password=PASSWORD) as old,
        OldNode(locked_status, password="other") as locked,
    ):
        hosts = [_entry(new), old.entry, locked.entry]
        service = status_service_factory(hosts, "--power-interval", "0", interval=0.5)
        document = service.wait_for(
            lambda d: d["summary"]["nodes_online"] == 2, what="the old and the new node online"
        )

        old_doc = node(document, old.entry)
        assert (old_doc["state"], old_doc["error"], old_doc["hostname"]) == (
            "online", "", "gpu-old",
        )  # fmt: skip
        assert old_doc["ips"] == [["eth0", "10.0.0.9"]]
        assert old_doc["last_update"] == "2023-04-29T21:17:41.419592"
        busy, idle = old_doc["gpus"]
        assert (busy["index"], busy["use_mem"], busy["tot_mem"], busy["utilize"], busy["temp"]) == (
            0, 20000, 24576, 97, 78,
        )  # fmt: skip
        # The cluster view keeps its own schema ("mem"); the unreadable process was never sent.
        # An old node has no /metrics: no attribution, no per-process utilization.
        unattributed = {
            "slurm_job": "",
            "container": "",
            "pod": "",
            "namespace": "",
            "mig_uuid": "",
            "sm_utilization": None,
        }
        assert busy["users"] == [
            {"pid": 31337, "username": "alice", "mem": 12288,
             "command": "python train.py --epochs 90", **unattributed},
            {"pid": 31338, "username": "bob", "mem": 6144, "command": "python -m jupyter lab",
             **unattributed},
        ]  # fmt: skip
        assert (busy["free"], idle["free"], idle["users"]) == (False, True, [])
        assert (busy["power"], busy["power_limit"]) == (None, None)  # node_info.py has none
        assert old.paths.count("/metrics") == 1  # asked once, then left alone for a while

        new_doc = node(document, hosts[0])
        assert new_doc["state"] == "online" and new_doc["hostname"] == "gpu-new"
        for gpu_doc, gpu in zip(new_doc["gpus"], scenario.gpus):
            assert [u["mem"] for u in gpu_doc["users"]] == [
                p.used_bytes // MIB for p in gpu.processes
            ]

        locked_doc = node(document, locked.entry)
        assert locked_doc["state"] == "offline"
        assert locked_doc["error"] == (
            "HTTP 404: not found "
            "(an old node_info.py answers 404 to a wrong password; check the password)"
        )

        # The legacy view speaks node_info.py's JSON for every node, old and new alike.
        response = service.get("/get-status")
        legacy = response.json()["Nodes"]
        assert legacy[1] == {**old_status, "status": True, "version": "NVIDIA GeForce RTX 3090"}
        assert list(legacy[1]) == ["hostname", "last_update", "ips", "gpus", "status", "version"]
        assert [list(u) for u in legacy[1]["gpus"][0]["users"]] == [USER_KEYS, USER_KEYS]
        assert legacy[0]["gpus"] == new.status()["gpus"]
        assert all(list(u) == USER_KEYS for g in legacy[0]["gpus"] for u in g["users"])
        assert legacy[2] == {"hostname": locked.entry, "status": False, "gpus": []}

        # Both documents are what status_api/openapi.yaml describes.
        described = schemathesis.openapi.from_path(REPO / "status_api" / "openapi.yaml")
        described["/get-status"]["GET"].validate_response(response)
        cluster = service.get("/api/v1/cluster")
        described["/api/v1/cluster"]["GET"].validate_response(cluster)


def test_an_old_node_answering_mem_is_still_read(
    status_service_factory,
) -> None:
    """gpu-exporter 0.1.0 answered ``mem``; until upgraded, such a node stays online."""
    status = node_info_status("gpu-0-1", sample_gpus())
    for gpu in status["gpus"]:
        for user in gpu["users"]:
            user["mem"] = user.pop("mem(MiB)")
    with OldNode(status, password=PASSWORD) as early:
        service = status_service_factory([early.entry])
        document = service.wait_for(lambda d: d["summary"]["nodes_online"] == 1, what="online")
        users = node(document, early.entry)["gpus"][0]["users"]
        assert [(u["username"], u["mem"]) for u in users] == [("alice", 12288), ("bob", 6144)]
        legacy_users = service.legacy()["Nodes"][0]["gpus"][0]["users"]
        assert [(u["username"], u["mem(MiB)"]) for u in legacy_users] == [
            ("alice", 12288), ("bob", 6144),
        ]  # fmt: skip
        assert all(list(u) == USER_KEYS for u in legacy_users)


def _start_exporter(
    fake_nvml: Path, tmp_path: Path, port: int, scenario_path: Path, *args: str
) -> ManagedProcess:
    """An exporter on a fixed port, so it can come back where it was."""
    password_file = tmp_path / "exporter-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    command = [sys.executable, "-m", "exporter", "--port", str(port), "--listen-address",
               "127.0.0.1", "--interval", "0.5", "--password-file", str(password_file),
               "--hostname", "gpu-flaky", *args]  # fmt: skip
    process = ManagedProcess(
        command,
        log_path=tmp_path / f"exporter-{time.monotonic_ns()}.log",
        env=nvml_env(fake_nvml, scenario_path),
    )
    wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=20)
    return process


def test_node_going_down_and_coming_back(
    fake_nvml: Path,
    tmp_path: Path,
    exporter_factory,
    status_service_factory,
) -> None:
    steady = exporter_factory(fake.idle(1), "--hostname", "gpu-steady", password=PASSWORD)
    scenario_path = tmp_path / "flaky.scn"
    write_scenario(scenario_path, fake.idle(2))
    port = free_port()
    flaky = _start_exporter(fake_nvml, tmp_path, port, scenario_path)
    entry = f"127.0.0.1:{port}"
    try:
        service = status_service_factory(
            [_entry(steady), entry], "--stale-after", "1", "--offline-after", "2.5",
            interval=0.3, timeout=0.6,
        )  # fmt: skip
        service.wait_for(lambda d: d["summary"]["nodes_online"] == 2, what="both online")

        flaky.stop()
        down = service.wait_for(lambda d: node(d, entry)["state"] == "stale", timeout=3)
        assert node(down, entry)["error"] == "cannot connect: Connection refused"
        assert len(node(down, entry)["gpus"]) == 2  # last known GPUs, marked stale
        gone = service.wait_for(lambda d: node(d, entry)["state"] == "offline", timeout=5)
        assert gone["summary"]["gpus_total"] == 1
        assert service.legacy()["Nodes"][1]["status"] is False

        flaky = _start_exporter(fake_nvml, tmp_path, port, scenario_path)
        back = service.wait_for(lambda d: node(d, entry)["state"] == "online", timeout=5)
        assert node(back, entry)["error"] == "" and node(back, entry)["hostname"] == "gpu-flaky"
        assert back["summary"]["gpus_total"] == 3
        assert service.legacy()["Nodes"][1]["status"] is True
        assert node(back, _entry(steady))["state"] == "online"  # never disturbed
    finally:
        flaky.stop()


def test_password_rotation_without_restart(
    exporter_factory,
    status_service_factory,
) -> None:
    exporter = exporter_factory(fake.idle(1), "--hostname", "gpu-rotated", password="new-secret")
    service = status_service_factory([_entry(exporter)], password="old-secret")
    entry = _entry(exporter)
    assert node(service.cluster(), entry)["error"] == "HTTP 403: wrong password"
    assert service.password_file is not None
    service.password_file.write_text("new-secret\n")
    service.wait_for(lambda d: node(d, entry)["state"] == "online", what="new password used")
    assert service.process.alive()


def _basic_auth_config(path: Path, password: str) -> None:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    path.write_text(yaml.safe_dump({"basic_auth_users": {"status-api": hashed}}))


def test_basic_auth_rotation_without_restarting_the_status_service(
    fake_nvml: Path,
    tmp_path: Path,
    status_service_factory,
) -> None:
    scenario_path = tmp_path / "node.scn"
    write_scenario(scenario_path, fake.idle(1))
    web_config = tmp_path / "web-config.yml"
    _basic_auth_config(web_config, "scrape-secret-1")
    port = free_port()
    entry = f"127.0.0.1:{port}"
    exporter_args = (fake_nvml, tmp_path, port, scenario_path, "--web-config-file", str(web_config))
    exporter = _start_exporter(*exporter_args)
    auth_file = tmp_path / "basic-auth"
    auth_file.write_text("scrape-secret-1\n")
    auth_file.chmod(0o600)
    try:
        service = status_service_factory(
            [entry], "--node-basic-auth-user", "status-api",
            "--node-basic-auth-password-file", str(auth_file), interval=0.3,
        )  # fmt: skip
        service.wait_for(lambda d: node(d, entry)["state"] == "online", what="node online")
        pid = service.process.pid

        # The exporter takes the new password (its web config is read at start: restart it) ...
        exporter.stop()
        _basic_auth_config(web_config, "scrape-secret-2")
        exporter = _start_exporter(*exporter_args)
        service.wait_for(
            lambda d: node(d, entry)["error"] == "HTTP 401: authentication required",
            what="old basic-auth password refused",
        )
        # ... then the status service's file changes, and the node comes back by itself.
        rotated = tmp_path / "basic-auth.new"
        rotated.write_text("scrape-secret-2\n")
        rotated.chmod(0o600)
        os.replace(rotated, auth_file)
        back = service.wait_for(
            lambda d: node(d, entry)["state"] == "online" and node(d, entry)["error"] == "",
            what="node online with the new basic-auth password",
        )
        assert node(back, entry)["hostname"] == "gpu-flaky"
        assert service.process.alive() and service.process.pid == pid
        assert "Traceback" not in service.log()
    finally:
        exporter.stop()


# ---- HTTPS and basic auth towards the nodes ------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _secure_exporter(exporter_factory, tmp_path: Path, ca: trustme.CA):  # type: ignore[no-untyped-def]
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(tmp_path / "srv.pem")
    hashed = bcrypt.hashpw(b"scrape-secret", bcrypt.gensalt(rounds=4)).decode()
    config = tmp_path / "web-config.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "tls_server_config": {"cert_file": "srv.pem", "key_file": "srv.pem"},
                "basic_auth_users": {"status-api": "$2y$" + hashed[4:]},
            }
        )
    )
    exporter = exporter_factory(
        fake.idle(2),
        "--web-config-file", str(config), "--hostname", "gpu-secure",
        password=PASSWORD, scheme="https", wait_ready=False,
    )  # fmt: skip
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    wait_http(f"{exporter.url}/-/ready", timeout=20, verify=str(tmp_path / "ca.pem"))
    return exporter


def test_polling_over_https_with_basic_auth(
    exporter_factory,
    tmp_path: Path,
    ca: trustme.CA,
    status_service_factory,
) -> None:
    exporter = _secure_exporter(exporter_factory, tmp_path, ca)
    (tmp_path / "auth").write_text("scrape-secret\n")
    other_ca = trustme.CA()
    other_ca.cert_pem.write_to_path(tmp_path / "other-ca.pem")
    (tmp_path / "bad-auth").write_text("guess\n")
    hosts = [_entry(exporter)]
    tls = ["--node-scheme", "https"]
    auth = ["--node-basic-auth-user", "status-api"]

    good = status_service_factory(
        hosts, *tls, "--node-ca-file", str(tmp_path / "ca.pem"),
        *auth, "--node-basic-auth-password-file", str(tmp_path / "auth"),
    )  # fmt: skip
    document = good.wait_for(lambda d: d["summary"]["nodes_online"] == 1, what="secure node")
    gpus = node(document, hosts[0])["gpus"]
    assert len(gpus) == 2 and gpus[0]["power"] is not None  # /metrics read with the same auth

    untrusted = status_service_factory(
        hosts, *tls, "--node-ca-file", str(tmp_path / "other-ca.pem"),
        *auth, "--node-basic-auth-password-file", str(tmp_path / "auth"),
    )  # fmt: skip
    error = node(untrusted.cluster(), hosts[0])["error"]
    assert error.startswith("TLS certificate not trusted"), error

    wrong = status_service_factory(
        hosts, *tls, "--node-ca-file", str(tmp_path / "ca.pem"),
        *auth, "--node-basic-auth-password-file", str(tmp_path / "bad-auth"),
    )  # fmt: skip
    assert node(wrong.cluster(), hosts[0])["error"] == "HTTP 401: authentication required"

    plain = status_service_factory(hosts)
    assert node(plain.cluster(), hosts[0])["state"] == "offline"
    assert "Traceback" not in plain.log()


# ---- guessing from the main node -----------------------------------------------------------


def test_guessing_from_the_same_address_cannot_blank_the_page(
    exporter_factory,
    tmp_path: Path,
    status_service_factory,
) -> None:
    """Any user logged in on the main node shares its address with gpu-status-api."""
    users = {
        name: "$2y$" + bcrypt.hashpw(secret, bcrypt.gensalt(rounds=4)).decode()[4:]
        for name, secret in (("status-api", b"scrape-secret"), ("prom", b"prom-secret"))
    }
    config = tmp_path / "web-config.yml"
    config.write_text(yaml.safe_dump({"basic_auth_users": users}))
    exporter = exporter_factory(
        fake.idle(2), "--web-config-file", str(config), password=PASSWORD, wait_ready=False
    )
    wait_http(f"{exporter.url}/-/ready", timeout=20)
    (tmp_path / "auth").write_text("scrape-secret\n")
    entry = _entry(exporter)
    service = status_service_factory(
        [entry], "--node-basic-auth-user", "status-api",
        "--node-basic-auth-password-file", str(tmp_path / "auth"),
        "--stale-after", "1.5", "--offline-after", "3",
    )  # fmt: skip
    service.wait_for(lambda d: node(d, entry)["state"] == "online", what="node online")

    stop = threading.Event()
    guesses: dict[str, list[int]] = {"prom": [], "anonymous": []}

    def guess(who: str, auth: tuple[str, str] | None) -> None:
        with requests.Session() as session:
            while not stop.is_set():
                response = session.post(
                    f"{exporter.url}/get-status", json={"passwd": "guess"}, auth=auth, timeout=5
                )
                guesses[who].append(response.status_code)

    threads = [
        threading.Thread(target=guess, args=("prom", ("prom", "prom-secret"))),
        threading.Thread(target=guess, args=("anonymous", None)),
    ]
    for thread in threads:
        thread.start()
    views = []
    try:
        deadline = time.monotonic() + 6  # a dozen polling rounds
        while time.monotonic() < deadline:
            views.append(node(service.cluster(), entry))
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    for view in views:
        assert (view["state"], view["error"], len(view["gpus"])) == ("online", "", 2), view
    # The guesser itself is still limited: a wrong password every few seconds at most.
    assert guesses["prom"][:6] == [403] * 5 + [429], guesses["prom"][:10]
    assert guesses["prom"].count(403) <= 8 and set(guesses["prom"]) == {403, 429}
    assert set(guesses["anonymous"]) == {401}


# ---- rotation of the web config and basic-auth passwords ---------------------------------


def _replace(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def test_basic_auth_rotation_on_both_sides_without_restart(
    exporter_factory,
    tmp_path: Path,
    status_service_factory,
) -> None:
    def users(password: str) -> str:
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        return yaml.safe_dump({"basic_auth_users": {"status-api": hashed}})

    config = tmp_path / "exporter-web-config.yml"
    config.write_text(users("first"))
    exporter = exporter_factory(
        fake.idle(1), "--web-config-file", str(config), password=PASSWORD, wait_ready=False
    )
    wait_http(f"{exporter.url}/-/ready")
    auth_file = tmp_path / "node-auth"
    auth_file.write_text("first\n")
    service = status_service_factory(
        [_entry(exporter)],
        "--node-basic-auth-user", "status-api", "--node-basic-auth-password-file", str(auth_file),
    )  # fmt: skip
    entry = _entry(exporter)
    service.wait_for(lambda d: node(d, entry)["state"] == "online", what="node online")
    # The exporter takes its new password from the next request on; the service still sends
    # the old one ...
    _replace(config, users("second"))
    service.wait_for(
        lambda d: node(d, entry)["error"].startswith("HTTP 401"), timeout=15, what="refused"
    )
    # ... until its own file says the new one.
    _replace(auth_file, "second\n")
    service.wait_for(
        lambda d: node(d, entry)["state"] == "online" and not node(d, entry)["error"],
        timeout=15,
        what="new basic-auth password used",
    )
    assert service.process.alive() and exporter.process.alive()


def test_status_service_web_config_is_reloaded(
    tmp_path: Path,
    status_service_factory,
) -> None:
    def users(*names: str) -> str:
        hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
        return yaml.safe_dump({"basic_auth_users": {name: hashed for name in names}})

    config = tmp_path / "status-web-config.yml"
    config.write_text(users("alice"))
    service = status_service_factory([], "--web-config-file", str(config))
    assert service.get("/api/v1/cluster", auth=("bob", "pw")).status_code == 401
    _replace(config, users("alice", "bob"))
    wait_until(
        lambda: service.get("/api/v1/cluster", auth=("bob", "pw")).status_code == 200,
        timeout=15,
        what="the new user to be accepted",
    )
