"""The owner of an idle GPU gets one mail, through a real Prometheus, Alertmanager and SMTP server.

A real exporter on the fake NVML lists four GPUs of node ``localhost``: GPUs 0 and 3 held by two
idle processes of the user running the tests (the owner), GPU 1 busy under another user, GPU 2
idle under a process whose owner cannot be read. Prometheus runs the shipped rules (``for:``
and the idle-held threshold shortened) and sends to two Alertmanagers with the shipped
configuration, each mailing to its own
SMTP server on loopback (aiosmtpd) with a site's own settings (tests' ``SITE``): one as shipped
(mail at any hour), one whose owner-mail hours exclude the present hour. Checked: the owner gets
exactly one mail, for both GPUs, the admins in copy, naming node, GPU, process, job, since when
and the status page filtered to the owner; nobody else gets mail, the busy GPU is in none; the
unowned GPU goes to the admins' receiver alone; outside the working hours nothing is sent.
Alertmanager alone, with alerts posted by the test: an exporter that is down holds back the
idle-GPU mail of its node, and only of its node.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests

from simulator.alertmanager import AlertmanagerServer, running_alertmanager
from simulator.fakenvml import scenario as fake
from simulator.prometheus import running_prometheus
from tests.support.cgroups import Placement
from tests.support.cluster import (
    UNKNOWN_PID,
    job_ids,
    place_in_slurm_jobs,
    write_targets,
    write_thresholds,
)
from tests.support.smtp import Mail, Mailbox
from tests.support.webhook import Webhook, firing

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

GIB = 1024**3
DOMAIN = "users.example.net"
ADMINS = "hpc-admins@example.net"
PAGE = "https://gpus.example.net/status/"
# A site's settings (prometheus/templates/site.tmpl): not the shipped ones, so that the mail
# shows they are read from there.
SITE = f"""
{{{{ define "gpu.site.owner_address" }}}}{{{{ .GroupLabels.user }}}}@{DOMAIN}{{{{ end }}}}
{{{{ define "gpu.site.admins" }}}}{ADMINS}{{{{ end }}}}
{{{{ define "gpu.site.status_page" }}}}{PAGE}{{{{ end }}}}
"""
IDLE_GPUS = ("0", "3")
BUSY_GPU = "1"
UNOWNED_GPU = "2"
# After the first mail, how long more mail may take to show up: many group intervals (1 s).
QUIET = 5.0


@dataclass
class Setup:
    owner: str
    stranger: str
    workers: dict[str, int]  # GPU index -> pid of the process holding it
    slurm_job: str | None  # the job of GPU 0's process, where cgroups could be made
    mailbox: Mailbox
    after_hours: Mailbox
    webhook: Webhook
    alertmanager: AlertmanagerServer
    muted: AlertmanagerServer
    started: datetime


def user_of(pid: int) -> str:
    return pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name


def has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture
def stranger_pid(worker_pids) -> Iterator[int]:
    """A process of another user than the one running the tests, where there can be one.

    Root starts one as ``nobody``; others borrow init when it is not theirs (the exporter only
    reads its owner). Failing both, one of our own: the busy GPU then proves less.
    """
    if os.geteuid() == 0 and has_user("nobody"):
        child = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL, user="nobody")
        yield child.pid
        child.kill()
        child.wait()
    elif user_of(1) != user_of(os.getpid()):
        yield 1
    else:
        yield worker_pids(1)[0]


def node(workers: dict[str, int]) -> fake.FakeScenario:
    """GPUs 0 and 3 held and idle, 1 held and busy, 2 held by an unknown owner and idle."""
    held = {"0": 2 * GIB, "1": 4 * GIB, "2": 1 * GIB, "3": 1 * GIB}
    busy = {"0": 0, "1": 90, "2": 0, "3": 2}
    return fake.FakeScenario(
        gpus=[
            fake.make_gpu(
                int(gpu),
                processes=[fake.FakeProcess(workers[gpu], held[gpu])],
                memory_used=held[gpu] + 300 * 1024**2,
                utilization_gpu=busy[gpu],
            )
            for gpu in sorted(held)
        ]
    )


def hours_excluding_now() -> list[dict[str, Any]]:
    """Working hours (UTC) that do not include the present hour: one hour, two hours ahead."""
    start = (datetime.now(timezone.utc).hour + 2) % 24
    return [{"times": [{"start_time": f"{start:02}:00", "end_time": f"{start + 1:02}:00"}]}]


@pytest.fixture
def setup(exporter_factory, worker_pids, stranger_pid, tmp_path: Path) -> Iterator[Setup]:
    started = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    mine = worker_pids(2)
    workers = {"0": mine[0], "1": stranger_pid, "2": UNKNOWN_PID, "3": mine[1]}
    with ExitStack() as stack:
        placement = Placement()
        stack.callback(placement.cleanup)
        job = job_ids()[0]
        slurm_job = job if place_in_slurm_jobs(placement, {job: [mine[0]]}) else None
        mailbox = stack.enter_context(Mailbox())
        after_hours = stack.enter_context(Mailbox())
        webhook = stack.enter_context(Webhook())
        alertmanagers = [
            stack.enter_context(
                running_alertmanager(
                    tmp_path / name,
                    webhook_url=webhook.url,
                    smtp_smarthost=box.smarthost,
                    site_template=SITE,
                    owner_mail_hours=hours,
                    group_wait="3s",  # both idle GPUs fire together; one mail for both
                )
            )
            for name, box, hours in (
                ("alertmanager", mailbox, None),
                ("after-hours", after_hours, hours_excluding_now()),
            )
        ]
        exporter = exporter_factory(node(workers))
        targets = write_targets(tmp_path, {"localhost": exporter.port})
        # Idle-held after 3 s rather than 30 minutes, by the project's threshold generator.
        thresholds = write_thresholds(tmp_path / "thresholds.yml", "--idle-held-after", "3")
        stack.enter_context(
            running_prometheus(
                tmp_path / "prometheus",
                targets_file=targets,
                alert_for="3s",
                alertmanagers=[am.address for am in alertmanagers],
                rule_overrides={"rules/thresholds.yml": thresholds},
            )
        )
        yield Setup(
            owner=user_of(mine[0]),
            stranger=user_of(stranger_pid),
            workers=workers,
            slurm_job=slurm_job,
            mailbox=mailbox,
            after_hours=after_hours,
            webhook=webhook,
            alertmanager=alertmanagers[0],
            muted=alertmanagers[1],
            started=started,
        )


def idle_since(text: str) -> list[datetime]:
    found = re.findall(r"idle since (\d{4}-\d\d-\d\d \d\d:\d\d) UTC", text)
    return [datetime.strptime(s, "%Y-%m-%d %H:%M").replace(tzinfo=timezone.utc) for s in found]


def check_owner_mail(mail: Mail, setup: Setup) -> None:
    owner = f"{setup.owner}@{DOMAIN}"
    assert set(mail.recipients) == {owner, ADMINS}, mail.recipients
    assert mail.message["To"] == owner
    assert mail.message["Cc"] == ADMINS
    assert mail.message["Subject"] == f"2 GPU processes of {setup.owner} are idle or barely used"
    text = mail.text
    assert text.startswith(f"Hello {setup.owner},"), text
    for gpu in IDLE_GPUS:
        uuid = fake.gpu_uuid(int(gpu))
        assert f"- node localhost, GPU {gpu} (uuid {uuid})\n" in text, text
        assert f"process {setup.workers[gpu]}" in text, text
    if setup.slurm_job is not None:
        assert f"process {setup.workers['0']}, Slurm job {setup.slurm_job}, idle since" in text
    for gpu in (BUSY_GPU, UNOWNED_GPU):
        assert f"GPU {gpu} " not in text, text
        assert fake.gpu_uuid(int(gpu)) not in text, text
    # Since when: the minute the process was first found idle, during this test.
    since = idle_since(text)
    assert len(since) == 2, text
    now = datetime.now(timezone.utc)
    assert all(setup.started <= moment <= now for moment in since), (since, text)
    assert f"{PAGE}#user={setup.owner}\n" in text, text
    assert ADMINS in text


def test_owner_gets_one_mail_for_their_idle_gpus_and_nobody_else_gets_any(setup: Setup):
    mail = setup.mailbox.wait_for_mail(timeout=60)
    # The unowned GPU reaches the admins' receiver (not a mail) and so do the owner's alerts:
    # owner mail comes on top of the admins' routes.
    setup.webhook.wait_for(firing("GpuIdleButHeld", "localhost", UNOWNED_GPU), timeout=20)
    for gpu in IDLE_GPUS:
        setup.webhook.wait_for(firing("GpuIdleButHeld", "localhost", gpu), timeout=20)
    time.sleep(QUIET)

    mails = setup.mailbox.mails()
    assert len(mails) == 1, [(m.recipients, m.message["Subject"]) for m in mails]
    check_owner_mail(mail, setup)
    if setup.stranger != setup.owner:
        assert not any(setup.stranger in recipient for recipient in mail.recipients)

    # The Alertmanager whose working hours are elsewhere has the same alerts and sent nothing.
    held = [
        alert
        for alert in setup.muted.alerts()
        if alert["labels"].get("user") == setup.owner
        and alert["labels"]["alertname"] == "GpuIdleButHeld"
    ]
    assert {alert["labels"]["gpu"] for alert in held} == set(IDLE_GPUS)
    assert setup.after_hours.mails() == []


@pytest.fixture
def alertmanager_alone(tmp_path: Path) -> Iterator[tuple[AlertmanagerServer, Mailbox]]:
    """Alertmanager and its SMTP server, no Prometheus: the test posts the alerts itself."""
    with (
        Mailbox() as mailbox,
        Webhook() as webhook,
        running_alertmanager(
            tmp_path / "alertmanager",
            webhook_url=webhook.url,
            smtp_smarthost=mailbox.smarthost,
            site_template=SITE,
        ) as alertmanager,
    ):
        yield alertmanager, mailbox


def post_alerts(alertmanager: AlertmanagerServer, *labels: dict[str, str]) -> None:
    now = datetime.now(timezone.utc)
    alerts = [
        {
            "labels": alert,
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(minutes=10)).isoformat(),
        }
        for alert in labels
    ]
    response = requests.post(f"{alertmanager.url}/api/v2/alerts", json=alerts, timeout=10)
    response.raise_for_status()


def idle_alert(user: str, instance: str) -> dict[str, str]:
    return {
        "alertname": "GpuIdleButHeld",
        "severity": "warning",
        "instance": instance,
        "node": instance.split(":")[0],
        "gpu": "0",
        "uuid": f"GPU-{user}",
        "pid": "4242",
        "user": user,
    }


def test_no_owner_mail_while_the_nodes_exporter_is_down(alertmanager_alone):
    """GpuExporterDown of an instance holds back the idle-GPU mail of that instance only."""
    alertmanager, mailbox = alertmanager_alone
    down, up = "gpu-down.example.net:7080", "gpu-up.example.net:7080"
    exporter_down = {"alertname": "GpuExporterDown", "severity": "critical", "instance": down}
    post_alerts(alertmanager, exporter_down)  # first: inhibition needs its source present
    post_alerts(alertmanager, idle_alert("carol", down), idle_alert("dave", up))

    mail = mailbox.wait_for_mail(timeout=30)
    assert set(mail.recipients) == {f"dave@{DOMAIN}", ADMINS}
    carol = [a for a in alertmanager.alerts() if a["labels"].get("user") == "carol"]
    assert carol, alertmanager.alerts()
    assert carol[0]["status"]["state"] == "suppressed", carol
    assert carol[0]["status"]["inhibitedBy"], carol
    time.sleep(QUIET)
    assert [m.recipients for m in mailbox.mails()] == [mail.recipients]
