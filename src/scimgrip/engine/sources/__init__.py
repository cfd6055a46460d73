"""Source connectors: where the engine reads the directory from (a file, Microsoft Graph, LDAP/AD).

``open_source`` builds one from a job's ``source:`` configuration, so the engine never imports a connector
it does not use (the LDAP and Graph clients have heavier dependencies).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scimgrip.engine.model import Source

KINDS = ("file", "graph", "ldap")


def open_source(config: Mapping[str, Any]) -> Source:
    """``{"kind": "file"|"graph"|"ldap", **arguments}`` → the connector, built with those keyword arguments.

    ``file``: ``path`` (and optional ``groups``, ``assignments`` CSV paths); ``graph``: ``tenant_id``,
    ``client_id``, ``client_secret``, ``service_principal_id``/``app_object_id``, …; ``ldap``: see
    ``LdapSource``. Unknown kinds and bad arguments raise ``ValueError``.
    """
    options = dict(config)
    kind = options.pop("kind", None)
    try:
        if kind == "file":
            from scimgrip.engine.sources.file import FileSource

            if "path" not in options:
                raise ValueError("file source: 'path' is required")
            return FileSource(**options)
        if kind == "graph":
            from scimgrip.engine.sources.graph import GraphSource

            return GraphSource(**options)
        if kind == "ldap":
            from scimgrip.engine.sources.ldap import LdapSource

            source: Source = LdapSource(**options)   # typed here: the module may be absent when type-checking
            return source
    except TypeError as exc:   # unexpected or missing keyword arguments
        raise ValueError(f"{kind} source: {exc}") from None
    raise ValueError(f"unknown source kind {kind!r}; expected one of {', '.join(KINDS)}")
