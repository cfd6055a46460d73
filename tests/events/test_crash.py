"""Killing the server (SIGKILL) between the changes and their delivery loses no event: the outbox committed
with each change, and a new process delivers everything — including deliveries the dead one had leased."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scimgrip.events.sdk import iter_events
from tests.events.conftest import FAST_ENV, Receiver, add_webhook, api_key, tenant
from tests.events.helpers import assert_ordered_per_resource, create_user, first_arrivals, patch
from tests.server.conftest import start_server, stop_server


def test_sigkill_between_change_and_delivery_loses_nothing(database: str, tmp_path: Path) -> None:
    receiver = Receiver().start()
    receiver.delay = 0.02                     # slow receiver: deliveries are still queued and in flight
    server = start_server(database, tmp_path, env=FAST_ENV)
    try:
        handle = tenant(server, "crash")
        hook = add_webhook(server, receiver.url, "crash")

        def work(n: int) -> int:
            with handle.client() as c:
                uid = create_user(c, f"c{n}")
                for i in range(9):
                    patch(c, f"/Users/{uid}", {"op": "replace", "path": "title", "value": str(i)})
            return 10

        with ThreadPoolExecutor(4) as pool:
            acknowledged = sum(pool.map(work, range(12)))      # every change got its 2xx
        receiver.wait_for(lambda evs: len(evs) >= 5, timeout=30)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=10)
        before = len(receiver.events())
        assert before < acknowledged, "the receiver was too fast to test anything"
        receiver.delay = 0
        server = start_server(database, tmp_path, env=FAST_ENV)
        key = api_key(server, "crash")
        stored = list(iter_events(server.base_url, key))
        assert len(stored) == acknowledged                      # no change without its event
        receiver.wait_for(lambda evs: {e["id"] for e in evs} >= {e["id"] for e in stored}, timeout=60)
        got = first_arrivals(receiver, hook["secret"])
        assert sorted(got, key=lambda e: e["sequence"]) == stored
        assert_ordered_per_resource(got)
    finally:
        if server.proc.poll() is None:
            stop_server(server)
        receiver.stop()


