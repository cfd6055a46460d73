"""Matching from one listing of the target instead of one filter query per object (MAT-1, PERF §16.3).

Entra matches every object of an initial cycle with its own ``GET /Users?filter=userName eq "…"``: one round trip
per object before any write, half the requests of a cycle into an empty application. When a cycle has many
objects without a link, the engine instead pages through the target's objects once (RFC 9865 cursors, or index
paging) and matches in memory. It stays correct because:

* values are compared the way the target compares them: case-insensitively when the attribute is
  ``caseExact: false`` in RFC 7643 (``userName``, ``emails.value``, group ``displayName``), exactly otherwise —
  and exactly for attributes the core schema does not know, which can only miss a match, never invent one;
* a miss that is not one (an object created at the target after the listing, or matched differently by the
  target) ends in a ``409`` on create, and the 409 path re-matches with a real filter query (MAT-4);
* two hits are still ``DuplicateTargetEntries`` (MAT-2).

The listing is skipped — per-object filter queries are used, as Entra does — when the target holds far more
objects than the cycle has to match (:data:`LISTING_FACTOR`), more than :data:`MAX_LISTED`, or cannot list.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from scimgrip.engine.values import parsed_path, value_at

log = logging.getLogger("scimgrip.engine.match_index")

MIN_UNLINKED = 50          # below this, per-object queries cost less than a listing
LISTING_FACTOR = 20        # list when the target holds at most this many objects per object to match
MAX_LISTED = 100_000       # memory bound: never hold more target objects than this


def _case_exact(path: str, object_type: str) -> bool:
    parsed = parsed_path(path, object_type)
    target = getattr(parsed, "target", None) if parsed is not None else None
    return True if target is None else bool(target.case_exact)


class MatchIndex:
    """Target objects of one type by normalised matching-attribute value."""

    def __init__(self, object_type: str, paths: Sequence[str]) -> None:
        self.object_type = object_type
        self.paths = tuple(paths)
        self._exact = {p: _case_exact(p, object_type) for p in self.paths}
        self._by: dict[str, dict[Any, list[dict[str, Any]]]] = {p: defaultdict(list) for p in self.paths}
        self.size = 0

    def key(self, path: str, value: Any) -> Any:
        if isinstance(value, str):
            return ("s", value if self._exact[path] else value.casefold())
        return (type(value).__name__, value)

    def add(self, resource: dict[str, Any]) -> None:
        self.size += 1
        for path in self.paths:
            value = value_at(resource, path, self.object_type)
            values = value if isinstance(value, list) else [value]
            for v in dict.fromkeys(self.key(path, x) for x in values if x is not None and x != ""):
                self._by[path][v].append(resource)

    def lookup(self, path: str, value: Any) -> list[dict[str, Any]]:
        """The target objects whose ``path`` equals ``value`` as the target would compare them."""
        if path not in self._by:
            raise KeyError(path)
        return list(self._by[path].get(self.key(path, value), ()))

    @classmethod
    def build(cls, target: Any, object_type: str, paths: Sequence[str], to_match: int) -> MatchIndex | None:
        """List the target once if that is cheaper than ``to_match`` filter queries; None: use queries."""
        from scimgrip.engine.target import TargetError

        if to_match < MIN_UNLINKED or not paths or not (hasattr(target, "list_all") and hasattr(target, "count")):
            return None
        try:
            total = target.count(object_type)
            if total is None or total > min(MAX_LISTED, LISTING_FACTOR * to_match):
                log.info("%s matching: %s target objects for %d to match; filter queries instead",
                         object_type, total, to_match)
                return None
            index = cls(object_type, paths)
            resources: Iterable[dict[str, Any]] = target.list_all(object_type)
            for r in resources:
                index.add(r)
                if index.size > MAX_LISTED:
                    return None
        except TargetError as exc:
            log.info("%s matching: the target cannot be listed (%s); filter queries instead", object_type, exc)
            return None
        return index
