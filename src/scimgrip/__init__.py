"""scimgrip: an Entra-ready, multi-tenant SCIM 2.0 service provider (RFC 7643 / RFC 7644)."""

__version__ = "0.1.0"
