"""``gpu-status-api report --mail`` against a real Prometheus and a real SMTP server on loopback.

Two days of counters of known shape, all growing at constant rates so that every figure of a
one-day window is worked out by hand, are backfilled with promtool as in
tests/test_usage_report.py, with the ``gpu_process_info`` series that tell whose jobs are
whose. The mails are received by aiosmtpd (tests/support/smtp.py) and read as a user would.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import AuthResult, LoginPassword

from simulator.prometheus import backfilled_prometheus
from status_api.report import Prices, Row
from status_api.reportmail import Mailing, MailSettings, compose
from tests.support.smtp import Mail, Mailbox
from tests.support.status_service import run_command

STEP = 300
END = (int(time.time()) // 3600 - 3) * 3600
START = END - 2 * 86400
STEPS = 2 * 86400 // STEP

# Growth per second of each counter: <by>:<counter>:total{<by>="key"} grows by rate x STEP a step.
RATES: dict[tuple[str, str], dict[str, float]] = {
    # dave: 2 GPUs, 50 % utilized, 50 % SM active (GPM), never idle, 250 W each.
    ("user", "dave"): {
        "gpu_seconds": 2,
        "gpu_utilization_seconds": 1,
        "gpu_idle_held_seconds": 0,
        "gpu_energy_joules": 500,
        "gpu_sm_active_seconds": 1,
        "gpu_gpm_held_seconds": 2,
    },
    # erin: 1 GPU, 25 % utilized, idle-held half the time, 100 W, no GPM.
    ("user", "erin"): {
        "gpu_seconds": 1,
        "gpu_utilization_seconds": 0.25,
        "gpu_idle_held_seconds": 0.5,
        "gpu_energy_joules": 100,
    },
    # frank held GPUs before the window only: his counters are flat in it.
    ("user", "frank"): {"gpu_seconds": 0, "gpu_utilization_seconds": 0, "gpu_energy_joules": 0},
    ("slurm_job", "101"): {"gpu_seconds": 1.25, "gpu_energy_joules": 300},
    ("slurm_job", "102"): {"gpu_seconds": 0.5, "gpu_energy_joules": 150},
    ("slurm_job", "103"): {"gpu_seconds": 0.25, "gpu_energy_joules": 50},
    ("slurm_job", "201"): {"gpu_seconds": 1, "gpu_energy_joules": 100},
    ("cluster", ""): {"gpu_held_seconds": 3, "gpu_in_use_seconds": 3, "gpu_free_seconds": 1},
}
JOBS = {"101": "dave", "102": "dave", "103": "dave", "201": "erin", "301": "frank"}


def _openmetrics() -> str:
    families: dict[str, list[str]] = {}
    for (by, key), rates in RATES.items():
        labels = f'{{{by}="{key}"}}' if key else ""
        for counter, rate in rates.items():
            name = f"{by}:{counter}:total"
            families.setdefault(name, []).extend(
                f"{name}{labels} {rate * STEP * k!r} {START + k * STEP}" for k in range(STEPS + 1)
            )
    families["gpu_process_info"] = [
        f'gpu_process_info{{pid="{n}",slurm_job="{job}",user="{user}"}} 1 {START + k * STEP}'
        for n, (job, user) in enumerate(JOBS.items())
        for k in range(STEPS + 1)
    ]
    lines = [line for family in families.values() for line in family]
    return "\n".join([*lines, "# EOF"]) + "\n"


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with backfilled_prometheus(
        tmp_path_factory.mktemp("mail-prometheus"),
        _openmetrics(),
        ready="count(last_over_time(user:gpu_seconds:total[3d]))",
        count=3,
    ) as prometheus:
        yield prometheus.url


def mail_report(url: str, *options: str) -> Any:
    return run_command(
        "report", "--prometheus-url", url, "--since", "1d", "--until", str(END), "--mail",
        "--mail-from", "gpu-report@example.org", "--admin-mail", "hpc-admins@example.org",
        "--mail-domain", "example.org", "--top-jobs", "2",
        "--price-per-kwh", "0.25", "--co2-grams-per-kwh", "400", *options,
    )  # fmt: skip


def _by_recipient(mails: list[Mail]) -> dict[str, Mail]:
    by_recipient = {}
    for mail in mails:
        assert len(mail.recipients) == 1, mail.recipients
        assert mail.recipients[0] not in by_recipient, "two mails to one address"
        by_recipient[mail.recipients[0]] = mail
    return by_recipient


def _check_mails(mails: list[Mail]) -> None:
    """One mail per user with usage (frank has none), one to the admins, each with the numbers
    worked out by hand for the one-day window."""
    mails_to = _by_recipient(mails)
    assert set(mails_to) == {"dave@example.org", "erin.s@example.net", "hpc-admins@example.org"}
    for mail in mails:
        assert mail.sender == "gpu-report@example.org"
        assert mail.message["From"] == "gpu-report@example.org"

    dave = mails_to["dave@example.org"].text
    # 2 GPUs x 24 h = 48 GPU-hours; 500 W x 86400 s = 43.2 MJ = 12 kWh, 3.00 at 0.25, 4.80 kg
    # of CO2 at 400 g/kWh.
    assert "  GPU-hours         48.00\n" in dave
    assert "  mean utilization  50.0%\n" in dave
    assert "  mean SM activity  50.0%\n" in dave
    assert "  idle-held hours   0.00\n" in dave
    assert "  energy            12.000 kWh\n" in dave
    assert "  energy cost       3.00 (at 0.25 per kWh)\n" in dave
    assert "  CO2               4.80 kg (at 400 g per kWh)\n" in dave
    # His top 2 of 3 jobs: 101 (30 h, 7.2 kWh), 102 (12 h, 3.6 kWh); not 103; not erin's.
    assert "top Slurm jobs by GPU-hours (2 of 3)" in dave
    jobs = dave.split("SLURM JOB", 1)[1].splitlines()[1:]
    assert [line.split()[:2] for line in jobs] == [["101", "30.00"], ["102", "12.00"]]
    assert jobs[0].split() == ["101", "30.00", "7.200", "1.80", "2.88"]  # kWh, cost, CO2 kg
    assert "201" not in dave and "103" not in dave

    erin = mails_to["erin.s@example.net"].text  # from the map, over --mail-domain
    # 1 GPU x 24 h; 25 % utilized; 12 idle-held hours; 100 W x 24 h = 2.4 kWh; no GPM.
    assert "  GPU-hours         24.00\n" in erin
    assert "  mean utilization  25.0%\n" in erin
    assert "  mean SM activity  not measured (no GPU with GPM)\n" in erin
    assert "  idle-held hours   12.00\n" in erin
    assert "  energy            2.400 kWh\n" in erin
    assert "  energy cost       0.60 (at 0.25 per kWh)\n" in erin
    assert "(1 of 1)" in erin and "\n201 " in erin

    admins = mails_to["hpc-admins@example.org"].text
    assert "2 users held GPUs for 72.00 GPU-hours and 14.400 kWh; 2 of them were mailed" in admins
    assert "frank" not in admins
    states = {line.split()[0]: line.split()[1:] for line in admins.splitlines() if line}
    assert states["held"] == ["72.00", "3.00"] and states["free"] == ["24.00", "1.00"]
    assert states["dave"][:4] == ["48.00", "50.0%", "0.00", "12.000"]
    assert states["erin"][:4] == ["24.00", "25.0%", "12.00", "2.400"]


@pytest.fixture
def mail_map(tmp_path: Path) -> Path:
    path = tmp_path / "mail-map"
    path.write_text("# user address\nerin erin.s@example.net\n", encoding="utf-8")
    return path


@pytest.mark.prometheus
def test_each_user_with_usage_and_the_admins_get_one_mail(prometheus_url, mail_map):
    with Mailbox() as mailbox:
        result = mail_report(
            prometheus_url, "--smtp-server", mailbox.smarthost, "--mail-map", str(mail_map)
        )
        assert result.returncode == 0, result.stderr
        assert "3 of 3 mails sent" in result.stderr
        _check_mails(mailbox.mails())


@pytest.mark.prometheus
def test_dry_run_prints_the_mails_and_sends_none(prometheus_url, mail_map):
    with Mailbox() as mailbox:
        result = mail_report(
            prometheus_url, "--smtp-server", mailbox.smarthost, "--mail-map", str(mail_map),
            "--dry-run",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        time.sleep(0.5)
        assert mailbox.mails() == []
    assert result.stdout.count("\nSubject: ") == 3
    assert "To: dave@example.org\n" in result.stdout
    assert "To: erin.s@example.net\n" in result.stdout
    assert "frank" not in result.stdout


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    """A server context with a certificate for 127.0.0.1, and the CA file that trusts it."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    path = tmp_path_factory.mktemp("smtp-tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return context, path


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
    good = isinstance(data, LoginPassword) and data == (b"relay-user", b"s3cret pass")
    return AuthResult(success=good)


@pytest.mark.prometheus
def test_starttls_and_login_when_the_relay_offers_them(prometheus_url, mail_map, tls, tmp_path):
    context, ca_file = tls
    credentials = tmp_path / "smtp-credentials"
    credentials.write_text("relay-user\ns3cret pass\n", encoding="utf-8")
    credentials.chmod(0o644)  # readable by others: used, with a warning
    # The relay refuses every command but STARTTLS before TLS, and mail before a login.
    with Mailbox(
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        authenticator=_authenticator,
    ) as mailbox:
        result = mail_report(
            prometheus_url, "--smtp-server", mailbox.smarthost, "--mail-map", str(mail_map),
            "--smtp-credentials-file", str(credentials), "--smtp-ca-file", str(ca_file),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "--smtp-credentials-file" in result.stderr and "0644" in result.stderr
        _check_mails(mailbox.mails())

        # Without the CA the relay's certificate is not trusted: nothing is sent.
        result = mail_report(
            prometheus_url, "--smtp-server", mailbox.smarthost, "--mail-map", str(mail_map),
            "--smtp-credentials-file", str(credentials),
        )  # fmt: skip
        assert result.returncode == 1
        assert "cannot mail" in result.stderr and "certificate" in result.stderr
        assert len(mailbox.mails()) == 3


@pytest.mark.prometheus
def test_credentials_are_not_sent_to_a_relay_without_starttls(prometheus_url, tmp_path):
    credentials = tmp_path / "smtp-credentials"
    credentials.write_text("relay-user\ns3cret pass\n", encoding="utf-8")
    credentials.chmod(0o600)
    with Mailbox() as mailbox:
        result = mail_report(
            prometheus_url, "--smtp-server", mailbox.smarthost,
            "--smtp-credentials-file", str(credentials),
        )  # fmt: skip
        assert result.returncode == 1
        assert "offers no STARTTLS" in result.stderr
        assert mailbox.mails() == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--mail"], "--mail needs --mail-from"),
        (["--mail", "--mail-from", "a@example.org"], "--mail needs --smtp-server"),
        (
            ["--mail", "--mail-from", "a@example.org", "--dry-run"],
            "--mail-domain or --mail-map",
        ),
        (
            [
                "--mail",
                "--mail-from",
                "a@example.org",
                "--dry-run",
                "--mail-domain",
                "x.org",
                "--by",
                "namespace",
            ],
            "leave --by out",
        ),
        (["--smtp-server", "smtp.example.org"], "is not HOST:PORT"),
        (["--smtp-server", "smtp.example.org:0"], "is not a port number"),
        (["--top-jobs", "0"], "must be greater than 0"),
    ],
)
def test_bad_mail_arguments_exit_2(arguments, message):
    result = run_command("report", "--prometheus-url", "http://127.0.0.1:9", *arguments)
    assert result.returncode == 2, result
    assert message in result.stderr, result.stderr


def test_bad_mail_map_and_credentials_exit_2(tmp_path):
    bad_map = tmp_path / "map"
    bad_map.write_text("dave\n", encoding="utf-8")
    empty = tmp_path / "credentials"
    empty.write_text("only-a-user\n", encoding="utf-8")
    common = ["report", "--prometheus-url", "http://127.0.0.1:9", "--mail", "--dry-run"]
    common += ["--mail-from", "a@example.org"]
    result = run_command(*common, "--mail-map", str(bad_map))
    assert result.returncode == 2 and "not 'user address'" in result.stderr
    result = run_command(*common, "--mail-domain", "x.org", "--smtp-credentials-file", str(empty))
    assert result.returncode == 2 and "a user line and a password line" in result.stderr


@pytest.mark.unit
def test_only_plain_user_names_make_up_an_address() -> None:
    settings = MailSettings(
        sender="gpu-report@example.org", domain="example.org", addresses={"odd name": "o@x.org"}
    )
    assert settings.address("dave") == "dave@example.org"
    assert settings.address("first.last+gpu") == "first.last+gpu@example.org"
    assert settings.address("odd name") == "o@x.org"  # the map names anyone
    for name in ("eve\nBcc: all@example.org", "a@b", "two words", "", "-rf"):
        assert settings.address(name) is None, name
    rows = [Row("eve\r\nBcc: all@example.org", 1.0, 0.5, 0.0), Row("dave", 2.0, 0.5, 0.0)]
    mailing = Mailing("7d", 0.0, rows, {}, [], Prices())
    assert [m["To"] for m in compose(mailing, settings)] == ["dave@example.org"]
