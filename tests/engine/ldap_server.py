"""A throw-away OpenLDAP ``slapd`` for the LDAP source tests.

Needs the Debian packages ``slapd`` (the server, schemas in /etc/ldap/schema, modules in /usr/lib/ldap);
``ldap-utils`` is handy for poking at it by hand but not used here. ``Slapd.start(tmpdir)`` writes a
``slapd.conf`` (mdb backend, core/cosine/inetorgperson/nis schemas, no ppolicy; the read-only
``cn=reader`` account gets a server size limit of 20 entries per search/page, so only paged searches see
everything) into ``tmpdir``, starts
``slapd -d 0`` in the foreground on a free 127.0.0.1 port, waits until it answers a bind, and ``stop()``
terminates it. Entries are loaded over LDAP with ldap3, as any client would write them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ldap3

SLAPD = os.environ.get("SCIMGRIP_SLAPD", "/usr/sbin/slapd")
SCHEMA_DIR = Path(os.environ.get("SCIMGRIP_LDAP_SCHEMA_DIR", "/etc/ldap/schema"))
MODULE_DIR = Path(os.environ.get("SCIMGRIP_LDAP_MODULE_DIR", "/usr/lib/ldap"))

SUFFIX = "dc=example,dc=com"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PW = "secret-admin-pw"
READER_DN = f"cn=reader,{SUFFIX}"
READER_PW = "reader-pw"


def unavailable_reason() -> str | None:
    """Why a slapd cannot be started here (None when it can)."""
    if not (Path(SLAPD).is_file() and os.access(SLAPD, os.X_OK)):
        return f"{SLAPD} not installed (apt-get install -y slapd ldap-utils)"
    for schema in ("core", "cosine", "inetorgperson", "nis"):
        if not (SCHEMA_DIR / f"{schema}.schema").is_file():
            return f"OpenLDAP schema {SCHEMA_DIR / (schema + '.schema')} missing"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(workdir: Path) -> str:
    module_lines = ""
    if any(MODULE_DIR.glob("back_mdb*")):  # Debian builds back-mdb as a module
        module_lines = f"modulepath {MODULE_DIR}\nmoduleload back_mdb\n"
    schemas = "".join(f"include {SCHEMA_DIR / name}.schema\n" for name in ("core", "cosine", "inetorgperson", "nis"))
    return f"""{schemas}
pidfile {workdir}/slapd.pid
argsfile {workdir}/slapd.args
{module_lines}
database mdb
maxsize 104857600
dbnosync
suffix "{SUFFIX}"
rootdn "{ROOT_DN}"
rootpw {ROOT_PW}
directory {workdir}/db
index objectClass eq
index entryUUID eq
index uid eq
limits dn.exact="{READER_DN}" size.soft=20 size.hard=20 size.pr=20 size.prtotal=unlimited
access to attrs=userPassword by self write by anonymous auth by * none
access to * by dn.exact="{READER_DN}" read by * none
"""


@dataclass
class Slapd:
    workdir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> Slapd:
        (self.workdir / "db").mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "slapd.conf"
        conf.write_text(_config(self.workdir))
        self.log_path = self.workdir / "slapd.log"
        last_error = ""
        for _attempt in range(3):  # the free port may be taken between probe and bind
            self.port = _free_port()
            with self.log_path.open("wb") as log_file:
                self.process = subprocess.Popen(
                    [SLAPD, "-d", "0", "-h", self.url + "/", "-f", str(conf)],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    last_error = self.log_path.read_text(errors="replace")[-2000:]
                    break
                try:
                    conn = ldap3.Connection(ldap3.Server(self.url, get_info=ldap3.NONE, connect_timeout=1),
                                            ROOT_DN, ROOT_PW, auto_bind=True)
                    conn.unbind()
                    return self
                except Exception as exc:  # noqa: BLE001 - not up yet
                    last_error = str(exc)
                    time.sleep(0.1)
            self.stop()
        raise RuntimeError(f"slapd did not start: {last_error}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def admin(self) -> ldap3.Connection:
        return ldap3.Connection(ldap3.Server(self.url, get_info=ldap3.NONE), ROOT_DN, ROOT_PW, auto_bind=True,
                                raise_exceptions=True)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ sample data


@dataclass(frozen=True)
class Entry:
    dn: str
    attributes: Mapping[str, Any]


DEPARTMENTS = ("Engineering", "Sales", "Finance", "Support", "Legal")
COUNTRIES = ("NL", "BE", "DE", "FR", "GB")


def user_dn(n: int) -> str:
    dept = DEPARTMENTS[n % len(DEPARTMENTS)]
    return f"uid=user{n:03d},ou={dept},ou=People,{SUFFIX}"


def group_dn(name: str) -> str:
    return f"cn={name},ou=Groups,{SUFFIX}"


def manager_of(n: int) -> int:
    """user000 is the CEO; users 1-4 (department heads) report to the CEO, everyone else to their head."""
    return 0 if n < len(DEPARTMENTS) else n % len(DEPARTMENTS)


def sample_entries(n_users: int = 50) -> list[Entry]:
    """ou=People with one sub-ou per department, ``n_users`` inetOrgPersons (managers: see ``manager_of``), 5 groups."""
    entries = [
        Entry(SUFFIX, {"objectClass": ["dcObject", "organization"], "dc": "example", "o": "Example Corp"}),
        Entry(READER_DN, {"objectClass": ["organizationalRole", "simpleSecurityObject"], "cn": "reader",
                          "userPassword": READER_PW}),
        Entry(f"ou=People,{SUFFIX}", {"objectClass": ["organizationalUnit"], "ou": "People"}),
        Entry(f"ou=Groups,{SUFFIX}", {"objectClass": ["organizationalUnit"], "ou": "Groups"}),
    ]
    for dept in DEPARTMENTS:
        entries.append(Entry(f"ou={dept},ou=People,{SUFFIX}", {"objectClass": ["organizationalUnit"], "ou": dept}))
    for n in range(n_users):
        dept = DEPARTMENTS[n % len(DEPARTMENTS)]
        attrs: dict[str, Any] = {
            "objectClass": ["inetOrgPerson", "extensibleObject"],
            "uid": f"user{n:03d}",
            "cn": f"Given{n} Family{n}",
            "sn": f"Family{n}",
            "givenName": f"Given{n}",
            "displayName": f"Given{n} Family{n} (display)",
            "mail": [f"user{n:03d}@example.com"] + ([f"alt{n:03d}@example.org"] if n % 10 == 3 else []),
            "telephoneNumber": f"+31 20 555 {n:04d}",
            "mobile": f"+31 6 1234 {n:04d}",
            "street": f"Keizersgracht {n + 1}",
            "l": "Amsterdam",
            "st": "Noord-Holland",
            "postalCode": f"10{n:02d} AB",
            "c": COUNTRIES[n % len(COUNTRIES)],
            "employeeNumber": f"E{n:05d}",
            "title": "Chief Executive" if n == 0 else f"Engineer {n}",
            "departmentNumber": dept,
            "employeeType": "inactive" if n % 17 == 16 else "active",
            "userPassword": f"pw{n}",
        }
        if n % 7 == 5:  # no mail: UPN falls back to uid@domain
            del attrs["mail"]
        if n % 9 == 4:  # no departmentNumber: department falls back to ou
            del attrs["departmentNumber"]
            attrs["ou"] = f"{dept} (ou)"
        if n > 0:
            attrs["manager"] = user_dn(manager_of(n))
        entries.append(Entry(user_dn(n), attrs))
    groups = {
        "app-users": [user_dn(n) for n in range(0, n_users, 3)],
        "engineering": [user_dn(n) for n in range(n_users) if n % len(DEPARTMENTS) == 0],
        "sales": [user_dn(n) for n in range(n_users) if n % len(DEPARTMENTS) == 1],
        "everyone-nested": [group_dn("engineering"), group_dn("sales"), user_dn(1)],
    }
    for name, members in groups.items():
        entries.append(Entry(group_dn(name), {"objectClass": ["groupOfNames"], "cn": name,
                                              "description": f"The {name} group", "member": members}))
    entries.append(Entry(group_dn("auditors"), {
        "objectClass": ["groupOfUniqueNames"], "cn": "auditors", "description": "Unique-member group",
        "uniqueMember": [f"{user_dn(2)}#'0101'B", user_dn(7), f"uid=ghost,ou=People,{SUFFIX}"],
    }))
    return entries


def to_ldif(entries: Iterable[Entry]) -> str:
    lines: list[str] = []
    for entry in entries:
        lines.append(f"dn: {entry.dn}")
        for name, value in entry.attributes.items():
            for item in value if isinstance(value, list | tuple) else [value]:
                lines.append(f"{name}: {item}")
        lines.append("")
    return "\n".join(lines) + "\n"


def load(conn: ldap3.Connection, entries: Sequence[Entry]) -> None:
    for entry in entries:
        attrs = dict(entry.attributes)
        object_class = attrs.pop("objectClass")
        conn.add(entry.dn, object_class, attrs)
