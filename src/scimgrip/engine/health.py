"""Job health: error codes, escrow back-off and quarantine thresholds (provisioning-engine.md §10, §11).

Pure functions so that every documented threshold is a plain unit test (the QUA catalogue).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

# ERR-2 codes by HTTP status of the target's answer
_STATUS_CODES = {
    400: "UnprocessableEntity",
    401: "Unauthorized",
    403: "InsufficientRights",
    404: "InvalidAnchor",
    405: "MethodNotAllowed",
    409: "EntryConflict",
    412: "Conflict",
    413: "UnprocessableEntity",
    429: "TooManyRequests",
    501: "NotImplemented",
}


def error_code(status: int | None, scim_type: str | None = None) -> str:
    """Map a target failure to Entra's error taxonomy (ERR-2)."""
    if status is None:
        return "Timeout"
    if status == 400 and scim_type in ("invalidValue", "invalidSyntax"):
        return "SchemaPropertyCanOnlyAcceptValue" if scim_type == "invalidValue" else "UnprocessableEntity"
    if status == 400 and scim_type == "uniqueness":
        return "EntryConflict"
    if status >= 500:
        return _STATUS_CODES.get(status, "InternalServerError")
    return _STATUS_CODES.get(status, "UnprocessableEntity")


def escrow_delay(attempts: int, interval: dt.timedelta) -> dt.timedelta:
    """ERR-3f: the next attempt after 1, 2, 4, 8 … cycles, capped at 24 hours."""
    cycles = 2 ** max(attempts - 1, 0)
    delay: dt.timedelta = min(interval * cycles, dt.timedelta(hours=24))
    return delay


# QUA-2: retry schedule while quarantined, counted from the first failure of the series
QUARANTINE_SCHEDULE = (dt.timedelta(hours=6), dt.timedelta(hours=12), dt.timedelta(hours=24))
QUARANTINE_DISABLE_AFTER = dt.timedelta(days=28)


def next_quarantine_attempt(series_began: dt.datetime, now: dt.datetime) -> dt.datetime:
    """+6 h, +12 h, +24 h after the series began, then every 24 h (QUA-2)."""
    for step in QUARANTINE_SCHEDULE:
        at = series_began + step
        if at > now:
            return at
    days = int((now - series_began) / dt.timedelta(days=1)) + 1
    return series_began + dt.timedelta(days=days)


@dataclass(frozen=True)
class CycleCounts:
    """Export attempts of one cycle, split as QUA-1 requires."""

    succeeded: int = 0
    failed: int = 0             # non-reference failures
    reference_failed: int = 0   # manager / member failures


def escrow_quarantine_reason(c: CycleCounts) -> str | None:
    """QUA-1 thresholds: evaluation starts at 5,000 failures; >40 % or >40,000 (references excluded);
    >60,000 including references regardless of proportion."""
    if c.failed + c.reference_failed > 60_000:
        return "EncounteredTotalEscrowThreshold"
    if c.failed < 5_000:
        return None
    total = c.failed + c.succeeded
    if c.failed > 40_000 or (total and c.failed / total > 0.40):
        return "EncounteredEscrowProportionThreshold"
    return None


def deletion_threshold_exceeded(pending: int, linked: int, threshold: int | None, percent: float | None) -> bool:
    """DEL-1: per cycle; threshold = max(count, percent × linked objects)."""
    limits = []
    if threshold is not None:
        limits.append(threshold)
    if percent is not None:
        limits.append(int(percent / 100 * linked))
    if not limits:
        return False
    return pending > max(limits)
