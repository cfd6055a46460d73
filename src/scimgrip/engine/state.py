"""The engine's persistent state: jobs, links (the connector data store), escrow, references, staged deletes, logs.

Concepts and requirement ids are those of ``provisioning-engine.md`` §1 (job, link, CDS, watermark, escrow,
quarantine, cycle/change ids, job status), CYC-4/5/8/9, DEL-1, ERR-1/3f, QUA-2 and LOG-1/2/4. The one backend is
:class:`scimgrip.storage.sql.engine_store.SqlEngineStore` (SQLite and PostgreSQL, the same database as the SCIM
storage); this module holds only the vocabulary and the contract, so the engine never imports SQL.

Per-job calls take ``job`` as a job id, a job name or a :class:`Job` (:data:`JobRef`; an id or a ``Job`` saves
a lookup); job-level calls take the job name.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, TypedDict

JobStatus = Literal["NotConfigured", "NotRun", "Active", "Paused", "Quarantine"]
JOB_STATUSES: tuple[str, ...] = ("NotConfigured", "NotRun", "Active", "Paused", "Quarantine")

LinkState = Literal["active", "disabled", "deleted"]
LINK_STATES: tuple[str, ...] = ("active", "disabled", "deleted")

RefKind = Literal["manager", "member"]
REF_KINDS: tuple[str, ...] = ("manager", "member")

StagedAction = Literal["disable", "delete"]
STAGED_ACTIONS: tuple[str, ...] = ("disable", "delete")

LogAction = Literal["create", "update", "disable", "delete", "stagedDelete", "other"]
LOG_ACTIONS: tuple[str, ...] = ("create", "update", "disable", "delete", "stagedDelete", "other")
LogStatus = Literal["success", "failure", "skipped", "warning", "planned"]
LOG_STATUSES: tuple[str, ...] = ("success", "failure", "skipped", "warning", "planned")
StepType = Literal["import", "scoping", "matching", "processing", "referenceResolution", "export"]

RESET_SCOPES: frozenset[str] = frozenset(
    {"None", "ConnectorDataStore", "Escrows", "Watermark", "QuarantineState", "Full", "ForceDeletes"})
PORTAL_RESTART: frozenset[str] = frozenset({"QuarantineState", "Watermark", "Escrows"})
"""CYC-5: an empty ``resetScope`` is the portal's *Restart provisioning*."""

CYCLE_INTERVAL = dt.timedelta(minutes=40)          # CYC-3 default interval
ESCROW_CAP = dt.timedelta(hours=24)                # ERR-3f cap
QUARANTINE_MAX_AGE = dt.timedelta(days=28)         # QUA-2: escrows dropped and job disabled after this
DEFAULT_LOG_RETENTION = dt.timedelta(days=30)      # LOG-4 default retention


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# ---------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------
class EngineStateError(Exception):
    """Base of the engine-state errors."""


class JobNotFound(EngineStateError, KeyError):
    """No job with that name (or id)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "job not found"


class JobExists(EngineStateError, ValueError):
    """``create_job`` with a name already taken."""


# ---------------------------------------------------------------------------------------------------------------
# records
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Quarantine:
    """A job's quarantine (QUA-1/2): why, since when (series began), how many re-evaluations (``level``, drives
    the QUA-2 schedule), and the reason last e-mailed (QUA-3: one e-mail per series and reason)."""

    reason: str
    since: dt.datetime
    level: int = 0
    last_email_reason: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Job:
    """One provisioning job (§1) with its status (§1 *Job status*) and cycle bookkeeping (CYC-4/7, LOG-3)."""

    id: int
    name: str
    config_text: str
    fingerprint: str
    status: JobStatus
    created: dt.datetime
    updated: dt.datetime
    watermark: str | None = None
    last_cycle_id: str | None = None
    last_cycle_started: dt.datetime | None = None
    last_cycle_ended: dt.datetime | None = None
    last_successful_cycle: dt.datetime | None = None
    last_successful_cycle_with_exports: dt.datetime | None = None
    next_cycle_at: dt.datetime | None = None
    steady_state_first: dt.datetime | None = None
    steady_state_last: dt.datetime | None = None
    counters: dict[str, int] = field(default_factory=dict)
    progress: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)   # free-form engine bookkeeping (JSON)
    quarantine: Quarantine | None = None


JobRef: TypeAlias = "int | str | Job"
"""A job id, a job name, or a :class:`Job`."""

JOB_STATE_FIELDS: frozenset[str] = frozenset({
    "watermark", "last_cycle_id", "last_cycle_started", "last_cycle_ended", "last_successful_cycle",
    "last_successful_cycle_with_exports", "next_cycle_at", "steady_state_first", "steady_state_last", "counters",
    "progress", "state", "quarantine",
})
"""Keyword arguments accepted by :meth:`EngineStore.save_job_state`."""


@dataclass(frozen=True)
class Link:
    """An object connection (§1, MAT): source anchor ↔ target SCIM id, plus what was last exported.

    ``exported`` maps target paths (``userName``, ``name.givenName``, ``emails[type eq "work"].value``…) to the
    last values sent, so an incremental cycle PATCHes only what changed without reading the target.
    ``source_hash`` lets a source without deltas skip unchanged objects; ``in_scope`` and ``state`` record the
    last decision (DEP-1: the link is kept when the object is disabled or leaves scope).
    """

    job_id: int
    object_type: str
    source_id: str
    target_id: str | None
    exported: dict[str, Any] = field(default_factory=dict)
    source_hash: str | None = None
    in_scope: bool = True
    state: LinkState = "active"
    updated: dt.datetime | None = None
    display_name: str | None = None


@dataclass(frozen=True)
class Escrow:
    """A per-object failure awaiting retry (ERR-1). ``is_reference``: a manager/member failure (QUA-1 counts them
    apart). ``first_failed`` survives re-escrows, for QUA-2's 28-day limit."""

    job_id: int
    object_type: str
    source_id: str
    reason_code: str
    detail: str | None
    attempts: int
    next_retry_at: dt.datetime
    is_reference: bool = False
    first_failed: dt.datetime | None = None
    last_failed: dt.datetime | None = None


@dataclass(frozen=True)
class PendingRef:
    """A reference that could not be set yet (CYC-9): ``holder`` (a user for ``manager``, a group for ``member``)
    points at ``target``, which is not provisioned yet."""

    job_id: int
    kind: RefKind
    holder_source_id: str
    target_source_id: str
    created: dt.datetime | None = None


@dataclass(frozen=True)
class StagedDelete:
    """A disable/delete held back by the accidental-deletion threshold (DEL-1); ``approved`` after
    ``restart({"ForceDeletes"})``."""

    job_id: int
    object_type: str
    source_id: str
    action: StagedAction
    staged_at: dt.datetime | None = None
    approved: bool = False


@dataclass(frozen=True)
class LogStep:
    """One ``provisioningSteps[]`` entry (LOG-1, [G-STEP])."""

    name: str
    type: StepType
    status: str = "success"
    description: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModifiedProperty:
    """One ``modifiedProperties[]`` entry (LOG-1): a target attribute's old and new value."""

    name: str
    old: Any = None
    new: Any = None


@dataclass(frozen=True)
class TargetCall:
    """One HTTP call to the target made for this change (LOG-4: every call is attributable to one change id)."""

    method: str
    path: str
    status: int
    duration_ms: float = 0.0


@dataclass(frozen=True)
class LogRecord:
    """One immutable provisioning log record per (object, change) (LOG-1, LOG-4). ``id`` is set by the store."""

    job_id: int
    cycle_id: str
    change_id: str
    object_type: str
    source_id: str
    action: LogAction
    status: LogStatus
    at: dt.datetime = field(default_factory=utcnow)
    duration_ms: float = 0.0
    source_display: str | None = None
    target_id: str | None = None
    reason: str | None = None          # ERR-2 error code or skip reason (``RedundantExport``…)
    detail: str | None = None          # human-readable message
    steps: tuple[LogStep, ...] = ()
    modified: tuple[ModifiedProperty, ...] = ()
    calls: tuple[TargetCall, ...] = ()
    id: int | None = None


class LogRow(TypedDict):
    """A :class:`LogRecord` to append, as plain data: the engine's fast path (``EngineStore.append_log_rows``).

    Same fields and meaning; ``steps``, ``modified`` and ``calls`` are dicts with exactly the keys of
    :class:`LogStep`, :class:`ModifiedProperty` and :class:`TargetCall`, in field order. Building 100,000 frozen
    dataclasses per 10,000-object cycle only to encode them again was most of the cost of persisting its log.
    """

    job_id: int
    cycle_id: str
    change_id: str
    object_type: str
    source_id: str
    action: str
    status: str
    at: dt.datetime
    duration_ms: float
    source_display: str | None
    target_id: str | None
    reason: str | None
    detail: str | None
    steps: list[dict[str, Any]]
    modified: list[dict[str, Any]]
    calls: list[dict[str, Any]]


# ---------------------------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------------------------
def next_retry(attempts: int, interval: dt.timedelta = CYCLE_INTERVAL) -> dt.timedelta:
    """Delay before the next attempt of an escrowed object after ``attempts`` failed attempts (ERR-3f).

    Entra documents two schedules: *per-object* escrow retries "in later cycles with gradually decreasing
    frequency" (ERR-1, made precise by our ERR-3f: 1, 2, 4, 8 … cycles, capped at 24 h), and the *job-level*
    quarantine cadence (QUA-2: +6 h, +12 h, +24 h, then daily for 28 days). An escrow is a per-object record, so
    this function is ERR-3f: a transient failure of one user is retried in the very next cycle (40 min) instead
    of 6 h later, while a persistent one backs off to daily and stops loading the target. The QUA-2 cadence
    belongs to the job and is :func:`quarantine_next_attempt`.
    """
    if attempts <= 0:
        return dt.timedelta(0)
    cycles = int(2 ** min(attempts - 1, 30))
    return min(interval * cycles, ESCROW_CAP)


def quarantine_next_attempt(series_began: dt.datetime, attempts: int) -> dt.datetime:
    """QUA-2: the quarantined job's next run, counted from the first failure: +6 h, +12 h, +24 h, then every
    24 h (``attempts`` = retries already made in this series)."""
    if attempts <= 0:
        return series_began + dt.timedelta(hours=6)
    if attempts == 1:
        return series_began + dt.timedelta(hours=12)
    return series_began + dt.timedelta(hours=24 * (attempts - 1))


def parse_reset_scope(text: str | None) -> set[str]:
    """``"Escrows, Watermark"`` → ``{"Escrows", "Watermark"}`` (CYC-5); unknown names raise ``ValueError``."""
    scopes = {p.strip() for p in (text or "").split(",") if p.strip()}
    by_lower = {s.lower(): s for s in RESET_SCOPES}
    out: set[str] = set()
    for s in scopes:
        if s.lower() not in by_lower:
            raise ValueError(f"unknown reset scope {s!r}; expected some of {', '.join(sorted(RESET_SCOPES))}")
        out.add(by_lower[s.lower()])
    return out


def job_id_of(job: int | Job) -> int:
    """The id of a job given by id or :class:`Job` (names need the store: it resolves them)."""
    return job.id if isinstance(job, Job) else int(job)


# ---------------------------------------------------------------------------------------------------------------
# the contract
# ---------------------------------------------------------------------------------------------------------------
class EngineStore(abc.ABC):
    """Persistent engine state. Thread-safe; every call that returns has committed."""

    # -- jobs ------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def create_job(self, name: str, config_text: str, fingerprint: str,
                   status: JobStatus = "NotRun") -> Job:
        """A new job (§1). :class:`JobExists` when the name is taken."""

    @abc.abstractmethod
    def get_job(self, name: str) -> Job | None:
        """The job called ``name``, or None."""

    @abc.abstractmethod
    def get_job_by_id(self, job_id: int) -> Job | None:
        """The job with that id, or None."""

    @abc.abstractmethod
    def list_jobs(self) -> list[Job]:
        """Every job, by name."""

    @abc.abstractmethod
    def delete_job(self, name: str) -> bool:
        """Delete the job and all its state (links, escrow, references, staged deletes, logs, lock)."""

    @abc.abstractmethod
    def update_job_config(self, name: str, config_text: str, fingerprint: str) -> Job:
        """Store a new configuration. A changed fingerprint (mappings/scope) clears the watermark and keeps the
        links (CYC-4), so the next cycle is an initial one that re-evaluates every object."""

    @abc.abstractmethod
    def set_status(self, name: str, status: JobStatus) -> Job:
        """Set ``synchronizationStatus.code`` (§1 *Job status*)."""

    @abc.abstractmethod
    def save_job_state(self, name: str, **fields: Any) -> Job:
        """Update any of :data:`JOB_STATE_FIELDS` (watermark, cycle times, counters, progress, steady state, the
        free-form ``state`` dict, ``quarantine``: a :class:`Quarantine` or None to lift it; ``counters``,
        ``progress`` and ``state`` are replaced whole). Unknown names raise ``TypeError``."""

    @abc.abstractmethod
    def restart(self, name: str, scopes: Collection[str]) -> Job:
        """CYC-5 ``resetScope``: an empty set is the portal restart (:data:`PORTAL_RESTART`); ``Full`` is every
        scope; ``ConnectorDataStore`` drops the links (and pending references) and clears the watermark;
        ``Escrows``, ``Watermark``, ``QuarantineState`` clear what they name; ``ForceDeletes`` approves the staged
        deletes (DEL-1) and lifts a ``TooManyDeletes`` quarantine. A restart that re-reads everything
        (``Watermark``) without ``ForceDeletes`` rejects the staged deletes: the next cycle re-stages what still
        applies."""

    # -- run lock (CYC-8) --------------------------------------------------------------------------------------
    @abc.abstractmethod
    def try_lock(self, name: str, owner: str, ttl: float) -> bool:
        """Take the run lock ``name`` for ``owner`` for ``ttl`` seconds; True if taken (or already ours).
        Held in the database, so it works across processes; a lock past its expiry is free (CYC-8)."""

    @abc.abstractmethod
    def refresh_lock(self, name: str, owner: str, ttl: float) -> bool:
        """Extend our lock to now + ``ttl``; False if it is not ours (any more)."""

    @abc.abstractmethod
    def release_lock(self, name: str, owner: str) -> bool:
        """Release our lock; False if it was not ours."""

    @abc.abstractmethod
    def lock_holder(self, name: str) -> tuple[str, dt.datetime] | None:
        """(owner, expires) of a live lock, or None."""

    # -- links: the connector data store -----------------------------------------------------------------------
    @abc.abstractmethod
    def get_link(self, job: JobRef, object_type: str, source_id: str) -> Link | None:
        """The link of one source object."""

    @abc.abstractmethod
    def get_links(self, job: JobRef, object_type: str, source_ids: Iterable[str]) -> dict[str, Link]:
        """The links of many source objects in a few round trips, by source id (absent ones omitted)."""

    @abc.abstractmethod
    def find_link_by_target(self, job: JobRef, object_type: str, target_id: str) -> Link | None:
        """The link whose target SCIM id is ``target_id``."""

    @abc.abstractmethod
    def put_link(self, link: Link) -> Link:
        """Insert or replace a link (``updated`` set to now)."""

    @abc.abstractmethod
    def put_links(self, links: Sequence[Link]) -> None:
        """Insert or replace many links in one transaction, batched."""

    @abc.abstractmethod
    def delete_link(self, job: JobRef, object_type: str, source_id: str) -> bool:
        """Remove one link (the object is no longer managed)."""

    @abc.abstractmethod
    def delete_links(self, job: JobRef, object_type: str, source_ids: Iterable[str]) -> int:
        """Remove many links; how many existed."""

    @abc.abstractmethod
    def iter_links(self, job: JobRef, object_type: str | None = None, *, in_scope: bool | None = None,
                   batch: int = 1000) -> Iterator[Link]:
        """Stream the links (by object type, then source id), ``batch`` rows per query."""

    @abc.abstractmethod
    def link_source_ids(self, job: JobRef, object_type: str) -> set[str]:
        """The source ids of every link of one type (a complete source's cycle finds hard deletes with it)."""

    @abc.abstractmethod
    def count_links(self, job: JobRef, object_type: str | None = None, *, in_scope: bool | None = None) -> int:
        """CDS count (§1: grows on entering scope, does not shrink on soft/hard delete)."""

    # -- escrow (ERR-1) ----------------------------------------------------------------------------------------
    @abc.abstractmethod
    def put_escrow(self, job: JobRef, object_type: str, source_id: str, reason_code: str, detail: str | None,
                   attempts: int, next_retry_at: dt.datetime, is_reference: bool = False) -> Escrow:
        """Record (or update) a failure of one object; ``first_failed`` is kept across updates."""

    @abc.abstractmethod
    def get_escrow(self, job: JobRef, object_type: str, source_id: str,
                   is_reference: bool = False) -> Escrow | None:
        """One escrow entry."""

    @abc.abstractmethod
    def due_escrows(self, job: JobRef, now: dt.datetime, limit: int | None = None) -> list[Escrow]:
        """Entries whose ``next_retry_at`` ≤ ``now``, earliest first."""

    @abc.abstractmethod
    def list_escrows(self, job: JobRef) -> list[Escrow]:
        """Every entry of the job."""

    @abc.abstractmethod
    def clear_escrow(self, job: JobRef, object_type: str, source_id: str,
                     is_reference: bool | None = None) -> int:
        """Drop an object's entries (both kinds when ``is_reference`` is None); how many."""

    @abc.abstractmethod
    def count_escrows(self, job: JobRef, *, is_reference: bool | None = None) -> int:
        """How many entries (QUA-1 counts reference failures apart)."""

    @abc.abstractmethod
    def clear_all_escrows(self, job: JobRef) -> int:
        """Stop every retry (ERR-1, CYC-5 ``Escrows``); how many were dropped."""

    # -- pending references (CYC-9) ----------------------------------------------------------------------------
    @abc.abstractmethod
    def put_pending_ref(self, job: JobRef, kind: RefKind, holder_source_id: str, target_source_id: str) -> None:
        """Remember that ``holder`` references ``target``, which is not provisioned yet (idempotent)."""

    @abc.abstractmethod
    def pending_for(self, job: JobRef, target_source_id: str) -> list[PendingRef]:
        """References waiting for ``target`` (to re-queue when it enters scope, CYC-9)."""

    @abc.abstractmethod
    def pending_for_many(self, job: JobRef, target_source_ids: Iterable[str]) -> dict[str, list[PendingRef]]:
        """:meth:`pending_for` for many targets at once, by target id (targets with none omitted)."""

    @abc.abstractmethod
    def clear_pending_ref(self, job: JobRef, kind: RefKind, holder_source_id: str,
                          target_source_id: str | None = None) -> int:
        """Drop one pending reference, or all of ``holder``'s of that kind when ``target`` is None."""

    @abc.abstractmethod
    def count_pending_refs(self, job: JobRef) -> int:
        """How many references are pending."""

    # -- staged deletes (DEL-1) --------------------------------------------------------------------------------
    @abc.abstractmethod
    def stage_delete(self, job: JobRef, object_type: str, source_id: str, action: StagedAction) -> None:
        """Hold a disable/delete back (DEL-1); re-staging replaces the action and resets approval."""

    @abc.abstractmethod
    def staged(self, job: JobRef, *, approved: bool | None = None) -> list[StagedDelete]:
        """The held deletes, in staging order."""

    @abc.abstractmethod
    def clear_staged(self, job: JobRef, object_type: str | None = None, source_id: str | None = None) -> int:
        """Drop one staged delete (both given) or all of the job's; how many."""

    # -- provisioning logs (LOG) -------------------------------------------------------------------------------
    @abc.abstractmethod
    def append_logs(self, records: Sequence[LogRecord]) -> None:
        """Append records in one batched transaction (LOG-4: immutable once written)."""

    @abc.abstractmethod
    def append_log_rows(self, rows: Sequence[LogRow]) -> None:
        """:meth:`append_logs` for records given as :class:`LogRow` (same rows stored, no dataclasses)."""

    @abc.abstractmethod
    def query_logs(self, job: JobRef, *, user: str | None = None, action: str | Collection[str] | None = None,
                   status: str | Collection[str] | None = None, since: dt.datetime | None = None,
                   until: dt.datetime | None = None, cycle_id: str | None = None, change_id: str | None = None,
                   object_type: str | None = None, limit: int = 100, after_id: int | None = None,
                   newest_first: bool = False) -> list[LogRecord]:
        """Records matching every filter given (LOG-2). ``user`` matches the source id, the target id or the
        source display name (case-insensitive). ``since`` inclusive, ``until`` exclusive. Paging: pass the last
        id seen as ``after_id`` (with ``newest_first`` it means "older than")."""

    @abc.abstractmethod
    def export_logs(self, job: JobRef, fmt: Literal["csv", "json"] = "csv", *,
                    part: Literal["logs", "steps", "modified"] = "logs", **filters: Any) -> Iterator[str]:
        """Stream the matching records as CSV or JSON text chunks (LOG-2 download; LOG-4 camelCase JSON).

        CSV ``part``: ``logs`` (one row per record), ``steps`` or ``modified`` (one row per step / modified
        property, joined on ``changeId``: Entra's three-file download). ``filters`` are :meth:`query_logs`'s.
        """

    @abc.abstractmethod
    def prune_logs(self, before: dt.datetime, job: JobRef | None = None) -> int:
        """Delete records older than ``before`` (LOG-4 retention); how many."""

    @abc.abstractmethod
    def count_logs(self, job: JobRef) -> int:
        """How many records the job has."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def merge_exported(exported: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``exported`` updated with ``changes``; a None value removes the path (what a PATCH ``remove`` did)."""
    out = dict(exported)
    for k, v in changes.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


__all__ = [
    "CYCLE_INTERVAL", "DEFAULT_LOG_RETENTION", "ESCROW_CAP", "JOB_STATE_FIELDS", "JOB_STATUSES", "LINK_STATES",
    "LOG_ACTIONS", "LOG_STATUSES", "PORTAL_RESTART", "QUARANTINE_MAX_AGE", "REF_KINDS", "RESET_SCOPES",
    "STAGED_ACTIONS", "EngineStateError", "EngineStore", "Escrow", "Job", "JobExists", "JobNotFound", "JobRef",
    "JobStatus", "Link", "LinkState", "LogAction", "LogRecord", "LogRow", "LogStatus", "LogStep", "ModifiedProperty",
    "PendingRef", "Quarantine", "RefKind", "StagedAction", "StagedDelete", "StepType", "TargetCall", "job_id_of",
    "merge_exported", "next_retry", "parse_reset_scope", "quarantine_next_attempt", "utcnow",
]
