"""Load changing over time: readings wander, jobs end and new ones start.

:class:`Simulation` is a thread that, every :data:`TICK_SECONDS`, churns jobs, moves every GPU's
readings a step and rewrites every node's scenario file, which the fake library re-reads.
"""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace

from simulator.demo.jobs import JobRunner
from simulator.demo.nodes import (
    BUSY,
    GIB,
    HELD,
    HOT,
    LOST,
    MIB,
    SimulatedGpu,
    SimulatedNode,
    take_memory,
)
from simulator.fakenvml import scenario as fake

TICK_SECONDS = 3.0  # how often the drift thread rewrites the scenarios
THROTTLE_SW_THERMAL = 0x20  # nvmlClocksEventReasonSwThermalSlowdown


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
        simulated.jobs.append(runner.start(memory=take_memory(simulated, rng)))


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
