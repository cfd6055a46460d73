"""Plain-language explanations of SCIM request-log entries for the request debugger.

Pure: one log row (method, path, status, detail, masked bodies) in, a list of notes out. Failures are explained
by status and ``scimType`` (RFC 7644 §3.12); accepted IdP quirks are named after the tolerance policy
(:mod:`scimgrip.scim.tolerance`), so an admin sees e.g. that Entra sent ``active: "False"`` and it was accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

import orjson

from scimgrip.scim.tolerance import QUIRKS_BY_NAME

_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


@dataclass(frozen=True)
class Note:
    level: str      # "error" | "warning" | "info"
    text: str


def _scim_type(response_body: str | None) -> str | None:
    if not response_body:
        return None
    try:
        body = orjson.loads(response_body)
    except orjson.JSONDecodeError:
        return None
    value = body.get("scimType") if isinstance(body, dict) else None
    return value if isinstance(value, str) else None


def is_connection_test(method: str, path: str) -> bool:
    """Entra's Test Connection (and the first request of every cycle): a filter for a random GUID."""
    decoded = unquote_plus(path)
    return method == "GET" and "/Users" in decoded and "filter=" in decoded and bool(_GUID.search(decoded))


def _quirk(name: str, what: str) -> Note:
    q = QUIRKS_BY_NAME[name]
    return Note("info", f"{what} Accepted per tolerance policy ({q.name}, an {q.idp} behaviour).")


_BOOL_STRING = re.compile(r'"(active|value)"\s*:\s*"(True|False|true|false)"')
_CAP_OP = re.compile(r'"op"\s*:\s*"(Add|Replace|Remove)"')
_MANAGER_STRING = re.compile(r'"manager"\s*:\s*"')
_NULL_REF = re.compile(r'"\$ref"\s*:\s*null')
_ADSCIM = "schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM"
_UNQUOTED_FILTER = re.compile(r'filter=\w+(\.\w+)*\s+eq\s+[^"\s]', re.I)


def quirk_notes(method: str, path: str, request_body: str | None) -> list[Note]:
    notes: list[Note] = []
    body = request_body or ""
    m = _BOOL_STRING.search(body)
    if m and (m.group(1) == "active" or '"path":"active"' in body.replace(" ", "")):
        notes.append(_quirk("string_booleans", f'The client sent the boolean as the string "{m.group(2)}" '
                                               f'(Entra sends `active: "{m.group(2)}"` without aadOptscim062020).'))
    if (found := _CAP_OP.search(body)) is not None:
        notes.append(_quirk("capitalised_ops", f'PATCH operation written "{found.group(1)}" instead of '
                                               f'"{found.group(1).lower()}".'))
    if _MANAGER_STRING.search(body):
        notes.append(_quirk("manager_bare_string", "The manager was sent as a bare string, not {\"value\": …}."))
    if _NULL_REF.search(body):
        notes.append(_quirk("null_ref", 'Member objects carried "$ref": null.'))
    if _ADSCIM in body:
        notes.append(_quirk("unknown_schema_urns", "The body named Microsoft's ADSCIM group schema URN."))
    decoded = unquote_plus(path)
    if "filter=" in decoded and _UNQUOTED_FILTER.search(decoded):
        notes.append(_quirk("unquoted_filter_values", "The filter value was not in quotes."))
    if "aadOptscim062020" in path:
        notes.append(Note("info", "The Tenant URL carries ?aadOptscim062020: Entra's RFC-compliant PATCH mode."))
    return notes


def explain(entry: dict[str, Any]) -> list[Note]:
    """Notes for one request-log row, the most important first."""
    method = str(entry.get("method", ""))
    path = str(entry.get("path", ""))
    status = int(entry.get("status", 0))
    detail = entry.get("detail") or ""
    scim_type = _scim_type(entry.get("response_body"))
    notes: list[Note] = []
    if status == 401:
        notes.append(Note("error", "Authentication failed: the Secret Token was missing, wrong, revoked or expired, "
                                   "or belongs to another tenant's Tenant URL. Issue a token on the tenant overview, "
                                   "paste it into Entra (Provisioning → Admin Credentials → Secret Token) and run "
                                   "Test Connection again."))
    elif status == 409:
        notes.append(Note("error", "Uniqueness conflict: a user with this userName already exists in this tenant "
                                   "(compared case-insensitively). Entra matches users by its matching attribute "
                                   "(userName by default) before creating; check that the existing user has the "
                                   "value Entra looks for, or delete the stale user."))
    elif status == 400 and scim_type == "invalidFilter":
        notes.append(Note("error", f"The filter was not understood: {detail} Entra sends filters such as "
                                   '`userName eq "alice@contoso.com"`; check the matching attribute in the '
                                   "Entra attribute mappings."))
    elif status == 400 and scim_type == "invalidSyntax":
        notes.append(Note("error", f"The request body was not valid SCIM JSON: {detail}"))
    elif status == 400 and scim_type in ("invalidValue", "invalidPath", "noTarget", "mutability"):
        notes.append(Note("error", f"Rejected value ({scim_type}): {detail} Check the attribute mapping that "
                                   "produces this attribute in Entra."))
    elif status == 400:
        notes.append(Note("error", f"Bad request: {detail}"))
    elif status == 404 and method in ("GET", "PATCH", "PUT", "DELETE"):
        notes.append(Note("warning", "The resource does not exist in this tenant (deleted here, or never created). "
                                     "Entra treats a 404 on a DELETE as done; on a PATCH it re-creates the user "
                                     "in a later cycle."))
    elif status == 412:
        notes.append(Note("warning", "If-Match did not match the current version (someone changed the resource "
                                     "first). Re-read and retry."))
    elif status == 413:
        notes.append(Note("error", f"Too large: {detail} The limits are advertised in /ServiceProviderConfig."))
    elif status == 429:
        notes.append(Note("warning", "Rate limited: the tenant sent more requests than its limit. Entra waits for "
                                     "Retry-After and retries by itself."))
    elif status >= 500:
        notes.append(Note("error", "Server error: the request was not applied. The server log has the details."))
    elif status < 400 and is_connection_test(method, path):
        notes.append(Note("info", "This is Entra's connection check (Test Connection, and the first request of "
                                  "every provisioning cycle): a lookup of a user that cannot exist. 200 with an "
                                  "empty list is the correct answer."))
    notes.extend(quirk_notes(method, path, entry.get("request_body")))
    return notes
