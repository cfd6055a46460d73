"""The tolerance policy: every IdP quirk scimgrip accepts, by name, with its source and recorded fixture.

The protocol core is strict RFC 7643/7644; a quirk is accepted only through a switch of
:class:`TolerancePolicy` and one rewrite function in this module. There are no ``if entra:`` branches
anywhere else: callers ask ``policy.<quirk>`` and call the function here. Responses are never affected:
they are always RFC-shaped (JSON booleans, ``manager`` as an object, ``status`` as a string).

Each quirk's fixture is a recorded request under ``tests/fixtures/idp/<idp>/<name>.json`` and is replayed by
``tests/scim/test_tolerance.py`` (on) and checked to be rejected or handled per RFC (off).
The sources are the threads and pages cited in ``entra-scim-wire.md``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scimgrip.scim.errors import InvalidValue


@dataclass(frozen=True)
class Quirk:
    name: str
    idp: str
    summary: str
    sources: tuple[str, ...]
    fixture: str


QUIRKS: tuple[Quirk, ...] = (
    Quirk("capitalised_ops", "Entra",
          'PATCH "op" sent as "Add"/"Replace"/"Remove" (default mode); matched case-insensitively.',
          ("learn.microsoft.com …/use-scim-to-provision-users-and-groups (TUT)",
           "learn.microsoft.com …/application-provisioning-config-problem-scim-compatibility (COMPAT)",
           "imulab/go-scim#46", "thomaspoignant/scim-patch#6"),
          "entra/patch_user_default_mode.json"),
    Quirk("string_booleans", "Entra",
          'Boolean attributes sent as the strings "True"/"False"/"true"/"false"; coerced, returned as JSON booleans.',
          ("COMPAT: disable user without aadOptscim062020", "AzureAD/SCIMReferenceCode#21",
           "scimmy#51", "scimmy#86", "rancher/rancher#52996"),
          "entra/disable_user_default_mode.json"),
    Quirk("dotted_pathless_keys", "Entra",
          'Path-less add/replace whose value object has dotted keys ("name.givenName") and URN keys.',
          ("COMPAT: with aadOptscim062020", "Captain-P-Goldfish/SCIM-SDK#267", "pingidentity/scim2#224",
           "thomaspoignant/scim-patch#132"),
          "entra/patch_user_flag_mode.json"),
    Quirk("upsert_filtered_path", "Entra",
          'Add or Replace on emails[type eq "work"].value when no element matches creates one element of that '
          "type (never a second element of the same type).",
          ("Microsoft Q&A 1684621", "TUT: type values unique within a multi-valued attribute",
           "Captain-P-Goldfish/SCIM-SDK#416"),
          "entra/add_work_email_upsert.json"),
    Quirk("manager_bare_string", "Entra",
          'enterprise "manager" sent as a bare string (POST and PATCH) or a one-element list; stored and '
          'returned as {"value": …}.',
          ("apache/directory-scimple#1242", "Captain-P-Goldfish/SCIM-SDK#686", "MicrosoftDocs/azure-docs#69234",
           "Budibase/budibase#15369"),
          "entra/create_user_manager_string.json"),
    Quirk("remove_members_by_value", "Entra",
          'Remove with path "members" and a value list removes exactly the listed members (not all).',
          ("COMPAT: remove member without feature flag", "AzureAD/SCIMReferenceCode#10",
           "apache/directory-scimple#436"),
          "entra/remove_members_value_list.json"),
    Quirk("null_ref", "Entra", 'Member objects carry "$ref": null; the null is ignored.',
          ("TUT: Group operations — add members",), "entra/add_members_null_ref.json"),
    Quirk("replace_members_empty", "Okta", 'replace of "members" with [] removes every member.',
          ("Captain-P-Goldfish/SCIM-SDK#757", "scim-for-keycloak#144", "jelhub/scimgateway#113"),
          "okta/replace_members_empty.json"),
    Quirk("ignore_read_only_in_values", "Okta",
          'PATCH values carrying read-only "id" or "meta" (Okta) are ignored instead of rejected. (In POST/PUT '
          "bodies RFC 7644 §3.3 already says to ignore them, e.g. Entra's meta.resourceType.)",
          ("entra-scim-wire.md §5.1 (TUT create user)", "Okta SCIM 2.0 guide: replace with id"),
          "okta/replace_with_id.json"),
    Quirk("unknown_schema_urns", "Entra",
          "Unknown URNs in \"schemas\" (Microsoft's ADSCIM Group URN) are ignored.",
          ("TUT: Create Group example", "COMPAT: invalid schema URI (fixed 2018)"),
          "entra/create_group_adscim_urn.json"),
    Quirk("non_canonical_types", "Entra",
          'Non-canonical "type" values such as "alternate" (KPN Grip mapping) accepted on emails/phones/addresses.',
          ("learn.microsoft.com …/kpn-grip-provisioning-tutorial (KPN) attribute table",),
          "entra/create_user_kpn_grip.json"),
    Quirk("unquoted_filter_values", "Entra",
          "Filter comparison values without quotes (externalId eq jyoung) taken as strings.",
          ("TUT example 1: filter=externalId eq jyoung",), "entra/filter_unquoted.json"),
    Quirk("clear_with_empty_value", "Entra",
          'Replace with "" or null clears an attribute (manager removal: LOGICAPP test 25).',
          ("SCIMReferenceCode LogicApp validation, test 25",), "entra/clear_manager.json"),
)

QUIRKS_BY_NAME: dict[str, Quirk] = {q.name: q for q in QUIRKS}


@dataclass(frozen=True)
class TolerancePolicy:
    """Which quirks are accepted. Default: all on (Entra and Okta work with no feature flag)."""

    capitalised_ops: bool = True
    string_booleans: bool = True
    dotted_pathless_keys: bool = True
    upsert_filtered_path: bool = True
    manager_bare_string: bool = True
    remove_members_by_value: bool = True
    null_ref: bool = True
    replace_members_empty: bool = True
    ignore_read_only_in_values: bool = True
    unknown_schema_urns: bool = True
    non_canonical_types: bool = True
    unquoted_filter_values: bool = True
    clear_with_empty_value: bool = True

    @classmethod
    def strict(cls) -> TolerancePolicy:
        """Every quirk off: plain RFC 7644."""
        return cls(**{f.name: False for f in dataclasses.fields(cls)})

    def enabled(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name)]


DEFAULT_POLICY = TolerancePolicy()
STRICT_POLICY = TolerancePolicy.strict()

PATCH_OPS = ("add", "replace", "remove")


# ---------------------------------------------------------------------------------------------------------------
# Rewrites. Each one is the only place its quirk is handled.
# ---------------------------------------------------------------------------------------------------------------
def normalize_op(op: Any, policy: TolerancePolicy) -> str:
    """``capitalised_ops``: RFC 7644 §3.5.2 ops are lower-case; Entra's default mode capitalises them."""
    if not isinstance(op, str):
        raise InvalidValue('PATCH operation "op" must be a string: add, replace or remove')
    if op in PATCH_OPS:
        return op
    low = op.lower()
    if policy.capitalised_ops and low in PATCH_OPS:
        return low
    raise InvalidValue(f'unknown PATCH operation "op": {op!r} (expected add, replace or remove)')


def coerce_boolean(value: Any, policy: TolerancePolicy, name: str) -> bool:
    """``string_booleans``: Entra sends ``"False"`` for ``active``; RFC 7643 §2.3.2 wants a JSON boolean."""
    if isinstance(value, bool):
        return value
    if policy.string_booleans and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidValue(f"attribute {name!r} must be a boolean, got {value!r}")


def manager_value(value: Any, policy: TolerancePolicy) -> Any:
    """``manager_bare_string``: ``"manager": "id"`` or ``[{"value": "id"}]`` → ``{"value": "id"}``.

    Returns the value unchanged when it is already an object (or when the policy is off, so that the normal
    type check rejects it).
    """
    if not policy.manager_bare_string:
        return value
    if isinstance(value, str):
        return {"value": value}
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], Mapping | str):
        return manager_value(value[0], policy)
    return value


def drop_null_ref(element: Any, policy: TolerancePolicy) -> Any:
    """``null_ref``: ``{"$ref": null, "value": "…"}`` — drop the null instead of failing the reference type."""
    if policy.null_ref and isinstance(element, dict) and "$ref" in element and element["$ref"] is None:
        return {k: v for k, v in element.items() if k != "$ref"}
    return element


def is_clear_value(value: Any, policy: TolerancePolicy) -> bool:
    """``clear_with_empty_value``: a replace with ``""``, ``null`` or ``{}`` means "remove the attribute"."""
    return policy.clear_with_empty_value and (value is None or value == "" or value == {})
