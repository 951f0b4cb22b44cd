"""``gpu-status-api report --mail``: each user's own figures of the window, and the admins'
cluster summary, by mail through an SMTP relay.

Each user with GPU time in the window gets one mail: GPU-hours, mean utilization and SM
activity, idle-held hours, energy (and its cost and CO2 when priced), and their top Slurm jobs
by GPU-hours. A job belongs to the users whose processes it ran (``gpu_process_info`` listed in
the window: the rules record no user per job), and its figures are the job's own
(``slurm_job:gpu_seconds:total`` and its siblings). Users without GPU time in the window, and
processes whose owner could not be read, get nothing. The admins get the cluster's GPU-hours per
state and every user's row.

A user's address is their line in ``--mail-map`` (``user address``), else ``user@--mail-domain``;
a user with neither is skipped with a warning. ``--dry-run`` prints the mails instead of sending
them. The relay is spoken to with STARTTLS whenever it offers it; credentials are only sent over
TLS.
"""

from __future__ import annotations

import argparse
import logging
import re
import smtplib
import ssl
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from servicekit.cliargs import positive, tcp_port
from servicekit.password import warn_if_exposed
from status_api.engine import EngineSettings, run_queries
from status_api.report import (
    Prices,
    Row,
    StateRow,
    render_states_table,
    render_table,
    usage,
)

__all__ = ["MailSettings", "Mailing", "add_mail_flags", "compose", "mail_settings", "send"]

log = logging.getLogger(__name__)

SMTP_TIMEOUT = 30.0
# A user name that can stand as the local part of user@--mail-domain as it is: label values
# come from the nodes, and one with a space, "@" or a line break must not make up an address.
_LOCAL_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
DEFAULT_TOP_JOBS = 5


class MailError(Exception):
    """The relay refused a mail, or could not be reached or logged in to."""


@dataclass(frozen=True)
class MailSettings:
    """Where the mails go and how they are sent; from the --mail flags."""

    sender: str
    admins: tuple[str, ...] = ()
    domain: str | None = None
    addresses: dict[str, str] = field(default_factory=dict)
    server: tuple[str, int] | None = None
    credentials: tuple[str, str] | None = None
    ca_file: Path | None = None
    dry_run: bool = False
    top_jobs: int = DEFAULT_TOP_JOBS

    def address(self, user: str) -> str | None:
        """A user's address: the mapping's, else user@domain; None when neither is known."""
        if user in self.addresses:
            return self.addresses[user]
        if self.domain and _LOCAL_PART.fullmatch(user):
            return f"{user}@{self.domain}"
        return None


@dataclass(frozen=True)
class Mailing:
    """What the mails say: the window, its rows, and the prices."""

    since: str
    until: float
    users: Sequence[Row]
    jobs: dict[str, list[Row]]  # user -> their jobs' rows, most GPU-hours first
    states: Sequence[StateRow]
    prices: Prices


def smtp_server(text: str) -> tuple[str, int]:
    """An argparse type for ``HOST:PORT`` (``[::1]:25`` for IPv6)."""
    host, separator, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not separator or not host:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT, e.g. smtp.example.org:587")
    return host, tcp_port()(port)


def add_mail_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("mail (--mail): each user their own summary, admins all")
    group.add_argument(
        "--mail", action="store_true",
        help="mail each user with GPU time in the window their figures and top jobs, and "
        "--admin-mail the cluster's, instead of printing the report",
    )  # fmt: skip
    group.add_argument("--smtp-server", type=smtp_server, help="relay, HOST:PORT")
    group.add_argument(
        "--smtp-credentials-file", type=Path,
        help="file with the relay's user on its first line and password on its second",
    )  # fmt: skip
    group.add_argument(
        "--smtp-ca-file", type=Path,
        help="CA certificate(s) to check the relay's STARTTLS certificate by (default: the "
        "system's)",
    )  # fmt: skip
    group.add_argument("--mail-from", help="sender address")
    group.add_argument(
        "--admin-mail", action="append", metavar="ADDRESS",
        help="who gets the cluster summary (repeatable)",
    )  # fmt: skip
    group.add_argument("--mail-domain", help="a user's address is USER@DOMAIN")
    group.add_argument(
        "--mail-map", type=Path,
        help="file of 'user address' lines; its addresses win over --mail-domain",
    )  # fmt: skip
    group.add_argument(
        "--top-jobs", type=positive(int), default=DEFAULT_TOP_JOBS,
        help=f"jobs listed in a user's mail (default {DEFAULT_TOP_JOBS})",
    )  # fmt: skip
    group.add_argument(
        "--dry-run", action="store_true", help="print the mails instead of sending them"
    )


def read_mail_map(path: Path) -> dict[str, str]:
    """``user address`` lines; blank lines and ``#`` comments skipped. ValueError if malformed."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"--mail-map {path}: {error.strerror or error}") from None
    addresses = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if len(words) != 2 or "@" not in words[1]:
            raise ValueError(f"--mail-map {path}:{number}: not 'user address': {raw!r}")
        addresses[words[0]] = words[1]
    return addresses


def read_credentials(path: Path) -> tuple[str, str]:
    """The relay's user and password: the file's first two lines. ValueError if unreadable."""
    warn_if_exposed(path, what="--smtp-credentials-file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ValueError(f"--smtp-credentials-file {path}: {error.strerror or error}") from None
    if len(lines) < 2 or not lines[0].strip() or not lines[1]:
        raise ValueError(f"--smtp-credentials-file {path}: needs a user line and a password line")
    return lines[0].strip(), lines[1]


def mail_settings(args: argparse.Namespace) -> MailSettings:
    """The --mail flags checked together; ValueError naming the flag at fault."""
    if not args.mail_from:
        raise ValueError("--mail needs --mail-from")
    if args.smtp_server is None and not args.dry_run:
        raise ValueError("--mail needs --smtp-server (or --dry-run)")
    if not args.mail_domain and args.mail_map is None:
        raise ValueError("--mail needs --mail-domain or --mail-map for the users' addresses")
    if args.by != "user":
        raise ValueError("--mail reports per user: leave --by out")
    return MailSettings(
        sender=args.mail_from,
        admins=tuple(args.admin_mail or ()),
        domain=args.mail_domain,
        addresses=read_mail_map(args.mail_map) if args.mail_map else {},
        server=args.smtp_server,
        credentials=(
            read_credentials(args.smtp_credentials_file) if args.smtp_credentials_file else None
        ),
        ca_file=args.smtp_ca_file,
        dry_run=args.dry_run,
        top_jobs=args.top_jobs,
    )


def job_owners(settings: EngineSettings, *, since: str, until: float) -> dict[str, set[str]]:
    """The Slurm jobs of each user in the window, from the processes the exporters listed."""
    query = (
        f'group by (slurm_job, user) (last_over_time(gpu_process_info{{slurm_job!=""}}[{since}]))'
    )
    (samples,) = run_queries(settings, [query], at=until)
    owners: dict[str, set[str]] = {}
    for labels, _ in samples:
        owners.setdefault(labels.get("user", ""), set()).add(labels.get("slurm_job", ""))
    return owners


def gather(
    settings: EngineSettings,
    *,
    since: str,
    until: float,
    states: Sequence[StateRow],
    prices: Prices,
) -> Mailing:
    """The rows the mails are written from: per user, per job, and which jobs are whose."""
    users = usage(settings, by="user", since=since, until=until)
    jobs = usage(settings, by="slurm_job", since=since, until=until)
    owners = job_owners(settings, since=since, until=until)
    per_user = {
        user: [row for row in jobs if row.key in owners.get(user, set())] for user in owners
    }
    return Mailing(since, until, users, per_user, states, prices)


def _when(until: float) -> str:
    return datetime.fromtimestamp(until, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _figures(row: Row, prices: Prices) -> str:
    """A user's (or the cluster's) figures, one a line."""

    def known(value: float | None, text: str) -> str:
        return "not measured" if value is None else text

    lines = [
        ("GPU-hours", f"{row.gpu_hours:.2f}"),
        ("mean utilization", known(row.mean_utilization, f"{(row.mean_utilization or 0):.1%}")),
        (
            "mean SM activity",
            "not measured (no GPU with GPM)"
            if row.mean_sm_activity is None
            else f"{row.mean_sm_activity:.1%}",
        ),
        ("idle-held hours", known(row.idle_held_hours, f"{(row.idle_held_hours or 0):.2f}")),
        ("energy", known(row.energy_kwh, f"{(row.energy_kwh or 0):.3f} kWh")),
    ]
    cost, co2 = prices.cost(row.energy_kwh), prices.co2_kg(row.energy_kwh)
    if cost is not None:
        lines.append(("energy cost", f"{cost:.2f} (at {prices.per_kwh:g} per kWh)"))
    if co2 is not None:
        lines.append(("CO2", f"{co2:.2f} kg (at {prices.co2_grams_per_kwh:g} g per kWh)"))
    return "".join(f"  {name:<18}{value}\n" for name, value in lines)


def user_body(row: Row, jobs: Sequence[Row], mailing: Mailing, *, top: int) -> str:
    text = (
        f"Hello {row.key},\n\n"
        f"your use of the cluster's GPUs in the {mailing.since} before "
        f"{_when(mailing.until)}:\n\n" + _figures(row, mailing.prices)
    )
    text += (
        "\n"
        + textwrap.fill(
            "Mean utilization is the share of time a kernel ran on the GPUs you held; SM activity "
            "the share of the GPUs' SMs that were busy (GPUs with GPM only). Idle-held hours are "
            "GPU-hours your processes held a GPU's memory without computing: nobody else could use "
            "those GPUs.",
            width=76,
        )
        + "\n"
    )
    if jobs:
        shown = sorted(jobs, key=lambda job: (-job.gpu_hours, job.key))[:top]
        text += f"\nYour top Slurm jobs by GPU-hours ({len(shown)} of {len(jobs)}):\n\n"
        text += render_table(shown, by="slurm_job", prices=mailing.prices, drop_unknown=True)
    return text


def admin_body(mailing: Mailing, *, mailed: int) -> str:
    total = sum(row.gpu_hours for row in mailing.users)
    energy = [row.energy_kwh for row in mailing.users if row.energy_kwh is not None]
    text = (
        f"GPU use of the cluster in the {mailing.since} before {_when(mailing.until)}.\n\n"
        f"{len(mailing.users)} users held GPUs for {total:.2f} GPU-hours"
    )
    if energy:
        text += f" and {sum(energy):.3f} kWh"
    text += f"; {mailed} of them were mailed their own summary.\n"
    if mailing.states:
        text += "\nThe cluster's GPU-hours per state:\n\n" + render_states_table(mailing.states)
    text += "\nPer user:\n\n" + render_table(mailing.users, by="user", prices=mailing.prices)
    return text


def _message(settings: MailSettings, to: Sequence[str], subject: str, body: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = settings.sender
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain=settings.sender.rpartition("@")[2] or None)
    # Plain 7-bit text where it is ASCII, so that the mail reads the same in any client and in
    # --dry-run's output; quoted-printable only for the names that need it.
    message.set_content(body, cte="7bit" if body.isascii() else "quoted-printable")
    return message


def compose(mailing: Mailing, settings: MailSettings) -> list[EmailMessage]:
    """One mail per user with GPU time and an address, then the admins' summary."""
    messages = []
    for row in mailing.users:
        if not row.key or row.gpu_hours <= 0:
            continue  # an unknown owner has no mailbox
        address = settings.address(row.key)
        if address is None:
            log.warning(
                "no address for user %r: not in --mail-map, and no --mail-domain or a name "
                "that cannot be an address's local part",
                row.key,
            )
            continue
        subject = f"Your GPU use in the {mailing.since} before {_when(mailing.until)}"
        body = user_body(row, mailing.jobs.get(row.key, []), mailing, top=settings.top_jobs)
        messages.append(_message(settings, [address], subject, body))
    if settings.admins:
        subject = f"GPU use of the cluster in the {mailing.since} before {_when(mailing.until)}"
        body = admin_body(mailing, mailed=len(messages))
        messages.append(_message(settings, settings.admins, subject, body))
    return messages


def send(messages: Sequence[EmailMessage], settings: MailSettings) -> int:
    """Send through the relay, STARTTLS when it offers it; the number of mails it refused.

    MailError when the relay cannot be reached, or credentials would go over plain text.
    """
    if settings.dry_run:
        for message in messages:
            sys.stdout.write(message.as_string() + "\n")
        return 0
    if not messages:
        return 0
    assert settings.server is not None
    host, port = settings.server
    refused = 0
    try:
        with smtplib.SMTP(host, port, timeout=SMTP_TIMEOUT) as smtp:
            smtp.ehlo()
            if smtp.has_extn("starttls"):
                context = ssl.create_default_context(cafile=settings.ca_file)
                smtp.starttls(context=context)
                smtp.ehlo()
            elif settings.credentials is not None:
                raise MailError(f"{host}:{port} offers no STARTTLS: credentials not sent in clear")
            if settings.credentials is not None:
                smtp.login(*settings.credentials)
            for message in messages:
                try:
                    smtp.send_message(message)
                except (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError) as error:
                    # One refused address must not keep the others' mails back.
                    log.error("mail to %s refused: %s", message["To"], error)
                    refused += 1
    except (smtplib.SMTPException, ssl.SSLError, OSError) as error:
        raise MailError(f"{host}:{port}: {error}") from error
    return refused
