"""``engine/health.py``: the QUA-1 threshold catalogue, the QUA-2 schedule, ERR-3f back-off, DEL-1 threshold."""

from __future__ import annotations

import datetime as dt

import pytest

from scimgrip.engine.health import (
    CycleCounts,
    deletion_threshold_exceeded,
    error_code,
    escrow_delay,
    escrow_quarantine_reason,
    next_quarantine_attempt,
)

H = dt.timedelta(hours=1)
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(("failed", "succeeded", "references", "reason"), [
    (4_999, 0, 0, None),                                            # evaluation starts at 5,000
    (4_000, 0, 0, None),
    (5_000, 0, 0, "EncounteredEscrowProportionThreshold"),
    (30_000, 5_000, 0, "EncounteredEscrowProportionThreshold"),     # > 40 %
    (20_000, 100_000, 0, None),                                     # 16.7 %, under 40,000
    (45_000, 1_000_000, 0, "EncounteredEscrowProportionThreshold"),  # > 40,000 whatever the proportion
    (40_000, 1_000_000, 21_000, "EncounteredTotalEscrowThreshold"),  # 61,000 with references > 60,000
    (40_000, 1_000_000, 20_000, None),                              # exactly 60,000: not more than
    (4_000, 0, 30_000, None),                                       # references never count for the 40 % rule
])
def test_qua_1_threshold_catalogue(failed: int, succeeded: int, references: int, reason: str | None) -> None:
    assert escrow_quarantine_reason(CycleCounts(succeeded, failed, references)) == reason


def test_qua_2_schedule() -> None:
    assert next_quarantine_attempt(T0, T0) == T0 + 6 * H
    assert next_quarantine_attempt(T0, T0 + 6 * H) == T0 + 12 * H
    assert next_quarantine_attempt(T0, T0 + 12 * H) == T0 + 24 * H
    assert next_quarantine_attempt(T0, T0 + 24 * H) == T0 + 48 * H
    assert next_quarantine_attempt(T0, T0 + 47 * H) == T0 + 48 * H
    assert next_quarantine_attempt(T0, T0 + 48 * H) == T0 + 72 * H
    attempts, now = [], T0
    for _ in range(6):
        now = next_quarantine_attempt(T0, now)
        attempts.append((now - T0) / H)
    assert attempts == [6, 12, 24, 48, 72, 96]


def test_err_3f_escrow_backoff() -> None:
    interval = dt.timedelta(minutes=40)
    assert [escrow_delay(n, interval) / interval for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert escrow_delay(12, interval) == dt.timedelta(hours=24)


def test_del_1_threshold() -> None:
    assert not deletion_threshold_exceeded(3, 100, 3, None)
    assert deletion_threshold_exceeded(4, 100, 3, None)
    assert not deletion_threshold_exceeded(9, 100, 3, 10.0)         # max(3, 10 % of 100)
    assert deletion_threshold_exceeded(11, 100, 3, 10.0)
    assert not deletion_threshold_exceeded(10_000, 100, None, None)


def test_err_2_codes() -> None:
    assert [error_code(s) for s in (None, 401, 404, 409, 429, 500, 503)] == [
        "Timeout", "Unauthorized", "InvalidAnchor", "EntryConflict", "TooManyRequests", "InternalServerError",
        "InternalServerError"]
