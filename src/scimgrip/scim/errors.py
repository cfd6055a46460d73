"""SCIM protocol errors (RFC 7644 §3.12).

Every failure the protocol core detects is a :class:`ScimError` carrying the HTTP status and, where RFC 7644
Table 9 defines one, a ``scimType``. The HTTP layer renders it as an ``urn:ietf:params:scim:api:messages:2.0:Error``
body with ``status`` as a *string*, which is what RFC 7644 §3.12 and Entra require.
"""

from __future__ import annotations

from typing import Any

ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"


class ScimError(Exception):
    """A SCIM error response: HTTP status, optional ``scimType`` and a human-readable ``detail``."""

    status: int = 400
    scim_type: str | None = None

    def __init__(self, detail: str, *, status: int | None = None, scim_type: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        if scim_type is not None:
            self.scim_type = scim_type
        self.headers: dict[str, str] = headers or {}

    def to_body(self) -> dict[str, Any]:
        """The RFC 7644 §3.12 JSON body; ``status`` is a string."""
        body: dict[str, Any] = {"schemas": [ERROR_SCHEMA], "status": str(self.status)}
        if self.scim_type:
            body["scimType"] = self.scim_type
        body["detail"] = self.detail
        return body


class InvalidFilter(ScimError):
    """``invalidFilter``: the filter syntax is invalid or the filter is too long or too deep."""

    scim_type = "invalidFilter"


class TooMany(ScimError):
    """``tooMany``: the query would return more results than the server is willing to process."""

    scim_type = "tooMany"


class Uniqueness(ScimError):
    """``uniqueness`` (409): one or more unique attribute values are already in use."""

    status = 409
    scim_type = "uniqueness"


class Mutability(ScimError):
    """``mutability``: an attempt to modify an attribute that is immutable or read-only."""

    scim_type = "mutability"


class InvalidSyntax(ScimError):
    """``invalidSyntax``: the request body structure was invalid."""

    scim_type = "invalidSyntax"


class InvalidPath(ScimError):
    """``invalidPath``: the PATCH ``path`` attribute was invalid or malformed."""

    scim_type = "invalidPath"


class NoTarget(ScimError):
    """``noTarget``: the PATCH ``path`` did not yield an attribute that could be operated on."""

    scim_type = "noTarget"


class InvalidValue(ScimError):
    """``invalidValue``: a required value was missing or a value was not compatible with its type."""

    scim_type = "invalidValue"


class InvalidVersion(ScimError):
    """``invalidVers``: the specified SCIM protocol version is not supported."""

    scim_type = "invalidVers"


class Sensitive(ScimError):
    """``sensitive``: the request cannot be completed because it would reveal sensitive data."""

    scim_type = "sensitive"


class NotFound(ScimError):
    """404: the resource or endpoint does not exist."""

    status = 404


class Unauthorized(ScimError):
    """401: missing, unknown, revoked or expired bearer token."""

    status = 401
    tenant_id: int | None = None   # the tenant the URL names, if it exists (for its request log only)


class PreconditionFailed(ScimError):
    """412: ``If-Match`` / ``If-None-Match`` did not hold (RFC 7644 §3.14)."""

    status = 412


class PayloadTooLarge(ScimError):
    """413: the body is larger than ``maxPayloadSize`` or has more operations than allowed (RFC 7644 §3.7.4)."""

    status = 413


class NotImplementedByServer(ScimError):
    """501: the endpoint exists in SCIM but this server does not implement it (e.g. ``/Me``)."""

    status = 501


class ServiceUnavailable(ScimError):
    """503 with ``Retry-After``: the database stayed busy past its lock timeout and retries; nothing was stored,
    the same request can be sent again (RFC 9110 §15.6.4; Entra retries 5xx and honours ``Retry-After``)."""

    status = 503


class MethodNotAllowed(ScimError):
    """405: the method is not supported on this endpoint."""

    status = 405
