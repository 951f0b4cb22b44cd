"""``gpu-status-api job``: one Slurm job (or one pod) as Princeton's jobstats shows one.

Reads a Prometheus-compatible engine through :mod:`status_api.engine` in two rounds of instant
queries. The first finds the job over ``--lookback`` (30d): its GPUs and user, and the first and
last time its processes were listed (``gpu_process_info`` with ``slurm_job``, or ``namespace``
and ``pod``). The second looks at the job's own window only, one step of ``--step`` (15s, the
shipped scrape interval) at a time, through subqueries over the raw exporter series::

    count_over_time(<held>[<window>:15s])        steps in which the job held each GPU

where a GPU is held while one of the job's processes holds memory on it, as in the recording
rules. Each held step counts ``--step`` seconds: GPU-hours, the mean utilization of the held
GPUs (and the mean SM activity where the GPUs report ``gpu_sm_active_ratio``), the hours a held
GPU was below 5 % utilization (idle, the ``GpuIdleButHeld`` threshold), the job's peak memory on
each GPU. The energy is the sum of the job's per-process increments of
``prometheus/rules/energy.yml`` (``node_gpu_process:gpu_energy_joules:increase``); it is
unknown (``null``) where those rules are not loaded. Raw series only otherwise, so a
VictoriaMetrics single node, which evaluates no rules, answers everything but the energy.

Exit status: 0 with the job, 1 when the engine has never seen the job (in the lookback) or
cannot be queried, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from servicekit.logsetup import configure_logging
from status_api.engine import (
    MIB,
    EngineError,
    EngineSettings,
    Sample,
    add_engine_flags,
    engine_settings,
    run_queries,
)
from status_api.report import _printable, parse_duration, parse_time

__all__ = ["GpuUsage", "Job", "JobNotFound", "advice", "find_job", "main"]

FORMATS = ("text", "json")
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_BODY = 16 * MIB
IDLE_BELOW = 0.05  # utilization under which a held GPU is idle, as GpuIdleButHeld
# The energy of an interval is recorded at the evaluation that ends it, after the job's last
# listing: the energy window reaches this far past it.
ENERGY_MARGIN = 300.0
GPU_KEY = ("instance", "node", "gpu", "uuid")


class JobNotFound(Exception):
    """The engine has no process of the job in the lookback."""


@dataclass(frozen=True)
class Target:
    """What to look for: a Slurm job, or one pod of a namespace."""

    slurm_job: str | None = None
    namespace: str | None = None
    pod: str | None = None

    @property
    def name(self) -> str:
        return self.slurm_job if self.slurm_job is not None else f"{self.namespace}/{self.pod}"

    def selector(self) -> str:
        """The label matchers of the job's process series (values quoted for PromQL)."""
        if self.slurm_job is not None:
            return f"slurm_job={_quote(self.slurm_job)}"
        return f"namespace={_quote(self.namespace or '')}, pod={_quote(self.pod or '')}"


@dataclass
class GpuUsage:
    """One GPU the job held. Seconds count held steps; ratios are None without readings."""

    node: str
    gpu: str
    uuid: str
    instance: str
    first_seen: float | None = None
    last_seen: float | None = None
    held_seconds: float = 0.0
    idle_seconds: float = 0.0
    utilization: float | None = None
    sm_active: float | None = None
    peak_memory_bytes: float | None = None
    memory_total_bytes: float | None = None
    energy_joules: float | None = None
    # sums and counts of the per-step readings, for the job's means weighted by time held
    utilization_sum: float = 0.0
    utilization_steps: int = 0
    sm_sum: float = 0.0
    sm_steps: int = 0

    @property
    def label(self) -> str:
        return f"{self.node}/{self.gpu}"


@dataclass
class Job:
    """The job and the GPUs it held, in node and GPU order; its figures sum or weigh theirs."""

    target: Target
    users: list[str]
    gpus: list[GpuUsage] = field(default_factory=list)

    @property
    def nodes(self) -> list[str]:
        return sorted({gpu.node for gpu in self.gpus})

    @property
    def first_seen(self) -> float | None:
        return min((g.first_seen for g in self.gpus if g.first_seen is not None), default=None)

    @property
    def last_seen(self) -> float | None:
        return max((g.last_seen for g in self.gpus if g.last_seen is not None), default=None)

    @property
    def gpu_hours(self) -> float:
        return sum(gpu.held_seconds for gpu in self.gpus) / 3600

    @property
    def idle_hours(self) -> float:
        return sum(gpu.idle_seconds for gpu in self.gpus) / 3600

    @property
    def mean_utilization(self) -> float | None:
        steps = sum(gpu.utilization_steps for gpu in self.gpus)
        return sum(gpu.utilization_sum for gpu in self.gpus) / steps if steps else None

    @property
    def sm_active(self) -> float | None:
        steps = sum(gpu.sm_steps for gpu in self.gpus)
        return sum(gpu.sm_sum for gpu in self.gpus) / steps if steps else None

    @property
    def peak_memory_bytes(self) -> float | None:
        """The most memory the job held on any one of its GPUs."""
        return max(
            (g.peak_memory_bytes for g in self.gpus if g.peak_memory_bytes is not None),
            default=None,
        )

    @property
    def energy_kwh(self) -> float | None:
        known = [gpu.energy_joules for gpu in self.gpus if gpu.energy_joules is not None]
        return sum(known) / 3.6e6 if known else None


def _quote(value: str) -> str:
    """A PromQL string literal: JSON's escapes are Go's."""
    return json.dumps(value)


def _regex_alternatives(values: Sequence[str]) -> str:
    """An RE2 regex matching exactly these values (every non-word character escaped)."""
    return "|".join("".join(c if c.isalnum() or c == "_" else "\\" + c for c in v) for v in values)


def _key(labels: dict[str, str]) -> tuple[str, ...]:
    return tuple(labels.get(name, "") for name in GPU_KEY)


def _by_gpu(samples: list[Sample]) -> dict[tuple[str, ...], float]:
    return {_key(labels): value for labels, value in samples if math.isfinite(value)}


def _duration_text(seconds: float) -> str:
    """A whole-second Prometheus duration."""
    return f"{max(1, math.ceil(seconds))}s"


def locate(
    settings: EngineSettings, target: Target, *, lookback: str, step: float, until: float
) -> tuple[list[str], set[tuple[str, ...]], float, float]:
    """The job's users, its GPUs and its first and last listing; JobNotFound if none."""
    info = f"gpu_process_info{{{target.selector()}}}"
    by = "instance, node, gpu, uuid"
    s = _duration_text(step)
    who, first, last = run_queries(
        settings,
        [
            f"max by ({by}, user) (last_over_time({info}[{lookback}]))",
            f"min by ({by}) (min_over_time(timestamp({info})[{lookback}:{s}]))",
            f"max by ({by}) (max_over_time(timestamp({info})[{lookback}:{s}]))",
        ],
        at=until,
    )
    if not who or not first or not last:
        raise JobNotFound(target.name)
    users = sorted({labels.get("user", "") for labels, _ in who})
    gpus = {_key(labels) for labels, _ in who}
    return users, gpus, min(v for _, v in first), max(v for _, v in last)


def _window_queries(target: Target, uuids: Sequence[str], *, span: str, step: str) -> list[str]:
    """The second round's queries, per GPU (instance, node, gpu, uuid), in a fixed order:
    subqueries of ``span`` at ``step`` over the per-step expressions, plain ranges over the
    series that need no step."""
    window = f"{span}:{step}"
    by = "instance, node, gpu, uuid"
    on = f"on ({by})"
    gpus = f"uuid=~{_quote(_regex_alternatives(uuids))}"
    mine = f"gpu_process_info{{{target.selector()}}}"
    memory = (
        f"(gpu_process_memory_used_bytes{{{gpus}}} > 0 and on (instance, gpu, uuid, pid) {mine})"
    )
    held = f"group by ({by}) {memory}"
    job_memory = (
        f"sum by ({by}) (gpu_process_memory_used_bytes{{{gpus}}} "
        f"and on (instance, gpu, uuid, pid) {mine})"
    )
    utilization = f"(max by ({by}) (gpu_utilization_ratio{{{gpus}}}) and {on} {held})"
    idle = f"(max by ({by}) (gpu_utilization_ratio{{{gpus}}}) < {IDLE_BELOW} and {on} {held})"
    sm = f"(max by ({by}) (gpu_sm_active_ratio{{{gpus}}}) and {on} {held})"
    return [
        f"count_over_time(({held})[{window}])",
        f"min_over_time(timestamp({held})[{window}])",
        f"max_over_time(timestamp({held})[{window}])",
        f"sum_over_time({utilization}[{window}])",
        f"count_over_time({utilization}[{window}])",
        f"count_over_time({idle}[{window}])",
        f"sum_over_time({sm}[{window}])",
        f"count_over_time({sm}[{window}])",
        f"max_over_time(({job_memory})[{window}])",
        f"max by ({by}) (max_over_time(gpu_memory_total_bytes{{{gpus}}}[{span}]))",
        f"sum by ({by}) (sum_over_time(node_gpu_process:gpu_energy_joules:increase"
        f"{{{target.selector()}}}[{span}]))",
    ]


def find_job(
    settings: EngineSettings, target: Target, *, lookback: str, step: float, until: float
) -> Job:
    """The job's numbers; JobNotFound when the engine never listed it in the lookback."""
    users, gpus, first, last = locate(settings, target, lookback=lookback, step=step, until=until)
    # Subquery steps fall on multiples of the step: end on the first one at or after the last
    # listing, plus the energy margin, and start one step before the first listing.
    end = min(math.ceil(last / step) * step + ENERGY_MARGIN, max(until, last))
    span, every = _duration_text(end - first + step), _duration_text(step)
    uuids = sorted({key[3] for key in gpus if key[3]})
    answers = run_queries(settings, _window_queries(target, uuids, span=span, step=every), at=end)
    (held, firsts, lasts, util_sum, util_n, idle, sm_sum, sm_n, peak, total, energy) = (
        _by_gpu(samples) for samples in answers
    )
    job = Job(target=target, users=users)
    for key in sorted(held, key=lambda k: (k[1] or k[0], _gpu_order(k[2]), k[3])):
        instance, node, gpu, uuid = key
        job.gpus.append(
            GpuUsage(
                node=node or instance,
                gpu=gpu,
                uuid=uuid,
                instance=instance,
                first_seen=firsts.get(key),
                last_seen=lasts.get(key),
                held_seconds=held[key] * step,
                idle_seconds=idle.get(key, 0.0) * step,
                utilization=util_sum[key] / util_n[key] if util_n.get(key) else None,
                sm_active=sm_sum[key] / sm_n[key] if sm_n.get(key) else None,
                peak_memory_bytes=peak.get(key),
                memory_total_bytes=total.get(key),
                energy_joules=energy.get(key),
                utilization_sum=util_sum.get(key, 0.0),
                utilization_steps=int(util_n.get(key, 0)),
                sm_sum=sm_sum.get(key, 0.0),
                sm_steps=int(sm_n.get(key, 0)),
            )
        )
    if not job.gpus:  # listed, but never holding memory
        raise JobNotFound(target.name)
    return job


def _gpu_order(gpu: str) -> tuple[int, str]:
    return (int(gpu), "") if gpu.isdigit() else (1 << 30, gpu)


def _percent(ratio: float) -> str:
    return f"{ratio * 100:.0f} %"


def advice(job: Job) -> list[str]:
    """Plain sentences drawn from the numbers; empty when there is nothing to say."""
    said: list[str] = []
    several = len(job.gpus) > 1
    for gpu in job.gpus:
        if gpu.held_seconds and gpu.idle_seconds / gpu.held_seconds >= 0.25:
            share = _percent(gpu.idle_seconds / gpu.held_seconds)
            remedy = "ask for fewer GPUs" if several else "check that the job uses its GPU"
            said.append(f"GPU {gpu.label} was idle {share} of the job: {remedy}.")
    mean = job.mean_utilization
    if mean is not None and mean < 0.5:
        said.append(
            f"Mean GPU utilization was {_percent(mean)}: look for time spent loading data or on "
            "the CPU between kernels, or run on fewer GPUs."
        )
    sm = job.sm_active
    if sm is not None and mean is not None and mean >= 0.5 and sm < 0.5:
        said.append(
            f"Kernels ran {_percent(mean)} of the time but kept only {_percent(sm)} of the SMs "
            "busy: larger batches or fewer, bigger kernels would use the GPUs better."
        )
    fractions = [
        g.peak_memory_bytes / g.memory_total_bytes
        for g in job.gpus
        if g.peak_memory_bytes is not None and g.memory_total_bytes
    ]
    if fractions and max(fractions) < 0.25:
        said.append(
            f"At most {_percent(max(fractions))} of a GPU's memory was used: a GPU with less "
            "memory, or a MIG slice, would do."
        )
    return said


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _bytes(value: float | None) -> int | float | None:
    """Bytes as a JSON integer where they are whole (they always are from the exporter)."""
    return int(value) if value is not None and value.is_integer() else value


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value / (1 << 30):.1f} GiB"


def render_text(job: Job) -> str:
    kind = "Job" if job.target.slurm_job is not None else "Pod"
    mean, sm, energy = job.mean_utilization, job.sm_active, job.energy_kwh
    summary = [
        ("user", ", ".join(u or "(unknown)" for u in job.users)),
        ("nodes", ", ".join(job.nodes)),
        ("GPUs", f"{len(job.gpus)} ({', '.join(g.label for g in job.gpus)})"),
        ("first seen", _when(job.first_seen)),
        ("last seen", _when(job.last_seen)),
        ("GPU-hours", f"{job.gpu_hours:.2f}"),
        ("mean utilization", "-" if mean is None else f"{mean * 100:.1f} %"),
    ]
    if sm is not None:
        summary.append(("SM activity", f"{sm * 100:.1f} %"))
    summary += [
        ("idle hours", f"{job.idle_hours:.2f}"),
        ("energy", "unknown (no energy rules)" if energy is None else f"{energy:.3f} kWh"),
    ]
    width = max(len(name) for name, _ in summary)
    lines = [f"{kind} {job.target.name}"]
    lines += [f"  {name.ljust(width)}  {value}" for name, value in summary]
    header = ("GPU", "HOURS", "UTIL", "SM ACT", "IDLE", "PEAK MEMORY", "ENERGY")
    rows = [
        (
            gpu.label,
            f"{gpu.held_seconds / 3600:.2f}",
            "-" if gpu.utilization is None else f"{gpu.utilization * 100:.1f} %",
            "-" if gpu.sm_active is None else f"{gpu.sm_active * 100:.1f} %",
            f"{gpu.idle_seconds / 3600:.2f} h",
            _gib(gpu.peak_memory_bytes)
            + ("" if gpu.memory_total_bytes is None else f" of {_gib(gpu.memory_total_bytes)}"),
            "-" if gpu.energy_joules is None else f"{gpu.energy_joules / 3.6e6:.3f} kWh",
        )
        for gpu in job.gpus
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines.append("")
    for cells in [header, *rows]:
        lines.append(
            "  "
            + cells[0].ljust(widths[0])
            + "".join("  " + c.rjust(w) for c, w in zip(cells[1:], widths[1:]))
        )
    said = advice(job)
    lines.append("")
    lines += ["Advice:", *(f"  - {sentence}" for sentence in said)] if said else ["No advice."]
    return _printable_lines(lines)


def _printable_lines(lines: list[str]) -> str:
    return "".join(_printable(line) + "\n" for line in lines)


def render_json(job: Job) -> str:
    document = {
        "job": job.target.name,
        "slurm_job": job.target.slurm_job,
        "namespace": job.target.namespace,
        "pod": job.target.pod,
        "user": ", ".join(job.users),
        "nodes": job.nodes,
        "gpus": [
            {
                "node": gpu.node,
                "instance": gpu.instance,
                "gpu": gpu.gpu,
                "uuid": gpu.uuid,
                "first_seen": _iso(gpu.first_seen),
                "last_seen": _iso(gpu.last_seen),
                "gpu_hours": gpu.held_seconds / 3600,
                "mean_utilization": gpu.utilization,
                "sm_active": gpu.sm_active,
                "idle_hours": gpu.idle_seconds / 3600,
                "peak_memory_bytes": _bytes(gpu.peak_memory_bytes),
                "memory_total_bytes": _bytes(gpu.memory_total_bytes),
                "energy_kwh": None if gpu.energy_joules is None else gpu.energy_joules / 3.6e6,
            }
            for gpu in job.gpus
        ],
        "first_seen": _iso(job.first_seen),
        "last_seen": _iso(job.last_seen),
        "gpu_hours": job.gpu_hours,
        "mean_utilization": job.mean_utilization,
        "sm_active": job.sm_active,
        "peak_memory_bytes": _bytes(job.peak_memory_bytes),
        "idle_hours": job.idle_hours,
        "energy_kwh": job.energy_kwh,
        "advice": advice(job),
    }
    return json.dumps(document, indent=2) + "\n"


RENDERERS = {"text": render_text, "json": render_json}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpu-status-api job",
        description="One Slurm job (or, with --pod, one pod) over its own lifetime: user, nodes "
        "and GPUs, first and last seen, GPU-hours, mean utilization, peak memory per GPU, idle "
        "hours, energy, and advice drawn from them.",
    )
    parser.add_argument("job", nargs="?", help="Slurm job id (the slurm_job label)")
    parser.add_argument(
        "--pod", metavar="NAMESPACE/NAME", help="a Kubernetes pod instead of a Slurm job"
    )
    parser.add_argument(
        "--lookback", default="30d",
        help="how far back to look for the job, a Prometheus duration (default 30d)",
    )  # fmt: skip
    parser.add_argument(
        "--until",
        help="end of the lookback: Unix seconds or RFC 3339 with a time zone (default now)",
    )
    parser.add_argument(
        "--step", default="15s",
        help="resolution, a Prometheus duration; set it to the scrape interval (default 15s)",
    )  # fmt: skip
    parser.add_argument("--format", choices=FORMATS, default="text", help="(default text)")
    add_engine_flags(
        parser,
        url_help="base URL of Prometheus or a compatible engine, e.g. http://prometheus:9090",
        url_required=True,
        timeout=DEFAULT_TIMEOUT,
        timeout_help="seconds one round of queries may take, all included",
        max_body=DEFAULT_MAX_BODY,
    )
    return parser


def _target(args: argparse.Namespace) -> Target:
    if (args.job is None) == (args.pod is None):
        raise ValueError("give a Slurm job id or --pod NAMESPACE/NAME (one of them)")
    if args.pod is None:
        if not args.job:
            raise ValueError("the job id is empty")
        return Target(slurm_job=args.job)
    namespace, slash, pod = args.pod.partition("/")
    if not slash or not namespace or not pod:
        raise ValueError(f"--pod {args.pod!r} must be NAMESPACE/NAME")
    return Target(namespace=namespace, pod=pod)


def _duration(text: str, flag: str) -> float:
    try:
        return parse_duration(text)
    except ValueError:
        raise ValueError(
            f"{flag} {text!r} is not a Prometheus duration such as 30d or 15s"
        ) from None


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(level="info")
    try:
        target = _target(args)
        _duration(args.lookback, "--lookback")
        step = _duration(args.step, "--step")
        if step < 1:
            raise ValueError("--step must be at least 1s")
        until = time.time() if args.until is None else parse_time(args.until)
        settings = engine_settings(args)
    except ValueError as error:
        parser.error(str(error))  # exits 2 with the usage
    try:
        job = find_job(settings, target, lookback=args.lookback, step=step, until=until)
    except JobNotFound:
        kind = "job" if target.slurm_job is not None else "pod"
        print(
            _printable(
                f"gpu-status-api job: {settings.url} has no GPU process of {kind} "
                f"{target.name!r} in the {args.lookback} before {_when(until)}"
            ),
            file=sys.stderr,
        )
        return 1
    except EngineError as error:
        message = _printable(f"cannot query {settings.url}: {error}")
        print(f"gpu-status-api job: {message}", file=sys.stderr)
        return 1
    sys.stdout.write(RENDERERS[args.format](job))
    return 0
