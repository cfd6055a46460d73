"""Discovery documents: ``/ServiceProviderConfig``, ``/Schemas``, ``/ResourceTypes`` (RFC 7644 §4, RFC 7643 §5–7).

The ServiceProviderConfig advertises exactly the limits the server enforces (:class:`Limits`) and RFC 9865
cursor pagination.
"""

from __future__ import annotations

from typing import Any

from scimgrip.scim.messages import Limits
from scimgrip.scim.schema import SPC_SCHEMA, SchemaRegistry

DOCS_URL = "https://github.com/scimgrip/scimgrip/blob/main/docs/connect-entra.md"


def service_provider_config(limits: Limits, base_url: str) -> dict[str, Any]:
    """RFC 7643 §5, with the RFC 9865 ``pagination`` block."""
    return {
        "schemas": [SPC_SCHEMA],
        "documentationUri": DOCS_URL,
        "patch": {"supported": True},
        "bulk": {
            "supported": True,
            "maxOperations": limits.max_bulk_operations,
            "maxPayloadSize": limits.max_payload_bytes,
        },
        "filter": {"supported": True, "maxResults": limits.max_filter_results},
        "changePassword": {"supported": False},
        "sort": {"supported": True},
        "etag": {"supported": True},
        "pagination": {
            "cursor": True,
            "index": True,
            "defaultPaginationMethod": "index",
            "defaultPageSize": limits.default_page_size,
            "maxPageSize": limits.max_page_size,
            "cursorTimeout": limits.cursor_timeout_seconds,
        },
        "authenticationSchemes": [
            {
                "type": "oauthbearertoken",
                "name": "OAuth Bearer Token",
                "description": "The tenant's Secret Token, sent as 'Authorization: Bearer <token>'.",
                "specUri": "https://www.rfc-editor.org/info/rfc6750",
                "documentationUri": DOCS_URL,
                "primary": True,
            }
        ],
        "meta": {
            "resourceType": "ServiceProviderConfig",
            "location": f"{base_url}/ServiceProviderConfig",
        },
    }


def schemas_list(registry: SchemaRegistry, base_url: str) -> list[dict[str, Any]]:
    return [s.to_json(f"{base_url}/Schemas/{s.id}") for s in registry.schemas()]


def resource_types_list(registry: SchemaRegistry, base_url: str) -> list[dict[str, Any]]:
    return [rt.to_json(f"{base_url}/ResourceTypes/{rt.name}") for rt in registry.resource_types()]
