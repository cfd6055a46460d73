"""The one error type of single sign-on: a machine reason plus a message that is safe to show on a page."""

from __future__ import annotations

REASONS = frozenset({
    "bad_state", "bad_signature", "wrong_audience", "expired", "wrong_issuer", "unknown_tenant", "replayed",
    "not_provisioned", "disabled", "invalid_config", "idp_error", "bad_nonce", "bad_response", "unreachable",
    "bad_algorithm", "wrong_destination", "not_yet_valid",
})


class SsoError(Exception):
    """A refused login or configuration.

    ``reason`` is a short machine code (one of :data:`REASONS`) for logs, metrics and tests; ``message`` is
    written for the person at the browser or the console and never contains a token, a secret or raw XML.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
