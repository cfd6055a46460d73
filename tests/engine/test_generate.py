"""The directory generator: deterministic, well-formed for FileSource, and fast enough for 100k users."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scimgrip.engine.sources.file import FileSource
from scimgrip.engine.sources.generate import generate, generate_file, main

SAMPLE = Path(__file__).parents[2] / "src" / "scimgrip" / "engine" / "sources" / "sample" / "directory.json"


def _bytes(*, users: int, groups: int, seed: int) -> bytes:
    out = io.BytesIO()
    generate(out, users=users, groups=groups, seed=seed)
    return out.getvalue()


def test_deterministic() -> None:
    assert _bytes(users=200, groups=12, seed=7) == _bytes(users=200, groups=12, seed=7)
    assert _bytes(users=200, groups=12, seed=7) != _bytes(users=200, groups=12, seed=8)


def test_shipped_sample_is_the_generator_output() -> None:
    assert SAMPLE.read_bytes() == _bytes(users=300, groups=20, seed=2024), \
        "regenerate: python -m scimgrip.engine.sources.generate --users 300 --groups 20 --seed 2024 <sample>"


@pytest.mark.parametrize(("users", "groups"), [(1, 0), (2, 1), (5, 3), (40, 100)])
def test_small_and_odd_sizes(tmp_path: Path, users: int, groups: int) -> None:
    path = tmp_path / "d.json"
    counts = generate_file(path, users=users, groups=groups, seed=1)
    assert counts["users"] == users and counts["groups"] == groups
    objects = list(FileSource(path).read_all())
    user_ids = {o.id for o in objects if o.object_type == "User"}
    group_objs = [o for o in objects if o.object_type == "Group"]
    assert len(user_ids) == users and len(group_objs) == groups
    group_ids = {g.id for g in group_objs}
    for group in group_objs:
        assert set(group.members or ()) <= user_ids | group_ids
    assert len({g.attributes["displayName"] for g in group_objs}) == groups, "group names are unique"
    assert len({g.attributes["mailNickname"] for g in group_objs}) == groups
    assigned = FileSource(path).assignments()
    assert assigned.users <= user_ids and assigned.groups <= group_ids and assigned.users
    if groups >= 3:
        assert any(set(g.members or ()) & group_ids for g in group_objs), "a nested group"
    assert not list(tmp_path.glob(".*.tmp")), "written atomically"


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.json"
    assert main(["--users", "50", "--groups", "4", "--seed", "3", str(out)]) == 0
    assert "users=50, groups=4" in capsys.readouterr().err
    assert out.read_bytes() == _bytes(users=50, groups=4, seed=3)
    with pytest.raises(SystemExit):
        main(["--users", "0", str(out)])


def test_module_entry_point_to_stdout() -> None:
    proc = subprocess.run([sys.executable, "-m", "scimgrip.engine.sources.generate", "--users", "10", "--groups",
                           "2", "--seed", "5", "-"], capture_output=True, timeout=60, check=True)
    doc = json.loads(proc.stdout)
    assert len(doc["users"]) == 10 and len(doc["groups"]) == 2 and "assignments" in doc


@pytest.mark.timeout(60)   # wall clock, generous for loaded CI machines; the CPU budget is asserted below
def test_100k_users_generated_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    started = time.process_time()
    counts = generate_file(path, users=100_000, groups=500, seed=11)
    generated = time.process_time() - started
    source = FileSource(path)
    users = groups = members = 0
    for obj in source.read_all():
        if obj.object_type == "User":
            users += 1
        else:
            groups += 1
            members += len(obj.members or ())
    total = time.process_time() - started
    assert (users, groups) == (100_000, 500) and counts["softDeleted"] >= 1000 and counts["disabled"] >= 2000
    assert members >= 100_000, "every user is in a department group"
    assert len(source.assignments().users) == 3000
    assert generated < 6 and total < 10, f"generate {generated:.1f}s, total {total:.1f}s CPU"
