"""``scimgrip job …``, ``scimgrip sync``, ``scimgrip provision``, ``scimgrip logs``: the provisioning engine's CLI.

A job is a YAML configuration (provisioning-engine.md §18.1) stored in the database with its state. ``sync``
runs cycles on the job's schedule (``--once`` for one), shows a progress bar of *objects* processed (not pages,
unlike Entra's LOG-3) with rate and ETA, and ends each cycle with a summary table.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from scimgrip.settings import Settings

job_app = typer.Typer(help="Provisioning jobs: push a directory to a SCIM endpoint the way Entra ID does.",
                      no_args_is_help=True)
out = Console()
err = Console(stderr=True)

DatabaseOpt = Annotated[str | None, typer.Option("--database", "-d", envvar="SCIMGRIP_DATABASE_URL",
                                                 help="sqlite:///path.db or postgresql://… (default ./scimgrip.db)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]


def _store(database: str | None) -> Any:
    from scimgrip.storage.sql.engine_store import open_engine_store

    return open_engine_store(database or Settings().database_url)


def _load_config(text: str, filename: str) -> Any:
    from scimgrip.engine.config import ConfigError, load_job_config

    try:
        return load_job_config(text, filename)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=1) from None


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def _job_json(job: Any, store: Any) -> dict[str, Any]:
    q = job.quarantine
    return {
        "name": job.name, "status": job.status, "watermark": bool(job.watermark),
        "created": _iso(job.created), "last_cycle_id": job.last_cycle_id,
        "last_cycle_started": _iso(job.last_cycle_started), "last_cycle_ended": _iso(job.last_cycle_ended),
        "last_successful_cycle": _iso(job.last_successful_cycle), "next_cycle_at": _iso(job.next_cycle_at),
        "steady_state_first": _iso(job.steady_state_first), "steady_state_last": _iso(job.steady_state_last),
        "quarantine": ({"reason": q.reason, "since": _iso(q.since), "level": q.level, "error": q.error}
                       if q else None),
        "users": store.count_links(job.name, "User"), "groups": store.count_links(job.name, "Group"),
        "escrows": store.count_escrows(job.name), "staged_deletes": len(store.staged(job.name)),
        "last_cycle": (job.state or {}).get("last_cycle"),
    }


def _require(store: Any, name: str) -> Any:
    job = store.get_job(name)
    if job is None:
        err.print(f"[red]error:[/red] no job {name!r}")
        raise typer.Exit(code=1)
    return job


# -- job --------------------------------------------------------------------------------------------------------
@job_app.command("create")
def job_create(name: str, config: Annotated[Path, typer.Option("--config", "-c", help="Job YAML file.")],
               database: DatabaseOpt = None, json_: JsonOpt = False) -> None:
    """Create a job from a YAML configuration (validated; errors name the line)."""
    text = config.read_text(encoding="utf-8")
    cfg = _load_config(text, str(config))
    store = _store(database)
    try:
        from scimgrip.engine.state import JobExists

        try:
            store.create_job(name, text, cfg.mapping_fingerprint())
        except JobExists:
            err.print(f"[red]error:[/red] job {name!r} already exists")
            raise typer.Exit(code=1) from None
    finally:
        store.close()
    for w in cfg.warnings:
        err.print(f"[yellow]warning:[/yellow] {w}")
    print(json.dumps({"job": name, "status": "NotRun"})) if json_ else out.print(f"Created job [bold]{name}[/bold]")


@job_app.command("update")
def job_update(name: str, config: Annotated[Path, typer.Option("--config", "-c", help="Job YAML file.")],
               database: DatabaseOpt = None) -> None:
    """Replace a job's configuration; a changed mapping or scope makes the next cycle initial (CYC-4)."""
    text = config.read_text(encoding="utf-8")
    cfg = _load_config(text, str(config))
    store = _store(database)
    try:
        before = _require(store, name)
        store.update_job_config(name, text, cfg.mapping_fingerprint())
    finally:
        store.close()
    changed = before.fingerprint != cfg.mapping_fingerprint()
    out.print(f"Updated job {name}" + (" — mappings or scope changed: the next cycle is initial" if changed else ""))


@job_app.command("list")
def job_list(database: DatabaseOpt = None, json_: JsonOpt = False) -> None:
    """List jobs with their status."""
    store = _store(database)
    try:
        jobs = [_job_json(j, store) for j in store.list_jobs()]
    finally:
        store.close()
    if json_:
        print(json.dumps(jobs))
        return
    table = Table("job", "status", "users", "groups", "escrows", "last cycle ended")
    for j in jobs:
        table.add_row(j["name"], j["status"], str(j["users"]), str(j["groups"]), str(j["escrows"]),
                      j["last_cycle_ended"] or "never")
    out.print(table)


@job_app.command("show")
def job_show(name: str, database: DatabaseOpt = None, json_: JsonOpt = False) -> None:
    """The job's configuration and status."""
    store = _store(database)
    try:
        job = _require(store, name)
        data = _job_json(job, store)
    finally:
        store.close()
    if json_:
        print(json.dumps({**data, "config": job.config_text}))
        return
    out.print(job.config_text)
    job_status_print(data)


def job_status_print(data: dict[str, Any]) -> None:
    table = Table("field", "value", show_header=False)
    for k, v in data.items():
        table.add_row(k, json.dumps(v) if isinstance(v, dict | list) else str(v))
    out.print(table)


@job_app.command("status")
def job_status(name: str, database: DatabaseOpt = None, json_: JsonOpt = False) -> None:
    """Status: Active / Paused / Quarantine (and why), counts, last cycle, next cycle."""
    store = _store(database)
    try:
        data = _job_json(_require(store, name), store)
    finally:
        store.close()
    print(json.dumps(data)) if json_ else job_status_print(data)


@job_app.command("delete")
def job_delete(name: str, database: DatabaseOpt = None,
               yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False) -> None:
    """Delete a job and all its state (links, escrows, logs). Target objects are left alone."""
    if not yes and not typer.confirm(f"Delete job {name!r} with its links, escrows and logs?"):
        raise typer.Exit(code=1)
    store = _store(database)
    try:
        if not store.delete_job(name):
            err.print(f"[red]error:[/red] no job {name!r}")
            raise typer.Exit(code=1)
    finally:
        store.close()
    out.print(f"Deleted job {name}")


@job_app.command("restart")
def job_restart(name: str, database: DatabaseOpt = None,
                scope: Annotated[list[str] | None, typer.Option(
                    "--scope", help="ConnectorDataStore, Escrows, Watermark, QuarantineState, Full, ForceDeletes "
                                    "(repeatable; default: the portal's restart)")] = None,
                force_deletes: Annotated[bool, typer.Option(
                    "--force-deletes", help="Apply the deletions held by the accidental-deletion threshold.")]
                = False) -> None:
    """Restart provisioning (CYC-5): clear state so the next cycle is initial; lift quarantine."""
    scopes = set(scope or ())
    if force_deletes:
        scopes.add("ForceDeletes")
    store = _store(database)
    try:
        _require(store, name)
        job = store.restart(name, scopes)
    finally:
        store.close()
    out.print(f"Restarted job {name} ({', '.join(sorted(scopes)) or 'portal restart'}); status {job.status}")


# -- sync -------------------------------------------------------------------------------------------------------
def build_engine(store: Any, name: str, *, dry_run: bool = False, progress: Any = None,
                 on_call: Any = None) -> Any:
    """Engine for a stored job: its source, its target client and the notifier from its configuration."""
    from scimgrip.engine.cycle import Engine
    from scimgrip.engine.notify import SmtpNotifier
    from scimgrip.engine.sources import open_source
    from scimgrip.engine.target import ScimTarget

    job = _require(store, name)
    cfg = _load_config(job.config_text, f"job {name}")
    token = cfg.target.resolve_token()
    if not token:
        err.print(f"[red]error:[/red] job {name}: no target token (set target.token or the variable in "
                  "target.token_env)")
        raise typer.Exit(code=1)
    source = open_source({"kind": cfg.source.kind, **dict(cfg.source.options)})
    notifier = None
    if cfg.notification.email:
        smtp = cfg.notification.smtp
        notifier = SmtpNotifier(to=cfg.notification.email, host=smtp.host if smtp else "127.0.0.1",
                                port=smtp.port if smtp else 25,
                                sender=(smtp.sender if smtp and smtp.sender else "scimgrip@localhost"),
                                username=smtp.username if smtp else None,
                                password_env=smtp.password_env if smtp else None,
                                starttls=smtp.starttls if smtp else False)
    engine_holder: dict[str, Any] = {}

    extra_hook = on_call

    def log_call(call: Any) -> None:
        engine = engine_holder.get("engine")
        if engine is not None:
            engine.on_call(call)
        if extra_hook is not None:   # e.g. the benchmark's request counter
            extra_hook(call)

    rate = cfg.target.rate
    target = ScimTarget(cfg.target.base_url, token, rate_per_second=rate.per_second, concurrency=rate.concurrency,
                        timeout=cfg.target.timeout_seconds, max_retries=cfg.target.retries,
                        members_per_patch=cfg.target.members_per_patch, use_bulk=cfg.target.use_bulk,
                        on_call=log_call, burst=rate.burst, adaptive=rate.adaptive)
    engine = Engine(name, cfg, store, source, target, dry_run=dry_run, progress=progress, notifier=notifier)
    engine_holder["engine"] = engine
    return engine


def _summary(report: Any) -> Table:
    table = Table(title=f"{report.kind} cycle {report.cycle_id[:8]}" + (" (dry run: plan)" if report.dry_run else ""))
    table.add_column("action")
    table.add_column("status")
    table.add_column("objects", justify="right")
    for key, n in sorted(report.tally().items()):
        action, status = key.split(":")
        table.add_row(action, status, str(n))
    return table


def sync(job: str, database: DatabaseOpt = None,
         once: Annotated[bool, typer.Option("--once", help="Run one cycle and exit.")] = False,
         dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan only: send nothing but GETs.")] = False,
         initial: Annotated[bool, typer.Option("--initial", help="Force an initial (full) cycle.")] = False,
         reconcile_: Annotated[bool, typer.Option(
             "--reconcile", help="Read the target back and report drift from what was provisioned.")] = False,
         repair: Annotated[bool, typer.Option("--repair", help="With --reconcile: repair the drift.")] = False,
         json_: JsonOpt = False, quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False) -> None:
    """Run the job's cycles on its schedule (Ctrl-C or SIGTERM: the running cycle finishes, then it stops;
    CYC-6)."""
    store = _store(database)
    if reconcile_:
        from scimgrip.engine.cycle import reconcile

        try:
            engine = build_engine(store, job, dry_run=dry_run)
            drifts = reconcile(engine, repair=repair)
        finally:
            store.close()
        if json_:
            print(json.dumps([d.as_dict() for d in drifts], default=str))
        else:
            table = Table("kind", "object", "source", "target", "detail", "repaired",
                          title=f"drift of job {job}: {len(drifts)} findings")
            for d in drifts:
                table.add_row(d.kind, d.object_type, d.source_id or "", d.target_id, d.detail,
                              "yes" if d.repaired else "")
            out.print(table)
        raise typer.Exit(code=0 if not drifts or repair else 4)
    stop = {"requested": False}

    def on_signal(signum: int, frame: Any) -> None:
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        err.print("[yellow]stopping after the current cycle (press Ctrl-C again to abort)[/yellow]")

    # CYC-6 / T-CYC-4: Ctrl-C, or SIGTERM from a service manager, lets the running cycle finish and starts no
    # new one; a second signal aborts
    previous = signal.signal(signal.SIGINT, on_signal)
    previous_term = signal.signal(signal.SIGTERM, on_signal)
    code = 0
    try:
        while True:
            bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.fields[rate]:.0f}/s"), TimeRemainingColumn(), console=err,
                           disable=quiet or json_)
            task = bar.add_task("cycle", total=None, rate=0.0)
            started = time.perf_counter()

            def progress(done: int, total: int, phase: str, bar: Progress = bar, task: Any = task,
                         started: float = started) -> None:
                elapsed = max(time.perf_counter() - started, 1e-6)
                bar.update(task, completed=done, total=total, description=phase, rate=done / elapsed)

            engine = build_engine(store, job, dry_run=dry_run, progress=progress)
            try:
                with bar:
                    report = engine.run_cycle(initial=initial or None)
            except RuntimeError as exc:          # the job lock is held by a running cycle (CYC-8)
                err.print(f"[red]error:[/red] {exc}")
                code = 2
                break
            initial = False
            if json_:
                print(json.dumps({"cycle_id": report.cycle_id, "kind": report.kind, "dry_run": report.dry_run,
                                  "counts": report.tally(), "quarantine": report.quarantine,
                                  "records": [r.as_dict() for r in report.records] if dry_run else None}))
            else:
                out.print(_summary(report))
                if report.quarantine:
                    out.print(f"[red]job {job} is in quarantine: {report.quarantine}[/red]")
            if report.quarantine:
                code = 3
            if once or dry_run or stop["requested"]:
                break
            current = store.get_job(job)
            wait = 60.0 * _load_config(current.config_text, job).schedule.interval_minutes
            if current.next_cycle_at is not None:
                wait = max(0.0, (current.next_cycle_at - dt.datetime.now(dt.UTC)).total_seconds())
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and not stop["requested"]:
                time.sleep(min(1.0, deadline - time.monotonic()))
            if stop["requested"]:
                break
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
        store.close()
    raise typer.Exit(code=code)


def provision(job: str, user: str, database: DatabaseOpt = None,
              dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the steps; send nothing.")] = False,
              json_: JsonOpt = False) -> None:
    """Provision one user (or group) now, by objectId or userPrincipalName, and show every step (OND)."""
    store = _store(database)
    try:
        engine = build_engine(store, job, dry_run=dry_run)
        try:
            records = engine.provision_on_demand([user])
        except (LookupError, RuntimeError) as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(code=1) from None
    finally:
        store.close()
    if json_:
        print(json.dumps([r.as_dict() for r in records]))
        return
    for r in records:
        out.print(f"[bold]{r.object_type} {r.source_display}[/bold] → {r.action} / {r.status}"
                  + (f" ({r.reason})" if r.reason else "") + (f": {r.detail}" if r.detail else ""))
        for st in r.steps:
            out.print(f"  {st['name']:<20} {st['status']:<8} {st['description']}")
        for m in r.modified:
            out.print(f"  modified {m['name']}: {m.get('old')!r} → {m.get('new')!r}")


def logs(job: str, database: DatabaseOpt = None,
         csv_: Annotated[bool, typer.Option("--csv", help="CSV export.")] = False,
         json_: JsonOpt = False,
         user: Annotated[str | None, typer.Option(help="Source id, target id or display name.")] = None,
         action: Annotated[str | None, typer.Option(help="create, update, disable, delete, stagedDelete, other")]
         = None,
         status: Annotated[str | None, typer.Option(help="success, failure, skipped, warning")] = None,
         since: Annotated[str | None, typer.Option(help="ISO time")] = None,
         limit: Annotated[int, typer.Option(help="Rows (table view).")] = 50) -> None:
    """Provisioning logs (LOG-1): one record per object per cycle, with steps; CSV or JSON export."""
    store = _store(database)
    try:
        _require(store, job)
        filters: dict[str, Any] = {"user": user, "action": action, "status": status,
                                   "since": dt.datetime.fromisoformat(since) if since else None}
        if csv_ or json_:
            for chunk in store.export_logs(job, "csv" if csv_ else "json", **filters):
                sys.stdout.write(chunk)
            return
        records = store.query_logs(job, limit=limit, newest_first=True, **filters)
    finally:
        store.close()
    table = Table("time", "object", "action", "status", "reason", "detail")
    for r in records:
        table.add_row(r.at.strftime("%Y-%m-%d %H:%M:%S"), f"{r.object_type} {r.source_display or r.source_id}",
                      r.action, r.status, r.reason or "", (r.detail or "")[:60])
    out.print(table)


def register(app: typer.Typer) -> None:
    """Attach the engine commands to the main ``scimgrip`` command."""
    app.add_typer(job_app, name="job")
    app.command("sync")(sync)
    app.command("provision")(provision)
    app.command("logs")(logs)
