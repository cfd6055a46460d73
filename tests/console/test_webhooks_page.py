"""The console's webhooks page against a real ``scimgrip serve`` (SQLite and PostgreSQL): endpoints made with
the events store, deliveries made by the server's own dispatcher after real SCIM writes; delivered and failed
deliveries in the log, the outcome filter, paging, no secret in the HTML, tenant isolation."""

from __future__ import annotations

import re

from scimgrip.events.signing import generate_secret
from scimgrip.storage import open_storage
from scimgrip.storage.sql.events_store import EventStore
from tests.console.conftest import Browserless
from tests.console.test_console_http import USER_SCHEMA, admin_of, eventually, issue_token, new_tenant, scim
from tests.events.conftest import Receiver
from tests.server.conftest import Server, free_port


def _add_endpoint(server: Server, tenant: str, url: str) -> tuple[str, str]:
    storage = open_storage(server.database)
    try:
        tid = storage.get_tenant(tenant).id  # type: ignore[union-attr]
        secret = generate_secret()
        ep = EventStore(storage).add_endpoint(url, secret, tenant_id=tid, event_types=["user.created"],
                                              description="crm sync")
        return ep.id, secret
    finally:
        storage.close()


def test_webhooks_page_shows_subscriptions_and_delivery_log(operator: Browserless, console_server: Server) -> None:
    tenant, other = new_tenant(operator), new_tenant(operator)
    receiver = Receiver().start()
    try:
        ok_id, ok_secret = _add_endpoint(console_server, tenant, receiver.url)
        dead_url = f"http://127.0.0.1:{free_port()}/nobody-listens"
        bad_id, bad_secret = _add_endpoint(console_server, tenant, dead_url)
        admin = admin_of(console_server, operator, tenant, "it@hooks.example")
        page = admin.get(f"/console/t/{tenant}/webhooks")
        assert page.status_code == 200
        assert f'href="/console/t/{tenant}/webhooks" aria-current="page">Webhooks' in page.text
        assert receiver.url in page.text and dead_url in page.text and "none yet" in page.text
        assert "No deliveries match." in page.text

        _, token = issue_token(operator, tenant)
        with scim(console_server, tenant, token) as c:
            for i in range(3):
                assert c.post("/Users", json={"schemas": [USER_SCHEMA], "userName": f"u{i}@hooks.example"}
                              ).status_code == 201
        eventually(lambda: len(receiver.received) >= 3)

        def log_settled() -> str | None:
            text = admin.get(f"/console/t/{tenant}/webhooks").text
            return text if text.count(">delivered</span>") >= 3 and text.count(">retrying</span>") >= 3 else None

        text = eventually(log_settled, timeout=20)
        deliveries = text.split('id="deliveries"', 1)[1]
        assert "#1 user.created" in deliveries and "#3 user.created" in deliveries
        assert "<td>204</td>" in deliveries                        # the receiver's answer
        assert re.search(r"<td>[^<]*(refused|connect)[^<]*</td>", deliveries, re.I), deliveries  # the failure
        subscriptions = text.split('id="subscriptions"', 1)[1].split("</table>", 1)[0]
        assert "crm sync" in subscriptions and "user.created" in subscriptions
        assert ok_secret not in text and bad_secret not in text and "whsec_" not in text

        delivered = admin.get(f"/console/t/{tenant}/webhooks?outcome=delivered").text
        assert delivered.count(">delivered</span>") == 3 + 1      # the log, and the subscription's last delivery
        assert dead_url not in delivered.split('id="deliveries"', 1)[1]
        failed = admin.get(f"/console/t/{tenant}/webhooks?outcome=failed").text.split('id="deliveries"', 1)[1]
        assert ">retrying</span>" in failed and ">delivered</span>" not in failed
        assert "No deliveries match." in admin.get(f"/console/t/{tenant}/webhooks?outcome=pending").text
        assert admin.get(f"/console/t/{tenant}/webhooks?outcome=bogus&before=x").status_code == 200
        older = admin.get(f"/console/t/{tenant}/webhooks?before=1").text
        assert "No deliveries match." in older                      # nothing older than the first delivery

        # "Send again": a POST form with the CSRF token; the receiver gets the event once more
        delivered = admin.get(f"/console/t/{tenant}/webhooks?outcome=delivered").text
        m = re.search(rf'action="(/console/t/{tenant}/webhooks/deliveries/(\d+)/replay)"', delivered)
        assert m, delivered
        replay_path = m.group(1)
        assert admin.post(replay_path, csrf=False).status_code == 403
        before = len(receiver.received)
        r = admin.post(replay_path)
        assert r.status_code == 303 and r.headers["location"] == f"/console/t/{tenant}/webhooks?replayed=1"
        eventually(lambda: len(receiver.received) == before + 1)
        assert admin.post(f"/console/t/{tenant}/webhooks/deliveries/999999999/replay").status_code == 404
        assert admin.post(f"/console/t/{tenant}/webhooks/deliveries/x/replay").status_code == 404

        # the tenant admin of another tenant sees nothing of it; their own page lists nothing of it either
        admin_b = admin_of(console_server, operator, other, "it@other.example")
        r = admin_b.get(f"/console/t/{tenant}/webhooks")
        assert r.status_code == 404 and receiver.url not in r.text
        own = admin_b.get(f"/console/t/{other}/webhooks")
        assert own.status_code == 200 and receiver.url not in own.text and ok_id not in own.text
        assert bad_id not in own.text
        assert admin_b.post(replay_path).status_code == 404
        assert admin_b.post(replay_path.replace(f"/t/{tenant}/", f"/t/{other}/")).status_code == 404
        assert len(receiver.received) == before + 1
        assert operator.get(f"/console/t/{tenant}/webhooks").status_code == 200
    finally:
        receiver.stop()
