"""Run the shipped Prometheus bundle for real: promtool, and a Prometheus server on loopback.

``running_prometheus(workdir, targets_file=...)`` starts Debian's ``prometheus`` binary with a
configuration generated from ``prometheus/prometheus.yml``: targets from the given file_sd file,
a short scrape and evaluation interval, and the shipped rule files copied with every ``for:``
shortened (the shipped files are never changed). It yields a ``PrometheusServer`` with the base
``url`` and a ``query(expr)`` method over the HTTP API::

    with running_prometheus(tmp_path, targets_file=targets) as prometheus:
        prometheus.wait_for("up == 1", lambda result: len(result) == 2)
        print(prometheus.query("sum(gpu_up)"))

``backfilled_prometheus(workdir, openmetrics, ready=...)`` does the same over data of known
shape: the OpenMetrics text is made into blocks with ``promtool tsdb create-blocks-from
openmetrics`` before the start, and nothing is scraped.

A Prometheus that cannot start (binary missing, configuration rejected, never ready) raises
:class:`~simulator.proc.StartError`; a failing promtool run raises :class:`ToolError`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import requests
import yaml

from simulator import REPO
from simulator.proc import ManagedProcess, StartError, ToolError, free_port, run_tool, wait_started

PROMETHEUS_DIR = REPO / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"

Result = list[dict[str, Any]]


class PrometheusQueryError(AssertionError):
    """Prometheus answered a query with an error (bad PromQL, execution error)."""


def find_binary(name: str) -> str:
    """The path of ``name``; a clear failure (not a skip) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        raise StartError(
            f"{name} not found on PATH: install the Debian package 'prometheus' "
            "(it provides prometheus and promtool)"
        )
    return path


def promtool(*args: str, cwd: Path | None = None, timeout: float = 60) -> str:
    """Run promtool; :class:`ToolError` with its whole output when it fails."""
    return run_tool([find_binary("promtool"), *args], cwd=cwd, timeout=timeout)


def load_yaml(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def shorten_for(rules: dict[str, Any], duration: str) -> dict[str, Any]:
    """A copy of a rule file's content with every non-zero ``for:`` replaced by ``duration``."""
    groups = []
    for group in rules["groups"]:
        copied_rules = []
        for rule in group["rules"]:
            rule = dict(rule)
            if rule.get("for") not in (None, "0", "0s"):
                rule["for"] = duration
            copied_rules.append(rule)
        groups.append({**group, "rules": copied_rules})
    return {**rules, "groups": groups}


def write_config(
    directory: Path,
    *,
    targets_file: Path,
    interval: str = "1s",
    alert_for: str | None = "2s",
    alertmanagers: Sequence[str] = (),
    extra_rule_files: Sequence[Path] = (),
    rule_overrides: Mapping[str, Path] | None = None,
) -> Path:
    """Write a configuration derived from the shipped one into ``directory``.

    ``alert_for`` replaces every non-zero ``for:`` of the rules; None keeps the shipped ones.
    ``alertmanagers`` (``host:port``) receive the alerts; ``extra_rule_files`` are loaded after
    the shipped rules, unchanged. ``rule_overrides`` maps a shipped rule file, as prometheus.yml
    names it (``rules/thresholds.yml``), to a file loaded in its place (thresholds written by
    ``gpu-status-api thresholds`` with other flags, say).
    """
    config = load_yaml(CONFIG)
    config["global"].update(
        scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval
    )
    rule_files = []
    for relative in config["rule_files"]:
        rules = load_yaml((rule_overrides or {}).get(relative, CONFIG.parent / relative))
        if alert_for is not None:
            rules = shorten_for(rules, alert_for)
        target = directory / "rules" / Path(relative).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
        rule_files.append(str(target))
    config["rule_files"] = rule_files + [str(path) for path in extra_rule_files]
    config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = list(alertmanagers)
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == "gpu"]
    assert len(jobs) == 1, "prometheus.yml must have exactly one scrape job named gpu"
    jobs[0].update(scrape_interval=interval, scrape_timeout=interval)
    for sd_config in jobs[0]["file_sd_configs"]:
        sd_config["files"] = [str(targets_file)]
        sd_config["refresh_interval"] = interval
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


@dataclass
class PrometheusServer:
    """A running Prometheus and methods for its HTTP API."""

    url: str
    config: Path
    process: ManagedProcess
    session: requests.Session = field(default_factory=requests.Session)

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``; the ``data`` of a successful answer."""
        response = self.session.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        try:
            body = response.json()
        except ValueError:
            raise PrometheusQueryError(
                f"{path} {params}: HTTP {response.status_code}, not JSON: {response.text[:300]}"
            ) from None
        if body.get("status") != "success":
            raise PrometheusQueryError(
                f"{path} {params}: {body.get('errorType')}: {body.get('error')}"
            )
        return body["data"]

    def query(self, expr: str, *, at: float | None = None) -> Result:
        """Run an instant query; the result list (vector samples) or raise with the error."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def query_range(self, expr: str, *, start: float, end: float, step: float = 1.0) -> Result:
        """Run a range query (what Grafana sends for a time series panel); the matrix."""
        data = self.api(
            "query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step}"
        )
        return list(data["result"])

    def label_values(self, label: str, match: str) -> list[str]:
        """Values of ``label`` on series matching ``match`` (Grafana's ``label_values``)."""
        return sorted(self.api(f"label/{label}/values", **{"match[]": match}))

    def values(self, expr: str) -> dict[frozenset[tuple[str, str]], float]:
        """``{frozenset(labels.items()): value}`` of an instant vector query."""
        return {
            frozenset(sample["metric"].items()): float(sample["value"][1])
            for sample in self.query(expr)
        }

    def wait_for(
        self, expr: str, predicate: Callable[[Result], bool], *, timeout: float = 20.0
    ) -> Result:
        """Query until ``predicate(result)`` holds; TimeoutError naming the last result."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if predicate(result):
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"after {timeout} s, {expr!r} still gives {result!r:.2000}\n"
                    f"Prometheus log (end):\n{self.process.log()[-3000:]}"
                )
            time.sleep(0.25)

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["alerts"])

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets", state="active")["activeTargets"])

    def log(self) -> str:
        return self.process.log()


@contextmanager
def running_prometheus(
    workdir: Path,
    *,
    targets_file: Path,
    interval: str = "1s",
    alert_for: str | None = "2s",
    port: int | None = None,
    extra_args: Sequence[str] = (),
    alertmanagers: Sequence[str] = (),
    extra_rule_files: Sequence[Path] = (),
    rule_overrides: Mapping[str, Path] | None = None,
) -> Iterator[PrometheusServer]:
    """Start Prometheus on 127.0.0.1 with the bundle's configuration; stop it on exit.

    ``port`` None picks a free one. The configuration, rules and database live in ``workdir``.
    :class:`~simulator.proc.StartError` if it cannot start or does not become ready.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config = write_config(
        workdir,
        targets_file=targets_file,
        interval=interval,
        alert_for=alert_for,
        alertmanagers=alertmanagers,
        extra_rule_files=extra_rule_files,
        rule_overrides=rule_overrides,
    )
    try:
        promtool("check", "config", str(config))
    except ToolError as error:
        raise StartError(f"Prometheus did not start: configuration rejected: {error}") from None
    port = port or free_port()
    command = [
        find_binary("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=info",
        *extra_args,
    ]
    process = ManagedProcess(command, log_path=workdir / "prometheus.log")
    server = PrometheusServer(f"http://127.0.0.1:{port}", config, process)
    try:
        wait_started(process, f"{server.url}/-/ready", what="Prometheus", log_tail=4000)
        yield server
    finally:
        process.stop()


@contextmanager
def backfilled_prometheus(
    workdir: Path,
    openmetrics: str,
    *,
    ready: str,
    count: int,
    extra_args: Sequence[str] = (),
) -> Iterator[PrometheusServer]:
    """A Prometheus over ``openmetrics`` (text ending in ``# EOF``), scraping nothing; it is
    yielded once the instant query ``ready`` answers one sample of value ``count`` (the blocks
    are loaded at start, so this says they are)."""
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / "backfill.om"
    source.write_text(openmetrics, encoding="utf-8")
    promtool("tsdb", "create-blocks-from", "openmetrics", str(source), str(workdir / "data"))
    targets = workdir / "targets.json"
    targets.write_text("[]")
    with running_prometheus(
        workdir, targets_file=targets, interval="15s", extra_args=extra_args
    ) as prometheus:
        prometheus.wait_for(
            ready,
            lambda result: bool(result) and float(result[0]["value"][1]) == count,
            timeout=60,
        )
        yield prometheus
