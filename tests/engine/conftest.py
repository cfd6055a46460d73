"""Fixtures of the engine tests: `patient_bulk`, for tests that assert a few operations went through `/Bulk`."""

from __future__ import annotations

from typing import Any

import pytest

from scimgrip.engine import bulk_batcher
from scimgrip.engine.bulk_batcher import BulkBatcher


@pytest.fixture
def patient_bulk(monkeypatch: pytest.MonkeyPatch) -> list[BulkBatcher]:
    """The cycle's batcher lingers 1 s for more operations instead of 5 ms, so the few creates of a small test meet
    in one BulkRequest even on a loaded machine (a batch of one goes as the plain request). The batchers made."""
    made: list[BulkBatcher] = []

    class PatientBatcher(BulkBatcher):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["linger"] = 1.0
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(bulk_batcher, "BulkBatcher", PatientBatcher)     # the cycle imports it from there
    return made
