"""Run the storage contract against SQLite and PostgreSQL, plus SQL-specific checks (indexes, migrations)."""

from __future__ import annotations

import datetime as dt

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, create_engine, insert, select, text

from scimgrip.scim.filter import parse_and_bind
from scimgrip.scim.schema import DEFAULT_REGISTRY
from scimgrip.storage import normalize_url, open_storage
from scimgrip.storage.base import Storage
from scimgrip.storage.sql import (
    engine_tables,  # noqa: F401 - engine tables join the compared metadata
    ratelimit_tables,  # noqa: F401 - rate-limit table joins the compared metadata
    sso_tables,  # noqa: F401 - single sign-on replay table joins the compared metadata
)
from scimgrip.storage.sql.filters import FilterContext, compile_filter
from scimgrip.storage.sql.repository import SqlStorage
from scimgrip.storage.sql.tables import group_members, metadata, resource_values, resources
from tests.storage.contract import StorageContract, q


class TestSqlStorage(StorageContract):
    pass


def _engine(storage: Storage) -> Engine:
    assert isinstance(storage, SqlStorage)
    return storage.engine


@pytest.fixture
def populated(storage: Storage) -> Storage:
    """Tenant 1 with 3000 users (two emails each) and 100 groups, written in bulk, then ANALYZEd, so that
    both planners choose plans as they would on a real database."""
    engine = _engine(storage)
    t = storage.create_tenant("plan").id
    assert t == 1
    now = dt.datetime.now(dt.UTC)
    users = [{"tenant_id": t, "resource_type": "User", "id": f"{i:032x}", "user_name": f"user{i}@x",
              "user_name_ci": f"user{i}@x", "external_id": f"ext{i}", "display_name": f"User {i % 50}",
              "display_name_ci": f"user {i % 50}", "active": bool(i % 2), "created": now, "last_modified": now,
              "version": 1, "doc": "{}"} for i in range(3000)]
    groups = [{"tenant_id": t, "resource_type": "Group", "id": f"{10**6 + i:032x}", "user_name": None,
               "user_name_ci": None, "external_id": None, "display_name": f"g{i}", "display_name_ci": f"g{i}",
               "active": None, "created": now, "last_modified": now, "version": 1, "doc": "{}"}
              for i in range(100)]
    with engine.begin() as conn:
        conn.execute(insert(resources), users + groups)
        pks = dict(conn.execute(select(resources.c.id, resources.c.pk)).all())
        conn.execute(insert(resource_values), [
            {"resource_pk": pks[u["id"]], "tenant_id": t, "attr": "emails", "type_ci": typ,
             "value": f"{u['user_name']}.{typ}", "value_ci": f"{u['user_name']}.{typ}"}
            for u in users for typ in ("work", "home")])
        conn.execute(insert(group_members), [
            {"tenant_id": t, "group_id": groups[i % 100]["id"], "member_id": u["id"], "member_type": "User"}
            for i, u in enumerate(users)])
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
    return storage


def _plan(storage: Storage, filter_text: str, rt: str = "User") -> str:
    engine = _engine(storage)
    flt = parse_and_bind(filter_text, DEFAULT_REGISTRY, rt)
    cond, exact = compile_filter(flt, FilterContext(1, rt, engine.dialect.name))
    assert exact
    stmt = select(resources.c.pk).where(resources.c.tenant_id == 1, resources.c.resource_type == rt, cond)
    sql = str(stmt.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            return "\n".join(str(r[-1]) for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
        return "\n".join(r[0] for r in conn.execute(text("EXPLAIN " + sql)))


@pytest.mark.parametrize(("flt", "rt", "pg_index", "sqlite_index"), [
    ('emails[type eq "work"].value eq "user7@x.work"', "User", "ix_resource_values_tenant_id_attr_value_ci",
     "ix_resource_values_tenant_id_attr_value_ci (tenant_id=? AND attr=? AND value_ci=?)"),
    ('emails.value eq "user7@x.work"', "User", "ix_resource_values_tenant_id_attr_value_ci",
     "ix_resource_values_tenant_id_attr_value_ci (tenant_id=? AND attr=? AND value_ci=?)"),
    ('userName eq "User7@X"', "User", "uq_resources_tenant_id_user_name_ci", "(tenant_id=? AND user_name_ci=?)"),
    ('externalId eq "ext7"', "User", "ix_resources_tenant_id_resource_type_external_id",
     "ix_resources_tenant_id_resource_type_external_id (tenant_id=? AND resource_type=? AND external_id=?)"),
    ('displayName eq "G7"', "Group", "ix_resources_tenant_id_resource_type_display_name_ci",
     "ix_resources_tenant_id_resource_type_display_name_ci (tenant_id=? AND resource_type=? AND display_name_ci=?)"),
    (f'members.value eq "{7:032x}"', "Group", "ix_group_members_tenant_id_member_id",
     "ix_group_members_tenant_id_member_id (tenant_id=? AND member_id=?)"),
])
def test_filters_use_indexes(populated: Storage, flt: str, rt: str, pg_index: str, sqlite_index: str) -> None:
    """EXPLAIN on both dialects: the compiled filter is answered by the intended index."""
    plan = _plan(populated, flt, rt)
    expected = sqlite_index if _engine(populated).dialect.name == "sqlite" else pg_index
    assert expected in plan, plan
    assert "SCAN resources" not in plan and "Seq Scan" not in plan, plan
    assert populated.search(1, rt, q(flt, rt)).total == 1


def test_migrations_match_the_table_definitions(storage: Storage) -> None:
    with _engine(storage).connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, metadata)
    assert diff == []


def test_open_twice_and_concurrent_upgrade(db_url: str) -> None:
    a = open_storage(db_url)
    b = open_storage(db_url)
    try:
        t = a.create_tenant("x")
        assert b.get_tenant_by_id(t.id) is not None
    finally:
        a.close()
        b.close()


def test_sqlite_pragmas(tmp_path: pytest.TempPathFactory) -> None:
    s = open_storage(str(tmp_path) + "/p.db")
    try:
        with _engine(s).connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2          # FULL
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    finally:
        s.close()


def test_normalize_url() -> None:
    assert normalize_url(None) == "sqlite:///./scimgrip.db"
    assert normalize_url("") == "sqlite:///./scimgrip.db"
    assert normalize_url("data/x.db") == "sqlite:///data/x.db"
    assert normalize_url("/var/lib/x.db") == "sqlite:////var/lib/x.db"
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgresql://u:p@h:5/db") == "postgresql+psycopg://u:p@h:5/db"
    assert normalize_url("postgresql+psycopg://h/db") == "postgresql+psycopg://h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"


def test_unsupported_url() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        open_storage("mysql://h/db")


def test_filter_values_are_bound_parameters(storage: Storage) -> None:
    engine = _engine(storage)
    flt = parse_and_bind('userName eq "x\\" or 1=1 --" or emails.value co "%\'"', DEFAULT_REGISTRY, "User")
    cond, _ = compile_filter(flt, FilterContext(1, "User", engine.dialect.name))
    sql = str(select(resources.c.pk).where(cond).compile(engine))
    assert "1=1" not in sql and "'" not in sql.replace("'!'", "")
    t = storage.create_tenant("t").id
    storage.create(t, "User", {"userName": 'x" or 1=1 --'})
    assert storage.search(t, "User", q('userName eq "X\\" OR 1=1 --"')).total == 1


def test_sqlite_file_engine_survives_reopen(tmp_path: pytest.TempPathFactory) -> None:
    url = f"sqlite:///{tmp_path}/d.db"
    s = open_storage(url)
    t = s.create_tenant("t").id
    u = s.create(t, "User", {"userName": "durable"})
    s.close()
    s2 = open_storage(url)
    try:
        assert s2.get(t, "User", u.id).doc == {"userName": "durable"}
    finally:
        s2.close()
    assert create_engine(url).dialect.name == "sqlite"
