"""Provisioning-engine jobs, read-only (operators): status, the running cycle's progress, quarantine, and the
provisioning logs with their steps (``scimgrip.engine.state``; the same data as ``scimgrip job status`` and
``scimgrip logs``)."""

from __future__ import annotations

from starlette.responses import Response
from starlette.routing import Route

from scimgrip.console.pages import Ctx, Pages
from scimgrip.engine.state import EngineStore

LOG_PAGE = 50
LOG_STATUSES = ("success", "failure", "skipped", "warning")


class JobsViews:
    def __init__(self, pages: Pages, engine_store: EngineStore) -> None:
        self.pages = pages
        self.store = engine_store

    def routes(self) -> list[Route]:
        v = self.pages.view
        return [
            Route("/jobs", v("operator", self.jobs), methods=["GET"]),
            Route("/jobs/{name}", v("operator", self.job), methods=["GET"]),
        ]

    def jobs(self, ctx: Ctx) -> Response:
        return self.pages.render(ctx, "jobs.html", jobs=self.store.list_jobs())

    def job(self, ctx: Ctx) -> Response:
        name = ctx.request.path_params["name"]
        job = self.store.get_job(name) if len(name) <= 200 else None
        if job is None:
            return self.pages.error(ctx, 404, "Not found", "There is no such provisioning job.")
        status = ctx.query("status")
        user = ctx.query("user")[:200]
        after = ctx.query("after")
        logs = self.store.query_logs(job, status=status if status in LOG_STATUSES else None, user=user or None,
                                     limit=LOG_PAGE + 1, newest_first=True,
                                     after_id=int(after) if after.isdigit() and len(after) < 19 else None)
        more = len(logs) > LOG_PAGE
        logs = logs[:LOG_PAGE]
        return self.pages.render(ctx, "job.html", job=job, logs=logs, status_filter=status, user=user,
                                 next_after=logs[-1].id if more and logs else None, statuses=LOG_STATUSES,
                                 lock=self.store.lock_holder(job.name))
