"""Provisioning cycles: the pipeline import → scope → match → export → references, per object (§2–§14).

One :class:`Engine` runs one job. A cycle:

1. reads the source — everything (initial, CYC-1) or the changes since the watermark (incremental, CYC-2);
2. decides scope per object (assignment, scoping filters, ``IsSoftDeleted``; SCP-1…4);
3. for users, then groups: matches by priority (MAT-1…4), creates, or PATCHes only what differs from what was
   last exported (the connector data store keeps those values, so an unchanged object costs no request; MAP-6);
4. defers deprovisioning (disable / delete) until it knows how many there are, then applies them or — above
   the accidental-deletion threshold — stages them and quarantines ``TooManyDeletes`` (DEL-1);
5. resolves references (manager, group members) once their targets exist, re-queuing references to objects that
   enter scope later (CYC-9: Entra's gap is not copied);
6. escrows failures with back-off (ERR-3f), evaluates quarantine (QUA-1), stores the watermark.

Every object gets one provisioning-log record with its steps; every HTTP call carries the record's change id
(LOG-4). Objects are processed concurrently up to the target's concurrency; the target client enforces the
rate limit and ``Retry-After``. Against a target with ``/Bulk`` the writes of those threads are coalesced into
BulkRequests (``bulk_batcher``); an initial cycle matches from one listing of the target (``match_index``);
an incremental cycle skips users whose source is unchanged without evaluating their mappings (docs/engine.md).
A dry run (DRY) sends nothing but GETs and returns the plan as log records with status ``planned``.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from scimgrip.engine import health
from scimgrip.engine.model import Assignments, SourceObject
from scimgrip.engine.values import value_at

log = logging.getLogger("scimgrip.engine")
T = TypeVar("T")

MANAGER_PATH = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
MAX_BULK_WORKERS = 256      # threads feeding the BulkBatcher (each waits for its operation's result)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Record:
    """One provisioning-log record in the making (LOG-1 fields, snake_case)."""

    cycle_id: str
    change_id: str
    object_type: str
    source_id: str
    source_display: str = ""
    target_id: str | None = None
    action: str = "other"          # create | update | disable | delete | stagedDelete | other
    status: str = "success"        # success | failure | skipped | warning | planned
    reason: str | None = None
    detail: str | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    modified: list[dict[str, Any]] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    at: dt.datetime = field(default_factory=utcnow)
    duration_ms: float = 0.0
    logged: bool = True            # False: not stored in the provisioning log (an unchanged object, see LOG note)

    def step(self, name: str, status: str, description: str, **details: Any) -> None:
        self.steps.append({"name": name, "status": status, "description": description,
                           **({"details": details} if details else {})})

    def as_dict(self) -> dict[str, Any]:
        return {
            "cycle_id": self.cycle_id, "change_id": self.change_id, "at": self.at.isoformat(),
            "duration_ms": round(self.duration_ms, 3), "object_type": self.object_type,
            "source_id": self.source_id, "source_display": self.source_display, "target_id": self.target_id,
            "action": self.action, "status": self.status, "reason": self.reason, "detail": self.detail,
            "steps": self.steps, "modified": self.modified, "calls": self.calls,
        }


@dataclass
class CycleReport:
    cycle_id: str
    kind: str                                  # initial | incremental | on-demand
    started: dt.datetime
    finished: dt.datetime | None = None
    records: list[Record] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    quarantine: str | None = None
    quarantine_detail: str | None = None
    dry_run: bool = False
    requests: int = 0

    def tally(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.records:
            key = f"{r.action}:{r.status}"
            out[key] = out.get(key, 0) + 1
        self.counts = out
        return out


class JobQuarantined(Exception):
    """Raised inside a cycle to stop it at once (401: invalid credentials, QUA-1)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class _Deferred:
    """A deprovisioning action held until the cycle knows how many there are (DEL-1)."""

    record: Record
    kind: str                      # disable | delete
    run: Callable[[], None]


Progress = Callable[[int, int, str], None]


class Engine:
    """Runs cycles of one job. ``store``, ``source`` and ``target`` are the state store, a :class:`Source` and a
    :class:`~scimgrip.engine.target.ScimTarget` (or anything with the same methods)."""

    def __init__(self, job_name: str, config: Any, store: Any, source: Any, target: Any, *,
                 dry_run: bool = False, progress: Progress | None = None, notifier: Any = None,
                 clock: Callable[[], dt.datetime] = utcnow) -> None:
        from scimgrip.engine.expressions import EvalContext  # local: keeps import cost off the CLI start

        self.name = job_name
        self.config = config
        self.store = store
        self.source = source
        self.target = target
        self.dry_run = dry_run or bool(getattr(config, "dry_run", False))
        self.progress = progress
        self.notifier = notifier
        self.clock = clock
        self.ctx = EvalContext(now=None)
        self._lock = threading.Lock()
        self._planned_ids = 0
        self._new_links: dict[tuple[str, str], Any] = {}   # links written this cycle (dry run: would be)
        self._dropped_links: set[tuple[str, str]] = set()
        self._link_cache: dict[tuple[str, str], Any] = {}  # prefetched in bulk at cycle start
        self._dirty: dict[tuple[str, str], Any] = {}       # links to write, flushed in batches
        self._escrows: dict[tuple[str, str], Any] = {}     # this job's object escrows, read once per cycle
        self._reference_escrows: set[tuple[str, str]] = set()   # objects whose last reference write failed
        self._references_ok: set[tuple[str, str]] = set()       # objects whose references were written this cycle
        self._on_demand = False
        self._abort = False                                # set on a job-level failure (401): stop sending
        self._snapshots: dict[str, dict[str, Any]] = {}    # source objects that failed this cycle
        self._member_queue: list[tuple[Record, SourceObject, Any, Any]] | None = None
        self._indexes: dict[str, Any] = {}                 # object type -> MatchIndex (one listing, MAT-1)
        self._batcher: Any = None                          # BulkBatcher while a cycle runs against a Bulk target
        self._initial = False                              # the running cycle is initial (CYC-1)
        self._spc_adopted = False                          # the ServiceProviderConfig came from the job state
        # an unchanged source user is skipped without evaluating its mappings, unless one is not a function of
        # the source alone (Now, RandomString, Guid give another value each time)
        self._skip_unchanged = not any(
            m.kind == "Expression" and any(f in (m.source or "") for f in ("Now(", "RandomString(", "Guid("))
            for m in getattr(getattr(config, "users", None), "attribute_mappings", ()))

    # ---------------------------------------------------------------------------------------------------------
    # public entry points
    # ---------------------------------------------------------------------------------------------------------
    def _job(self) -> Any:
        from scimgrip.engine.state import JobNotFound

        job = self.store.get_job(self.name)
        if job is None:
            raise JobNotFound(self.name)
        self.job_id = job.id
        return job

    def on_call(self, call: Any) -> None:
        """Target hook: attach every HTTP call to the record of the change that made it (LOG-4)."""
        rec = (call.context or {}).get("record")
        if isinstance(rec, Record):   # list.append is atomic; a record's calls come from its own change
            rec.calls.append({"method": call.method, "path": call.path, "status": call.status,
                              "duration_ms": round(call.elapsed_ms, 3)})

    LOCK_TTL = 120.0          # seconds; a live holder refreshes it every LOCK_TTL / 4

    def _acquire(self, what: str) -> str:
        """Take the job lock (CYC-8: cycles never overlap). The owner names host and pid, so a lock left by a
        process that died on this host (SIGKILL, OOM) is taken over at once instead of blocking until it
        expires; a lock of another host expires after :attr:`LOCK_TTL` without heartbeats."""
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4()}"
        if self.store.try_lock(self.name, owner, self.LOCK_TTL):
            return owner
        holder = self.store.lock_holder(self.name)
        if holder is not None and _dead_local_owner(holder[0]):
            log.warning("job %s: taking over the lock of %s, a process that no longer runs", self.name, holder[0])
            self.store.release_lock(self.name, holder[0])
            if self.store.try_lock(self.name, owner, self.LOCK_TTL):
                return owner
        raise RuntimeError(f"job {self.name!r} is already running {what}; try again when it has finished")

    @contextlib.contextmanager
    def _locked(self, what: str) -> Iterator[None]:
        owner = self._acquire(what)
        stop = threading.Event()

        def heartbeat() -> None:
            while not stop.wait(self.LOCK_TTL / 4):
                try:
                    self.store.refresh_lock(self.name, owner, self.LOCK_TTL)
                except Exception:  # the next beat tries again
                    log.exception("job %s: could not refresh the lock", self.name)

        beat = threading.Thread(target=heartbeat, name="scimgrip-lock", daemon=True)
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()
            self.store.release_lock(self.name, owner)

    def run_cycle(self, *, initial: bool | None = None) -> CycleReport:
        """Run one cycle (initial if there is no watermark or ``initial`` is true). Holds the job lock (CYC-8)."""
        with self._locked("a cycle"):
            return self._cycle(initial)

    def provision_on_demand(self, source_ids: Sequence[str]) -> list[Record]:
        """OND: the full pipeline for a few objects now, with every step in the returned records."""
        with self._locked("a cycle"):
            self._on_demand = True
            report = CycleReport(str(uuid.uuid4()), "on-demand", self.clock(), dry_run=self.dry_run)
            wanted = set(source_ids)
            objects = [o for o in self.source.read_all() if o.id in wanted or
                       o.attributes.get("userPrincipalName") in wanted]
            if not objects:
                raise LookupError(f"no source object with id or userPrincipalName in {sorted(wanted)}")
            job = self._job()
            self._run_objects(report, job, objects, self.source.assignments(), complete=False)
            self.flush_links()
            self._persist_records(report)
            return report.records

    # ---------------------------------------------------------------------------------------------------------
    # the cycle
    # ---------------------------------------------------------------------------------------------------------
    def _cycle(self, initial: bool | None) -> CycleReport:
        job = self._job()
        state = dict(job.state or {})
        kind = "initial" if (initial or not job.watermark) else "incremental"
        report = CycleReport(str(uuid.uuid4()), kind, self.clock(), dry_run=self.dry_run)
        self._abort = False
        if kind == "initial":
            watermark = self.source.watermark()
            objects = list(self.source.read_all())
            assignments = self.source.assignments()
            complete = True
        else:
            changes = self.source.read_changes(job.watermark)
            watermark = changes.watermark
            objects = list(changes.objects)
            assignments = changes.assignments or self.source.assignments()
            complete = changes.complete
            if not complete:
                objects += self._escrowed_not_in(objects, state)
        self._initial = kind == "initial"
        self._adopt_spc(state)
        try:
            self._run_objects(report, job, objects, assignments, complete=complete, state=state)
        except JobQuarantined as q:
            self.flush_links()
            report.quarantine = q.reason
            self._enter_quarantine(q.reason, q.detail, state)
            report.finished = self.clock()
            self._persist_records(report)
            return report
        # job health after the cycle
        counts = health.CycleCounts(
            succeeded=sum(1 for r in report.records if r.status == "success" and r.action != "other"),
            failed=sum(1 for r in report.records if r.status == "failure" and r.reason != "ReferenceFailure"),
            reference_failed=sum(1 for r in report.records if r.reason == "ReferenceFailure"),
        )
        reason = report.quarantine or health.escrow_quarantine_reason(counts)
        now = self.clock()
        if not self.dry_run:
            if reason:
                report.quarantine = reason
                self._enter_quarantine(reason, report.quarantine_detail or
                                       f"{counts.failed} failures in cycle {report.cycle_id}", state)
            else:
                if job.quarantine is not None:
                    self.store.save_job_state(self.name, quarantine=None)
                self.store.set_status(self.name, "Active")
            changed = any(r.action != "other" and r.status == "success" for r in report.records)
            self._keep_spc(state)
            state["last_cycle"] = {"id": report.cycle_id, "kind": kind, "finished": now.isoformat(),
                                   "counts": report.tally()}
            fields: dict[str, Any] = {"state": state, "last_cycle_id": report.cycle_id,
                                      "last_cycle_started": report.started, "last_cycle_ended": now,
                                      "next_cycle_at": now + dt.timedelta(
                                          minutes=self.config.schedule.interval_minutes)}
            if not reason:
                fields["last_successful_cycle"] = now
                if changed:
                    fields["last_successful_cycle_with_exports"] = now
            if not changed and not any(r.status == "failure" for r in report.records):
                if job.steady_state_first is None:
                    fields["steady_state_first"] = now
                fields["steady_state_last"] = now
            if reason != "TooManyDeletes":
                fields["watermark"] = watermark
            self.store.save_job_state(self.name, **fields)
        report.finished = now
        report.tally()
        self._persist_records(report)
        return report

    SPC_TTL = dt.timedelta(hours=1)

    def _adopt_spc(self, state: dict[str, Any]) -> None:
        """WIRE-4: the target's ServiceProviderConfig is read when the job starts and kept in the job state for
        :attr:`SPC_TTL` (authentik caches it for an hour too), so an idle incremental cycle sends nothing."""
        cached = state.get("service_provider_config")
        adopt = getattr(self.target, "adopt_service_provider_config", None)
        if not isinstance(cached, dict) or adopt is None:
            return
        try:
            fresh = self.clock() - dt.datetime.fromisoformat(str(cached.get("fetched"))) < self.SPC_TTL
        except ValueError:
            return
        if fresh and isinstance(cached.get("config"), dict):
            adopt(cached["config"])
            self._spc_adopted = True

    def _keep_spc(self, state: dict[str, Any]) -> None:
        spc = getattr(self.target, "fetched_service_provider_config", None)
        if isinstance(spc, dict) and not self._spc_adopted:
            state["service_provider_config"] = {"fetched": self.clock().isoformat(), "config": spc}

    def _enter_quarantine(self, reason: str, detail: str, state: dict[str, Any]) -> None:
        """QUA-1/QUA-3: status Quarantine; one e-mail per series and per change of reason."""
        from scimgrip.engine.state import Quarantine

        if self.dry_run:
            return
        now = self.clock()
        job = self._job()
        q = job.quarantine
        new_series = q is None
        since = now if q is None else q.since
        level = 0 if q is None else q.level + 1
        send = self.notifier is not None and (new_series or q is None or q.last_email_reason != reason)
        last_email = (q.last_email_reason if q is not None else None)
        if send:
            try:
                self.notifier.quarantined(self.name, reason, detail)
                last_email = reason
            except Exception:  # notification must never break the job
                log.exception("could not send the quarantine notification for job %s", self.name)
        if now - since >= health.QUARANTINE_DISABLE_AFTER:
            # QUA-2: still failing 28 days after the series began ⇒ escrows dropped, the job is disabled
            self.store.clear_all_escrows(self.job_id)
            self.store.save_job_state(self.name, quarantine=Quarantine(
                reason=reason, since=since, level=level, last_email_reason=last_email, error=detail),
                next_cycle_at=None, state=state)
            self.store.set_status(self.name, "Paused")
            log.warning("job %s: quarantined for 28 days (%s); escrows dropped and the job disabled",
                        self.name, reason)
            return
        self.store.save_job_state(self.name, quarantine=Quarantine(reason=reason, since=since, level=level,
                                                                   last_email_reason=last_email, error=detail),
                                  next_cycle_at=health.next_quarantine_attempt(since, now), state=state)
        self.store.set_status(self.name, "Quarantine")

    # ---------------------------------------------------------------------------------------------------------
    def _run_objects(self, report: CycleReport, job: Any, objects: list[SourceObject], assignments: Assignments,
                     *, complete: bool, state: dict[str, Any] | None = None) -> None:
        state = state if state is not None else dict(job.state or {})
        escrows = self.store.list_escrows(self.job_id)
        self._escrows = {(e.object_type, e.source_id): e for e in escrows if not e.is_reference}
        self._reference_escrows = {(e.object_type, e.source_id) for e in escrows if e.is_reference}
        self._references_ok = set()
        self._snapshots = {}
        try:
            with self._bulk():
                self._run_phases(report, objects, assignments, complete=complete, state=state)
        finally:
            self._clear_recovered_escrows(report)
            if not self.dry_run:
                kept = {k: v for k, v in (state.get("escrow_objects") or {}).items()
                        if tuple(k.split(":", 1)) in self._escrows}
                state["escrow_objects"] = {**kept, **self._snapshots}

    @contextlib.contextmanager
    def _bulk(self) -> Iterator[None]:
        """WIRE-4: writes go through ``/Bulk`` while the cycle runs when the target offers it (bulk_batcher)."""
        from scimgrip.engine.bulk_batcher import BulkBatcher
        from scimgrip.engine.target import TargetError

        try:
            # as many BulkRequests in flight as the worker threads can fill: full batches cost the target less
            # per operation than many small ones (bench/engine.py)
            batcher = (None if self.dry_run or not getattr(self.target, "bulk_enabled", False)
                       else BulkBatcher(self.target, in_flight=max(1, MAX_BULK_WORKERS // 100)))
        except TargetError as exc:
            # the ServiceProviderConfig could not be read (a 5xx or timeout after the retries): a target
            # hiccup must not end the cycle — its objects go as single requests and fail or escrow one by one
            log.warning("job %s: the target's ServiceProviderConfig could not be read (%s); single requests "
                        "this cycle", self.name, exc)
            batcher = None
        if batcher is None:
            yield
            return
        with batcher:
            self._batcher = batcher
            try:
                yield
            finally:
                self._batcher = None

    def _workers(self) -> int:
        """Objects in flight: the target's concurrency, or enough to fill ``concurrency`` BulkRequests."""
        concurrency = max(1, int(getattr(self.target, "concurrency", 4)))
        if self._batcher is not None and self._batcher.enabled:
            return min(MAX_BULK_WORKERS, concurrency * int(self._batcher.max_operations))
        return concurrency

    def _escrowed_not_in(self, objects: list[SourceObject], state: Mapping[str, Any]) -> list[SourceObject]:
        """ERR-1 for delta sources: an escrowed object is retried when its back-off is due even if it did not
        change again, from the source snapshot kept when it failed (a complete source re-reads it anyway)."""
        snapshots: Mapping[str, Any] = state.get("escrow_objects") or {}
        if not snapshots:
            return []
        have = {(o.object_type, o.id) for o in objects}
        out: list[SourceObject] = []
        for esc in self.store.due_escrows(self.job_id, self.clock()):
            snap = snapshots.get(f"{esc.object_type}:{esc.source_id}")
            if esc.is_reference or snap is None or (esc.object_type, esc.source_id) in have:
                continue
            members = snap.get("members")
            out.append(SourceObject(esc.object_type, esc.source_id, dict(snap.get("attributes") or {}),
                                    tuple(members) if members is not None else None, bool(snap.get("deleted"))))
        return out

    def _clear_recovered_escrows(self, report: CycleReport) -> None:
        """ERR-1: an escrowed object that went through without a failure leaves escrow; so does a reference
        escrow (a manager or member write that failed) once the object's references were written."""
        if self.dry_run:
            return
        with self._lock:
            recovered = self._references_ok & self._reference_escrows
        for object_type, source_id in sorted(recovered):
            self.store.clear_escrow(self.job_id, object_type, source_id, is_reference=True)
            self._reference_escrows.discard((object_type, source_id))
        if not self._escrows:
            return
        with self._lock:
            done = {(r.object_type, r.source_id) for r in report.records
                    if r.status not in ("failure",) and r.reason != "Escrowed"}
        for key in done & self._escrows.keys():
            self.store.clear_escrow(self.job_id, key[0], key[1], is_reference=False)
            self._escrows.pop(key, None)

    def _run_phases(self, report: CycleReport, objects: list[SourceObject], assignments: Assignments, *,
                    complete: bool, state: dict[str, Any]) -> None:
        from scimgrip.engine import scope as scoping

        cfg = self.config
        users = [o for o in objects if o.object_type == "User"]
        groups = [o for o in objects if o.object_type == "Group"]
        # assignment scope: direct members of assigned groups (SCP-1), cached across incremental cycles
        group_members: dict[str, list[str]] = dict(state.get("group_members") or {})
        for g in groups:
            if g.deleted:
                group_members.pop(g.id, None)
            elif g.members is not None:
                group_members[g.id] = list(g.members)
        state["group_members"] = group_members
        assigned = scoping.assigned_user_ids(assignments, group_members, cfg.scope.nested) \
            if cfg.scope.mode == "assigned" else None
        # users whose assignment ended without a change to the user object (unassignment)
        previously = set(state.get("assigned_users") or [])
        if assigned is not None:
            state["assigned_users"] = sorted(assigned)
        seen = {o.id for o in objects}
        extra: list[SourceObject] = []
        if complete:
            for kind in ("User", "Group"):
                for source_id in sorted(self.store.link_source_ids(self.job_id, kind) - seen):
                    extra.append(SourceObject(kind, source_id, {}, deleted=True))  # hard-deleted
        elif assigned is not None:
            for sid in previously - assigned - seen:
                extra.append(SourceObject("User", sid, {"__unassigned__": True}))
        users += [o for o in extra if o.object_type == "User"]
        groups += [o for o in extra if o.object_type == "Group"]
        total = len(users) + len(groups)
        done = 0
        deferred: list[_Deferred] = []
        manager_refs: list[tuple[Record, SourceObject]] = []

        def tick(phase: str) -> None:
            nonlocal done
            with self._lock:
                done += 1
                if self.progress:
                    self.progress(done, total, phase)

        self._prefetch_links("User", [o.id for o in users] + [str(o.attributes.get("manager"))
                                                              for o in users if o.attributes.get("manager")])
        self._prefetch_links("Group", [o.id for o in groups])
        user_map = cfg.users
        users = _managers_first(users)
        self._indexes = {}
        self._index_for("User", user_map, users)
        workers = self._workers()
        # users whose source is unchanged only need their scope checked: on this thread, no future per object
        unchanged = [o for o in users if self._probably_unchanged(o)]
        quick = {id(o) for o in unchanged}
        with _Drain(workers, "scimgrip-engine", [o for o in users if id(o) not in quick],
                    lambda o: self._process(report, o, "User", user_map, assignments, assigned, deferred,
                                            manager_refs), lambda: tick("users")):
            for o in unchanged:      # on this thread while the pool works through the others
                self._process(report, o, "User", user_map, assignments, assigned, deferred, manager_refs)
                tick("users")
        self.flush_links()
        # deprovisioning: all or nothing against the threshold (DEL-1)
        self._apply_deferred(report, deferred, state)
        # references: managers (GRP-4, CYC-9)
        self._resolve_managers(report, manager_refs)
        self.flush_links()
        # groups after users, so members exist (CYC-1)
        if cfg.groups.enabled:
            deferred_groups: list[_Deferred] = []
            self._member_queue = []
            self._index_for("Group", cfg.groups, groups)
            try:
                with _Drain(workers, "scimgrip-engine", groups,
                            lambda o: self._process(report, o, "Group", cfg.groups, assignments, assigned,
                                                    deferred_groups, None), lambda: tick("groups")):
                    pass
                queue, self._member_queue = self._member_queue, None
                queue += self._requeue_groups(report, {g.id for g in groups}, group_members)
                member_ids = {m for _, obj, _, _ in queue for m in obj.members or ()}
                self._prefetch_links("User", member_ids)     # one read instead of one per member (GRP-2)
                self._prefetch_links("Group", member_ids)
                with _Drain(workers, "scimgrip-members", queue,
                            lambda q: self._sync_members_of(q[0], q[1], q[2], q[3], assignments)):
                    pass
            finally:
                self._member_queue = None
            self.flush_links()
            self._apply_deferred(report, deferred_groups, state)
            self.flush_links()
        else:
            for _ in groups:
                tick("groups")

    # ---------------------------------------------------------------------------------------------------------
    # one object
    # ---------------------------------------------------------------------------------------------------------
    def _record(self, report: CycleReport, obj: SourceObject) -> Record:
        display = str(obj.attributes.get("userPrincipalName") or obj.attributes.get("displayName") or obj.id)
        return Record(report.cycle_id, str(uuid.uuid4()), obj.object_type, obj.id, display)

    def _call_ctx(self, rec: Record) -> contextlib.AbstractContextManager[None]:
        from scimgrip.engine.target import call_context

        @contextlib.contextmanager
        def cm() -> Iterator[None]:
            token = call_context.set({"change_id": rec.change_id, "cycle_id": rec.cycle_id, "record": rec})
            try:
                yield
            finally:
                call_context.reset(token)
        return cm()

    def _link(self, object_type: str, source_id: str) -> Any:
        key = (object_type, source_id)
        with self._lock:
            if key in self._dropped_links:
                return None
            if key in self._new_links:
                return self._new_links[key]
            if key in self._link_cache:
                return self._link_cache[key]
        link = self.store.get_link(self.job_id, object_type, source_id)
        with self._lock:
            self._link_cache[key] = link
        return link

    def _probably_unchanged(self, obj: SourceObject) -> bool:
        """An incremental cycle's user whose source digest equals its link's (``_process`` still decides)."""
        if self._initial or not self._skip_unchanged or obj.deleted or (obj.object_type, obj.id) in self._escrows:
            return False
        link = self._link_cache.get((obj.object_type, obj.id))
        return link is not None and link.source_hash is not None and link.source_hash == _source_digest(obj)

    def _prefetch_links(self, object_type: str, source_ids: Iterable[str]) -> None:
        """One bulk read of the links a cycle will need, instead of one query per object."""
        ids = [i for i in dict.fromkeys(source_ids) if (object_type, i) not in self._link_cache]
        found = self.store.get_links(self.job_id, object_type, ids) if ids else {}
        with self._lock:
            for i in ids:
                self._link_cache[(object_type, i)] = found.get(i)

    def flush_links(self) -> None:
        """Write the links changed so far in one batched transaction."""
        with self._lock:
            dirty, self._dirty = list(self._dirty.values()), {}
        if dirty and not self.dry_run:
            self.store.put_links(dirty)

    def _save_link(self, object_type: str, source_id: str, target_id: str, exported: dict[str, Any], *,
                   state: str = "active", in_scope: bool = True, source_hash: str | None = None) -> Any:
        """Queue a link write. ``source_hash`` (the source object last exported in full) is kept from the
        current link unless given: reference and state updates do not change what the source said."""
        from scimgrip.engine.state import Link

        key = (object_type, source_id)
        if source_hash is None:
            with self._lock:
                current = self._new_links.get(key) or self._link_cache.get(key)
            source_hash = getattr(current, "source_hash", None) if current is not None else None
        link = Link(job_id=self.job_id, object_type=object_type, source_id=source_id, target_id=target_id,
                    exported=exported, in_scope=in_scope, state=state,  # type: ignore[arg-type]
                    source_hash=source_hash)
        with self._lock:
            self._new_links[key] = link
            self._dropped_links.discard(key)
            if not self.dry_run:
                self._dirty[key] = link
                flush = len(self._dirty) >= 500
            else:
                flush = False
        if flush:
            self.flush_links()
        return link

    def _drop_link(self, object_type: str, source_id: str) -> None:
        key = (object_type, source_id)
        with self._lock:
            self._new_links.pop(key, None)
            self._dirty.pop(key, None)
            self._dropped_links.add(key)
        if not self.dry_run:
            self.store.delete_link(self.job_id, object_type, source_id)

    def _process(self, report: CycleReport, obj: SourceObject, object_type: str, om: Any,
                 assignments: Assignments, assigned: set[str] | None, deferred: list[_Deferred],
                 manager_refs: list[tuple[Record, SourceObject]] | None) -> None:
        if self._abort:
            return
        rec = self._record(report, obj)
        started = time.perf_counter()
        esc = self._escrows.get((obj.object_type, obj.id))
        if esc is not None and not self._on_demand and esc.next_retry_at > self.clock():
            # ERR-3f: an escrowed object waits for its back-off (on-demand runs bypass it, OND-1)
            rec.status, rec.reason = "skipped", "Escrowed"
            rec.detail = f"escrowed ({esc.reason_code}); next attempt after {esc.next_retry_at.isoformat()}"
            rec.target_id = (self._link(object_type, obj.id) or _NO_LINK).target_id
            rec.step("import", "skipped", rec.detail)
            with self._lock:
                report.records.append(rec)
            return
        try:
            with self._call_ctx(rec):
                self._process_inner(rec, obj, object_type, om, assignments, assigned, deferred, manager_refs)
        except JobQuarantined:
            raise
        except Exception as exc:  # one object's failure never stops the cycle (EXP-4, ERR-1)
            self._fail(rec, exc, obj)
            if not self.dry_run:
                with self._lock:
                    self._snapshots[f"{obj.object_type}:{obj.id}"] = {
                        "attributes": dict(obj.attributes), "deleted": obj.deleted,
                        "members": list(obj.members) if obj.members is not None else None}
        rec.duration_ms = (time.perf_counter() - started) * 1000
        with self._lock:
            report.records.append(rec)

    def _fail(self, rec: Record, exc: Exception, obj: SourceObject, *, reference: bool = False) -> None:
        from scimgrip.engine.expressions import ExpressionError
        from scimgrip.engine.target import TargetError

        rec.status = "failure"
        if isinstance(exc, TargetError):
            if exc.status == 401:
                self._abort = True
                rec.reason = "Unauthorized"
                rec.detail = exc.detail
                raise JobQuarantined("EncounteredQuarantineException",
                                     f"the target answered 401: {exc.detail or 'invalid credentials'}") from exc
            rec.reason = "ReferenceFailure" if reference else health.error_code(exc.status, exc.scim_type)
            rec.detail = exc.detail or str(exc)
        elif isinstance(exc, ExpressionError):
            rec.reason = "ExpressionEvaluationFailed"
            rec.detail = str(exc)
        elif isinstance(exc, _Escrowable):
            rec.reason = exc.code
            rec.detail = exc.detail
        else:
            log.exception("engine error on %s %s", obj.object_type, obj.id)
            rec.reason = "InternalError"
            rec.detail = f"{type(exc).__name__}: {exc}"
        rec.step("export", "failure", rec.detail or rec.reason or "failed")
        if not self.dry_run:
            esc = self._escrows.get((obj.object_type, obj.id)) if not reference else None
            attempts = (esc.attempts if esc else 0) + 1
            interval = dt.timedelta(minutes=self.config.schedule.interval_minutes)
            self.store.put_escrow(self.job_id, obj.object_type, obj.id, rec.reason or "InternalError",
                                  rec.detail or "", attempts, self.clock() + health.escrow_delay(attempts, interval),
                                  reference)

    def _process_inner(self, rec: Record, obj: SourceObject, object_type: str, om: Any,
                       assignments: Assignments, assigned: set[str] | None, deferred: list[_Deferred],
                       manager_refs: list[tuple[Record, SourceObject]] | None) -> None:
        from scimgrip.engine import mapping, scope

        link = self._link(object_type, obj.id)
        rec.target_id = link.target_id if link else None
        rec.step("import", "success", "read from the source" if not obj.deleted else "hard-deleted in the source")
        # hard delete (DEP-1)
        if obj.deleted:
            if link is None:
                rec.status, rec.reason = "skipped", "EntrySynchronizationSkipped"
                rec.step("scoping", "skipped", "deleted in the source and never provisioned")
                return
            if "Delete" not in om.flow_types:
                rec.status, rec.reason = "skipped", "DeleteNotEnabled"
                rec.step("export", "skipped", "the Delete target action is off for this object type")
                return
            rec.action = "delete"
            deferred_rec = rec

            def do_delete() -> None:
                from scimgrip.engine.target import TargetError
                with self._call_ctx(deferred_rec):
                    try:
                        if not self.dry_run:
                            self.target.delete(object_type, link.target_id)
                    except TargetError as exc:
                        if exc.status != 404:
                            raise
                    self._drop_link(object_type, obj.id)
                    deferred_rec.step("export", "success", f"DELETE /{object_type}s/{link.target_id}")

            with self._lock:
                deferred.append(_Deferred(rec, "delete", do_delete))
            return
        if obj.attributes.get("__unassigned__"):
            attrs: dict[str, Any] = {}
            decision = scope.ScopeDecision(False, "unassigned from the application", False)
        else:
            attrs = dict(obj.attributes)
            decision = scope.scope_decision(obj, om, self.config.scope.mode, assigned, assignments)
            attrs["IsSoftDeleted"] = not decision.in_scope
        if decision.input_filtered:
            rec.status, rec.reason = "skipped", "EntrySynchronizationSkipped"
            rec.step("scoping", "skipped", f"dropped by the input filter: {decision.reason}")
            return
        if not decision.in_scope:
            rec.step("scoping", "skipped", decision.reason)
            if link is None or link.state != "active":
                rec.status, rec.reason = "skipped", "EntrySynchronizationSkipped"
                return
            if self.config.skip_out_of_scope_deletions:
                rec.status, rec.reason = "skipped", "OutOfScopeDeletionSkipped"
                return
            rec.action = "disable"
            ops = [{"op": "replace", "path": "active", "value": False}] if object_type == "User" else []
            deferred_rec = rec

            def do_disable() -> None:
                with self._call_ctx(deferred_rec):
                    if object_type == "User":
                        self._patch(deferred_rec, object_type, link.target_id, ops)
                    new_exported = dict(link.exported)
                    if object_type == "User":
                        new_exported["active"] = False
                    self._save_link(object_type, obj.id, link.target_id, new_exported, state="disabled",
                                    in_scope=False)
                    deferred_rec.modified.append({"name": "active", "old": link.exported.get("active"),
                                                  "new": False})
                    deferred_rec.step("export", "success", "disabled (active=false)")

            if object_type == "Group":
                # groups out of scope are deleted only when Delete is allowed; otherwise left alone
                if "Delete" not in om.flow_types:
                    rec.action, rec.status, rec.reason = "other", "skipped", "EntrySynchronizationSkipped"
                    return
                rec.action = "delete"

                def do_disable() -> None:  # noqa: F811 - groups: delete instead
                    from scimgrip.engine.target import TargetError
                    with self._call_ctx(deferred_rec):
                        try:
                            if not self.dry_run:
                                self.target.delete("Group", link.target_id)
                        except TargetError as exc:
                            if exc.status != 404:
                                raise
                        self._drop_link("Group", obj.id)
                        deferred_rec.step("export", "success", "group left scope: deleted")

            with self._lock:
                deferred.append(_Deferred(rec, rec.action, do_disable))
            return
        rec.step("scoping", "success", decision.reason)
        digest = _source_digest(obj) if object_type == "User" and self._skip_unchanged else None
        if (digest is not None and link is not None and not self._initial and link.state == "active"
                and link.in_scope and link.source_hash == digest):
            # MAP-6 without evaluating the mappings: the source object is byte-for-byte what was last exported
            rec.action, rec.status, rec.reason = "other", "skipped", "RedundantExport"
            rec.step("export", "skipped", "the source object has not changed since it was last exported")
            # a complete source re-reads every object each cycle; an unchanged one is no change, so — like an
            # object a delta source does not return — it gets no provisioning-log record (counted in the report)
            rec.logged = False
            if manager_refs is not None:
                holder = SourceObject("User", obj.id, {"__manager__": link.exported.get("__manager_source__"),
                                                       "__target__": link.target_id})
                with self._lock:
                    manager_refs.append((rec, holder))
            return
        creating = link is None
        desired = mapping.desired_values(obj_with(obj, attrs), om.attribute_mappings, creating=creating,
                                         ctx=self.ctx)
        manager_source = desired.pop(MANAGER_PATH, None) if object_type == "User" else None
        members_source = desired.pop("members", None) if object_type == "Group" else None
        if link is None:
            link = self._match(rec, obj, object_type, om, desired)
        if link is None:
            if "Add" not in om.flow_types:
                rec.status, rec.reason = "skipped", "CreateNotEnabled"
                rec.step("export", "skipped", "no match and the Create target action is off")
                return
            link = self._create(rec, obj, object_type, om, self._with_known_manager(desired, manager_source))
            if link is None:
                return
        else:
            link = self._update(rec, obj, object_type, om, desired, link)
            if link is None:
                return
        if digest is not None and rec.status != "failure" and rec.reason in (None, "RedundantExport"):
            link = self._save_link("User", obj.id, link.target_id, {**link.exported,
                                                                    "__manager_source__": manager_source},
                                   state=link.state, in_scope=link.in_scope, source_hash=digest)
        # references
        if object_type == "User" and manager_refs is not None:
            with self._lock:
                manager_refs.append((rec, obj_with(obj, {"__manager__": manager_source, "__target__": link.target_id})))
        if object_type == "Group":
            if self._member_queue is not None:
                with self._lock:   # after every group of the cycle exists: nested groups are members too
                    self._member_queue.append((rec, obj, link, members_source))
            else:
                self._sync_members(rec, obj, link, members_source, assignments)

    # -- matching (MAT-1…4) ------------------------------------------------------------------------------------
    def _index_for(self, object_type: str, om: Any, objects: Sequence[SourceObject]) -> None:
        """MAT-1 from one listing of the target when many objects have no link yet (see match_index)."""
        from scimgrip.engine import mapping
        from scimgrip.engine.match_index import MatchIndex

        if not self._initial:
            return     # incremental cycles match few objects: per-object queries, as Entra
        unlinked = sum(1 for o in objects if not o.deleted and self._link(object_type, o.id) is None)
        paths = [p for p, _m in mapping.matching_attributes(om.attribute_mappings)]
        index = MatchIndex.build(self.target, object_type, paths, unlinked)
        if index is not None:
            self._indexes[object_type] = index

    def _match(self, rec: Record, obj: SourceObject, object_type: str, om: Any, desired: dict[str, Any], *,
               fresh: bool = False) -> Any:
        """MAT-1: by priority, first hit wins. From the cycle's listing of the target when there is one, unless
        ``fresh`` (after a 409 or an unknown POST outcome: ask the target itself)."""
        from scimgrip.engine import mapping

        index = None if fresh else self._indexes.get(object_type)
        tried = []
        for path, _m in mapping.matching_attributes(om.attribute_mappings):
            value = desired.get(path)
            if value is None or value == "":
                continue
            flt = mapping.match_filter(path, value)
            tried.append(flt)
            hits = index.lookup(path, value) if index is not None else self.target.query(object_type, flt)
            if len(hits) == 1:
                hit = hits[0]
                exported = {p: value_at(hit, p, object_type) for p in desired}
                exported = {k: v for k, v in exported.items() if v is not None}
                how = " (in the listing of the target)" if index is not None else ""
                rec.step("matching", "success", f"matched on {flt}{how}", target_id=hit.get("id"))
                rec.target_id = hit.get("id")
                return self._save_link(object_type, obj.id, str(hit["id"]), exported)
            if len(hits) > 1:
                rec.step("matching", "failure", f"{len(hits)} target objects match {flt}")
                raise _Escrowable("DuplicateTargetEntries", f"{len(hits)} target objects match {flt}")
        if not tried:
            rec.step("matching", "failure", "the object has no value for any matching attribute")
            raise _Escrowable("ImportSkipped", "no value for any matching attribute (MAT-1)")
        how = " in the listing of the target" if index is not None else ""
        rec.step("matching", "success", f"no match{how} ({'; '.join(tried)})")
        return None

    def _with_known_manager(self, desired: dict[str, Any], manager_sid: Any) -> dict[str, Any]:
        """GRP-4 in one request: a manager that is already provisioned goes into the POST itself, so only users
        whose manager comes later need the follow-up PATCH (users are ordered managers first)."""
        if not manager_sid:
            return desired
        mlink = self._link("User", str(manager_sid))
        if mlink is None or mlink.state != "active" or not mlink.target_id:
            return desired
        return {**desired, MANAGER_PATH: mlink.target_id}

    def _create(self, rec: Record, obj: SourceObject, object_type: str, om: Any, desired: dict[str, Any]) -> Any:
        from scimgrip.engine import mapping
        from scimgrip.engine.target import TargetError

        body = mapping.scim_resource(desired, object_type)
        if object_type == "Group":
            body["members"] = []           # GRP-1: members follow as PATCHes
        rec.action = "create"
        try:
            try:
                created = self._post(rec, object_type, body)
            except TargetError as exc:
                if not exc.ambiguous:
                    raise
                # ERR-3e: the POST may have been applied (timeout, dropped connection): match before retrying
                rec.step("export", "warning", f"POST outcome unknown ({exc.detail}): matching again before a retry")
                settle = getattr(self.target, "settle_unknown_outcome", None)
                if exc.timed_out and settle is not None:
                    settle()    # a timed-out POST may still be landing: matching now would miss it
                again = self._match(rec, obj, object_type, om, desired, fresh=True)
                if again is not None:
                    return self._update(rec, obj, object_type, om, desired, again)
                # not visible (yet): dropped, or a target slower still; a second POST now could create a
                # duplicate where nothing unique forbids it (group displayName). Escrow; the next attempt matches
                # first.
                raise _Escrowable("Timeout", f"POST outcome unknown ({exc.detail}); no match yet — matched "
                                  "again before any retry") from exc
        except TargetError as exc:
            if exc.status != 409:
                raise
            # MAT-4: the target already has it — match once more and continue as an update
            rec.step("export", "warning", "409 on create: matching again")
            link = self._match(rec, obj, object_type, om, desired, fresh=True)
            if link is None:
                raise _Escrowable("EntryConflict", exc.detail or "409 on create and no match") from exc
            return self._update(rec, obj, object_type, om, desired, link)
        target_id = str(created["id"])
        rec.target_id = target_id
        rec.modified = [{"name": k, "old": None, "new": v} for k, v in desired.items()]
        rec.step("export", "success", f"POST /{object_type}s → {target_id}{_via_bulk(rec)}")
        exported = dict(desired)
        return self._save_link(object_type, obj.id, target_id, exported)

    def _update(self, rec: Record, obj: SourceObject, object_type: str, om: Any, desired: dict[str, Any],
                link: Any) -> Any:
        from scimgrip.engine import mapping
        from scimgrip.engine.target import TargetError

        ops = mapping.patch_operations(desired, link.exported, object_type=object_type)
        reactivating = link.state == "disabled"
        if not ops and not reactivating:
            if link.state != "active" or not link.in_scope:
                self._save_link(object_type, obj.id, link.target_id, link.exported)
            rec.action, rec.status, rec.reason = "other", "skipped", "RedundantExport"
            rec.step("export", "skipped", "source and target already agree")
            return link
        if "Update" not in om.flow_types:
            rec.action, rec.status, rec.reason = "other", "skipped", "UpdateNotEnabled"
            return link
        rec.action = "update"
        try:
            if ops:
                self._patch(rec, object_type, link.target_id, ops)
        except TargetError as exc:
            if exc.status != 404:
                raise
            # MAT-3: the linked object is gone — drop the link, match or create in the same change
            rec.step("export", "warning", "404 on the linked object: InvalidAnchor, recovering")
            self._drop_link(object_type, obj.id)
            again = self._match(rec, obj, object_type, om, desired, fresh=True)
            if again is None:
                return self._create(rec, obj, object_type, om, desired)
            return self._update(rec, obj, object_type, om, desired, again)
        exported = dict(link.exported)
        for op in ops:
            old = link.exported.get(op["path"])
            new = op.get("value") if op["op"] != "remove" else None
            rec.modified.append({"name": op["path"], "old": old, "new": new})
            if new is None:
                exported.pop(op["path"], None)
            else:
                exported[op["path"]] = new
        rec.step("export", "success",
                 f"PATCH /{object_type}s/{link.target_id} ({len(ops)} operations){_via_bulk(rec)}")
        return self._save_link(object_type, obj.id, link.target_id, exported)

    # -- writes (dry run: planned, not sent) -------------------------------------------------------------------
    def _post(self, rec: Record, object_type: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.dry_run:
            rec.status = "planned"
            rec.calls.append({"method": "POST", "path": f"/{object_type}s", "body": body, "planned": True})
            with self._lock:
                self._planned_ids += 1
                return {"id": f"planned-{self._planned_ids}"}
        if self._batcher is not None:
            status, created, elapsed = self._batcher.request("POST", f"/{object_type}s", body)
            if elapsed is not None:   # one operation of a BulkRequest (a plain request is in the hook's records)
                rec.calls.append({"method": "POST", "path": f"/{object_type}s", "status": status,
                                  "duration_ms": round(elapsed, 3), "bulk": True})
            return created if isinstance(created, dict) else {}
        result: dict[str, Any] = self.target.create(object_type, body)
        return result

    def _patch(self, rec: Record, object_type: str, target_id: str, ops: list[dict[str, Any]]) -> None:
        if self.dry_run:
            rec.status = "planned"
            rec.calls.append({"method": "PATCH", "path": f"/{object_type}s/{target_id}",
                              "body": {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                                       "Operations": ops}, "planned": True})
            return
        if self._batcher is not None:
            path = f"/{object_type}s/{quote(target_id, safe='')}"
            status, _, elapsed = self._batcher.request("PATCH", path, {"schemas": [PATCH_OP], "Operations": ops})
            if elapsed is not None:
                rec.calls.append({"method": "PATCH", "path": path, "status": status,
                                  "duration_ms": round(elapsed, 3), "bulk": True})
            return
        self.target.patch(object_type, target_id, ops)

    # -- deprovisioning (DEL-1) --------------------------------------------------------------------------------
    def _apply_deferred(self, report: CycleReport, deferred: list[_Deferred], state: dict[str, Any]) -> None:
        if not deferred:
            return
        acc = self.config.accidental_deletions
        force = bool(self.store.staged(self.job_id, approved=True)) if not self.dry_run else False
        linked = self.store.count_links(self.job_id)
        if acc.enabled and not force and health.deletion_threshold_exceeded(len(deferred), linked, acc.threshold,
                                                                             acc.percent):
            for d in deferred:
                d.record.action, d.record.status, d.record.reason = "stagedDelete", "skipped", "TooManyDeletes"
                d.record.step("export", "skipped", f"held: {len(deferred)} deprovisioning actions exceed the "
                              f"accidental-deletion threshold")
                if not self.dry_run:
                    self.store.stage_delete(self.job_id, d.record.object_type, d.record.source_id, d.kind)
            report.quarantine = "TooManyDeletes"
            report.quarantine_detail = (f"{len(deferred)} objects would be disabled or deleted in one cycle; "
                                        "the accidental-deletion threshold holds them")
            return
        workers = self._workers()
        with cf.ThreadPoolExecutor(workers) as pool:
            futures = {pool.submit(d.run): d for d in deferred}
            for f in cf.as_completed(futures):
                d = futures[f]
                try:
                    f.result()
                    if self.dry_run:
                        d.record.status = "planned"
                except JobQuarantined:
                    raise
                except Exception as exc:
                    self._fail(d.record, exc, SourceObject(d.record.object_type, d.record.source_id))  # type: ignore[arg-type]
        if not self.dry_run:
            self.store.clear_staged(self.job_id)

    # -- references (GRP-4, CYC-9) -----------------------------------------------------------------------------
    def _resolve_managers(self, report: CycleReport, refs: list[tuple[Record, SourceObject]]) -> None:
        # objects that entered scope this cycle may unblock references held from earlier cycles
        pending_holders: set[str] = set()
        entered = [rec.source_id for rec, _ in refs if rec.action in ("create", "update")]
        if entered and not self.dry_run:
            for waiting in self.store.pending_for_many(self.job_id, entered).values():
                pending_holders.update(ref.holder_source_id for ref in waiting if ref.kind == "manager")
        todo = list(refs)
        if pending_holders:
            have = {rec.source_id for rec, _ in refs}
            for sid in pending_holders - have:
                link = self._link("User", sid)
                if link is None:
                    continue
                manager_sid = link.exported.get("__manager_source__")
                rec = Record(report.cycle_id, str(uuid.uuid4()), "User", sid, sid, link.target_id)
                rec.step("referenceResolution", "success", "re-queued: its manager entered scope")
                report.records.append(rec)
                todo.append((rec, SourceObject("User", sid, {"__manager__": manager_sid,
                                                             "__target__": link.target_id})))
        todo = [(rec, holder) for rec, holder in todo if rec.logged or not self._manager_settled(rec, holder)]
        workers = self._workers()
        with _Drain(workers, "scimgrip-refs", todo, lambda t: self._resolve_manager(t[0], t[1])):
            pass

    def _manager_settled(self, rec: Record, holder: SourceObject) -> bool:
        """True when :meth:`_resolve_manager` would change nothing for this user (checked inline for the users
        skipped as unchanged, so an idle incremental cycle does not queue 10,000 no-ops)."""
        link = self._link("User", rec.source_id)
        if link is None or holder.attributes.get("__target__") is None:
            return True
        if ("User", rec.source_id) in self._reference_escrows:
            return False
        manager_sid = holder.attributes.get("__manager__")
        pending = link.exported.get("__manager_pending__")
        if not manager_sid:
            return link.exported.get(MANAGER_PATH) is None and not pending
        mlink = self._link("User", str(manager_sid))
        if mlink is None or mlink.state != "active":
            return bool(pending == manager_sid)
        return mlink.target_id == link.exported.get(MANAGER_PATH) and not pending

    def _resolve_manager(self, rec: Record, holder: SourceObject) -> None:
        manager_sid = holder.attributes.get("__manager__")
        target_id = holder.attributes.get("__target__")
        link = self._link("User", rec.source_id)
        if link is None or target_id is None:
            return
        current = link.exported.get(MANAGER_PATH)
        want: str | None = None
        if manager_sid:
            mlink = self._link("User", str(manager_sid))
            if mlink is None or mlink.state != "active":
                already = link.exported.get("__manager_pending__") == manager_sid
                if not self.dry_run and not already:
                    if link.exported.get("__manager_pending__"):
                        self.store.clear_pending_ref(self.job_id, "manager", rec.source_id)
                    self.store.put_pending_ref(self.job_id, "manager", rec.source_id, str(manager_sid))
                rec.step("referenceResolution", "warning", f"manager {manager_sid} is not provisioned yet; "
                         "the reference is set when it enters scope")
                exported = dict(link.exported)
                exported["__manager_source__"] = manager_sid
                exported["__manager_pending__"] = manager_sid
                if exported != link.exported:
                    self._save_link("User", rec.source_id, link.target_id, exported, state=link.state,
                                    in_scope=link.in_scope)
                return
            want = mlink.target_id
        was_pending = bool(link.exported.get("__manager_pending__"))
        if want == current:
            self._reference_ok("User", rec.source_id)
            if was_pending:
                exported = dict(link.exported)
                exported.pop("__manager_pending__", None)
                exported["__manager_source__"] = manager_sid
                self._save_link("User", rec.source_id, link.target_id, exported, state=link.state,
                                in_scope=link.in_scope)
                if not self.dry_run:
                    self.store.clear_pending_ref(self.job_id, "manager", rec.source_id)
            return
        ops = ([{"op": "replace", "path": MANAGER_PATH, "value": {"value": want}}] if want
               else [{"op": "remove", "path": MANAGER_PATH}])
        try:
            with self._call_ctx(rec):
                self._patch(rec, "User", link.target_id, ops)
        except JobQuarantined:
            raise
        except Exception as exc:
            self._fail(rec, exc, SourceObject("User", rec.source_id), reference=True)
            return
        exported = dict(link.exported)
        exported["__manager_source__"] = manager_sid
        exported.pop("__manager_pending__", None)
        if want:
            exported[MANAGER_PATH] = want
        else:
            exported.pop(MANAGER_PATH, None)
        self._save_link("User", rec.source_id, link.target_id, exported, state=link.state,
                        in_scope=link.in_scope)
        rec.modified.append({"name": MANAGER_PATH, "old": current, "new": want})
        rec.step("referenceResolution", "success", f"manager set to {want}" if want else "manager cleared")
        self._reference_ok("User", rec.source_id)
        if rec.action == "other":
            rec.action, rec.status, rec.reason = "update", "success", None
        if not self.dry_run and was_pending:
            self.store.clear_pending_ref(self.job_id, "manager", rec.source_id)

    def _reference_ok(self, object_type: str, source_id: str) -> None:
        with self._lock:
            self._references_ok.add((object_type, source_id))

    # -- group members (GRP-1, GRP-2) --------------------------------------------------------------------------
    def _requeue_groups(self, report: CycleReport, processed: set[str],
                        group_members: Mapping[str, Sequence[str]]) -> list[tuple[Record, SourceObject, Any, Any]]:
        """CYC-9 (T-GRP-3 for incremental sources): a user who entered scope this cycle is added to the groups
        waiting for it even when those groups did not change (their members come from the cycle state)."""
        if self.dry_run:
            return []
        with self._lock:
            entered = [r.source_id for r in report.records if r.object_type == "User"
                       and r.action in ("create", "update") and r.status == "success"]
        if not entered:
            return []
        waiting = self.store.pending_for_many(self.job_id, entered)
        holders = {ref.holder_source_id for refs in waiting.values() for ref in refs if ref.kind == "member"}
        out: list[tuple[Record, SourceObject, Any, Any]] = []
        for gid in sorted(holders - processed):
            link = self._link("Group", gid)
            members = group_members.get(gid)
            if link is None or link.state != "active" or members is None:
                continue
            rec = Record(report.cycle_id, str(uuid.uuid4()), "Group", gid, link.display_name or gid, link.target_id)
            rec.step("referenceResolution", "success", "re-queued: a member entered scope")
            with self._lock:
                report.records.append(rec)
            out.append((rec, SourceObject("Group", gid, {}, tuple(members)), link, list(members)))
        return out

    def _sync_members_of(self, rec: Record, obj: SourceObject, link: Any, members_source: Any,
                         assignments: Assignments) -> None:
        started = time.perf_counter()
        try:
            with self._call_ctx(rec):
                self._sync_members(rec, obj, self._link("Group", obj.id) or link, members_source, assignments)
        except JobQuarantined:
            raise
        except Exception as exc:
            self._fail(rec, exc, obj, reference=True)
        rec.duration_ms += (time.perf_counter() - started) * 1000

    def _sync_members(self, rec: Record, obj: SourceObject, link: Any, members_source: Any,
                      assignments: Assignments) -> None:
        source_ids = list(obj.members or []) if members_source is not None or obj.members is not None else []
        want: set[str] = set()
        missing: list[str] = []
        for sid in source_ids:
            ulink = self._link("User", sid) or self._link("Group", sid)
            if ulink is not None and ulink.state == "active":
                want.add(ulink.target_id)
            else:
                missing.append(sid)
        have = set(link.exported.get("members") or [])
        add = sorted(want - have)
        remove = sorted(have - want)
        known_missing = set(link.exported.get("__missing__") or [])
        if not self.dry_run:
            for sid in sorted(set(missing) - known_missing):   # CYC-9: re-queued when the member enters scope
                self.store.put_pending_ref(self.job_id, "member", obj.id, sid)
            for sid in sorted(known_missing - set(missing)):
                self.store.clear_pending_ref(self.job_id, "member", obj.id, sid)
        if not add and not remove:
            self._reference_ok("Group", obj.id)
            if known_missing != set(missing):
                exported = dict(link.exported)
                exported["__missing__"] = sorted(missing)
                self._save_link("Group", obj.id, link.target_id, exported)
            return
        if self.dry_run:
            rec.status = "planned"
            rec.calls.append({"method": "PATCH", "path": f"/Groups/{link.target_id}", "planned": True,
                              "members_added": add, "members_removed": remove})
        else:
            try:
                self.target.update_members(link.target_id, add, remove)
            except JobQuarantined:
                raise
            except Exception as exc:
                self._fail(rec, exc, obj, reference=True)
                return
        exported = dict(link.exported)
        exported["members"] = sorted(want)
        exported["__missing__"] = sorted(missing)
        self._save_link("Group", obj.id, link.target_id, exported)
        rec.modified.append({"name": "members", "old": f"{len(have)} members",
                             "new": f"+{len(add)} -{len(remove)}"})
        rec.step("referenceResolution", "success", f"members: +{len(add)} -{len(remove)}")
        self._reference_ok("Group", obj.id)
        if rec.action == "other":
            rec.action, rec.status, rec.reason = "update", "success", None

    # ---------------------------------------------------------------------------------------------------------
    def _persist_records(self, report: CycleReport) -> None:
        """The cycle's records into the provisioning log, as :class:`~scimgrip.engine.state.LogRow` dicts
        (the store's fast path; keys in the field order of ``LogStep``/``ModifiedProperty``/``TargetCall``)."""
        from scimgrip.engine.state import LogRow

        if self.dry_run or not report.records:
            return
        redactions = getattr(self.ctx, "redactions", None) or set()
        step_types = _STEP_TYPES
        job_id = self.job_id
        rows: list[LogRow] = []
        for r in report.records:
            if not r.logged:
                continue
            if redactions:   # LOG-4; the set is looked up once per cycle, not per value
                modified = [{"name": m["name"],
                             "old": "[Redact]" if isinstance(old := m.get("old"), str) and old in redactions
                             else old,
                             "new": "[Redact]" if isinstance(new := m.get("new"), str) and new in redactions
                             else new} for m in r.modified]
            else:
                modified = [{"name": m["name"], "old": m.get("old"), "new": m.get("new")} for m in r.modified]
            rows.append({
                "job_id": job_id, "cycle_id": r.cycle_id, "change_id": r.change_id, "object_type": r.object_type,
                "source_id": r.source_id, "action": r.action, "status": r.status, "at": r.at,
                "duration_ms": r.duration_ms, "source_display": r.source_display, "target_id": r.target_id,
                "reason": r.reason, "detail": r.detail,
                "steps": [{"name": st["name"], "type": step_types.get(st["name"], "processing"),
                           "status": st["status"], "description": st["description"],
                           "details": st.get("details", {})} for st in r.steps],
                "modified": modified,
                "calls": [{"method": c["method"], "path": c["path"], "status": int(c.get("status") or 0),
                           "duration_ms": float(c.get("duration_ms") or 0.0)} for c in r.calls
                          if not c.get("planned")]})
        self.store.append_log_rows(rows)


_STEP_TYPES = {"import": "import", "scoping": "scoping", "matching": "matching", "export": "export",
               "referenceResolution": "referenceResolution"}


class _Drain(Generic[T]):
    """``fn`` over ``items`` on up to ``workers`` threads, each taking the next item from one shared iterator:
    one task per thread instead of one future per object (10,000 ``submit`` calls cost ~0.6 s of main-thread
    time, contending for the GIL with the workers). Items start in order, as with one future each. Every item
    is attempted; leaving the ``with`` block waits for all and re-raises the exception of the earliest failed
    item, as ``f.result()`` in submission order did."""

    def __init__(self, workers: int, name: str, items: Sequence[T], fn: Callable[[T], None],
                 done: Callable[[], None] | None = None) -> None:
        self._items = iter(enumerate(items))
        self._fn, self._done = fn, done
        self._lock = threading.Lock()
        self._errors: list[tuple[int, BaseException]] = []
        self._pool = cf.ThreadPoolExecutor(max(1, min(workers, len(items))), thread_name_prefix=name)
        self._tasks = [self._pool.submit(self._work) for _ in range(min(workers, len(items)))]

    def _work(self) -> None:
        while True:
            with self._lock:
                nxt = next(self._items, None)
            if nxt is None:
                return
            i, item = nxt
            try:
                self._fn(item)
            except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread in __exit__
                with self._lock:
                    self._errors.append((i, exc))
                continue
            if self._done is not None:
                self._done()

    def __enter__(self) -> _Drain[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            for t in self._tasks:
                t.result()
        finally:
            self._pool.shutdown(wait=True)
        if self._errors and exc_info[0] is None:
            raise min(self._errors, key=lambda e: e[0])[1]


class _NoLink:
    target_id = None


_NO_LINK = _NoLink()


class _Escrowable(Exception):
    """A per-object failure with an ERR-2 code that is not an HTTP error (matching, missing values)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _dead_local_owner(owner: str) -> bool:
    """True when ``owner`` (``host:pid:uuid``) names a process of this host that no longer exists."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _via_bulk(rec: Record) -> str:
    """LOG: say so when the record's last write was an operation of a BulkRequest."""
    return " (in a BulkRequest)" if rec.calls and rec.calls[-1].get("bulk") else ""


def _source_digest(obj: SourceObject) -> str:
    """A digest of everything the source says about an object (its attributes, members and deleted flag)."""
    import hashlib

    import orjson

    raw = orjson.dumps([obj.attributes, obj.members, obj.deleted], option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def _managers_first(users: list[SourceObject]) -> list[SourceObject]:
    """Users ordered by depth in the manager tree (stable), so a manager is usually linked before the users who
    report to it are created and its reference can go into their POST (cycles in the data are cut)."""
    manager = {u.id: str(u.attributes.get("manager")) for u in users if u.attributes.get("manager")}
    if not manager:
        return users
    depth: dict[str, int] = {}

    def depth_of(uid: str) -> int:
        chain: list[str] = []
        seen: set[str] = set()
        while uid in manager and uid not in depth and uid not in seen:
            seen.add(uid)
            chain.append(uid)
            uid = manager[uid]
        d = depth.get(uid, 0)
        for u in reversed(chain):
            d += 1
            depth[u] = d
        return depth.get(chain[0], 0) if chain else depth.get(uid, 0)

    return sorted(users, key=lambda u: depth_of(u.id))


def obj_with(obj: SourceObject, attrs: Mapping[str, Any]) -> SourceObject:
    merged = dict(obj.attributes)
    merged.update(attrs)
    return SourceObject(obj.object_type, obj.id, merged, obj.members, obj.deleted)


def chunked(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@dataclass
class Drift:
    """One difference between what the engine last exported and what the target holds (reconcile)."""

    kind: str                  # attribute | missing | member_missing | member_extra | orphan
    object_type: str
    source_id: str | None
    target_id: str
    detail: str
    path: str | None = None
    expected: Any = None
    actual: Any = None
    repaired: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "object_type": self.object_type, "source_id": self.source_id,
                "target_id": self.target_id, "path": self.path, "expected": self.expected,
                "actual": self.actual, "detail": self.detail, "repaired": self.repaired}


def reconcile(engine: Engine, *, repair: bool = False) -> list[Drift]:
    """Read the target back and compare it with the connector data store (what Entra lacks: QA-DRIFT).

    Reports attributes changed at the target, linked objects missing at the target, missing or extra group
    members, and orphan accounts (target objects no link points to). With ``repair``, PATCHes the exported values
    back and re-syncs memberships; missing objects lose their link so the next cycle matches or re-creates them;
    orphans are only reported (they may belong to another provisioning client).
    """
    from scimgrip.engine.target import TargetError

    engine._job()
    drifts: list[Drift] = []
    gone: set[str] = set()      # linked targets that no longer exist (reported once, as "missing")
    for object_type in ("User", "Group"):
        links = {link.target_id: link for link in engine.store.iter_links(engine.name, object_type)
                 if link.target_id and link.state != "deleted"}
        attributes = None if object_type == "User" else "id,displayName,externalId,members"
        seen: set[str] = set()
        for resource in engine.target.list_all(object_type, attributes=attributes):
            tid = str(resource.get("id"))
            seen.add(tid)
            link = links.get(tid)
            if link is None:
                name = resource.get("userName") or resource.get("displayName") or tid
                drifts.append(Drift("orphan", object_type, None, tid, f"{object_type} {name} is not linked to "
                                    "any source object"))
                continue
            ops: list[dict[str, Any]] = []
            for path, expected in link.exported.items():
                if path.startswith("__") or path == "members":
                    continue
                actual = value_at(resource, path, object_type)
                if path == MANAGER_PATH and isinstance(actual, dict):
                    actual = actual.get("value")
                same = (actual == expected) or (isinstance(actual, str) and isinstance(expected, str)
                                                and actual.lower() == expected.lower() and path != "externalId")
                if not same:
                    drifts.append(Drift("attribute", object_type, link.source_id, tid,
                                        f"{path} differs at the target", path, expected, actual))
                    value = {"value": expected} if path == MANAGER_PATH else expected
                    ops.append({"op": "replace", "path": path, "value": value})
            member_drift: tuple[list[str], list[str]] = ([], [])
            if object_type == "Group" and "members" in link.exported:
                want = set(link.exported.get("members") or [])
                have = {m.get("value") for m in resource.get("members") or [] if isinstance(m, dict)}
                missing, extra = sorted(want - have - gone), sorted(str(x) for x in have - want)
                for m in missing:
                    drifts.append(Drift("member_missing", "Group", link.source_id, tid, f"member {m} missing"))
                for m in extra:
                    drifts.append(Drift("member_extra", "Group", link.source_id, tid, f"unexpected member {m}"))
                member_drift = (missing, extra)
            if repair and not engine.dry_run:
                try:
                    if ops:
                        engine.target.patch(object_type, tid, ops)
                    if member_drift[0] or member_drift[1]:
                        engine.target.update_members(tid, member_drift[0], member_drift[1])
                    for d in drifts:
                        if d.target_id == tid:
                            d.repaired = True
                except TargetError as exc:
                    log.warning("reconcile could not repair %s %s: %s", object_type, tid, exc)
        for tid, link in links.items():
            if tid not in seen:
                gone.add(tid)
                drifts.append(Drift("missing", object_type, link.source_id, tid,
                                    f"linked {object_type} is missing at the target"))
                if repair and not engine.dry_run:
                    engine.store.delete_link(engine.name, object_type, link.source_id)
                    drifts[-1].repaired = True
    return drifts
