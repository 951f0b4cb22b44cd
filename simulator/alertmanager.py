"""Run the shipped Alertmanager configuration for real: amtool, and an Alertmanager on loopback.

``running_alertmanager(workdir, webhook_url=...)`` starts Debian's ``prometheus-alertmanager``
(or an upstream ``alertmanager``) with ``prometheus/alertmanager.yml``, every webhook url
replaced by ``webhook_url``, mail sent to ``smtp_smarthost`` without TLS (by default a loopback
port nobody listens on, so no mail leaves the machine), the templates copied beside it (the site
settings replaced when ``site_template`` is given) and the grouping delays shortened (the
shipped files are never changed), storage in ``workdir`` and clustering off. It yields an
``AlertmanagerServer``::

    with running_alertmanager(tmp_path, webhook_url="http://127.0.0.1:5001/") as alertmanager:
        prometheus_targets = [alertmanager.address]
        print(alertmanager.alerts())
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from simulator.proc import ManagedProcess, free_port, run_tool, wait_http
from simulator.prometheus import PROMETHEUS_DIR, load_yaml

ALERTMANAGER_CONFIG = PROMETHEUS_DIR / "alertmanager.yml"
TEMPLATES = PROMETHEUS_DIR / "templates"
SITE_TEMPLATE = "site.tmpl"
OWNER_MAIL_HOURS = "owner-mail-hours"
# Where mail goes unless a test gives its own server: the discard port on loopback, where
# nothing listens, so that a run never reaches a real relay.
NO_SMTP = "127.0.0.1:9"
# Debian installs the server as prometheus-alertmanager; upstream archives name it alertmanager.
SERVER_NAMES = ("prometheus-alertmanager", "alertmanager")


def alertmanager_binary() -> str | None:
    """The path of the Alertmanager server, or None when it is not installed."""
    for name in SERVER_NAMES:
        path = shutil.which(name)
        if path is not None:
            return path
    return None


def _require(path: str | None, what: str) -> str:
    if path is None:
        raise AssertionError(
            f"{what} not found on PATH: install the Debian package 'prometheus-alertmanager' "
            "(it provides the server and amtool)"
        )
    return path


def amtool(*args: str, timeout: float = 60) -> str:
    """Run amtool; :class:`~simulator.proc.ToolError` with its whole output when it fails."""
    return run_tool([_require(shutil.which("amtool"), "amtool"), *args], timeout=timeout)


def write_templates(directory: Path, site_template: str | None = None) -> None:
    """Copy the shipped templates into ``directory/templates``, ``site.tmpl`` replaced if given."""
    target = directory / "templates"
    target.mkdir(parents=True, exist_ok=True)
    for template in TEMPLATES.glob("*.tmpl"):
        text = template.read_text(encoding="utf-8")
        if template.name == SITE_TEMPLATE and site_template is not None:
            text = site_template
        (target / template.name).write_text(text, encoding="utf-8")


def set_owner_mail_hours(config: dict[str, Any], intervals: list[dict[str, Any]]) -> None:
    """Replace the hours owners are mailed in (the site's working hours) by ``intervals``."""
    (named,) = [t for t in config["time_intervals"] if t["name"] == OWNER_MAIL_HOURS]
    named["time_intervals"] = intervals


def write_config(
    directory: Path,
    *,
    webhook_url: str,
    smtp_smarthost: str = NO_SMTP,
    site_template: str | None = None,
    owner_mail_hours: list[dict[str, Any]] | None = None,
    group_wait: str = "1s",
    group_interval: str = "1s",
    repeat_interval: str = "1h",
) -> Path:
    """Write the shipped configuration with ``webhook_url``, ``smtp_smarthost`` and short
    delays into ``directory``, its templates beside it; ``owner_mail_hours`` replaces the
    working hours of owner mail."""
    config = load_yaml(ALERTMANAGER_CONFIG)
    # A test's SMTP server offers no STARTTLS; the shipped default (required) would refuse it.
    config["global"].update(smtp_smarthost=smtp_smarthost, smtp_require_tls=False)
    if owner_mail_hours is not None:
        set_owner_mail_hours(config, owner_mail_hours)
    write_templates(directory, site_template)
    routes = [config["route"], *config["route"].get("routes", [])]
    for route in routes:
        for key, value in (
            ("group_wait", group_wait),
            ("group_interval", group_interval),
            ("repeat_interval", repeat_interval),
        ):
            if key in route:
                route[key] = value
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            webhook["url"] = webhook_url
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


@dataclass
class AlertmanagerServer:
    """A running Alertmanager and methods for its HTTP API (v2)."""

    url: str
    address: str  # host:port, what Prometheus' alerting section takes
    config: Path
    process: ManagedProcess
    session: requests.Session = field(default_factory=requests.Session)

    def alerts(self, *, inhibited: bool = True) -> list[dict[str, Any]]:
        """Alerts Alertmanager holds, inhibited ones included unless ``inhibited`` is False."""
        params = {"inhibited": "true" if inhibited else "false"}
        response = self.session.get(f"{self.url}/api/v2/alerts", params=params, timeout=10)
        response.raise_for_status()
        return list(response.json())

    def log(self) -> str:
        return self.process.log()


@contextmanager
def running_alertmanager(
    workdir: Path, *, webhook_url: str, port: int | None = None, **settings: Any
) -> Iterator[AlertmanagerServer]:
    """Start Alertmanager on 127.0.0.1 with the shipped configuration; stop it on exit.

    ``settings`` go to :func:`write_config` (``smtp_smarthost``, ``site_template``, ...).
    """
    config = write_config(workdir, webhook_url=webhook_url, **settings)
    amtool("check-config", str(config))
    port = port or free_port()
    command = [
        _require(alertmanager_binary(), "alertmanager"),
        f"--config.file={config}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # no gossip port: a single instance
        "--log.level=info",
    ]
    process = ManagedProcess(command, log_path=workdir / "alertmanager.log")
    address = f"127.0.0.1:{port}"
    server = AlertmanagerServer(f"http://{address}", address, config, process)
    try:
        try:
            wait_http(f"{server.url}/-/ready", timeout=30)
        except TimeoutError as error:
            raise AssertionError(f"{error}\nAlertmanager log:\n{process.log()[-4000:]}") from None
        yield server
    finally:
        process.stop()
