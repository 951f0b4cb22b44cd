"""An SMTP server on loopback (aiosmtpd) that keeps every mail a real Alertmanager sends it.

Used by the owner-mail test (tests/test_owner_mail_e2e.py) and the report mail test
(tests/test_report_mail.py), which has it offer STARTTLS and ask for a login. Each mail is kept
with its envelope (sender and recipients, what the relay delivers by) and its parsed message
(headers and body, what the recipient reads).
"""

from __future__ import annotations

import email
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import default
from typing import Any

from aiosmtpd.controller import Controller

from simulator.proc import free_port


@dataclass(frozen=True)
class Mail:
    """One mail as the server received it."""

    sender: str
    recipients: tuple[str, ...]  # the envelope's RCPT TO, in order
    message: EmailMessage

    @property
    def text(self) -> str:
        """The plain-text body, decoded, with the line ends of the wire (CRLF) made plain."""
        body = self.message.get_body(preferencelist=("plain",))
        assert body is not None, f"no text/plain part in:\n{self.message}"
        return str(body.get_content()).replace("\r\n", "\n")  # type: ignore[attr-defined]


class Mailbox:
    """An SMTP server on 127.0.0.1, recording every mail; no TLS and no login unless
    ``smtp_parameters`` (aiosmtpd's SMTP options: tls_context, require_starttls, authenticator,
    auth_required) ask for them."""

    def __init__(self, **smtp_parameters: Any) -> None:
        self.port = free_port()
        self.smarthost = f"127.0.0.1:{self.port}"
        self._mails: list[Mail] = []
        self._lock = threading.Lock()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port, **smtp_parameters)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        # aiosmtpd's handler hook; the name is its API.
        message = email.message_from_bytes(envelope.original_content, policy=default)
        assert isinstance(message, EmailMessage)
        mail = Mail(envelope.mail_from, tuple(envelope.rcpt_tos), message)
        with self._lock:
            self._mails.append(mail)
        return "250 OK"

    def __enter__(self) -> Mailbox:
        self._controller.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._controller.stop()

    def mails(self) -> list[Mail]:
        with self._lock:
            return list(self._mails)

    def wait_for_mail(self, *, timeout: float = 60) -> Mail:
        """The first mail, waiting up to ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            mails = self.mails()
            if mails:
                return mails[0]
            time.sleep(0.2)
        raise TimeoutError(f"no mail at {self.smarthost} after {timeout} s")
