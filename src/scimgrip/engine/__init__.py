"""The provisioning engine: push a source directory to any SCIM 2.0 endpoint the way Entra ID does."""
