"""Quarantine notification by e-mail (QUA-3): one message per job, quarantine series and reason.

The engine decides *when* (a new series, or a changed reason); this module only sends. Plain stdlib
:mod:`smtplib` over a short-lived connection: a notification is rare, so a connection pool or an async client
buys nothing, and the stdlib client is well kept and supports STARTTLS and AUTH.
"""

from __future__ import annotations

import logging
import os
import smtplib
from dataclasses import dataclass
from email.message import EmailMessage

log = logging.getLogger("scimgrip.engine.notify")


@dataclass(frozen=True)
class SmtpNotifier:
    to: str
    host: str = "127.0.0.1"
    port: int = 25
    sender: str = "scimgrip@localhost"
    username: str | None = None
    password_env: str | None = None
    starttls: bool = False
    timeout: float = 10.0

    def message(self, job: str, reason: str, detail: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = self.to
        msg["Subject"] = f"[scimgrip] provisioning job {job} is in quarantine: {reason}"
        msg.set_content(
            f"The provisioning job {job!r} was put in quarantine.\n\n"
            f"Reason: {reason}\nDetail: {detail}\n\n"
            "While quarantined the job runs less often (6 h, 12 h, 24 h, then daily) and is disabled after 28 days.\n"
            f"See `scimgrip job status {job}` and `scimgrip logs {job} --status failure`; after fixing the cause,\n"
            f"`scimgrip job restart {job}` lifts the quarantine"
            + (" (add --force-deletes to apply the held deletions)." if reason == "TooManyDeletes" else ".")
            + "\n")
        return msg

    def quarantined(self, job: str, reason: str, detail: str) -> None:
        msg = self.message(job, reason, detail)
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.username:
                smtp.login(self.username, os.environ.get(self.password_env or "", ""))
            smtp.send_message(msg)
        log.info("sent the quarantine notification for job %s (%s) to %s", job, reason, self.to)
