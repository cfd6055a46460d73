"""LDAP / Active Directory source: users and groups read with ldap3, mapped to Entra's attribute vocabulary.

``LdapSource(url, bind_dn, password, base_dn, *, flavor="openldap"|"ad", ...)`` implements
:class:`scimgrip.engine.model.Source`.

Reading
    Every search is an RFC 2696 *simple paged results* search (``page_size`` entries per page), on a connection of
    its own so a consumer pausing :meth:`LdapSource.read_all` and calling other methods cannot invalidate the paging
    cookie. A server refusing the page size (OpenLDAP answers adminLimitExceeded when it exceeds the account's
    ``size.pr`` limit; AD silently caps at MaxPageSize) gets half of it, until it is accepted.
    ``raw_attributes`` are decoded by the source itself (no schema download, no name checking), so the same code
    works against OpenLDAP, 389-ds and AD.

Attribute maps (LDAP → Entra)
    OpenLDAP (``inetOrgPerson``): ``entryUUID`` → objectId, ``uid`` → mailNickname, ``mail`` (first value; further
    values → otherMails), ``givenName``, ``sn`` → surname, ``displayName`` (else ``cn``), ``telephoneNumber``,
    ``mobile``, ``street`` → streetAddress, ``l`` → city, ``st`` → state, ``postalCode``, ``c`` (else ``co``) →
    country, ``employeeNumber`` → employeeId, ``title`` → jobTitle, ``departmentNumber`` (else ``ou``) →
    department, ``manager`` (a DN) → the manager's objectId; userPrincipalName = ``mail``, else
    ``uid@<upn_domain>`` where ``upn_domain`` defaults to the ``dc=`` components of ``base_dn``
    (``dc=example,dc=com`` → ``example.com``). accountEnabled is False when ``pwdAccountLockedTime`` (ppolicy) is
    present or ``nsAccountLock`` is TRUE; when ``account_enabled_attribute`` is given and present on the entry,
    its value decides (TRUE/1/yes/enabled/active vs FALSE/0/no/disabled/inactive/locked).
    AD (``user``): ``objectGUID`` → objectId (canonical lower-case GUID string), ``userPrincipalName``,
    ``mailNickname`` (else ``sAMAccountName``), ``employeeID``, ``department``, ``streetAddress``,
    ``userAccountControl`` bit 2 (ACCOUNTDISABLE) → accountEnabled, the rest as for OpenLDAP.
    Both: ``onPremisesDistinguishedName`` = the entry's DN, ``IsSoftDeleted`` = False, and every name in
    ``extra_attributes`` copied under its LDAP name (one value → str, several → list of str).
    Groups (``groupOfNames`` / ``groupOfUniqueNames`` / AD ``group``): displayName (``displayName`` else ``cn``),
    mailNickname (``mailNickname``, else ``sAMAccountName`` (AD), else ``cn``), ``description``, objectId;
    ``member`` / ``uniqueMember`` DNs become the objectIds of the *in-scope* users and groups (members outside
    ``users_base``/``groups_base`` or the filters are not source objects and are left out). Large AD groups'
    ranged ``member;range=…`` values are fetched by ldap3's ``auto_range``.

Assignments
    With ``assignment_group_dns`` the groups with those DNs are the groups assigned to the application (the
    engine's assignment scope then takes their direct members). An assignment group that is *not* itself a source
    object (outside ``groups_base`` / ``group_filter``) cannot be expanded by the engine, so its direct in-scope
    user members are reported as directly assigned users instead. With no ``assignment_group_dns`` every user and
    every group read is reported as assigned (the directory subtree *is* the assignment).

Increments and the watermark
    The watermark is an opaque string ``ldap1.<base64url(zlib(JSON))>`` holding: OpenLDAP the newest
    ``modifyTimestamp`` and ``entryCSN`` among the in-scope entries (OpenLDAP's root DSE has no clock, so the
    newest entry is the server's "now"); AD the root DSE's ``highestCommittedUSN``; and, with ``track_deletes``
    (default), the objectIds of all in-scope users and groups.
    :meth:`read_changes` first runs a cheap paged scan of DN + objectId (+ timestamps) of every in-scope entry
    (it gives the new watermark, the DN → objectId map for manager/member references, and the current ID set),
    then searches ``(&(<filter>)(modifyTimestamp>=T))`` (OpenLDAP) or ``(&(<filter>)(uSNChanged>=USN+1))`` (AD).
    ``modifyTimestamp`` has one-second resolution, so on OpenLDAP entries whose ``entryCSN`` (microseconds,
    unique per write) is not newer than the watermark's are dropped: the result is exactly what changed.
    Servers without ``entryCSN`` re-report the entries of the boundary second (harmless: the engine diffs).
    Hard deletes: OpenLDAP keeps no tombstones (unless accesslog is configured), so objectIds present in the
    watermark's ID set and absent from the scan are reported as ``SourceObject(deleted=True)`` tombstones; this
    also covers entries moved out of ``users_base``/``groups_base`` or no longer matching the filters (they left
    the source). AD additionally searches ``(isDeleted=TRUE)`` with the show-deleted control
    (1.2.840.113556.1.4.417) for tombstones with ``uSNChanged`` past the watermark. The ID set costs ~22 bytes
    per object in the watermark; ``track_deletes=False`` keeps the watermark tiny and then only AD reports deletes.
    AD's ``uSNChanged`` is per domain controller: point ``url`` at one DC, not a load-balanced name. Likewise a
    change replicated late into an OpenLDAP *replica* keeps its older timestamp/CSN and can be missed: read from
    the provider, or rely on the engine's periodic full reconcile.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import ssl
import threading
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

from scimgrip.engine.model import Assignments, ChangeSet, ObjectType, Source, SourceObject

__all__ = ["LdapSource", "LdapSourceError", "Flavor"]

log = logging.getLogger(__name__)

Flavor = Literal["openldap", "ad"]

PAGED_RESULTS_OID = "1.2.840.113556.1.4.319"
SHOW_DELETED_OID = "1.2.840.113556.1.4.417"
UF_ACCOUNTDISABLE = 0x2
_EPOCH_TIMESTAMP = "19700101000000Z"
_WATERMARK_PREFIX = "ldap1."

_TRUE_WORDS = frozenset({"true", "1", "yes", "y", "on", "enabled", "enable", "active"})
_FALSE_WORDS = frozenset({"false", "0", "no", "n", "off", "disabled", "disable", "inactive", "locked"})

# Entra attribute ← LDAP attributes in order of preference (first present wins).
_OPENLDAP_USER_MAP: dict[str, tuple[str, ...]] = {
    "mailNickname": ("uid",),
    "givenName": ("givenName",),
    "surname": ("sn",),
    "displayName": ("displayName", "cn"),
    "telephoneNumber": ("telephoneNumber",),
    "mobile": ("mobile",),
    "streetAddress": ("street",),
    "city": ("l",),
    "state": ("st",),
    "postalCode": ("postalCode",),
    "country": ("c", "co"),
    "employeeId": ("employeeNumber",),
    "jobTitle": ("title",),
    "department": ("departmentNumber", "ou"),
}
_AD_USER_MAP: dict[str, tuple[str, ...]] = {
    "userPrincipalName": ("userPrincipalName",),
    "mailNickname": ("mailNickname", "sAMAccountName"),
    "givenName": ("givenName",),
    "surname": ("sn",),
    "displayName": ("displayName", "cn"),
    "telephoneNumber": ("telephoneNumber",),
    "mobile": ("mobile",),
    "streetAddress": ("streetAddress",),
    "city": ("l",),
    "state": ("st",),
    "postalCode": ("postalCode",),
    "country": ("c", "co"),
    "employeeId": ("employeeID", "employeeNumber"),
    "jobTitle": ("title",),
    "department": ("department",),
}
_OPENLDAP_GROUP_MAP: dict[str, tuple[str, ...]] = {
    "displayName": ("displayName", "cn"),
    "mailNickname": ("cn",),
    "description": ("description",),
}
_AD_GROUP_MAP: dict[str, tuple[str, ...]] = {
    "displayName": ("displayName", "cn"),
    "mailNickname": ("mailNickname", "sAMAccountName", "cn"),
    "description": ("description",),
}

_DEFAULT_FILTERS: dict[str, tuple[str, str]] = {
    "openldap": ("(objectClass=inetOrgPerson)", "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))"),
    "ad": ("(&(objectCategory=person)(objectClass=user))", "(objectClass=group)"),
}


class LdapSourceError(Exception):
    """An LDAP operation failed (connection, bind, search); the message never contains the password."""


# --------------------------------------------------------------------------------------------------------------
# Small helpers (module level so they can be unit-tested without a server)
# --------------------------------------------------------------------------------------------------------------


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    buf: list[str] = []
    escaped = False
    for ch in text:
        if escaped:
            buf.append(ch)
            escaped = False
        elif ch == "\\":
            buf.append(ch)
            escaped = True
        elif ch == sep:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    parts.append("".join(buf))
    return parts


def normalize_dn(dn: str) -> str:
    """A comparison key for a DN: case-insensitive, blanks around ``,``/``=`` ignored (multi-valued RDNs sorted)."""
    rdns: list[str] = []
    for rdn in _split_unescaped(dn.strip(), ","):
        avas = []
        for ava in _split_unescaped(rdn, "+"):
            name, _, value = ava.partition("=")
            avas.append(f"{name.strip().lower()}={value.strip().lower()}")
        rdns.append("+".join(sorted(avas)))
    return ",".join(rdns)


def domain_from_dn(dn: str) -> str:
    """``dc=example,dc=com`` → ``example.com`` (empty when the DN has no ``dc`` components)."""
    labels = []
    for rdn in _split_unescaped(dn, ","):
        name, _, value = rdn.partition("=")
        if name.strip().lower() == "dc" and value.strip():
            labels.append(value.strip())
    return ".".join(labels)


def guid_from_bytes(raw: bytes) -> str:
    """AD ``objectGUID`` (16 bytes, little-endian fields) → canonical ``xxxxxxxx-xxxx-…`` lower-case string."""
    return str(uuid.UUID(bytes_le=bytes(raw)))


def ad_account_enabled(user_account_control: str | int | None) -> bool:
    """``userAccountControl`` bit 2 (ACCOUNTDISABLE) clear → enabled. Missing → enabled."""
    if user_account_control is None or user_account_control == "":
        return True
    return not int(user_account_control) & UF_ACCOUNTDISABLE


def parse_bool(value: str) -> bool | None:
    word = value.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    return None


def _decode(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _strip_unique_member_uid(dn: str) -> str:
    """``uniqueMember`` values may carry an optional ``#'0101'B`` bit-string UID after the DN."""
    if dn.endswith("'B") and "#'" in dn:
        return dn[: dn.rindex("#'")]
    return dn


def _pack_ids(ids: Iterable[str]) -> Any:
    ordered = sorted(set(ids))
    try:
        raw = b"".join(uuid.UUID(i).bytes for i in ordered)
    except ValueError:
        return ordered
    if any(str(uuid.UUID(bytes=raw[n * 16 : n * 16 + 16])) != i for n, i in enumerate(ordered)):
        return ordered  # not canonical lower-case form: keep verbatim
    return "u:" + base64.b64encode(raw).decode("ascii")


def _unpack_ids(packed: Any) -> set[str]:
    if packed is None:
        return set()
    if isinstance(packed, list):
        return {str(i) for i in packed}
    raw = base64.b64decode(str(packed)[2:])
    return {str(uuid.UUID(bytes=raw[n : n + 16])) for n in range(0, len(raw), 16)}


@dataclass
class _Mark:
    """The decoded watermark."""

    flavor: str
    timestamp: str = _EPOCH_TIMESTAMP
    csn: str | None = None
    usn: int | None = None
    users: set[str] | None = None
    groups: set[str] | None = None

    def encode(self) -> str:
        body: dict[str, Any] = {"f": self.flavor}
        if self.flavor == "ad":
            body["usn"] = self.usn
        else:
            body["ts"] = self.timestamp
            if self.csn:
                body["csn"] = self.csn
        if self.users is not None and self.groups is not None:
            body["u"] = _pack_ids(self.users)
            body["g"] = _pack_ids(self.groups)
        data = zlib.compress(json.dumps(body, separators=(",", ":")).encode(), 9)
        return _WATERMARK_PREFIX + base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")

    @classmethod
    def decode(cls, text: str) -> _Mark:
        if not text.startswith(_WATERMARK_PREFIX):
            raise ValueError(f"not an LDAP source watermark: {text[:40]!r}")
        payload = text[len(_WATERMARK_PREFIX) :]
        body = json.loads(zlib.decompress(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
        usn = body.get("usn")
        return cls(
            flavor=body["f"],
            timestamp=body.get("ts", _EPOCH_TIMESTAMP),
            csn=body.get("csn"),
            usn=int(usn) if usn is not None else None,
            users=_unpack_ids(body["u"]) if "u" in body else None,
            groups=_unpack_ids(body["g"]) if "g" in body else None,
        )


@dataclass
class _Scan:
    """Result of the cheap ID scan: DN → (objectId, type), ID sets, newest timestamps."""

    by_dn: dict[str, tuple[str, ObjectType]] = field(default_factory=dict)
    users: set[str] = field(default_factory=set)
    groups: set[str] = field(default_factory=set)
    group_dns: dict[str, str] = field(default_factory=dict)  # normalized DN → objectId
    max_timestamp: str = _EPOCH_TIMESTAMP
    max_csn: str | None = None


Entry = dict[str, Any]


# --------------------------------------------------------------------------------------------------------------
# The source
# --------------------------------------------------------------------------------------------------------------


class LdapSource(Source):
    """Users and groups of an OpenLDAP (``flavor="openldap"``) or Active Directory (``flavor="ad"``) directory."""

    kind = "ldap"

    def __init__(
        self,
        url: str,
        bind_dn: str | None,
        password: str | None,
        base_dn: str,
        *,
        users_base: str | None = None,
        groups_base: str | None = None,
        flavor: Flavor = "openldap",
        user_filter: str | None = None,
        group_filter: str | None = None,
        page_size: int = 500,
        assignment_group_dns: Sequence[str] = (),
        start_tls: bool = False,
        ca_file: str | None = None,
        verify_tls: bool = True,
        upn_domain: str | None = None,
        account_enabled_attribute: str | None = None,
        extra_attributes: Sequence[str] = (),
        track_deletes: bool = True,
        timeout: float = 30.0,
    ) -> None:
        if flavor not in ("openldap", "ad"):
            raise ValueError(f"flavor must be 'openldap' or 'ad', not {flavor!r}")
        if page_size < 1:
            raise ValueError("page_size must be positive")
        self.url = url
        self.bind_dn = bind_dn
        self._password = password
        self.base_dn = base_dn
        self.users_base = users_base or base_dn
        self.groups_base = groups_base or base_dn
        self.flavor: Flavor = flavor
        default_users, default_groups = _DEFAULT_FILTERS[flavor]
        self.user_filter = _parenthesize(user_filter) if user_filter else default_users
        self.group_filter = _parenthesize(group_filter) if group_filter else default_groups
        self.page_size = page_size
        self.assignment_group_dns = tuple(assignment_group_dns)
        self.start_tls = start_tls
        self.upn_domain = upn_domain if upn_domain is not None else domain_from_dn(base_dn)
        self.account_enabled_attribute = account_enabled_attribute
        self.extra_attributes = tuple(extra_attributes)
        self.track_deletes = track_deletes
        self.timeout = timeout
        tls = None
        if start_tls or url.lower().startswith("ldaps://") or ca_file:
            tls = ldap3.Tls(
                validate=ssl.CERT_REQUIRED if verify_tls else ssl.CERT_NONE,
                ca_certs_file=ca_file,
            )
        self._server = ldap3.Server(url.rstrip("/"), get_info=ldap3.NONE, tls=tls, connect_timeout=timeout)
        self._conn: ldap3.Connection | None = None
        self._lock = threading.Lock()
        #: Pages fetched by paged searches since construction (diagnostics; the tests check paging with it).
        self.pages_fetched = 0
        #: ``page_size``, or less once the server refused it (adminLimitExceeded on the first page).
        self.effective_page_size = page_size

    # ---------------------------------------------------------------------------------------------- connection

    def __repr__(self) -> str:
        return f"LdapSource({self.url!r}, bind_dn={self.bind_dn!r}, base_dn={self.base_dn!r}, flavor={self.flavor!r})"

    def _open(self) -> ldap3.Connection:
        conn = ldap3.Connection(
            self._server,
            user=self.bind_dn,
            password=self._password,
            auto_bind=ldap3.AUTO_BIND_NONE,
            auto_referrals=False,
            auto_range=True,
            check_names=False,
            read_only=True,
            raise_exceptions=False,
            receive_timeout=max(1, math.ceil(self.timeout)),  # ldap3 packs it as an integer
            return_empty_attributes=False,
        )
        try:
            conn.open()
            if conn.closed:
                raise LdapSourceError(f"cannot connect to {self.url}")
            if self.start_tls and not conn.start_tls():
                raise LdapSourceError(f"StartTLS failed on {self.url}: {_result_text(conn.result)}")
            if not conn.bind():
                raise LdapSourceError(f"bind as {self.bind_dn!r} to {self.url} failed: {_result_text(conn.result)}")
        except LDAPException as exc:
            conn.unbind()
            raise LdapSourceError(f"cannot connect to {self.url}: {exc}") from exc
        except LdapSourceError:
            conn.unbind()
            raise
        return conn

    def _shared(self) -> ldap3.Connection:
        with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = self._open()
            return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(LDAPException):
                    self._conn.unbind()
                self._conn = None

    # -------------------------------------------------------------------------------------------------- searches

    def _paged(
        self,
        base: str,
        ldap_filter: str,
        attributes: Sequence[str],
        *,
        controls: list[tuple[str, bool, Any]] | None = None,
    ) -> Iterator[Entry]:
        """RFC 2696 paged subtree search on a connection of its own; yields ``{"dn", "raw"}`` entries."""
        conn = self._open()
        try:
            cookie: bytes | None = None
            page_size = self.effective_page_size
            while True:
                try:
                    conn.search(
                        base,
                        ldap_filter,
                        search_scope=ldap3.SUBTREE,
                        dereference_aliases=ldap3.DEREF_NEVER,
                        attributes=list(attributes),
                        paged_size=page_size,
                        paged_cookie=cookie,
                        controls=controls,
                    )
                except LDAPException as exc:
                    raise LdapSourceError(f"search {ldap_filter} under {base!r} failed: {exc}") from exc
                result = conn.result
                if result.get("result") == 11 and cookie is None and page_size > 1:
                    # adminLimitExceeded on the first page: OpenLDAP refuses page sizes above the account's
                    # ``size.pr`` limit ("illegal pagedResults page size"); halve and retry, and remember it.
                    page_size = max(1, page_size // 2)
                    log.warning("LDAP server refused the page size; retrying with %d (%s)", page_size,
                                _result_text(result))
                    self.effective_page_size = page_size
                    continue
                if result.get("result") not in (0, None):
                    if result.get("result") == 32 and base != self.base_dn:  # noSuchObject: empty subtree
                        log.warning("LDAP search base %r does not exist", base)
                        return
                    raise LdapSourceError(f"search {ldap_filter} under {base!r} failed: {_result_text(result)}")
                self.pages_fetched += 1
                entries = [
                    {"dn": item["dn"], "raw": item.get("raw_attributes", {})}
                    for item in conn.response or []
                    if item.get("type") == "searchResEntry"
                ]
                yield from entries
                paged = (result.get("controls") or {}).get(PAGED_RESULTS_OID)
                cookie = paged["value"]["cookie"] if paged else None
                if not cookie:
                    return
        finally:
            with contextlib.suppress(LDAPException):
                conn.unbind()

    def _base_lookup(self, dn: str, attributes: Sequence[str]) -> Entry | None:
        """Read one entry (base-scope search) on the shared connection; None when it does not exist."""
        for attempt in (1, 2):
            conn = self._shared()
            try:
                conn.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=list(attributes))
            except LDAPException as exc:
                self.close()  # a stale connection (idle timeout, server restart): reconnect once
                if attempt == 2:
                    raise LdapSourceError(f"read of {dn!r} failed: {exc}") from exc
                continue
            code = conn.result.get("result") if conn.result else None
            if code not in (0, 32, 34, None):  # noSuchObject, invalidDNSyntax: no such entry
                raise LdapSourceError(f"read of {dn!r} failed: {_result_text(conn.result)}")
            for item in conn.response or []:
                if item.get("type") == "searchResEntry":
                    return {"dn": item["dn"], "raw": item.get("raw_attributes", {})}
            return None
        return None  # pragma: no cover - the loop always returns or raises

    # ------------------------------------------------------------------------------------------ attribute access

    @property
    def _id_attribute(self) -> str:
        return "objectGUID" if self.flavor == "ad" else "entryUUID"

    def _entry_id(self, entry: Entry) -> str | None:
        raw = _raw_values(entry, self._id_attribute)
        if not raw:
            return None
        if self.flavor == "ad":
            value = raw[0]
            if isinstance(value, bytes | bytearray) and len(value) == 16:
                return guid_from_bytes(bytes(value))
            text = _decode(value).strip("{}")
            return str(uuid.UUID(text))
        return _decode(raw[0]).lower()

    def _user_attributes(self) -> list[str]:
        mapping = _AD_USER_MAP if self.flavor == "ad" else _OPENLDAP_USER_MAP
        names = {name for sources in mapping.values() for name in sources}
        names |= {"mail", "manager", "objectClass", self._id_attribute}
        if self.flavor == "ad":
            names |= {"userAccountControl", "sAMAccountName", "uSNChanged"}
        else:
            names |= {"uid", "pwdAccountLockedTime", "nsAccountLock", "modifyTimestamp", "entryCSN"}
        if self.account_enabled_attribute:
            names.add(self.account_enabled_attribute)
        names |= set(self.extra_attributes)
        return sorted(names)

    def _group_attributes(self) -> list[str]:
        mapping = _AD_GROUP_MAP if self.flavor == "ad" else _OPENLDAP_GROUP_MAP
        names = {name for sources in mapping.values() for name in sources}
        names |= {"member", "uniqueMember", "objectClass", self._id_attribute}
        names |= {"uSNChanged"} if self.flavor == "ad" else {"modifyTimestamp", "entryCSN"}
        names |= set(self.extra_attributes)
        return sorted(names)

    def _scan_attributes(self) -> list[str]:
        if self.flavor == "ad":
            return [self._id_attribute, "uSNChanged"]
        return [self._id_attribute, "modifyTimestamp", "entryCSN"]

    # ---------------------------------------------------------------------------------------------------- mapping

    def _to_user(self, entry: Entry, resolve: Callable[[str], str | None]) -> SourceObject | None:
        object_id = self._entry_id(entry)
        if object_id is None:
            log.warning("LDAP user %r has no %s; skipped", entry["dn"], self._id_attribute)
            return None
        mapping = _AD_USER_MAP if self.flavor == "ad" else _OPENLDAP_USER_MAP
        attrs: dict[str, Any] = {"objectId": object_id}
        for target, sources in mapping.items():
            value = _first_of(entry, sources)
            if value is not None:
                attrs[target] = value
        mails = _values(entry, "mail")
        if mails:
            attrs["mail"] = mails[0]
            if len(mails) > 1:
                attrs["otherMails"] = mails[1:]
        if "userPrincipalName" not in attrs:
            if self.flavor == "openldap" and mails:
                attrs["userPrincipalName"] = mails[0]
            elif attrs.get("mailNickname") and self.upn_domain:
                attrs["userPrincipalName"] = f"{attrs['mailNickname']}@{self.upn_domain}"
        manager_dn = _first_of(entry, ("manager",))
        if manager_dn:
            manager_id = resolve(manager_dn)
            if manager_id is not None:
                attrs["manager"] = manager_id
        attrs["accountEnabled"] = self._account_enabled(entry)
        attrs["IsSoftDeleted"] = False
        attrs["onPremisesDistinguishedName"] = entry["dn"]
        self._copy_extra(entry, attrs)
        return SourceObject(object_type="User", id=object_id, attributes=attrs)

    def _account_enabled(self, entry: Entry) -> bool:
        if self.account_enabled_attribute:
            value = _first_of(entry, (self.account_enabled_attribute,))
            if value is not None:
                parsed = parse_bool(value)
                if parsed is not None:
                    return parsed
        if self.flavor == "ad":
            return ad_account_enabled(_first_of(entry, ("userAccountControl",)))
        if _values(entry, "pwdAccountLockedTime"):
            return False
        locked = _first_of(entry, ("nsAccountLock",))
        return not (locked is not None and parse_bool(locked) is True)

    def _to_group(self, entry: Entry, members_of: Callable[[Entry], tuple[str, ...]]) -> SourceObject | None:
        object_id = self._entry_id(entry)
        if object_id is None:
            log.warning("LDAP group %r has no %s; skipped", entry["dn"], self._id_attribute)
            return None
        mapping = _AD_GROUP_MAP if self.flavor == "ad" else _OPENLDAP_GROUP_MAP
        attrs: dict[str, Any] = {"objectId": object_id}
        for target, sources in mapping.items():
            value = _first_of(entry, sources)
            if value is not None:
                attrs[target] = value
        attrs["onPremisesDistinguishedName"] = entry["dn"]
        self._copy_extra(entry, attrs)
        return SourceObject(object_type="Group", id=object_id, attributes=attrs, members=members_of(entry))

    def _copy_extra(self, entry: Entry, attrs: dict[str, Any]) -> None:
        for name in self.extra_attributes:
            values = _values(entry, name)
            if values:
                attrs[name] = values[0] if len(values) == 1 else values

    @staticmethod
    def _member_dns(entry: Entry) -> list[str]:
        dns = _values(entry, "member")
        dns += [_strip_unique_member_uid(v) for v in _values(entry, "uniqueMember")]
        return dns

    def _members_resolver(self, scan: _Scan) -> Callable[[Entry], tuple[str, ...]]:
        def members_of(entry: Entry) -> tuple[str, ...]:
            seen: dict[str, None] = {}
            for dn in self._member_dns(entry):
                hit = scan.by_dn.get(normalize_dn(dn))
                if hit is not None:
                    seen.setdefault(hit[0])
            return tuple(seen)

        return members_of

    def _manager_resolver(self, scan: _Scan) -> Callable[[str], str | None]:
        cache: dict[str, str | None] = {}

        def resolve(dn: str) -> str | None:
            key = normalize_dn(dn)
            hit = scan.by_dn.get(key)
            if hit is not None:
                return hit[0]
            if key not in cache:  # manager outside the scanned scope (or added since the scan)
                found = self._base_lookup(dn, [self._id_attribute])
                cache[key] = self._entry_id(found) if found else None
            return cache[key]

        return resolve

    # ------------------------------------------------------------------------------------------------------ scans

    def _scan(self) -> _Scan:
        scan = _Scan()
        kinds: tuple[tuple[ObjectType, str, str], ...] = (
            ("User", self.users_base, self.user_filter),
            ("Group", self.groups_base, self.group_filter),
        )
        for kind, base, ldap_filter in kinds:
            for entry in self._paged(base, ldap_filter, self._scan_attributes()):
                object_id = self._entry_id(entry)
                key = normalize_dn(entry["dn"])
                if object_id is None or key in scan.by_dn:  # an entry matching both filters counts as a user
                    continue
                scan.by_dn[key] = (object_id, kind)
                if kind == "User":
                    scan.users.add(object_id)
                else:
                    scan.groups.add(object_id)
                    scan.group_dns[key] = object_id
                if self.flavor == "openldap":
                    ts = _first_of(entry, ("modifyTimestamp",))
                    if ts and _ts_key(ts) > _ts_key(scan.max_timestamp):
                        scan.max_timestamp = ts
                    csn = _first_of(entry, ("entryCSN",))
                    if csn and (scan.max_csn is None or csn > scan.max_csn):
                        scan.max_csn = csn
        return scan

    def _highest_usn(self) -> int:
        root_dse = self._base_lookup("", ["highestCommittedUSN"])
        values = _values(root_dse, "highestCommittedUSN") if root_dse else []
        if not values:
            raise LdapSourceError(f"{self.url} root DSE has no highestCommittedUSN (is this Active Directory?)")
        return int(values[0])

    def _mark_from(self, scan: _Scan, usn: int | None) -> _Mark:
        mark = _Mark(flavor=self.flavor, timestamp=scan.max_timestamp, csn=scan.max_csn, usn=usn)
        if self.track_deletes:
            mark.users, mark.groups = set(scan.users), set(scan.groups)
        return mark

    # --------------------------------------------------------------------------------------------- Source API

    def read_all(self) -> Iterator[SourceObject]:
        scan = self._scan()
        yield from self._read(scan, extra_filter=None)

    def _read(
        self, scan: _Scan, extra_filter: str | None, keep: Callable[[Entry], bool] | None = None
    ) -> Iterator[SourceObject]:
        resolve = self._manager_resolver(scan)
        members_of = self._members_resolver(scan)
        seen_users: set[str] = set()
        user_filter = f"(&{self.user_filter}{extra_filter})" if extra_filter else self.user_filter
        for entry in self._paged(self.users_base, user_filter, self._user_attributes()):
            if keep is not None and not keep(entry):
                continue
            user = self._to_user(entry, resolve)
            if user is not None:
                seen_users.add(user.id)
                yield user
        group_filter = f"(&{self.group_filter}{extra_filter})" if extra_filter else self.group_filter
        for entry in self._paged(self.groups_base, group_filter, self._group_attributes()):
            if self._entry_id(entry) in seen_users or (keep is not None and not keep(entry)):
                continue
            group = self._to_group(entry, members_of)
            if group is not None:
                yield group

    def assignments(self) -> Assignments:
        return self._assignments(self._scan())

    def _assignments(self, scan: _Scan) -> Assignments:
        if not self.assignment_group_dns:
            return Assignments(users=frozenset(scan.users), groups=frozenset(scan.groups))
        groups: set[str] = set()
        users: set[str] = set()
        for dn in self.assignment_group_dns:
            group_id = scan.group_dns.get(normalize_dn(dn))
            if group_id is not None:
                groups.add(group_id)
                continue
            entry = self._base_lookup(dn, ["member", "uniqueMember"])
            if entry is None:
                log.warning("assignment group %r not found", dn)
                continue
            for member_dn in self._member_dns(entry):
                hit = scan.by_dn.get(normalize_dn(member_dn))
                if hit is not None and hit[1] == "User":
                    users.add(hit[0])
        return Assignments(users=frozenset(users), groups=frozenset(groups))

    def watermark(self) -> str:
        usn = self._highest_usn() if self.flavor == "ad" else None
        return self._mark_from(self._scan(), usn).encode()

    def read_changes(self, watermark: str) -> ChangeSet:
        old = _Mark.decode(watermark)
        if old.flavor != self.flavor:
            raise ValueError(f"watermark is for flavor {old.flavor!r}, this source is {self.flavor!r}")
        usn = self._highest_usn() if self.flavor == "ad" else None
        scan = self._scan()
        new = self._mark_from(scan, usn)

        if self.flavor == "ad":
            since = (old.usn or 0) + 1
            extra = f"(uSNChanged>={since})"
            changed = list(self._read(scan, extra_filter=extra))
        else:
            extra = f"(modifyTimestamp>={escape_filter_chars(old.timestamp)})"
            changed = list(self._read(scan, extra_filter=extra, keep=lambda entry: _newer(entry, old)))

        objects: list[SourceObject] = list(changed)
        reported = {obj.id for obj in objects}
        tombstones: list[SourceObject] = []
        if old.users is not None and old.groups is not None:
            present = scan.users | scan.groups
            gone: tuple[tuple[ObjectType, set[str]], ...] = (("User", old.users), ("Group", old.groups))
            for kind, before in gone:
                for object_id in sorted(before - present):
                    if object_id not in reported:
                        tombstones.append(SourceObject(object_type=kind, id=object_id, deleted=True))
                        reported.add(object_id)
        if self.flavor == "ad":
            for stone in self._ad_tombstones((old.usn or 0) + 1):
                if stone.id not in reported:
                    tombstones.append(stone)
                    reported.add(stone.id)
        objects += tombstones
        return ChangeSet(objects=objects, watermark=new.encode(), assignments=self._assignments(scan))

    def _ad_tombstones(self, since_usn: int) -> Iterator[SourceObject]:
        ldap_filter = (
            f"(&(isDeleted=TRUE)(uSNChanged>={since_usn})"
            "(|(objectClass=user)(objectClass=group))(!(objectClass=computer)))"
        )
        controls = [(SHOW_DELETED_OID, True, None)]
        for entry in self._paged(self.base_dn, ldap_filter, ["objectGUID", "objectClass", "isDeleted"],
                                 controls=controls):
            object_id = self._entry_id(entry)
            if object_id is None:
                continue
            classes = {c.lower() for c in _values(entry, "objectClass")}
            kind: ObjectType = "Group" if "group" in classes else "User"
            yield SourceObject(object_type=kind, id=object_id, deleted=True)


# --------------------------------------------------------------------------------------------------------------


def _parenthesize(ldap_filter: str) -> str:
    text = ldap_filter.strip()
    return text if text.startswith("(") else f"({text})"


def _raw_values(entry: Entry, name: str) -> list[Any]:
    raw: Mapping[str, Any] = entry["raw"]
    if name in raw:
        return list(raw[name] or [])
    lowered = name.lower()
    for key, values in raw.items():
        if key.lower() == lowered or key.lower().startswith(lowered + ";"):
            return list(values or [])
    return []


def _values(entry: Entry, name: str) -> list[str]:
    return [_decode(v) for v in _raw_values(entry, name)]


def _first_of(entry: Entry, names: Sequence[str]) -> str | None:
    for name in names:
        values = _values(entry, name)
        if values and values[0] != "":
            return values[0]
    return None


def _newer(entry: Entry, old: _Mark) -> bool:
    """Drop entries of the watermark's boundary second already there when it was taken (``entryCSN`` ≤ its)."""
    csn = _first_of(entry, ("entryCSN",))
    if old.csn and csn:
        return csn > old.csn
    return True


def _ts_key(generalized_time: str) -> str:
    """GeneralizedTime (``YYYYmmddHHMMSS[.fff]Z``) as a sortable key."""
    text = generalized_time.rstrip("Z")
    whole, _, frac = text.partition(".")
    return f"{whole:0<14}.{frac:0<6}"


def _result_text(result: Mapping[str, Any] | None) -> str:
    if not result:
        return "no result"
    return f"{result.get('description')} ({result.get('result')}): {result.get('message') or ''}".rstrip(": ")
