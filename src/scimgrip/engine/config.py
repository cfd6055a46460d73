"""Job configuration: YAML (provisioning-engine.md §18.1) → a typed, frozen :class:`JobConfig`.

The YAML is *composed* (not just loaded) so every node keeps its position: every error is reported as
``file:line:column: message`` (unknown key, wrong type, unknown operator, bad regex, expression syntax error at
its column inside the line, missing target URL, …). Expressions are parsed when the configuration is loaded
(EXP-4: "a syntax error is rejected when the configuration is saved").

Omitted ``attribute_mappings`` fall back to :func:`default_user_mappings` (the 17 attributes of Entra's KPN Grip
gallery app, entra-scim-wire.md §12) and :func:`default_group_mappings`. :meth:`JobConfig.mapping_fingerprint`
hashes mappings and scope: when it changes, the watermark is cleared (CYC-4).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from scimgrip.engine.model import ObjectType
from scimgrip.engine.scope import (
    OPERATORS,
    Clause,
    NestedMode,
    ScopeFilter,
    ScopeMode,
    canonical_operator,
    compile_regex,
)
from scimgrip.scim.errors import ScimError
from scimgrip.scim.paths import parse_patch_path
from scimgrip.scim.schema import CORE_GROUP, CORE_USER, DEFAULT_REGISTRY, ENTERPRISE_USER

FlowType = Literal["Always", "ObjectAddOnly", "MultiValueAddOnly", "ValueAddOnly", "AttributeAddOnly"]
FLOW_TYPES: tuple[str, ...] = ("Always", "ObjectAddOnly", "MultiValueAddOnly", "ValueAddOnly", "AttributeAddOnly")
MappingKind = Literal["Direct", "Constant", "Expression", "None"]
ObjectFlow = Literal["Add", "Update", "Delete"]
OBJECT_FLOWS: tuple[str, ...] = ("Add", "Update", "Delete")
SourceKind = Literal["file", "graph", "ldap"]
UseBulk = Literal["auto", "always", "never"]

_ATTR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_BRACKETED = re.compile(r"\[\s*([A-Za-z_][A-Za-z0-9_.\-]*)\s*\]")


# ------------------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------------------
class ConfigError(ValueError):
    """A configuration error at ``filename:line:column`` (1-based)."""

    def __init__(self, message: str, *, filename: str = "<job>", line: int = 0, column: int = 0) -> None:
        super().__init__(f"{filename}:{line}:{column}: {message}")
        self.message = message
        self.filename = filename
        self.line = line
        self.column = column


# ------------------------------------------------------------------------------------------------------------
# The typed configuration
# ------------------------------------------------------------------------------------------------------------
def classify_source(text: str) -> tuple[MappingKind, str]:
    """``userPrincipalName`` or ``[userPrincipalName]`` → (Direct, name); anything else → (Expression, text)."""
    stripped = text.strip()
    if _ATTR_NAME.fullmatch(stripped):
        return "Direct", stripped
    m = _BRACKETED.fullmatch(stripped)
    if m:
        return "Direct", m.group(1)
    return "Expression", text


@dataclass(frozen=True)
class AttributeMapping:
    """One attribute mapping (MAP-1…5; Graph ``attributeMapping``).

    ``kind`` Direct: ``source`` is a source attribute name; Expression: ``source`` is the expression text;
    Constant: ``constant``; None: only ``default`` (applied on create, MAP-1). ``default`` is used only when
    creating (MAP-2). ``flow_always`` = Graph ``FlowAlways`` (send even if unchanged, MAP-3); ``flow_null`` sends
    a ``remove`` when the value becomes null (MAP-5 DECISION). ``matching_priority`` 0 = not matching (MAT-1).
    """

    target: str
    kind: MappingKind = "Direct"
    source: str | None = None
    constant: str | None = None
    default: str | None = None
    flow_type: FlowType = "Always"
    flow_always: bool = False
    flow_null: bool = False
    matching_priority: int = 0

    @classmethod
    def direct(cls, target: str, attribute: str, **kw: Any) -> AttributeMapping:
        return cls(target, "Direct", source=attribute, **kw)

    @classmethod
    def expression(cls, target: str, text: str, **kw: Any) -> AttributeMapping:
        return cls(target, "Expression", source=text, **kw)

    @classmethod
    def constant_value(cls, target: str, value: str, **kw: Any) -> AttributeMapping:
        return cls(target, "Constant", constant=value, **kw)

    @classmethod
    def from_source(cls, target: str, source: str, **kw: Any) -> AttributeMapping:
        """Classify ``source`` as Direct (``name`` / ``[name]``) or Expression (:func:`classify_source`)."""
        kind, text = classify_source(source)
        return cls(target, kind, source=text, **kw)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ObjectMapping:
    """One object mapping (Graph ``objectMapping``): users or groups (MAP-4, SCP-2)."""

    name: str
    object_type: ObjectType
    target_schema: str
    attribute_mappings: tuple[AttributeMapping, ...]
    enabled: bool = True
    flow_types: frozenset[str] = frozenset(OBJECT_FLOWS)
    scope: tuple[ScopeFilter, ...] = ()
    input_filter: tuple[ScopeFilter, ...] = ()

    def allows(self, flow: ObjectFlow) -> bool:
        """MAP-4: is the ``Add`` / ``Update`` / ``Delete`` target object action selected?"""
        return flow in self.flow_types

    def fingerprint_data(self) -> dict[str, Any]:
        return {
            "name": self.name, "object_type": self.object_type, "target_schema": self.target_schema,
            "enabled": self.enabled, "flow_types": sorted(self.flow_types),
            "attribute_mappings": [m.as_dict() for m in self.attribute_mappings],
            "scope": [[dataclasses.asdict(c) for c in f.clauses] for f in self.scope],
            "input_filter": [[dataclasses.asdict(c) for c in f.clauses] for f in self.input_filter],
        }


@dataclass(frozen=True)
class SourceConfig:
    """``source: {kind: file|graph|ldap, …}``: the other keys are the connector's keyword arguments."""

    kind: SourceKind
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RateConfig:
    """ERR-3a: job-wide token bucket and in-flight cap (defaults 10 rps, burst 20, 4 in flight, adaptive)."""

    per_second: float = 10.0
    burst: int = 20
    concurrency: int = 4
    adaptive: bool = True


@dataclass(frozen=True)
class TargetConfig:
    """The SCIM endpoint: URL, bearer token (literal or from an environment variable), pacing, batching."""

    base_url: str
    token: str | None = None
    token_env: str | None = None
    rate: RateConfig = field(default_factory=RateConfig)
    members_per_patch: int = 100
    timeout_seconds: float = 30.0
    use_bulk: UseBulk = "auto"
    retries: int = 3

    def resolve_token(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The bearer token: ``token`` or the value of the variable named by ``token_env``."""
        if self.token is not None:
            return self.token
        if self.token_env is not None:
            return (os.environ if environ is None else environ).get(self.token_env)
        return None


@dataclass(frozen=True)
class ScheduleConfig:
    """CYC-3 DECISION: configurable interval (default 40 min, minimum 1 min)."""

    interval_minutes: int = 40
    event_driven: bool = False
    full_reconcile_cron: str | None = None


@dataclass(frozen=True)
class ScopeConfig:
    """SCP-1: ``assigned`` (recommended) or ``all``; nested groups ``direct_only`` (Entra) or ``flatten``."""

    mode: ScopeMode = "assigned"
    nested: NestedMode = "direct_only"


@dataclass(frozen=True)
class AccidentalDeletionsConfig:
    """DEL-1: threshold per cycle; percent (0–100) of linked objects as an alternative (DECISION)."""

    enabled: bool = False
    threshold: int | None = 500
    percent: float | None = None


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int = 587
    sender: str | None = None
    username: str | None = None
    password_env: str | None = None
    starttls: bool = True


@dataclass(frozen=True)
class NotificationConfig:
    """Quarantine / failure e-mail (QUA, DEL-1)."""

    email: str | None = None
    smtp: SmtpConfig | None = None


@dataclass(frozen=True)
class JobConfig:
    """A provisioning job (§18.1). ``warnings`` are non-fatal configuration remarks, each with its position."""

    id: str
    source: SourceConfig
    target: TargetConfig
    users: ObjectMapping
    groups: ObjectMapping
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    scope: ScopeConfig = field(default_factory=ScopeConfig)
    skip_out_of_scope_deletions: bool = False
    accidental_deletions: AccidentalDeletionsConfig = field(default_factory=AccidentalDeletionsConfig)
    notification: NotificationConfig = field(default_factory=NotificationConfig)
    dry_run: bool = False
    description: str | None = None
    warnings: tuple[str, ...] = ()

    def object_mapping(self, object_type: ObjectType) -> ObjectMapping:
        return self.users if object_type == "User" else self.groups

    def mapping_fingerprint(self) -> str:
        """SHA-256 over the object mappings and the scope settings: a change clears the watermark (CYC-4)."""
        data = {
            "scope": dataclasses.asdict(self.scope),
            "users": self.users.fingerprint_data(),
            "groups": self.groups.fingerprint_data(),
        }
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------------------------------
# Defaults
# ------------------------------------------------------------------------------------------------------------
_ENT = ENTERPRISE_USER


def default_user_mappings() -> tuple[AttributeMapping, ...]:
    """The 17 attributes of Entra's KPN Grip gallery app (kpn-grip-tutorial, entra-scim-wire.md §12) with
    Entra's standard sources.

    * ``active ← Not([IsSoftDeleted])``: Entra's default (SCP-4, [G-OBJMAP]).
    * ``emails[type eq "alternate"].value ← Item([otherMails], 1)``: ``otherMails`` is multi-valued and the
      target is a single string, so take its first value (``Item`` is 1-based, EXP-2); a Direct mapping of a
      multi-valued attribute onto a single-valued target would fail for users with two alternate addresses.
    * ``externalId ← mailNickname``: Entra's default for custom SCIM apps. For apps that also do SSO,
      ``objectId`` is the recommended anchor (immutable; mailNickname can change and be reused).
    """
    d = AttributeMapping.direct
    return (
        d("userName", "userPrincipalName", matching_priority=1),
        d("displayName", "displayName"),
        AttributeMapping.expression("active", "Not([IsSoftDeleted])"),
        d("name.givenName", "givenName"),
        d("name.familyName", "surname"),
        d('emails[type eq "work"].value', "mail"),
        AttributeMapping.expression('emails[type eq "alternate"].value', "Item([otherMails], 1)"),
        d('phoneNumbers[type eq "work"].value', "telephoneNumber"),
        d('phoneNumbers[type eq "mobile"].value', "mobile"),
        d('addresses[type eq "work"].region', "state"),
        d('addresses[type eq "work"].streetAddress', "streetAddress"),
        d('addresses[type eq "work"].locality', "city"),
        d('addresses[type eq "work"].postalCode', "postalCode"),
        d('addresses[type eq "work"].country', "country"),
        d("externalId", "mailNickname"),
        d(f"{_ENT}:manager", "manager"),
        d(f"{_ENT}:employeeNumber", "employeeId"),
    )


def default_group_mappings() -> tuple[AttributeMapping, ...]:
    """Entra's default group mapping for SCIM apps: displayName (matching 1), externalId ← objectId, members."""
    d = AttributeMapping.direct
    return (
        d("displayName", "displayName", matching_priority=1),
        d("externalId", "objectId"),
        d("members", "members"),
    )


def default_object_mapping(object_type: ObjectType) -> ObjectMapping:
    if object_type == "User":
        return ObjectMapping("users", "User", CORE_USER, default_user_mappings())
    return ObjectMapping("groups", "Group", CORE_GROUP, default_group_mappings())


# ------------------------------------------------------------------------------------------------------------
# The YAML walker
# ------------------------------------------------------------------------------------------------------------
_T = TypeVar("_T")
_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"


class _Loader:
    """Typed accessors over composed YAML nodes; every error carries the node's position."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.warnings: list[str] = []
        self._constructor = yaml.SafeLoader("")

    # -- errors ------------------------------------------------------------------------------------------------
    def error(self, node: Node, message: str, column_offset: int = 0) -> ConfigError:
        mark = node.start_mark
        return ConfigError(message, filename=self.filename, line=mark.line + 1,
                           column=mark.column + 1 + column_offset)

    def warn(self, node: Node, message: str) -> None:
        mark = node.start_mark
        self.warnings.append(f"{self.filename}:{mark.line + 1}:{mark.column + 1}: {message}")

    # -- containers --------------------------------------------------------------------------------------------
    def mapping(self, node: Node, where: str, allowed: tuple[str, ...]) -> dict[str, tuple[Node, Node]]:
        if isinstance(node, ScalarNode) and node.tag == _NULL:
            return {}
        if not isinstance(node, MappingNode):
            raise self.error(node, f"{where} must be a mapping")
        out: dict[str, tuple[Node, Node]] = {}
        for key, value in node.value:
            if not isinstance(key, ScalarNode) or key.tag != _STR:
                raise self.error(key, f"keys of {where} must be strings")
            name = str(key.value)
            if name in out:
                raise self.error(key, f"duplicate key {name!r} in {where}")
            if allowed and name not in allowed:
                hint = difflib.get_close_matches(name, allowed, n=1)
                suggestion = f"; did you mean {hint[0]!r}?" if hint else f" (allowed: {', '.join(allowed)})"
                raise self.error(key, f"unknown key {name!r} in {where}{suggestion}")
            out[name] = (key, value)
        return out

    def sequence(self, node: Node, where: str) -> list[Node]:
        if isinstance(node, ScalarNode) and node.tag == _NULL:
            return []
        if not isinstance(node, SequenceNode):
            raise self.error(node, f"{where} must be a list")
        return list(node.value)

    def plain(self, node: Node) -> Any:
        """The Python value of any node (free-form options)."""
        return self._constructor.construct_object(node, deep=True)

    # -- scalars -----------------------------------------------------------------------------------------------
    def _scalar(self, node: Node, where: str) -> Any:
        if not isinstance(node, ScalarNode):
            raise self.error(node, f"{where} must be a scalar value")
        return self._constructor.construct_object(node)

    def is_null(self, node: Node) -> bool:
        return isinstance(node, ScalarNode) and node.tag == _NULL

    def string(self, node: Node, where: str, *, coerce: bool = False, nonempty: bool = True) -> str:
        """A string. With ``coerce`` a plain scalar YAML would read as a number or Boolean is taken as written
        (``NO`` stays ``NO``, ``010`` stays ``010``), except ``true``/``false``, which become Entra's
        ``True``/``False``."""
        value = self._scalar(node, where)
        if isinstance(value, bool | int | float) and coerce:
            text = str(cast(ScalarNode, node).value)
            value = ("True" if value else "False") if isinstance(value, bool) and text.lower() in ("true", "false") \
                else text
        elif isinstance(value, bool):
            raise self.error(node, f"{where} must be a string, not a boolean")
        if not isinstance(value, str):
            raise self.error(node, f"{where} must be a string")
        if nonempty and not value.strip():
            raise self.error(node, f"{where} must not be empty")
        return value

    def opt_string(self, node: Node | None, where: str, *, coerce: bool = False) -> str | None:
        if node is None or self.is_null(node):
            return None
        return self.string(node, where, coerce=coerce)

    def boolean(self, node: Node, where: str) -> bool:
        value = self._scalar(node, where)
        if not isinstance(value, bool):
            raise self.error(node, f"{where} must be true or false")
        return value

    def integer(self, node: Node, where: str, *, minimum: int | None = None) -> int:
        value = self._scalar(node, where)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(node, f"{where} must be an integer")
        if minimum is not None and value < minimum:
            raise self.error(node, f"{where} must be at least {minimum}")
        return value

    def number(self, node: Node, where: str, *, positive: bool = True) -> float:
        value = self._scalar(node, where)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(node, f"{where} must be a number")
        if positive and value <= 0:
            raise self.error(node, f"{where} must be greater than 0")
        return float(value)

    def choice(self, node: Node, where: str, choices: tuple[str, ...]) -> str:
        value = self.string(node, where)
        if value not in choices:
            raise self.error(node, f"{where} must be one of {', '.join(choices)}; got {value!r}")
        return value

    def get(self, items: dict[str, tuple[Node, Node]], key: str) -> Node | None:
        pair = items.get(key)
        return pair[1] if pair is not None else None

    def field(self, items: dict[str, tuple[Node, Node]], key: str, default: _T,
              read: Callable[[Node, str], _T], where: str) -> _T:
        node = self.get(items, key)
        if node is None or self.is_null(node):
            return default
        return read(node, f"{where}.{key}" if where else key)


# ------------------------------------------------------------------------------------------------------------
# Sections
# ------------------------------------------------------------------------------------------------------------
_JOB_KEYS = ("id", "description", "source", "target", "schedule", "scope", "skip_out_of_scope_deletions",
             "accidental_deletions", "notification", "dry_run", "object_mappings")


def _source(ld: _Loader, node: Node) -> SourceConfig:
    if not isinstance(node, MappingNode):
        raise ld.error(node, "source must be a mapping with a 'kind'")
    items = ld.mapping(node, "source", ())
    kind_node = ld.get(items, "kind")
    if kind_node is None:
        raise ld.error(node, "source needs a 'kind' (file, graph or ldap)")
    kind = ld.choice(kind_node, "source.kind", ("file", "graph", "ldap"))
    options = {k: ld.plain(v) for k, (_, v) in items.items() if k != "kind"}
    return SourceConfig(cast(SourceKind, kind), options)


def _target(ld: _Loader, node: Node, job_node: Node) -> TargetConfig:
    items = ld.mapping(node, "target", ("base_url", "token", "token_env", "rate", "members_per_patch",
                                        "timeout_seconds", "use_bulk", "retries"))
    url_node = ld.get(items, "base_url")
    if url_node is None or ld.is_null(url_node):
        raise ld.error(node if isinstance(node, MappingNode) else job_node, "target.base_url is missing")
    base_url = ld.string(url_node, "target.base_url")
    if not re.match(r"https?://[^/\s]+", base_url):
        raise ld.error(url_node, f"target.base_url must be an http(s) URL; got {base_url!r}")
    token = ld.opt_string(ld.get(items, "token"), "target.token")
    token_env = ld.opt_string(ld.get(items, "token_env"), "target.token_env")
    if token is not None and token_env is not None:
        raise ld.error(items["token_env"][0], "give either target.token or target.token_env, not both")
    rate = RateConfig()
    rate_node = ld.get(items, "rate")
    if rate_node is not None:
        r = ld.mapping(rate_node, "target.rate", ("per_second", "burst", "concurrency", "adaptive"))
        rate = RateConfig(
            per_second=ld.field(r, "per_second", rate.per_second, ld.number, "target.rate"),
            burst=ld.field(r, "burst", rate.burst, lambda n, w: ld.integer(n, w, minimum=1), "target.rate"),
            concurrency=ld.field(r, "concurrency", rate.concurrency, lambda n, w: ld.integer(n, w, minimum=1),
                                 "target.rate"),
            adaptive=ld.field(r, "adaptive", rate.adaptive, ld.boolean, "target.rate"),
        )
    return TargetConfig(
        base_url=base_url.rstrip("/"), token=token, token_env=token_env, rate=rate,
        members_per_patch=ld.field(items, "members_per_patch", 100, lambda n, w: ld.integer(n, w, minimum=1),
                                   "target"),
        timeout_seconds=ld.field(items, "timeout_seconds", 30.0, ld.number, "target"),
        use_bulk=cast(UseBulk, ld.field(items, "use_bulk", "auto",
                                        lambda n, w: ld.choice(n, w, ("auto", "always", "never")), "target")),
        retries=ld.field(items, "retries", 3, lambda n, w: ld.integer(n, w, minimum=0), "target"),
    )


def _schedule(ld: _Loader, node: Node) -> ScheduleConfig:
    items = ld.mapping(node, "schedule", ("interval_minutes", "event_driven", "full_reconcile_cron"))
    return ScheduleConfig(
        interval_minutes=ld.field(items, "interval_minutes", 40, lambda n, w: ld.integer(n, w, minimum=1),
                                  "schedule"),
        event_driven=ld.field(items, "event_driven", False, ld.boolean, "schedule"),
        full_reconcile_cron=ld.opt_string(ld.get(items, "full_reconcile_cron"), "schedule.full_reconcile_cron"),
    )


def _scope(ld: _Loader, node: Node) -> ScopeConfig:
    items = ld.mapping(node, "scope", ("mode", "nested", "nested_groups"))
    if "nested" in items and "nested_groups" in items:
        raise ld.error(items["nested_groups"][0], "give either scope.nested or scope.nested_groups, not both")
    nested_key = "nested_groups" if "nested_groups" in items else "nested"
    return ScopeConfig(
        mode=cast(ScopeMode, ld.field(items, "mode", "assigned",
                                      lambda n, w: ld.choice(n, w, ("assigned", "all")), "scope")),
        nested=cast(NestedMode, ld.field(items, nested_key, "direct_only",
                                         lambda n, w: ld.choice(n, w, ("direct_only", "flatten")), "scope")),
    )


def _accidental(ld: _Loader, node: Node) -> AccidentalDeletionsConfig:
    items = ld.mapping(node, "accidental_deletions", ("enabled", "threshold", "percent"))
    percent_node = ld.get(items, "percent")
    percent: float | None = None
    if percent_node is not None and not ld.is_null(percent_node):
        percent = ld.number(percent_node, "accidental_deletions.percent")
        if percent > 100:
            raise ld.error(percent_node, "accidental_deletions.percent is a percentage (0–100]")
    threshold_node = ld.get(items, "threshold")
    threshold: int | None = 500
    if threshold_node is not None:
        threshold = None if ld.is_null(threshold_node) else \
            ld.integer(threshold_node, "accidental_deletions.threshold", minimum=0)
    return AccidentalDeletionsConfig(
        enabled=ld.field(items, "enabled", False, ld.boolean, "accidental_deletions"),
        threshold=threshold, percent=percent)


def _notification(ld: _Loader, node: Node) -> NotificationConfig:
    items = ld.mapping(node, "notification", ("email", "smtp"))
    smtp: SmtpConfig | None = None
    smtp_node = ld.get(items, "smtp")
    if smtp_node is not None and not ld.is_null(smtp_node):
        s = ld.mapping(smtp_node, "notification.smtp",
                       ("host", "port", "sender", "username", "password_env", "starttls"))
        host_node = ld.get(s, "host")
        if host_node is None:
            raise ld.error(smtp_node, "notification.smtp.host is missing")
        w = "notification.smtp"
        smtp = SmtpConfig(
            host=ld.string(host_node, f"{w}.host"),
            port=ld.field(s, "port", 587, lambda n, x: ld.integer(n, x, minimum=1), w),
            sender=ld.opt_string(ld.get(s, "sender"), f"{w}.sender"),
            username=ld.opt_string(ld.get(s, "username"), f"{w}.username"),
            password_env=ld.opt_string(ld.get(s, "password_env"), f"{w}.password_env"),
            starttls=ld.field(s, "starttls", True, ld.boolean, w),
        )
    return NotificationConfig(email=ld.opt_string(ld.get(items, "email"), "notification.email"), smtp=smtp)


# -- object mappings -----------------------------------------------------------------------------------------
_OBJECT_KEYS = ("name", "enabled", "source", "target", "flow_types", "scope", "input_filter", "attribute_mappings")
_ENTRA_UNFILTERABLE = frozenset({"manager", "appRoleAssignments", "userType"})
_MAPPING_KEYS = ("target", "source", "constant", "default", "flow_type", "flow_always", "flow_null",
                 "matching_priority")


def _clause(ld: _Loader, node: Node, where: str) -> Clause:
    items = ld.mapping(node, where, ("attr", "op", "value"))
    for key in ("attr", "op"):
        if key not in items:
            raise ld.error(node, f"{where} needs '{key}'")
    attr = ld.string(items["attr"][1], f"{where}.attr")
    op_node = items["op"][1]
    op_text = ld.string(op_node, f"{where}.op")
    op = canonical_operator(op_text)
    if op is None:
        raise ld.error(op_node, f"unknown scoping operator {op_text!r} (known: {', '.join(OPERATORS)})")
    info = OPERATORS[op]
    value_node = ld.get(items, "value")
    value = ld.opt_string(value_node, f"{where}.value", coerce=True)
    if info.arity == "Binary" and value is None:
        raise ld.error(node, f"operator {op!r} needs a 'value'")
    if info.arity == "Unary" and value is not None and value_node is not None:
        raise ld.error(value_node, f"operator {op!r} takes no 'value'")
    if value is not None and value_node is not None:
        if op in ("REGEX MATCH", "NOT REGEX MATCH"):
            try:
                compile_regex(value)
            except re.error as exc:
                offset = _raw_offset(value_node, exc.pos or 0) if _single_line(value_node) else 0
                raise ld.error(value_node, f"invalid regular expression: {exc.msg}", offset) from None
        if op.startswith(("Greater", "Less")) and not re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
            ld.warn(value_node, f"{op} needs an integer value; the clause is always false (SCP-3c)")
    if not info.entra:
        ld.warn(op_node, f"operator {op!r} is a scimgrip extension, not an Entra operator")
    if attr in ("members", "IsMemberOf"):
        raise ld.error(items["attr"][1], f"{attr!r} cannot be used in a scoping filter (SCP-3)")
    if attr in _ENTRA_UNFILTERABLE:
        ld.warn(items["attr"][1], f"Entra cannot use {attr!r} in scoping filters (SCP-3 known issues); "
                                  "scimgrip evaluates it, but the job is not portable to Entra")
    return Clause(attr, op, value)


def _filters(ld: _Loader, node: Node, where: str) -> tuple[ScopeFilter, ...]:
    """A list of filters (ORed), each a list of clauses (ANDed) (SCP-2)."""
    out: list[ScopeFilter] = []
    for i, fnode in enumerate(ld.sequence(node, where)):
        clauses = tuple(_clause(ld, c, f"{where}[{i}][{j}]")
                        for j, c in enumerate(ld.sequence(fnode, f"{where}[{i}]")))
        out.append(ScopeFilter(clauses))
    return tuple(out)


_ESCAPE_LENGTHS = {"x": 4, "u": 6, "U": 10}


def _raw_offset(node: Node, index: int) -> int:
    """Columns from the start of a single-line scalar ``node`` to its decoded character ``index`` (0-based):
    skips the opening quote and counts escapes (``\\"``, ``\\u00e9``, ``''``) at their width in the file."""
    if not isinstance(node, ScalarNode) or node.style not in ("'", '"'):
        return index
    mark = node.start_mark
    raw = mark.buffer[mark.pointer:] if isinstance(mark.buffer, str) else ""
    pos, decoded = 1, 0
    while decoded < index and pos < len(raw):
        ch = raw[pos]
        if node.style == '"' and ch == "\\":
            pos += _ESCAPE_LENGTHS.get(raw[pos + 1] if pos + 1 < len(raw) else "", 2)
        elif node.style == "'" and raw.startswith("''", pos):
            pos += 2
        else:
            pos += 1
        decoded += 1
    return pos + (index - decoded)


def _check_expression(ld: _Loader, node: Node, text: str) -> None:
    """EXP-4: reject a syntax error at load time, at its column in the YAML line."""
    try:
        from scimgrip.engine.expressions import ExpressionError, parse_expression
    except ImportError:   # the expression package is not available: checked when the mapping is evaluated
        return
    try:
        parse_expression(text)
    except ExpressionError as exc:
        col = max(int(getattr(exc, "column", 1) or 1), 1)
        offset = _raw_offset(node, col - 1) if _single_line(node) else 0
        raise ld.error(node, f"expression syntax error: {getattr(exc, 'message', str(exc))}", offset) from None


def _single_line(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.style in (None, "'", '"') and \
        node.start_mark.line == node.end_mark.line


def _check_target(ld: _Loader, node: Node, target: str, object_type: ObjectType) -> None:
    if target.lower() == "id":
        raise ld.error(node, "do not map the target's primary key 'id' (MAP-7)")
    try:
        parse_patch_path(target, DEFAULT_REGISTRY, object_type)
    except ScimError as exc:
        if target.lower().startswith("urn:"):
            return   # a custom extension attribute (MAP-7): the target schema decides
        raise ld.error(node, f"unknown target attribute {target!r} for {object_type}: {exc.detail}") from None


def _attribute_mapping(ld: _Loader, node: Node, where: str, object_type: ObjectType) -> AttributeMapping:
    items = ld.mapping(node, where, _MAPPING_KEYS)
    if "target" not in items:
        raise ld.error(node, f"{where} needs a 'target'")
    target_node = items["target"][1]
    target = ld.string(target_node, f"{where}.target").strip()
    _check_target(ld, target_node, target, object_type)
    source_node = ld.get(items, "source")
    constant_node = ld.get(items, "constant")
    source = ld.opt_string(source_node, f"{where}.source")
    constant = ld.opt_string(constant_node, f"{where}.constant", coerce=True)
    default = ld.opt_string(ld.get(items, "default"), f"{where}.default", coerce=True)
    if source is not None and constant is not None:
        raise ld.error(items["constant"][0], f"{where}: give either 'source' or 'constant', not both")
    kind: MappingKind
    if source is not None and source_node is not None:
        kind, source = classify_source(source)
        if kind == "Expression":
            _check_expression(ld, source_node, source)
    elif constant is not None:
        kind = "Constant"
    elif default is not None:
        kind = "None"
    else:
        raise ld.error(node, f"{where} needs a 'source', a 'constant' or a 'default'")
    priority = ld.field(items, "matching_priority", 0, lambda n, w: ld.integer(n, w, minimum=0), where)
    if priority and kind == "Constant":
        raise ld.error(items["matching_priority"][1], "a constant cannot be a matching attribute (MAT-1)")
    if priority and target == "members":
        raise ld.error(items["matching_priority"][1], "'members' cannot be a matching attribute (MAT-1)")
    return AttributeMapping(
        target=target, kind=kind, source=source, constant=constant, default=default,
        flow_type=cast(FlowType, ld.field(items, "flow_type", "Always",
                                          lambda n, w: ld.choice(n, w, FLOW_TYPES), where)),
        flow_always=ld.field(items, "flow_always", False, ld.boolean, where),
        flow_null=ld.field(items, "flow_null", False, ld.boolean, where),
        matching_priority=priority,
    )


def _object_mapping(ld: _Loader, node: Node, name: str, where: str) -> ObjectMapping:
    items = ld.mapping(node, where, _OBJECT_KEYS)
    if name not in ("users", "groups"):
        raise ld.error(node, f"object mappings are 'users' and 'groups'; got {name!r}")
    object_type: ObjectType = "User" if name == "users" else "Group"
    base = default_object_mapping(object_type)
    src_node = ld.get(items, "source")
    if src_node is not None:
        ld.choice(src_node, f"{where}.source", (object_type,))
    target_schema = ld.field(items, "target", base.target_schema, ld.string, where)
    if target_schema.lower() != base.target_schema.lower():
        raise ld.error(items["target"][1], f"{where}.target must be {base.target_schema}")
    flows: frozenset[str] = base.flow_types
    flows_node = ld.get(items, "flow_types")
    if flows_node is not None:
        flows = frozenset(ld.choice(n, f"{where}.flow_types[]", OBJECT_FLOWS)
                          for n in ld.sequence(flows_node, f"{where}.flow_types"))
    scope: tuple[ScopeFilter, ...] = ()
    input_filter: tuple[ScopeFilter, ...] = ()
    scope_node = ld.get(items, "scope")
    if scope_node is not None and isinstance(scope_node, MappingNode):   # §18.1: {groups: [...], input_filter}
        s = ld.mapping(scope_node, f"{where}.scope", ("groups", "input_filter"))
        scope = ld.field(s, "groups", (), lambda n, w: _filters(ld, n, w), f"{where}.scope")
        input_filter = ld.field(s, "input_filter", (), lambda n, w: _filters(ld, n, w), f"{where}.scope")
    elif scope_node is not None:
        scope = _filters(ld, scope_node, f"{where}.scope")
    in_node = ld.get(items, "input_filter")
    if in_node is not None:
        if input_filter:
            raise ld.error(in_node, f"input_filter given twice in {where}")
        input_filter = _filters(ld, in_node, f"{where}.input_filter")
    mappings = base.attribute_mappings
    am_node = ld.get(items, "attribute_mappings")
    if am_node is not None and not ld.is_null(am_node):
        mappings = _attribute_mappings(ld, am_node, f"{where}.attribute_mappings", object_type)
    enabled = ld.field(items, "enabled", True, ld.boolean, where)
    if enabled and not any(m.matching_priority for m in mappings):
        raise ld.error(am_node or node, f"{where} needs at least one matching attribute (matching_priority ≥ 1, "
                                        "MAT-1)")
    return ObjectMapping(name, object_type, base.target_schema, mappings, enabled, flows, scope, input_filter)


def _attribute_mappings(ld: _Loader, node: Node, where: str, object_type: ObjectType) -> tuple[AttributeMapping, ...]:
    out: list[AttributeMapping] = []
    targets: dict[str, Node] = {}
    priorities: dict[int, Node] = {}
    for i, m in enumerate(ld.sequence(node, where)):
        am = _attribute_mapping(ld, m, f"{where}[{i}]", object_type)
        key = am.target.lower()
        if key in targets:
            raise ld.error(m, f"target {am.target!r} is mapped twice (first at line "
                              f"{targets[key].start_mark.line + 1})")
        targets[key] = m
        if am.matching_priority:
            if am.matching_priority in priorities:
                raise ld.error(m, f"matching_priority {am.matching_priority} is used twice (MAT-1)")
            priorities[am.matching_priority] = m
        out.append(am)
    return tuple(out)


def _object_mappings(ld: _Loader, node: Node) -> dict[str, ObjectMapping]:
    out: dict[str, ObjectMapping] = {}
    if isinstance(node, SequenceNode):   # §18.1 list form: [{name: users, ...}, ...]
        for i, item in enumerate(node.value):
            items = ld.mapping(item, f"object_mappings[{i}]", _OBJECT_KEYS)
            name_node = ld.get(items, "name")
            if name_node is None:
                raise ld.error(item, f"object_mappings[{i}] needs a 'name' (users or groups)")
            name = ld.string(name_node, f"object_mappings[{i}].name")
            if name in out:
                raise ld.error(name_node, f"object mapping {name!r} is given twice")
            out[name] = _object_mapping(ld, item, name, f"object_mappings[{i}]")
        return out
    items = ld.mapping(node, "object_mappings", ("users", "groups"))
    for name, (_, value) in items.items():
        out[name] = _object_mapping(ld, value, name, f"object_mappings.{name}")
    return out


def _job(ld: _Loader, root: Node, default_id: str) -> JobConfig:
    top = ld.mapping(root, "the job file", ())
    node = root
    if "job" in top:
        if len(top) > 1:
            extra = next(k for k in top if k != "job")
            raise ld.error(top[extra][0], f"unknown key {extra!r} next to 'job'")
        node = top["job"][1]
    items = ld.mapping(node, "job", _JOB_KEYS)
    if "source" not in items:
        raise ld.error(node, "job needs a 'source' ({kind: file|graph|ldap, …})")
    if "target" not in items:
        raise ld.error(node, "job needs a 'target' with a base_url")
    job_id = ld.field(items, "id", default_id, ld.string, "")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._\-]*", job_id):
        raise ld.error(items["id"][1], f"job id {job_id!r} may contain only letters, digits, '.', '_' and '-'")
    maps = _object_mappings(ld, items["object_mappings"][1]) if "object_mappings" in items else {}
    acc = _accidental(ld, items["accidental_deletions"][1]) if "accidental_deletions" in items \
        else AccidentalDeletionsConfig()
    notification = _notification(ld, items["notification"][1]) if "notification" in items \
        else NotificationConfig()
    if acc.enabled and not notification.email:
        ld.warn(items["accidental_deletions"][1], "accidental-deletion prevention needs notification.email "
                                                  "(DEL-1)")
    return JobConfig(
        id=job_id,
        source=_source(ld, items["source"][1]),
        target=_target(ld, items["target"][1], node),
        users=maps.get("users") or default_object_mapping("User"),
        groups=maps.get("groups") or default_object_mapping("Group"),
        schedule=_schedule(ld, items["schedule"][1]) if "schedule" in items else ScheduleConfig(),
        scope=_scope(ld, items["scope"][1]) if "scope" in items else ScopeConfig(),
        skip_out_of_scope_deletions=ld.field(items, "skip_out_of_scope_deletions", False, ld.boolean, ""),
        accidental_deletions=acc,
        notification=notification,
        dry_run=ld.field(items, "dry_run", False, ld.boolean, ""),
        description=ld.opt_string(ld.get(items, "description"), "description"),
        warnings=tuple(ld.warnings),
    )


# ------------------------------------------------------------------------------------------------------------
# Public entry points
# ------------------------------------------------------------------------------------------------------------
def load_job_config(text: str, filename: str = "<job>") -> JobConfig:
    """Parse and validate a job configuration; raises :class:`ConfigError` (``file:line:column: message``)."""
    ld = _Loader(filename)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
        raise ConfigError(f"YAML syntax error: {exc.problem or exc.context}", filename=filename, line=line,
                          column=col) from None
    if root is None:
        raise ConfigError("the job file is empty", filename=filename, line=1, column=1)
    default_id = Path(filename).stem if not filename.startswith("<") else "job"
    default_id = re.sub(r"[^A-Za-z0-9._\-]", "-", default_id) or "job"
    return _job(ld, root, default_id)


def load_job_file(path: str | os.PathLike[str]) -> JobConfig:
    """Read ``path`` (UTF-8) and :func:`load_job_config` it; errors name the file."""
    p = Path(path)
    return load_job_config(p.read_text(encoding="utf-8"), str(p))


__all__ = [
    "FLOW_TYPES",
    "AccidentalDeletionsConfig",
    "AttributeMapping",
    "ConfigError",
    "FlowType",
    "JobConfig",
    "MappingKind",
    "NotificationConfig",
    "ObjectMapping",
    "RateConfig",
    "ScheduleConfig",
    "ScopeConfig",
    "SmtpConfig",
    "SourceConfig",
    "TargetConfig",
    "classify_source",
    "default_group_mappings",
    "default_object_mapping",
    "default_user_mappings",
    "load_job_config",
    "load_job_file",
]
