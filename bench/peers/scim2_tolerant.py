"""scim2-server made Entra-tolerant with ``scim2_models.ScimPolicy`` (landscape.md §5.4 (b)).

Run with the Python of a venv where ``scim2-server`` is installed (``bench/.peers/venv``); the benchmark scripts
start it themselves. It serves one in-memory tenant at ``http://HOST:PORT/v2`` on the same threading ``wsgiref``
server as the ``scim2-server`` command, and differs from it only in the policy:

* ``unknown=ignore``: Entra's ``meta`` in a POST body, the ADSCIM Group URN, unknown attributes are dropped;
* ``remove_value_as_filter=apply``: ``{"op":"Remove","path":"members","value":[{"value":"x"}]}`` removes only x;
* ``unmatched_path_filter=create``: ``Add``/``Replace`` on ``emails[type eq "work"].value`` upserts.

    python bench/peers/scim2_tolerant.py --port 18081 --bearer-token peer-secret
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from scim2_models import ScimPolicy, ScimProvider
from scim2_server.memory import InMemoryStorage
from scim2_server.service import ScimService
from scim2_server.testserver.application import BEARER_TOKEN_SCHEME, BearerTokenApplication
from scim2_server.utils import (
    load_default_resource_types,
    load_default_schemas,
    load_default_service_provider_config,
)

POLICY = ScimPolicy(unknown=ScimPolicy.Unknown.ignore,
                    remove_value_as_filter=ScimPolicy.RemoveValue.apply,
                    unmatched_path_filter=ScimPolicy.UnmatchedPathFilter.create)


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hostname", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=18081)
    ap.add_argument("--bearer-token", action="append", default=[])
    args = ap.parse_args()
    config = load_default_service_provider_config()
    if args.bearer_token:
        config.authentication_schemes = [*(config.authentication_schemes or []), BEARER_TOKEN_SCHEME]
    provider = ScimProvider.from_discovery(load_default_schemas().values(), load_default_resource_types().values(),
                                           config=config, policy=POLICY)
    service = ScimService(provider, secret=secrets.token_urlsafe(32))
    app = BearerTokenApplication(InMemoryStorage(), provider, service=service, bearer_tokens=args.bearer_token)
    with make_server(args.hostname, args.port, app, server_class=ThreadingWSGIServer,
                     handler_class=QuietHandler) as server:
        print(f"Serving tolerant SCIM on http://{args.hostname}:{args.port}/v2", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()


if __name__ == "__main__":
    main()
