"""The simulated users' jobs: real processes whose pids the scenarios list.

Each job is a tiny C program that sleeps under a command line such as ``python train.py ...``,
so the exporters resolve real users and commands. Run as root, jobs run as several system
accounts; otherwise as the current user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shlex
import signal
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from simulator.demo.common import DemoError

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
            # None for the current user: Popen then changes no ids at all.
            user=user.uid,
            group=user.gid,
            extra_groups=None if user.uid is None else [],
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
