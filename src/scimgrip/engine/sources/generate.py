"""Generate a realistic, deterministic directory file (the JSON format of ``FileSource``) of any size.

Load and performance tests need 100k+ users that look like a real tenant (diacritics, a manager tree,
departments, disabled and soft-deleted users, nested groups, app assignments) and are the same for the same
seed. Users are written one at a time (streaming), so memory stays small and 100k users take a few seconds::

    python -m scimgrip.engine.sources.generate --users 100000 --groups 500 --seed 1 OUT.json

The shipped ``sample/directory.json`` is ``--users 300 --groups 20 --seed 2024``.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import sys
import time
import unicodedata
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import orjson

DOMAIN = "contoso.example"
GIVEN_NAMES = (
    "Åsa", "Zoë", "Chloé", "José", "Renée", "Søren", "Jürgen", "Ángel", "Björn", "Františka", "Noémie", "Łukasz",
    "Anaïs", "Mária", "Dağhan", "Ioana", "Nuño", "Hélène", "Kübra", "Ørjan", "Emma", "Liam", "Sophie", "Daan",
    "Fleur", "Bram", "Anna", "Lucas", "Julia", "Thomas", "Sara", "Mohamed", "Fatima", "Priya", "Wei", "Yuki",
    "Olivia", "Noah", "Mila", "Sem", "Eva", "Finn", "Lotte", "Jesse", "Tess", "Ruben", "Iris", "Milan", "Nina",
    "Stijn", "Aiko", "Kofi", "Amara", "Mateo", "Inés", "Camille", "Théo", "Zoltán", "Dörte", "Gréta",
)
SURNAMES = (
    "de Vries", "van den Berg", "Jansen", "Bakker", "Visser", "Smit", "Meijer", "de Boer", "Mulder", "de Groot",
    "Bos", "Vos", "Peters", "Hendriks", "van Dijk", "Müller", "Schäfer", "Größ", "Lefèvre", "Dupré", "García",
    "Núñez", "Søndergaard", "Åberg", "Kowalczyk", "Dvořák", "Nováková", "Yılmaz", "Öztürk", "O'Brien",
    "Nguyễn", "Đặng", "Ibáñez", "Brontë", "Çelik", "Łęcki", "Ferreira", "Rossi", "Bianchi", "Novak", "Horváth",
    "Papadopoulos", "Kim", "Tanaka", "Chen", "Singh", "Okafor", "Haddad", "Johansson", "Virtanen",
)
DEPARTMENTS = (
    ("Engineering", ("Software Engineer", "Senior Software Engineer", "Site Reliability Engineer", "Architect")),
    ("Sales", ("Account Manager", "Sales Representative", "Sales Engineer")),
    ("Marketing", ("Marketing Specialist", "Content Strategist", "Brand Manager")),
    ("Finance", ("Accountant", "Financial Analyst", "Controller")),
    ("Human Resources", ("HR Advisor", "Recruiter", "HR Business Partner")),
    ("Customer Support", ("Support Agent", "Support Specialist", "Customer Success Manager")),
    ("Legal", ("Legal Counsel", "Paralegal", "Compliance Officer")),
    ("Operations", ("Operations Analyst", "Facilities Coordinator", "Logistics Planner")),
    ("Research", ("Research Scientist", "Data Scientist", "Research Engineer")),
    ("IT", ("Service Desk Engineer", "Systems Administrator", "Security Engineer")),
)
OFFICES = (
    ("Stationsplein 12", "Utrecht", "Utrecht", "3511 ED", "NL", "+31 30"),
    ("Wilhelminakade 91", "Rotterdam", "Zuid-Holland", "3072 AP", "NL", "+31 10"),
    ("Maximilianstraße 35", "München", "Bayern", "80539", "DE", "+49 89"),
    ("Rue de Rivoli 99", "Paris", "Île-de-France", "75001", "FR", "+33 1"),
    ("Calle de Alcalá 48", "Madrid", "Comunidad de Madrid", "28014", "ES", "+34 91"),
    ("Strandvägen 7", "Stockholm", "Stockholms län", "114 56", "SE", "+46 8"),
    ("Náměstí Míru 15", "Praha", "Hlavní město Praha", "120 00", "CZ", "+420 2"),
    ("1 Microsoft Way", "Redmond", "WA", "98052", "US", "+1 425"),
)
TEAMS = ("Platform", "Payments", "Identity", "Mobile", "Data", "Onboarding", "Pricing", "Security Champions",
         "Green Office", "Works Council", "Innovation Lab", "Mentors", "Hackathon", "Volunteers", "Book Club")
MANAGER_SPAN = 6   # average direct reports: user i reports to user (i - 1) // MANAGER_SPAN


@functools.cache   # names come from small tables
def _ascii(text: str) -> str:
    table = {"ø": "o", "Ø": "O", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "ß": "ss", "ı": "i", "'": ""}
    text = "".join(table.get(c, c) for c in text)
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if c.isascii() and (c.isalnum() or c in "-.")).lower()


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def generate(out: IO[bytes], *, users: int, groups: int, seed: int, domain: str = DOMAIN) -> dict[str, int]:
    """Write a directory document to ``out`` (binary); return counts of what was written."""
    if users < 1:
        raise ValueError("at least one user is needed")
    rng = random.Random(seed)
    ids = [_uuid(rng) for _ in range(users)]
    group_ids = [_uuid(rng) for _ in range(groups)]
    departments = [0] * users
    used_upns: set[str] = set()
    disabled = soft_deleted = 0
    # soft-deleted and disabled users are leaves of the manager tree (indices past users // MANAGER_SPAN)
    first_leaf = users // MANAGER_SPAN + 1
    leaves = list(range(first_leaf, users))
    flagged = rng.sample(leaves, min(len(leaves), max(5, users // 50) + max(3, users // 100)))
    to_disable = set(flagged[: max(5, users // 50)])
    to_soft_delete = set(flagged[max(5, users // 50):])
    dumps = orjson.dumps
    out.write(b'{"users":[\n')
    for i in range(users):
        given = rng.choice(GIVEN_NAMES)
        surname = rng.choice(SURNAMES)
        if i <= 60:   # the top of the tree spreads over the departments; below it teams mostly follow the boss
            dept = 0 if i == 0 else (i - 1) % len(DEPARTMENTS)
        else:
            dept = (departments[(i - 1) // MANAGER_SPAN] if rng.random() < 0.8
                    else rng.randrange(len(DEPARTMENTS)))
        departments[i] = dept
        dept_name, titles = DEPARTMENTS[dept]
        street, city, state, postal, country, prefix = OFFICES[(i * 7 + dept) % len(OFFICES)]
        nick = f"{_ascii(given)}.{_ascii(surname).replace(' ', '')}"
        if nick in used_upns:
            nick = f"{nick}{i}"
        used_upns.add(nick)
        user: dict[str, Any] = {
            "objectId": ids[i],
            "userPrincipalName": f"{nick}@{domain}",
            "mailNickname": nick,
            "displayName": f"{given} {surname}",
            "givenName": given,
            "surname": surname,
            "mail": f"{nick}@{domain}",
            "jobTitle": "Chief Executive Officer" if i == 0 else rng.choice(titles),
            "department": dept_name,
            "employeeId": f"E{100000 + i}",
            "telephoneNumber": f"{prefix} {rng.randrange(100, 999)} {rng.randrange(1000, 9999)}",
            "streetAddress": street,
            "city": city,
            "state": state,
            "postalCode": postal,
            "country": country,
            "accountEnabled": True,
        }
        if rng.random() < 0.6:
            user["mobile"] = f"+31 6 {rng.randrange(10000000, 99999999)}"
        if rng.random() < 0.15:
            user["otherMails"] = [f"{nick}@private.example", *([f"{nick}.alt@mail.example"]
                                                                 if rng.random() < 0.3 else [])]
        if i > 0:
            user["manager"] = ids[(i - 1) // MANAGER_SPAN]
        if i in to_disable:
            user["accountEnabled"] = False
            disabled += 1
        elif i in to_soft_delete:
            user["softDeleted"] = True
            user["deletedDateTime"] = (f"2024-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T"
                                       f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z")
            soft_deleted += 1
        out.write(dumps(user))
        out.write(b",\n" if i < users - 1 else b"\n")
    out.write(b'],\n"groups":[\n')

    # Groups: one per department (direct members by department), then teams with random members; when there
    # are at least three groups the last one is a parent group whose members are two other groups (nesting).
    members_by_dept: list[list[str]] = [[] for _ in DEPARTMENTS]
    for i, dept in enumerate(departments):
        members_by_dept[dept].append(ids[i])
    nested = groups >= 3
    plain = groups - 1 if nested else groups
    for g in range(groups):
        if nested and g == groups - 1:
            name = "All Product Teams"
            members = [group_ids[plain - 2], group_ids[plain - 1], *rng.sample(ids, min(3, users))]
            description = "Parent group: nests other groups"
        elif g < min(plain, len(DEPARTMENTS)):
            name = DEPARTMENTS[g][0]
            members = members_by_dept[g]
            description = f"Everyone in {name}"
        else:
            base = TEAMS[(g - len(DEPARTMENTS)) % len(TEAMS)]
            cycle = (g - len(DEPARTMENTS)) // len(TEAMS)
            name = f"Team {base}" + (f" {cycle + 1}" if cycle else "")
            members = rng.sample(ids, min(users, rng.randrange(3, 60)))
            description = f"{base} team"
        nick = _ascii(name.replace(" ", "-"))
        group = {"objectId": group_ids[g], "displayName": name, "mailNickname": nick,
                 "description": description, "members": members}
        out.write(dumps(group))
        out.write(b",\n" if g < groups - 1 else b"\n")

    # Assignments: ~3% of users directly, and about half of the groups (including the nested parent).
    assigned_users = sorted(rng.sample(ids, max(1, users * 3 // 100)))
    assigned_groups = [gid for g, gid in enumerate(group_ids) if g % 2 == 0 or (nested and g == groups - 1)]
    out.write(b'],\n"assignments":')
    out.write(dumps({"users": assigned_users, "groups": assigned_groups}))
    out.write(b"}\n")
    return {"users": users, "groups": groups, "disabled": disabled, "softDeleted": soft_deleted,
            "assignedUsers": len(assigned_users), "assignedGroups": len(assigned_groups)}


def generate_file(path: str | os.PathLike[str], *, users: int, groups: int, seed: int,
                  domain: str = DOMAIN) -> dict[str, int]:
    """Write a directory file at ``path`` (atomically: a temporary file renamed into place)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    with tmp.open("wb", buffering=1 << 20) as fh:
        counts = generate(fh, users=users, groups=groups, seed=seed, domain=domain)
    tmp.replace(target)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scimgrip.engine.sources.generate",
                                     description="Write a deterministic sample directory (FileSource JSON).")
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--domain", default=DOMAIN)
    parser.add_argument("out", help="output file (.json), or - for standard output")
    args = parser.parse_args(argv)
    if args.users < 1 or args.groups < 0:
        parser.error("--users must be >= 1 and --groups >= 0")
    started = time.perf_counter()
    if args.out == "-":
        counts = generate(sys.stdout.buffer, users=args.users, groups=args.groups, seed=args.seed,
                          domain=args.domain)
    else:
        counts = generate_file(args.out, users=args.users, groups=args.groups, seed=args.seed,
                               domain=args.domain)
    elapsed = time.perf_counter() - started
    print(", ".join(f"{k}={v}" for k, v in counts.items()) + f" in {elapsed:.2f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
