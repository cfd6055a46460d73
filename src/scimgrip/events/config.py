"""Event settings from the environment (``SCIMGRIP_EVENTS_*``), read by the server and the CLI."""

from __future__ import annotations

import datetime as dt

from pydantic_settings import BaseSettings, SettingsConfigDict


class EventSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SCIMGRIP_EVENTS_", extra="ignore")

    retention_days: float = 90.0          # events (and delivered deliveries) older than this are removed
    dispatcher: bool = True               # run the webhook dispatcher in each server process
    poll_seconds: float = 0.2             # idle wait between dispatcher rounds
    batch: int = 64                       # resources (chains) leased per round
    per_resource: int = 100               # deliveries of one resource per chain, sent in order
    concurrency: int = 16                 # parallel HTTP requests per process
    timeout_seconds: float = 10.0         # per HTTP request
    lease_seconds: float = 60.0           # a killed worker's deliveries become due again after this
    retry_base_seconds: float = 5.0       # first retry delay; doubles per attempt, with jitter
    retry_cap_seconds: float = 6 * 3600.0  # longest delay between two attempts
    retry_window_seconds: float = 3 * 86400.0  # after this, a failing delivery is dead-lettered
    max_wait_seconds: float = 60.0        # longest long-poll of the events API

    def retry_window(self) -> dt.timedelta:
        return dt.timedelta(seconds=self.retry_window_seconds)
