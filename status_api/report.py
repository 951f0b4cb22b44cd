"""``gpu-status-api report``: GPU-hours, mean utilization, SM activity, idle-held hours and
energy per group.

Reads the counters of ``prometheus/rules/recording.yml``, ``efficiency.yml`` and ``energy.yml``
from a Prometheus-compatible query engine (Prometheus, VictoriaMetrics, Thanos, Mimir) with six
instant queries at the window's end, for ``--by user`` (or ``slurm_job``, ``namespace``)::

    sum by (user) (increase(user:gpu_seconds:total[30d]))
    sum by (user) (increase(user:gpu_utilization_seconds:total[30d]))
    sum by (user) (increase(user:gpu_idle_held_seconds:total[30d]))
    sum by (user) (increase(user:gpu_energy_joules:total[30d]))
    sum by (user) (increase(user:gpu_sm_active_seconds:total[30d]))
    sum by (user) (increase(user:gpu_gpm_held_seconds:total[30d]))

GPU-hours are the first over 3600, mean utilization the second over the first (weighted by the
time each GPU was held), idle-held hours the third over 3600, energy the fourth over 3.6e6 (kWh),
mean SM activity the fifth over the sixth (over the held devices that have GPM only). ``sum by``
merges the series of one group from several Prometheus servers in a global view. A grouping
whose counters for a value are not recorded gets no value for it (``null``, an empty cell,
``-``); so does a group none of whose GPUs had GPM in the window (0 / 0 is no mean).
With ``--price-per-kwh`` and ``--co2-grams-per-kwh`` each row also gets its energy's cost (in
the price's currency, which the report does not know) and CO2 in kg.

``--mail`` sends the window's figures by mail instead of printing them (status_api/reportmail.py).

A GPU shared by several holders is charged in even shares (status_api/vocabulary.py), so the
groups' GPU-hours add up to the hours the cluster's GPUs were held
(``cluster:gpu_held_seconds:total``). After the rows, a note on standard error compares the two,
and the hours GPUs were in use, and says why they differ where they do.

``--by cluster`` reports the cluster instead: the GPU-hours spent in each state of
status_api/vocabulary.py (``cluster:gpu_<state>_seconds:total``: in use, of which idle-held,
free, sick, lost, stale; and held) and the mean number of GPUs in that state over the window.

Exit status: 0 with a report, 2 for bad arguments, 1 when the engine cannot be reached or
answers with an error.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from servicekit.cliargs import non_negative
from servicekit.logsetup import configure_logging
from status_api.engine import (
    MIB,
    EngineError,
    EngineSettings,
    add_engine_flags,
    engine_settings,
    run_queries,
)

if TYPE_CHECKING:
    from status_api.reportmail import MailSettings

__all__ = ["EngineError", "EngineSettings", "Prices", "Row", "increase_query", "usage"]

GROUPINGS = ("user", "slurm_job", "namespace")
CLUSTER = "cluster"
# The cluster's counters, cluster:gpu_<name>_seconds:total, in the order they are reported.
CLUSTER_STATES = ("in_use", "idle_held", "free", "sick", "lost", "stale", "held")
FORMATS = ("table", "csv", "json")
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_BODY = 16 * MIB
JOULES_PER_KWH = 3.6e6
# The counters read per group, <by>:<name>:total, in the order usage() queries them.
COUNTERS = (
    "gpu_seconds",
    "gpu_utilization_seconds",
    "gpu_idle_held_seconds",
    "gpu_energy_joules",
    "gpu_sm_active_seconds",
    "gpu_gpm_held_seconds",
)

# Prometheus' duration syntax: units from the largest to the smallest, each at most once.
_DURATION = re.compile(
    r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$"
)
_UNIT_SECONDS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)


@dataclass(frozen=True)
class Row:
    """One group of the report; None where the counter behind a value is not recorded."""

    key: str
    gpu_hours: float
    mean_utilization: float | None
    idle_held_hours: float | None
    energy_kwh: float | None = None
    mean_sm_activity: float | None = None  # over the held devices with GPM only


@dataclass(frozen=True)
class Prices:
    """What a kWh costs and emits, from --price-per-kwh and --co2-grams-per-kwh; None: not given.

    The cost is in the currency the price is given in: the report only multiplies.
    """

    per_kwh: float | None = None
    co2_grams_per_kwh: float | None = None

    def cost(self, energy_kwh: float | None) -> float | None:
        if self.per_kwh is None or energy_kwh is None:
            return None
        return energy_kwh * self.per_kwh

    def co2_kg(self, energy_kwh: float | None) -> float | None:
        if self.co2_grams_per_kwh is None or energy_kwh is None:
            return None
        return energy_kwh * self.co2_grams_per_kwh / 1000


@dataclass(frozen=True)
class StateRow:
    """GPU-hours the cluster spent in one state over the window, and its mean GPU count."""

    state: str
    gpu_hours: float
    mean_gpus: float


def parse_duration(text: str) -> float:
    """Seconds of a Prometheus duration (``30d``, ``12h``, ``1w``, ``1h30m``); above 0."""
    match = _DURATION.match(text)
    if not text or match is None:
        raise ValueError(f"--since {text!r} is not a Prometheus duration such as 30d, 12h or 1w")
    seconds = sum(int(n) * unit for n, unit in zip(match.groups(), _UNIT_SECONDS) if n)
    if seconds <= 0:
        raise ValueError(f"--since {text!r} must be longer than 0")
    return seconds


def parse_time(text: str) -> float:
    """Unix seconds of ``--until``: a number of seconds, or RFC 3339 with a time zone."""
    try:
        value = float(text)
    except ValueError:
        return _rfc3339(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"--until {text!r} must be a time after 1970")
    return value


def _rfc3339(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--until {text!r} is neither Unix seconds nor RFC 3339 (2024-06-01T00:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"--until {text!r} needs a time zone, e.g. Z or +02:00")
    return moment.timestamp()


def increase_query(by: str, counter: str, since: str) -> str:
    """PromQL for the increase per group of the recorded counter ``<by>:<counter>:total``."""
    return f"sum by ({by}) (increase({by}:{counter}:total[{since}]))"


def usage(settings: EngineSettings, *, by: str, since: str, until: float) -> list[Row]:
    """The report's rows, most GPU-hours first; groups without GPU time in the window left out."""
    answers = run_queries(
        settings, [increase_query(by, counter, since) for counter in COUNTERS], at=until
    )
    gpu_seconds, utilization, idle, joules, sm_active, gpm_held = (
        {labels.get(by, ""): value for labels, value in samples if math.isfinite(value)}
        for samples in answers
    )
    rows = [
        Row(
            key=key,
            gpu_hours=seconds / 3600,
            mean_utilization=utilization[key] / seconds if key in utilization else None,
            idle_held_hours=idle[key] / 3600 if key in idle else None,
            energy_kwh=joules[key] / JOULES_PER_KWH if key in joules else None,
            # No GPM device held in the window: 0 / 0, no mean (not 0).
            mean_sm_activity=(
                sm_active[key] / gpm_held[key]
                if gpm_held.get(key, 0) > 0 and key in sm_active
                else None
            ),
        )
        for key, seconds in gpu_seconds.items()
        if seconds > 0
    ]
    return sorted(rows, key=lambda row: (-row.gpu_hours, row.key))


def cluster_usage(settings: EngineSettings, *, since: str, until: float) -> list[StateRow]:
    """The cluster's GPU-hours per state; states whose counter is not recorded are left out."""
    window = parse_duration(since)
    answers = run_queries(
        settings,
        [f"sum(increase(cluster:gpu_{state}_seconds:total[{since}]))" for state in CLUSTER_STATES],
        at=until,
    )
    rows = []
    for state, samples in zip(CLUSTER_STATES, answers):
        values = [value for _, value in samples if math.isfinite(value)]
        if values:
            rows.append(StateRow(state, values[0] / 3600, values[0] / window))
    return rows


def add_up_note(rows: Sequence[Row], states: Sequence[StateRow], *, by: str) -> str:
    """Whether the groups' GPU-hours add up to the cluster's held GPU-hours, and why not."""
    hours = {row.state: row.gpu_hours for row in states}
    if "held" not in hours:
        return ""
    charged, held = sum(row.gpu_hours for row in rows), hours["held"]
    note = (
        f"per {by}: {charged:.2f} GPU-hours charged; the cluster's GPUs were held "
        f"{held:.2f} GPU-hours"
    )
    if "in_use" in hours:
        note += f" and in use {hours['in_use']:.2f}"
    note += " (a shared GPU is charged in even shares to its holders)."
    if not math.isclose(charged, held, rel_tol=0.005, abs_tol=0.01):
        note += f" The {by} figures do not add up to the held hours: " + (
            "a user's counter restarted in the window (Prometheus down for more than 5 "
            "minutes), and its GPU time before the restart is not counted."
            if by == "user"
            else f"processes outside any {by.replace('_', ' ')} hold a share of their GPUs "
            "that no group is charged."
        )
    if "in_use" in hours and not math.isclose(held, hours["in_use"], rel_tol=0.005, abs_tol=0.01):
        note += (
            " Held and in use differ: a GPU busy without a process holding memory on it is in "
            "use but charged to no one, and a held GPU that is sick, or on a node whose NVML "
            "pass is stale, is charged to its holders but not counted in use."
        )
    return note + "\n"


def _printable(text: str) -> str:
    """A label value for a terminal: control characters escaped, so no value rewrites the
    screen or breaks the table's lines."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _cell(value: float | None, spec: str, *, scale: float = 1.0, unit: str = "") -> str:
    """One number of the table, ``-`` where it is not known."""
    return "-" if value is None else f"{value * scale:{spec}}{unit}"


def _columns(prices: Prices) -> list[str]:
    """The row's values as named in CSV and JSON, cost and CO2 only when priced."""
    # New columns go last, so scripts reading the CSV by position keep working.
    names = ["gpu_hours", "mean_utilization", "idle_held_hours", "energy_kwh", "mean_sm_activity"]
    if prices.per_kwh is not None:
        names.append("cost")
    if prices.co2_grams_per_kwh is not None:
        names.append("co2_kg")
    return names


def row_values(row: Row, prices: Prices) -> dict[str, float | None]:
    """A row's values by column name (see _columns), None where not known."""
    values: dict[str, float | None] = {
        "gpu_hours": row.gpu_hours,
        "mean_utilization": row.mean_utilization,
        "idle_held_hours": row.idle_held_hours,
        "energy_kwh": row.energy_kwh,
        "mean_sm_activity": row.mean_sm_activity,
        "cost": prices.cost(row.energy_kwh),
        "co2_kg": prices.co2_kg(row.energy_kwh),
    }
    return {name: values[name] for name in _columns(prices)}


# Table headers and cell formats of the columns.
_TABLE = {
    "gpu_hours": ("GPU-HOURS", ".2f", 1.0, ""),
    "mean_utilization": ("MEAN UTIL", ".1f", 100.0, "%"),
    "idle_held_hours": ("IDLE-HELD HOURS", ".2f", 1.0, ""),
    "energy_kwh": ("KWH", ".3f", 1.0, ""),
    "mean_sm_activity": ("SM ACTIVE", ".1f", 100.0, "%"),
    "cost": ("COST", ".2f", 1.0, ""),  # in the price's currency, which is not known here
    "co2_kg": ("CO2 KG", ".2f", 1.0, ""),
}


def render_table(
    rows: Sequence[Row], *, by: str, prices: Prices = Prices(), drop_unknown: bool = False
) -> str:
    """The aligned table; ``drop_unknown`` leaves out the columns no row has a value in (a
    grouping whose rules record no such counter), for readers who would not know why."""
    values = [row_values(row, prices) for row in rows]
    names = [
        name
        for name in _columns(prices)
        if not drop_unknown or any(value[name] is not None for value in values)
    ]
    header = (by.upper().replace("_", " "), *(_TABLE[name][0] for name in names))
    lines = [
        (
            _printable(row.key) if row.key else "(unknown)",
            *(
                _cell(value[name], _TABLE[name][1], scale=_TABLE[name][2], unit=_TABLE[name][3])
                for name in names
            ),
        )
        for row, value in zip(rows, values)
    ]
    return _aligned(header, lines)


def _aligned(header: tuple[str, ...], lines: Sequence[tuple[str, ...]]) -> str:
    """Columns padded to their widest cell: the first left-aligned, the numbers right."""
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
    return "".join(
        cells[0].ljust(widths[0])
        + "".join("  " + cell.rjust(width) for cell, width in zip(cells[1:], widths[1:]))
        + "\n"
        for cells in [header, *lines]
    )


def render_csv(rows: Sequence[Row], *, by: str, prices: Prices = Prices()) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([by, *_columns(prices)])
    for row in rows:
        values = row_values(row, prices).values()
        writer.writerow([row.key, *("" if value is None else repr(value) for value in values)])
    return out.getvalue()


def render_states_table(rows: Sequence[StateRow]) -> str:
    header = ("STATE", "GPU-HOURS", "MEAN GPUS")
    lines = [(row.state, f"{row.gpu_hours:.2f}", f"{row.mean_gpus:.2f}") for row in rows]
    return _aligned(header, lines)


def render_states_csv(rows: Sequence[StateRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["state", "gpu_hours", "mean_gpus"])
    for row in rows:
        writer.writerow([row.state, repr(row.gpu_hours), repr(row.mean_gpus)])
    return out.getvalue()


def render_states_json(rows: Sequence[StateRow]) -> str:
    document = [
        {"state": row.state, "gpu_hours": row.gpu_hours, "mean_gpus": row.mean_gpus} for row in rows
    ]
    return json.dumps(document, indent=2) + "\n"


def render_json(rows: Sequence[Row], *, by: str, prices: Prices = Prices()) -> str:
    document = [{by: row.key, **row_values(row, prices)} for row in rows]
    return json.dumps(document, indent=2) + "\n"


RENDERERS = {"table": render_table, "csv": render_csv, "json": render_json}
STATE_RENDERERS = {
    "table": render_states_table,
    "csv": render_states_csv,
    "json": render_states_json,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpu-status-api report",
        description="GPU-hours, mean utilization of the held GPUs and idle-held hours per user, "
        "Slurm job or namespace over a window, from the recording rules in Prometheus. Groups "
        "without GPU time in the window are left out.",
    )
    parser.add_argument(
        "--since", default="30d",
        help="window length, a Prometheus duration: 30d, 12h, 1w (default 30d)",
    )  # fmt: skip
    parser.add_argument(
        "--until",
        help="window end: Unix seconds or RFC 3339 such as 2024-06-01T00:00:00Z (default now)",
    )
    parser.add_argument(
        "--by", choices=(*GROUPINGS, CLUSTER), default="user",
        help="grouping; reads <by>:gpu_seconds:total and its siblings (default user); cluster: "
        "the cluster's GPU-hours in each state (in use, idle-held, free, sick, lost, stale, "
        "held) and the mean number of GPUs in it",
    )  # fmt: skip
    parser.add_argument("--format", choices=FORMATS, default="table", help="(default table)")
    parser.add_argument(
        "--price-per-kwh", type=non_negative(float), metavar="PRICE",
        help="add a cost column: each group's kWh times PRICE, in PRICE's currency",
    )  # fmt: skip
    parser.add_argument(
        "--co2-grams-per-kwh", type=non_negative(float), metavar="GRAMS",
        help="add a co2_kg column: each group's kWh times GRAMS of CO2 per kWh, in kg",
    )  # fmt: skip
    add_engine_flags(
        parser,
        url_help="base URL of Prometheus or a compatible engine, e.g. http://prometheus:9090",
        url_required=True,
        timeout=DEFAULT_TIMEOUT,
        timeout_help="seconds one query may take, all included",
        max_body=DEFAULT_MAX_BODY,
    )
    from status_api.reportmail import add_mail_flags  # it builds on this module

    add_mail_flags(parser)
    return parser


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(level="info")
    from status_api import reportmail

    try:
        parse_duration(args.since)
        until = time.time() if args.until is None else parse_time(args.until)
        settings = engine_settings(args)
        mail = reportmail.mail_settings(args) if args.mail else None
    except ValueError as error:
        parser.error(str(error))  # exits 2 with the usage
    prices = Prices(per_kwh=args.price_per_kwh, co2_grams_per_kwh=args.co2_grams_per_kwh)
    if mail is not None:
        return _mail(settings, mail, since=args.since, until=until, prices=prices)
    try:
        states = cluster_usage(settings, since=args.since, until=until)
        rows = (
            [] if args.by == CLUSTER else usage(settings, by=args.by, since=args.since, until=until)
        )
    except EngineError as error:
        return _engine_failed(settings, error)
    if args.by == CLUSTER:
        if not states:
            print(
                "gpu-status-api report: no cluster:gpu_<state>_seconds:total counters; are the "
                "recording rules loaded?",
                file=sys.stderr,
            )
        sys.stdout.write(STATE_RENDERERS[args.format](states))
        return 0
    if not rows:
        print(
            f"gpu-status-api report: no GPU time per {args.by} in the last {args.since}; are the "
            f"recording rules with {args.by}:gpu_seconds:total loaded?",
            file=sys.stderr,
        )
    sys.stdout.write(RENDERERS[args.format](rows, by=args.by, prices=prices))
    sys.stderr.write(add_up_note(rows, states, by=args.by))
    return 0


def _engine_failed(settings: EngineSettings, error: EngineError) -> int:
    # The engine's words are printed as they came; escaped, so they cannot drive the terminal.
    message = _printable(f"cannot query {settings.url}: {error}")
    print(f"gpu-status-api report: {message}", file=sys.stderr)
    return 1


def _mail(
    settings: EngineSettings, mail: MailSettings, *, since: str, until: float, prices: Prices
) -> int:
    """--mail: each user their summary, the admins the cluster's; 1 if any mail failed."""
    from status_api import reportmail

    try:
        states = cluster_usage(settings, since=since, until=until)
        mailing = reportmail.gather(
            settings, since=since, until=until, states=states, prices=prices
        )
    except EngineError as error:
        return _engine_failed(settings, error)
    messages = reportmail.compose(mailing, mail)
    try:
        refused = reportmail.send(messages, mail)
    except reportmail.MailError as error:
        print(f"gpu-status-api report: cannot mail: {_printable(str(error))}", file=sys.stderr)
        return 1
    what = "printed" if mail.dry_run else "sent"
    print(
        f"gpu-status-api report: {len(messages) - refused} of {len(messages)} mails {what}",
        file=sys.stderr,
    )
    return 1 if refused else 0
