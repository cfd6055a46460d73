"""Per-tenant extension schemas, token last-use, and races against several worker processes."""

from __future__ import annotations

import concurrent.futures as cf
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.conftest import Server, cli, start_server, stop_server, uid
from tests.server.test_entra_wire import GROUP, entra_user, patch

ACME_EXT = "urn:example:params:scim:schemas:extension:acme:2.0:User"


def test_tenant_extension_schema(server: Server, tmp_path: Path) -> None:
    t = server.tenant(f"ext{uid()}")
    schema = {"id": ACME_EXT, "name": "AcmeUser", "description": "Acme badge data",
              "attributes": [{"name": "badge", "type": "integer", "multiValued": False, "required": False,
                              "caseExact": False, "mutability": "readWrite", "returned": "default",
                              "uniqueness": "none"},
                             {"name": "site", "type": "string"}]}
    f = tmp_path / "acme.json"
    f.write_text(json.dumps(schema))
    cli("tenant", "extend", t.name, str(f), database=server.database)
    bad = tmp_path / "bad.json"
    bad.write_text('{"id": "not-a-urn"}')
    assert cli("tenant", "extend", t.name, str(bad), database=server.database, check=False).returncode == 1
    with t.client() as c:
        ids = {s["id"] for s in c.get("/Schemas").json()["Resources"]}
        assert ACME_EXT in ids
        rt = c.get("/ResourceTypes/User").json()
        assert {"schema": ACME_EXT, "required": False} in rt["schemaExtensions"]
        r = c.post("/Users", json={**entra_user(), ACME_EXT: {"badge": 7, "site": "AMS"}})
        assert r.status_code == 201, r.text
        u = r.json()
        assert u[ACME_EXT] == {"badge": 7, "site": "AMS"} and ACME_EXT in u["schemas"]
        r = c.patch(f"/Users/{u['id']}", json=patch({"op": "replace", "path": f"{ACME_EXT}:badge", "value": 8}))
        assert r.json()[ACME_EXT]["badge"] == 8
        found = c.get("/Users", params={"filter": f'{ACME_EXT}:site eq "ams"'}).json()
        assert [x["id"] for x in found["Resources"]] == [u["id"]]
        r = c.post("/Users", json={**entra_user(), ACME_EXT: {"badge": "seven"}})
        assert r.status_code == 400 and r.json()["scimType"] == "invalidValue"
    # other tenants do not see the extension
    other = server.tenant(f"noext{uid()}")
    with other.client() as c:
        assert ACME_EXT not in {s["id"] for s in c.get("/Schemas").json()["Resources"]}
        assert c.post("/Users", json={**entra_user(), ACME_EXT: {"badge": 1}}).status_code == 400


def test_token_last_used_is_recorded(server: Server) -> None:
    t = server.tenant(f"lu{uid()}")
    before = json.loads(cli("token", "list", t.name, "--json", database=server.database).stdout)
    assert before[0]["last_used"] is None
    with t.client() as c:
        assert c.get("/Users").status_code == 200
    deadline = time.time() + 10
    while time.time() < deadline:
        after = json.loads(cli("token", "list", t.name, "--json", database=server.database).stdout)
        if after[0]["last_used"]:
            break
        time.sleep(0.3)
    assert after[0]["last_used"]


@pytest.fixture(scope="module")
def multi_worker(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(database, tmp_path_factory.mktemp("mw"), workers=3)
    try:
        yield srv
    finally:
        stop_server(srv)


def test_races_across_worker_processes(multi_worker: Server) -> None:
    t = multi_worker.tenant("racers")
    name = f"race-{uuid.uuid4()}@x.com"

    def create(i: int) -> int:
        with t.client() as c:
            return c.post("/Users", json=entra_user(name.upper() if i % 2 else name)).status_code

    with cf.ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(create, range(12)))
    assert sorted(codes) == [201] + [409] * 11, codes

    with t.client() as c:
        users = [c.post("/Users", json=entra_user()).json()["id"] for _ in range(60)]
        gid = c.post("/Groups", json={"schemas": [GROUP], "displayName": f"mw-{uid()}",
                                      "members": [{"value": u} for u in users[:30]]}).json()["id"]

    def flip(i: int) -> int:
        with t.client() as c:
            op = "Remove" if i < 30 else "Add"
            return c.patch(f"/Groups/{gid}", json=patch({"op": op, "path": "members",
                                                         "value": [{"value": users[i]}]})).status_code

    with cf.ThreadPoolExecutor(16) as pool:
        assert set(pool.map(flip, range(60))) == {204}
    with t.client() as c:
        assert {m["value"] for m in c.get(f"/Groups/{gid}").json()["members"]} == set(users[30:])
        # conflicting PATCHes with If-Match: exactly one wins, the loser gets 412, nothing is lost
        u = c.get(f"/Users/{users[0]}").json()
        tag = u["meta"]["version"]

    def conditional(i: int) -> int:
        with t.client() as c:
            return c.patch(f"/Users/{users[0]}", headers={"If-Match": tag},
                           json=patch({"op": "replace", "path": "title", "value": f"t{i}"})).status_code

    with cf.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(conditional, range(8)))
    assert sorted(codes) == [200] + [412] * 7, codes
