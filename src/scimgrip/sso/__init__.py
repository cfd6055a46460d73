"""Single sign-on for the people a tenant provisioned over SCIM: OpenID Connect (Entra ID, any OP) and SAML 2.0
relying-party cores, their per-tenant settings, and the rule that links a login to a provisioned user
(docs/sso.md). Library code: no web framework; HTTP only through an injected ``httpx.Client``."""
