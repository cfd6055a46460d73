"""The in-process rate-limit bucket used when one worker serves the database (the default)."""

from __future__ import annotations

from scimgrip.server.limits import LocalBuckets


def test_burst_then_refill_at_rate() -> None:
    b = LocalBuckets()
    admitted = [b.take("t", rate=10, burst=5, now=100.0) == 0.0 for _ in range(8)]
    assert admitted == [True] * 5 + [False] * 3
    wait = b.take("t", rate=10, burst=5, now=100.0)
    assert 0.09 < wait <= 0.1            # one token every 0.1 s
    assert b.take("t", rate=10, burst=5, now=100.1) == 0.0
    assert b.take("t", rate=10, burst=5, now=100.1) > 0
    assert b.take("t", rate=10, burst=5, now=200.0) == 0.0   # refilled, capped at the burst
    assert sum(b.take("t", rate=10, burst=5, now=200.0) == 0.0 for _ in range(10)) == 4


def test_tenants_do_not_share_a_bucket() -> None:
    b = LocalBuckets()
    assert all(b.take("a", rate=1, burst=2, now=0.0) == 0.0 for _ in range(2))
    assert b.take("a", rate=1, burst=2, now=0.0) > 0
    assert b.take("b", rate=1, burst=2, now=0.0) == 0.0
