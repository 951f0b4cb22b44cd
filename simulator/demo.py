"""The one-command demo: a small GPU cluster, simulated on a machine without a GPU.

Run it from the repository root as ``python -m simulator.demo`` (``make demo`` sets up the
environment first). The pieces, each started here and stopped here:

* **The fake NVML library** (``simulator/fakenvml``), built into ``build/fakenvml``: every exporter
  loads it instead of the driver's ``libnvidia-ml.so.1`` and serves the GPUs of its own scenario
  file, which the library re-reads whenever it changes.
* **Three simulated nodes**, one ``gpu-exporter`` process each, on their own loopback address and
  port with their own ``--hostname``: ``dgx-a`` with eight busy GPUs; ``dgx-b`` with four mixed
  ones (busy, hot and throttled, held by a process but idle, free); ``ws-c``, a workstation with
  two consumer GPUs that do not report every field, one of them lost.
* **Jobs**: real processes (a tiny C program that sleeps, with command lines such as
  ``python train.py ...``) whose pids the scenarios list, so the exporters resolve real users and
  commands. Run as root, they run as several system accounts; otherwise as the current user.
* **Drift**: a thread that rewrites the scenarios every few seconds: utilisation, temperature and
  power wander, jobs end and new ones start.
* **gpu-status-api** polling the three exporters, with a password shared through a file.
* **Prometheus** with the project's configuration and rules, when the ``prometheus`` binary is
  installed; its targets come from ``gpu-status-api targets``.

Everything lives in one temporary directory. Ctrl-C, SIGTERM or the end of ``--duration`` stops
every process started here (each in its own process group) and removes the directory.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import random
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from servicekit.cliargs import positive, tcp_port
from simulator.fakenvml import scenario as fake
from simulator.fakenvml.build import BuildError, build
from simulator.proc import ManagedProcess, wait_http

MIB = fake.MIB
GIB = fake.GIB

TICK_SECONDS = 3.0  # how often the drift thread rewrites the scenarios
EXPORTER_INTERVAL = "1"
STATUS_INTERVAL = "2"
SCRAPE_INTERVAL = "5s"
# System accounts of Debian's base-passwd; jobs run as them when we are root. Not "nobody":
# the status page writes "nobody" on GPUs without users, and the two would be confused.
JOB_ACCOUNTS = ("root", "daemon", "www-data", "backup")
JOB_COMMANDS = (
    "python train.py --model resnet50 --epochs 90",
    "python train.py --model vit-b16 --batch-size 256",
    "torchrun --nproc_per_node 1 finetune.py --base llama-7b --lora-rank 16",
    "python -m ipykernel_launcher -f kernel-4711.json",
    "python serve.py --model mistral-7b --port 8000",
    "python sweep.py --trial 17 --lr 3e-4",
)
THROTTLE_SW_THERMAL = 0x20  # nvmlClocksEventReasonSwThermalSlowdown

# The job program: sleeps until signalled, and ends by itself when the demo dies (even by
# SIGKILL), so a crashed demo never leaves jobs behind.
JOB_SOURCE = r"""
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(void) {
    const char *parent = getenv("DEMO_PARENT_PID");
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0) return 1;
    if (parent == NULL || getppid() != (pid_t)atol(parent)) return 0;
    for (;;) pause();
}
"""


class DemoError(RuntimeError):
    """The demo cannot start; the message says what is missing or what failed."""


# ---------------------------------------------------------------- jobs


@dataclass(frozen=True)
class JobUser:
    """An account jobs run as; ``uid`` None means this process's own user."""

    name: str
    uid: int | None = None
    gid: int | None = None


def job_users() -> list[JobUser]:
    """Several system accounts when running as root, else just the current user."""
    if os.geteuid() != 0:
        try:
            name = pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:  # a uid without a passwd entry, as in some containers
            name = str(os.geteuid())
        return [JobUser(name)]
    users = []
    for name in JOB_ACCOUNTS:
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            users.append(JobUser(name, entry.pw_uid, entry.pw_gid))
    return users


@dataclass
class Job:
    """A running stand-in for a GPU job."""

    process: subprocess.Popen[bytes]
    user: JobUser
    memory: int  # bytes it holds on its GPU

    @property
    def pid(self) -> int:
        return self.process.pid


def compile_job_program(directory: Path) -> Path:
    """Build the job program with gcc (which the fake NVML library needs anyway)."""
    source = directory / "job.c"
    source.write_text(JOB_SOURCE, encoding="utf-8")
    binary = directory / "job"
    result = subprocess.run(
        ["gcc", "-O2", "-Wall", "-o", str(binary), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise DemoError(f"compiling the job program failed:\n{result.stderr.strip()}")
    binary.chmod(0o755)
    return binary


class JobRunner:
    """Starts jobs as the next user in turn; stops them one by one or all at the end."""

    def __init__(self, binary: Path, users: Sequence[JobUser], rng: random.Random) -> None:
        self._binary = binary
        self._users = list(users)
        self._rng = rng
        self._turn = 0
        self._running: list[Job] = []
        self._lock = threading.Lock()

    def start(self, *, memory: int) -> Job:
        user = self._users[self._turn % len(self._users)]
        self._turn += 1
        argv = shlex.split(self._rng.choice(JOB_COMMANDS))
        process = subprocess.Popen(
            argv,
            executable=self._binary,  # the command line shows argv, as ps and the page do
            cwd="/",
            env={"DEMO_PARENT_PID": str(os.getpid()), "PATH": "/usr/bin:/bin"},
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            user=user.uid,  # None: stay this process's user
            group=user.gid,
            extra_groups=None if user.uid is None else [],  # drop ours when switching users
        )
        job = Job(process, user, memory)
        with self._lock:
            self._running.append(job)
        return job

    def stop(self, job: Job) -> None:
        _stop_group(job.process)
        with self._lock:
            self._running.remove(job)

    def stop_all(self) -> None:
        with self._lock:
            jobs, self._running = self._running, []
        for job in jobs:
            _stop_group(job.process)

    def count_by_user(self) -> dict[str, int]:
        with self._lock:
            counts: dict[str, int] = {}
            for job in self._running:
                counts[job.user.name] = counts.get(job.user.name, 0) + 1
            return counts


def _stop_group(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM the process group, SIGKILL it if it lingers, and reap the process."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=timeout)


# ---------------------------------------------------------------- simulated GPUs and nodes

BUSY, HOT, HELD, FREE, LOST = "busy", "hot", "held", "free", "lost"


@dataclass
class SimulatedGpu:
    """One GPU: its fake NVML record, what it plays in the demo, and the jobs on it."""

    gpu: fake.FakeGpu
    role: str
    max_watts: int
    idle_watts: int
    load: float = 0.0  # wandering utilisation while jobs compute
    jobs: list[Job] = field(default_factory=list)

    def room(self) -> int:
        """Bytes still free for one more job."""
        total = self.gpu.memory_total or 0
        used = sum(job.memory for job in self.jobs) + 300 * MIB
        return total - (self.gpu.memory_reserved or 0) - used


@dataclass
class SimulatedNode:
    """One node: an exporter with its own address, port, host name and scenario file."""

    name: str
    address: str
    port: int
    description: str
    gpus: list[SimulatedGpu]
    scenario_path: Path
    exporter: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def scenario(self) -> fake.FakeScenario:
        return fake.FakeScenario(gpus=[simulated.gpu for simulated in self.gpus])


# make_gpu's uuid and serial depend on the index only; these are unique across the nodes too.
def _uuid(node_number: int, index: int) -> str:
    return f"GPU-5f2b1c7e-{node_number:04x}-4{index:03x}-8000-{node_number:04x}{index:08x}"


def _serial(node_number: int, index: int) -> str:
    return str(1652922001234 + 100 * node_number + index)


def _datacentre_gpu(
    node_number: int, index: int, role: str, *, name: str, watts: int
) -> SimulatedGpu:
    gpu = fake.make_gpu(
        index,
        name=name,
        uuid=_uuid(node_number, index),
        serial=_serial(node_number, index),
        power_limit=watts * 1000,
    )
    return SimulatedGpu(gpu, role, max_watts=watts, idle_watts=watts // 10)


def _consumer_gpu(node_number: int, index: int, role: str) -> SimulatedGpu:
    # Fields a GeForce driver does not report are left out, so NVML answers NOT_SUPPORTED.
    gpu = fake.make_gpu(
        index,
        name="NVIDIA GeForce RTX 4090",
        uuid=_uuid(node_number, index),
        serial=None,
        memory_total=24 * GIB,
        memory_reserved=None,
        power_limit=None,
        energy=None,
        fan_speed=None,
        ecc_corrected=None,
        ecc_uncorrected=None,
        throttle_reasons=None,
        clock_mem=10501,
        lost=role == LOST,
    )
    return SimulatedGpu(gpu, role, max_watts=450, idle_watts=22)


def plan_nodes(directory: Path, ports: Sequence[tuple[str, int]]) -> list[SimulatedNode]:
    """The three nodes of the demo, listening on ``ports`` ((address, port) each)."""
    h100 = "NVIDIA H100 80GB HBM3"
    a100 = "NVIDIA A100-SXM4-80GB"
    dgx_b_roles = (BUSY, HOT, HELD, FREE)
    layouts = [
        (
            "dgx-a",
            "8 busy GPUs",
            [_datacentre_gpu(0, i, BUSY, name=h100, watts=700) for i in range(8)],
        ),
        (
            "dgx-b",
            "4 GPUs: busy, hot and throttled, held but idle, free",
            [
                _datacentre_gpu(1, i, role, name=a100, watts=400)
                for i, role in enumerate(dgx_b_roles)
            ],
        ),
        (
            "ws-c",
            "2 consumer GPUs with unsupported fields, one lost",
            [_consumer_gpu(2, 0, BUSY), _consumer_gpu(2, 1, LOST)],
        ),
    ]
    return [
        SimulatedNode(name, address, port, description, gpus, directory / f"{name}.scn")
        for (name, description, gpus), (address, port) in zip(layouts, ports)
    ]


def _take_memory(simulated: SimulatedGpu, rng: random.Random) -> int:
    """Memory for a new job: a few GiB, never more than the GPU has left."""
    wanted = rng.randrange(2, 1 + max(3, (simulated.gpu.memory_total or 0) // GIB // 4)) * GIB
    return max(0, min(wanted, simulated.room()))


def start_first_jobs(nodes: Sequence[SimulatedNode], runner: JobRunner, rng: random.Random) -> None:
    """One or two jobs on every busy GPU, one on the hot and on the held GPU."""
    for node in nodes:
        for simulated in node.gpus:
            count = {BUSY: rng.choice((1, 1, 2)), HOT: 1, HELD: 1}.get(simulated.role, 0)
            for _ in range(count):
                simulated.jobs.append(runner.start(memory=_take_memory(simulated, rng)))


# ---------------------------------------------------------------- drift


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def drift(simulated: SimulatedGpu, rng: random.Random, seconds: float) -> None:
    """Move one GPU's readings a step, the way its role and jobs would."""
    if simulated.role == LOST:
        return
    computing = bool(simulated.jobs) and simulated.role != HELD
    if computing:
        if simulated.load == 0:  # a job has just started on an idle GPU
            simulated.load = rng.uniform(50, 95)
        low = 90 if simulated.role == HOT else 35
        simulated.load = _clamp(simulated.load + rng.uniform(-15, 15), low, 100)
    else:
        simulated.load = 0.0
    gpu = simulated.gpu
    utilization = round(simulated.load)
    watts = simulated.idle_watts + (simulated.max_watts - simulated.idle_watts) * utilization / 100
    if simulated.jobs and not computing:
        watts += 15  # a context held open costs a little even when idle
    watts = _clamp(watts * rng.uniform(0.95, 1.03), simulated.idle_watts, simulated.max_watts)
    target = rng.uniform(89, 93) if simulated.role == HOT else 32 + 0.5 * utilization
    temperature = gpu.temperature or 32
    memory = sum(job.memory for job in simulated.jobs)
    simulated.gpu = replace(
        gpu,
        utilization_gpu=utilization,
        utilization_memory=round(utilization * rng.uniform(0.3, 0.7)),
        memory_used=memory + 300 * MIB if simulated.jobs else 0,
        temperature=round(temperature + (target - temperature) * 0.5 + rng.uniform(-1, 1)),
        power_usage=round(watts * 1000),
        energy=None if gpu.energy is None else gpu.energy + round(watts * 1000 * seconds),
        fan_speed=None if gpu.fan_speed is None else round(_clamp(30 + 0.6 * utilization, 30, 100)),
        clock_sm=rng.randrange(1650, 1981, 15) if computing else 345,
        pstate=0 if computing else 8,
        throttle_reasons=_throttle(gpu, simulated.role, computing),
        processes=[fake.FakeProcess(job.pid, job.memory) for job in simulated.jobs],
    )


def _throttle(gpu: fake.FakeGpu, role: str, computing: bool) -> int | None:
    if gpu.throttle_reasons is None:  # not supported by this GPU
        return None
    if role == HOT:
        return THROTTLE_SW_THERMAL
    return 0 if computing else fake.THROTTLE_GPU_IDLE


def churn(nodes: Sequence[SimulatedNode], runner: JobRunner, rng: random.Random) -> None:
    """Now and then end a job and start another, on the busy GPUs only.

    A job ends only if its user has another one, so every user stays on the page; a busy GPU
    left without jobs soon gets a new one, so the busy nodes stay mostly busy.
    """
    busy = [simulated for node in nodes for simulated in node.gpus if simulated.role == BUSY]
    counts = runner.count_by_user()
    endable = [
        (simulated, job)
        for simulated in busy
        for job in simulated.jobs
        if counts.get(job.user.name, 0) > 1
    ]
    if endable and rng.random() < 0.4:
        simulated, job = rng.choice(endable)
        simulated.jobs.remove(job)
        runner.stop(job)
    idle = [simulated for simulated in busy if not simulated.jobs]
    roomy = [simulated for simulated in busy if simulated.room() > 2 * GIB]
    if (idle or roomy) and rng.random() < (0.7 if idle else 0.3):
        simulated = rng.choice(idle or roomy)
        simulated.jobs.append(runner.start(memory=_take_memory(simulated, rng)))


class Simulation:
    """The drift thread: every tick, churn jobs, move readings, rewrite every scenario."""

    def __init__(
        self, nodes: Sequence[SimulatedNode], runner: JobRunner, rng: random.Random
    ) -> None:
        self._nodes = list(nodes)
        self._runner = runner
        self._rng = rng
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drift", daemon=True)

    def step(self, seconds: float) -> None:
        churn(self._nodes, self._runner, self._rng)
        for node in self._nodes:
            for simulated in node.gpus:
                drift(simulated, self._rng, seconds)
            fake.write(node.scenario_path, node.scenario())

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            try:
                self.step(TICK_SECONDS)
            except Exception as error:  # keep the demo alive; say what went wrong
                print(f"drift: {error!r}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- services


def pick_port(address: str, preferred: int) -> int:
    """``preferred`` if it is free on ``address`` (0: any), else a port the OS picks."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As the servers do: a port with only closed connections of a past run is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise DemoError(f"no free port on {address}")


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("GPU_MONITOR_PASSWORD", None)  # the password file is the one source
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _wait_ready(process: ManagedProcess, url: str, what: str) -> None:
    try:
        wait_http(url, timeout=30)
    except TimeoutError as error:
        raise DemoError(f"{what} did not start: {error}\n{process.log()[-3000:]}") from None


def start_exporter(
    node: SimulatedNode, *, library_dir: Path, password_file: Path, directory: Path
) -> ManagedProcess:
    command = [
        sys.executable, "-m", "exporter", "--listen-address", node.address,
        "--port", str(node.port), "--hostname", node.name, "--interval", EXPORTER_INTERVAL,
        "--password-file", str(password_file),
    ]  # fmt: skip
    env = _child_env(
        {
            "LD_LIBRARY_PATH": os.pathsep.join(
                p for p in (str(library_dir), os.environ.get("LD_LIBRARY_PATH", "")) if p
            ),
            "FAKE_NVML_SCENARIO": str(node.scenario_path),
        }
    )
    return ManagedProcess(command, log_path=directory / f"exporter-{node.name}.log", env=env)


def write_hosts(path: Path, nodes: Sequence[SimulatedNode]) -> None:
    lines = ["# The demo's simulated nodes (host:port  # exporter --hostname)"]
    lines += [f"{node.address}:{node.port}  # {node.name}" for node in nodes]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def start_status_api(
    *, hosts: Path, port: int, password_file: Path, directory: Path
) -> ManagedProcess:
    command = [
        sys.executable, "-m", "status_api", "-c", str(hosts), "--port", str(port),
        "--listen-address", "127.0.0.1", "--interval", STATUS_INTERVAL,
        "--password-file", str(password_file),
    ]  # fmt: skip
    return ManagedProcess(command, log_path=directory / "status-api.log", env=_child_env())


def write_targets(hosts: Path, targets: Path) -> None:
    command = [sys.executable, "-m", "status_api", "targets", "-c", str(hosts), "-o", str(targets)]
    result = subprocess.run(command, capture_output=True, text=True, env=_child_env(), check=False)
    if result.returncode != 0:
        raise DemoError(f"gpu-status-api targets failed:\n{result.stderr.strip()}")


def prometheus_installed() -> bool:
    return shutil.which("prometheus") is not None and shutil.which("promtool") is not None


@contextlib.contextmanager
def running_prometheus(directory: Path, *, hosts: Path) -> Iterator[str]:
    """Prometheus with the shipped config and rules (their ``for:`` kept); yields its URL."""
    from simulator.prometheus import running_prometheus as run

    targets = directory / "targets.json"
    write_targets(hosts, targets)
    try:
        with run(
            directory / "prometheus",
            targets_file=targets,
            interval=SCRAPE_INTERVAL,
            alert_for=None,
            port=pick_port("127.0.0.1", 9090),
        ) as server:
            yield server.url
    except AssertionError as error:  # how the launcher reports a failed start
        raise DemoError(f"Prometheus did not start: {error}") from None


# ---------------------------------------------------------------- the demo


@contextlib.contextmanager
def work_directory() -> Iterator[Path]:
    """A temporary directory the job accounts can enter (the job program lives there)."""
    directory = Path(tempfile.mkdtemp(prefix="gpu-demo-"))
    try:
        directory.chmod(0o755)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _password_file(directory: Path) -> Path:
    path = directory / "password"
    path.touch(mode=0o600)
    path.write_text(secrets.token_urlsafe(18) + "\n", encoding="utf-8")
    return path


def _status_port(requested: int) -> int:
    port = pick_port("127.0.0.1", requested)
    if requested and port != requested:
        print(f"port {requested} is busy; the status page uses {port} instead", flush=True)
    return port


def _node_ports() -> list[tuple[str, int]]:
    # One loopback address per node, so Prometheus' node label (the host of hosts.txt) differs.
    addresses = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
    return [(address, pick_port(address, 7081 + i)) for i, address in enumerate(addresses)]


def start_cluster(stack: contextlib.ExitStack, args: argparse.Namespace) -> dict[str, str]:
    """Start every piece under ``stack``; return the URLs to print."""
    directory = stack.enter_context(work_directory())
    try:
        library_dir = build().parent
    except BuildError as error:
        raise DemoError(str(error)) from None
    rng = random.Random()
    runner = JobRunner(compile_job_program(directory), job_users(), rng)
    stack.callback(runner.stop_all)
    nodes = plan_nodes(directory, _node_ports())
    start_first_jobs(nodes, runner, rng)
    simulation = Simulation(nodes, runner, rng)
    simulation.step(0.0)
    password = _password_file(directory)
    for node in nodes:
        node.exporter = start_exporter(
            node, library_dir=library_dir, password_file=password, directory=directory
        )
        stack.callback(node.exporter.stop)
    for node in nodes:
        assert node.exporter is not None
        _wait_ready(node.exporter, f"{node.url}/-/ready", f"the exporter of {node.name}")
    simulation.start()
    stack.callback(simulation.stop)
    hosts = directory / "hosts.txt"
    write_hosts(hosts, nodes)
    port = _status_port(args.port)
    status = start_status_api(hosts=hosts, port=port, password_file=password, directory=directory)
    stack.callback(status.stop)
    status_url = f"http://127.0.0.1:{port}"
    _wait_ready(status, f"{status_url}/-/ready", "gpu-status-api")
    urls = {"status page": f"{status_url}/", "cluster JSON": f"{status_url}/api/v1/cluster"}
    urls.update({node.name: f"{node.url}/metrics   ({node.description})" for node in nodes})
    if args.no_prometheus:
        urls["Prometheus"] = "not started (--no-prometheus)"
    elif prometheus_installed():
        prometheus_url = stack.enter_context(running_prometheus(directory, hosts=hosts))
        urls["Prometheus"] = f"{prometheus_url}/targets   (alerts: {prometheus_url}/alerts)"
    else:
        urls["Prometheus"] = "not installed (Debian package 'prometheus'), skipped"
    users = ", ".join(user.name for user in job_users())
    urls["job users"] = users if os.geteuid() == 0 else f"{users} (run as root for several)"
    urls["files, logs"] = f"{directory}   (removed when the demo stops)"
    return urls


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _wait(duration: float | None) -> None:
    """Until Ctrl-C, SIGTERM or the end of ``duration`` seconds."""
    deadline = None if duration is None else time.monotonic() + duration
    while True:
        left = 1.0 if deadline is None else deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(1.0, left))


def run(args: argparse.Namespace) -> int:
    # Set explicitly: a shell starting us in the background would leave SIGINT ignored, and a
    # closed terminal (SIGHUP) must clean up as well.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)
    stack = contextlib.ExitStack()
    try:
        urls = start_cluster(stack, args)
        width = max(len(name) for name in urls)
        print("gpu-cluster-monitor demo: three simulated GPU nodes", flush=True)
        for name, url in urls.items():
            print(f"  {name:<{width}}  {url}", flush=True)
        print("Ctrl-C stops the demo.", flush=True)
        _wait(args.duration)
        return 0
    except DemoError as error:
        print(f"demo: {error}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave processes behind.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        print("stopping the demo ...", flush=True)
        stack.close()
        print("stopped; nothing left running.", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulator.demo",
        description="Run three simulated GPU nodes, the status page and Prometheus, no GPU needed.",
    )
    parser.add_argument(
        "--port", type=tcp_port(allow_any=True), default=7070,
        help="port of the status page (default 7070; a free one if busy; 0: any free one)",
    )  # fmt: skip
    parser.add_argument(
        "--duration", type=positive(float),
        help="stop by itself after this many seconds (default: run until Ctrl-C)",
    )  # fmt: skip
    parser.add_argument(
        "--no-prometheus", action="store_true", help="do not start Prometheus even if installed"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
