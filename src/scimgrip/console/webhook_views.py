"""A tenant's directory-event webhooks: its subscriptions (URL, event types, last delivery outcome) and the
delivery log, filterable by outcome and paged (``scimgrip.storage.sql.events_store``; the same data as
``scimgrip webhook list`` and ``scimgrip webhook deliveries``, docs/events.md), with one action: send a delivery
again (``scimgrip webhook replay --delivery``). Adding, removing and rotating endpoints stay in the CLI.

Endpoint secrets never reach a template: views hand over :class:`Subscription` rows, not store records.
An endpoint without a tenant (every tenant's events, set up by an operator) is shown to operators only.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from urllib.parse import quote

from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from scimgrip.console.pages import Ctx, Pages
from scimgrip.storage.sql.events_store import Delivery, Endpoint, EventStore

LOG_PAGE = 50
OUTCOMES = ("delivered", "failed", "pending")


@dataclass(frozen=True)
class Subscription:
    """What the console shows of an endpoint (no secret)."""

    id: str
    url: str
    event_types: list[str]
    all_tenants: bool
    created: dt.datetime
    description: str
    last: Delivery | None


def outcome_of(d: Delivery) -> str:
    """The delivery's state in words: delivered, retrying (last attempt failed), dead (retries exhausted) or
    queued (not attempted yet)."""
    if d.status == "delivered":
        return "delivered"
    if d.status == "dead":
        return "dead"
    return "retrying" if d.attempts else "queued"


class WebhookViews:
    def __init__(self, pages: Pages, events: EventStore) -> None:
        self.pages = pages
        self.events = events

    def routes(self) -> list[Route]:
        v = self.pages.view
        return [
            Route("/t/{tenant}/webhooks", v("tenant", self.webhooks), methods=["GET"]),
            Route("/t/{tenant}/webhooks/deliveries/{id}/replay", v("tenant", self.replay), methods=["POST"]),
        ]

    def _endpoints(self, ctx: Ctx) -> list[Endpoint]:
        assert ctx.tenant is not None
        own = self.events.list_endpoints(ctx.tenant.id)
        if ctx.is_operator:
            own += [e for e in self.events.list_endpoints() if e.tenant_id is None]
        return own

    def webhooks(self, ctx: Ctx) -> Response:
        assert ctx.tenant is not None
        endpoints = self._endpoints(ctx)
        ids = [e.id for e in endpoints]
        last = self.events.last_deliveries(ctx.tenant.id, ids)
        subs = [Subscription(e.id, e.url, e.event_types, e.tenant_id is None, e.created, e.description,
                             last.get(e.id)) for e in endpoints]
        outcome = ctx.query("outcome")
        outcome = outcome if outcome in OUTCOMES else ""
        before = ctx.query("before")
        log = self.events.tenant_delivery_log(
            ctx.tenant.id, ids, outcome or None, limit=LOG_PAGE + 1,
            before_id=int(before) if before.isdigit() and len(before) < 19 else None)
        more = len(log) > LOG_PAGE
        log = log[:LOG_PAGE]
        return self.pages.render(ctx, "webhooks.html", subscriptions=subs, urls={e.id: e.url for e in endpoints},
                                 log=log, outcome_filter=outcome, outcomes=OUTCOMES, outcome_of=outcome_of,
                                 next_before=log[-1].delivery.id if more and log else None,
                                 replayed=ctx.query("replayed") == "1")

    def replay(self, ctx: Ctx) -> Response:
        """Queue one delivery again, now (its retry window restarts). Another tenant's delivery, or one to an
        endpoint this account may not see, answers 404 like a delivery that does not exist."""
        assert ctx.tenant is not None
        raw = ctx.request.path_params["id"]
        delivery = self.events.get_delivery(int(raw)) if raw.isdigit() and len(raw) < 19 else None
        if (delivery is None or delivery.tenant_id != ctx.tenant.id
                or delivery.endpoint_id not in {e.id for e in self._endpoints(ctx)}):
            return self.pages.error(ctx, 404, "Not found", "There is no such delivery in this tenant.")
        self.events.replay(delivery.endpoint_id, delivery_id=delivery.id, tenant_id=ctx.tenant.id)
        return RedirectResponse(f"/console/t/{quote(ctx.tenant.name, safe='')}/webhooks?replayed=1",
                                status_code=303)
