"""Job configuration: YAML shape (§18.1), defaults, positions in every error, fingerprint (CYC-4)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from scimgrip.engine.config import (
    AttributeMapping,
    ConfigError,
    JobConfig,
    classify_source,
    default_group_mappings,
    default_user_mappings,
    load_job_config,
    load_job_file,
)
from scimgrip.engine.scope import Clause

ENT = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"

MINIMAL = """\
source: {kind: file, path: directory.json}
target: {base_url: "https://app.example.com/scim/v2/"}
"""

FULL = """\
job:
  id: scim-acme
  description: ACME HR app
  schedule: {interval_minutes: 5, event_driven: true}
  scope: {mode: all, nested: flatten}
  skip_out_of_scope_deletions: true
  accidental_deletions: {enabled: true, threshold: 3, percent: 10}
  notification:
    email: ops@example.com
    smtp: {host: smtp.example.com, port: 25, sender: scim@example.com, username: u, password_env: SMTP_PW,
           starttls: false}
  dry_run: true
  source: {kind: graph, tenant_id: t, client_id: c, client_secret_env: GRAPH_SECRET}
  target:
    base_url: https://app.example.com/scim/v2
    token_env: ACME_TOKEN
    rate: {per_second: 25, concurrency: 8}
    members_per_patch: 50
    timeout_seconds: 10
    use_bulk: never
    retries: 5
  object_mappings:
    users:
      flow_types: [Add, Update]
      scope:
        - - {attr: department, op: EQUALS, value: Sales}
          - {attr: country, op: NOT_EQUALS, value: BE}
        - - {attr: jobTitle, op: REGEX MATCH, value: "^Boss$"}
      input_filter:
        - - {attr: accountEnabled, op: IS TRUE}
      attribute_mappings:
        - {target: userName, source: "[userPrincipalName]", matching_priority: 1}
        - {target: externalId, source: mailNickname, matching_priority: 2}
        - {target: active, source: "Not([IsSoftDeleted])"}
        - {target: title, source: jobTitle, default: Employee, flow_type: ObjectAddOnly}
        - {target: nickName, constant: 42}
        - {target: displayName, source: displayName, flow_always: true, flow_null: true}
    groups:
      enabled: false
"""


def load(text: str, filename: str = "job.yaml") -> JobConfig:
    return load_job_config(textwrap.dedent(text), filename)


def error_of(text: str, filename: str = "job.yaml") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_job_config(textwrap.dedent(text), filename)
    return info.value


def test_minimal_config_uses_defaults() -> None:
    job = load_job_config(MINIMAL, "acme.yaml")
    assert job.id == "acme"
    assert job.source.kind == "file" and job.source.options == {"path": "directory.json"}
    assert job.target.base_url == "https://app.example.com/scim/v2"
    assert job.target.members_per_patch == 100 and job.target.use_bulk == "auto" and job.target.retries == 3
    assert job.target.rate.per_second == 10 and job.target.rate.concurrency == 4
    assert job.schedule.interval_minutes == 40
    assert (job.scope.mode, job.scope.nested) == ("assigned", "direct_only")
    assert job.skip_out_of_scope_deletions is False and job.accidental_deletions.enabled is False
    assert job.users.attribute_mappings == default_user_mappings()
    assert job.groups.attribute_mappings == default_group_mappings()
    assert job.users.enabled and job.groups.enabled
    assert job.users.flow_types == frozenset({"Add", "Update", "Delete"})
    assert job.users.scope == () and job.users.input_filter == ()
    assert job.warnings == ()


def test_full_config() -> None:
    job = load_job_config(FULL, "x.yaml")
    assert job.id == "scim-acme" and job.description == "ACME HR app"
    assert job.schedule.interval_minutes == 5 and job.schedule.event_driven
    assert (job.scope.mode, job.scope.nested) == ("all", "flatten")
    assert job.skip_out_of_scope_deletions and job.dry_run
    assert (job.accidental_deletions.threshold, job.accidental_deletions.percent) == (3, 10.0)
    assert job.notification.email == "ops@example.com"
    assert job.notification.smtp is not None and job.notification.smtp.port == 25
    assert job.notification.smtp.starttls is False
    assert job.source.kind == "graph" and job.source.options["client_secret_env"] == "GRAPH_SECRET"
    t = job.target
    assert (t.token, t.token_env, t.members_per_patch, t.timeout_seconds, t.use_bulk, t.retries) == \
        (None, "ACME_TOKEN", 50, 10.0, "never", 5)
    assert t.rate.per_second == 25 and t.rate.concurrency == 8
    assert t.resolve_token({"ACME_TOKEN": "s3cret"}) == "s3cret"
    u = job.users
    assert u.flow_types == frozenset({"Add", "Update"}) and u.allows("Add") and not u.allows("Delete")
    assert len(u.scope) == 2
    assert u.scope[0].clauses == (Clause("department", "EQUALS", "Sales"), Clause("country", "NOT EQUALS", "BE"))
    assert u.input_filter[0].clauses == (Clause("accountEnabled", "IS TRUE"),)
    m = {a.target: a for a in u.attribute_mappings}
    assert m["userName"] == AttributeMapping("userName", "Direct", source="userPrincipalName", matching_priority=1)
    assert m["externalId"].source == "mailNickname" and m["externalId"].matching_priority == 2
    assert m["active"].kind == "Expression" and m["active"].source == "Not([IsSoftDeleted])"
    assert (m["title"].default, m["title"].flow_type) == ("Employee", "ObjectAddOnly")
    assert (m["nickName"].kind, m["nickName"].constant) == ("Constant", "42")
    assert m["displayName"].flow_always and m["displayName"].flow_null
    assert not job.groups.enabled


def test_section_18_1_list_form_and_scope_groups() -> None:
    job = load("""\
        job:
          id: scim-acme
          source: {kind: ldap, url: "ldap://localhost"}
          target: {base_url: "http://localhost:8000/scim/v2", token: abc}
          scope: {mode: assigned, nested_groups: direct_only}
          object_mappings:
            - name: users
              source: User
              target: urn:ietf:params:scim:schemas:core:2.0:User
              flow_types: [Add, Update, Delete]
              scope: {groups: [[{attr: department, op: EQUALS, value: Sales}]], input_filter: []}
              attribute_mappings:
                - {target: userName, source: "[userPrincipalName]", matching_priority: 1}
                - {target: title, source: "[jobTitle]", default: "Employee", flow_type: ObjectAddOnly}
        """)
    assert job.target.resolve_token() == "abc"
    assert job.users.scope[0].clauses == (Clause("department", "EQUALS", "Sales"),)
    assert job.groups.attribute_mappings == default_group_mappings()


def test_default_user_mappings_are_the_kpn_grip_table() -> None:
    targets = [m.target for m in default_user_mappings()]
    assert targets == [
        "userName", "displayName", "active", "name.givenName", "name.familyName",
        'emails[type eq "work"].value', 'emails[type eq "alternate"].value',
        'phoneNumbers[type eq "work"].value', 'phoneNumbers[type eq "mobile"].value',
        'addresses[type eq "work"].region', 'addresses[type eq "work"].streetAddress',
        'addresses[type eq "work"].locality', 'addresses[type eq "work"].postalCode',
        'addresses[type eq "work"].country', "externalId", f"{ENT}:manager", f"{ENT}:employeeNumber",
    ]
    by = {m.target: m for m in default_user_mappings()}
    assert by["userName"].matching_priority == 1
    assert [m.target for m in default_user_mappings() if m.matching_priority] == ["userName"]
    assert by["active"].source == "Not([IsSoftDeleted])"
    assert by["externalId"].source == "mailNickname"
    assert by[f"{ENT}:employeeNumber"].source == "employeeId"
    groups = {m.target: m for m in default_group_mappings()}
    assert groups["displayName"].matching_priority == 1 and groups["externalId"].source == "objectId"
    assert groups["members"].source == "members"


def test_classify_source() -> None:
    assert classify_source("userPrincipalName") == ("Direct", "userPrincipalName")
    assert classify_source("[userPrincipalName]") == ("Direct", "userPrincipalName")
    assert classify_source(" [ extension_abc_costCenter ] ") == ("Direct", "extension_abc_costCenter")
    assert classify_source('Join(" ", [givenName], [surname])') == ("Expression", 'Join(" ", [givenName], [surname])')
    assert classify_source("Guid()")[0] == "Expression"


# -- errors carry file:line:column ------------------------------------------------------------------------------
def test_unknown_key_with_position_and_suggestion() -> None:
    err = error_of("""\
        source: {kind: file, path: d.json}
        target:
          base_url: https://x.example/scim
          member_per_patch: 10
        """)
    assert str(err).startswith("job.yaml:4:3: unknown key 'member_per_patch' in target")
    assert "members_per_patch" in str(err)
    assert (err.line, err.column) == (4, 3)


def test_unknown_top_level_key() -> None:
    err = error_of(MINIMAL + "shedule: {interval_minutes: 5}\n")
    assert str(err).startswith("job.yaml:3:1: unknown key 'shedule'")


def test_missing_target_url() -> None:
    err = error_of("""\
        source: {kind: file, path: d.json}
        target:
          token: abc
        """)
    assert str(err).startswith("job.yaml:3:3: target.base_url is missing")
    err = error_of("source: {kind: file, path: d.json}\n")
    assert str(err) == "job.yaml:1:1: job needs a 'target' with a base_url"
    err = error_of("source: {kind: file}\ntarget: {base_url: ftp://x}\n")
    assert str(err).startswith("job.yaml:2:20: target.base_url must be an http(s) URL")


@pytest.mark.parametrize(("snippet", "where", "message"), [
    ("schedule: {interval_minutes: 0}", "3:30", "schedule.interval_minutes must be at least 1"),
    ("schedule: {interval_minutes: ten}", "3:30", "schedule.interval_minutes must be an integer"),
    ("scope: {mode: some}", "3:15", "scope.mode must be one of assigned, all"),
    ("skip_out_of_scope_deletions: yes please", "3:30", "skip_out_of_scope_deletions must be true or false"),
    ("accidental_deletions: {percent: 150}", "3:33", "accidental_deletions.percent is a percentage"),
    ("notification: [a]", "3:15", "notification must be a mapping"),
    ("source: {kind: file}", "3:1", "duplicate key 'source'"),
])
def test_type_errors(snippet: str, where: str, message: str) -> None:
    err = error_of(MINIMAL + snippet + "\n")
    assert str(err).startswith(f"job.yaml:{where}: {message}"), str(err)


def test_token_and_token_env_are_exclusive() -> None:
    err = error_of("source: {kind: file}\ntarget: {base_url: 'https://x', token: a, token_env: B}\n")
    assert "either target.token or target.token_env" in str(err)


def test_source_kind() -> None:
    err = error_of("source: {kind: csv}\ntarget: {base_url: 'https://x'}\n")
    assert str(err).startswith("job.yaml:1:16: source.kind must be one of file, graph, ldap")
    err = error_of("source: {path: x}\ntarget: {base_url: 'https://x'}\n")
    assert str(err).startswith("job.yaml:1:9: source needs a 'kind'")


USERS = MINIMAL + """\
object_mappings:
  users:
"""


def test_bad_operator_position() -> None:
    err = error_of(USERS + """\
    scope:
      - - {attr: department, op: LIKE, value: Sales}
""")
    assert str(err).startswith("job.yaml:6:34: unknown scoping operator 'LIKE'")


def test_operator_value_rules() -> None:
    err = error_of(USERS + "    scope: [[{attr: department, op: EQUALS}]]\n")
    assert "operator 'EQUALS' needs a 'value'" in str(err)
    err = error_of(USERS + "    scope: [[{attr: department, op: IS NULL, value: x}]]\n")
    assert "takes no 'value'" in str(err)
    err = error_of(USERS + "    scope: [[{attr: members, op: IS NULL}]]\n")
    assert "cannot be used in a scoping filter" in str(err)


def test_bad_regex_points_into_the_value() -> None:
    err = error_of(USERS + "    scope: [[{attr: x, op: REGEX MATCH, value: \"ab(c\"}]]\n")
    # the value's quote is at column 48; the unbalanced "(" (pattern position 2) is at column 51
    assert str(err).startswith("job.yaml:5:51: invalid regular expression"), str(err)


def test_yaml_scalars_in_clause_values_are_taken_as_written() -> None:
    job = load_job_config(USERS + "    scope: [[{attr: country, op: EQUALS, value: NO}, {attr: n, op: EQUALS, "
                                  "value: 010}, {attr: b, op: EQUALS, value: true}, {attr: d, op: '&', "
                                  "value: 'Sales,HR'}, {attr: e, op: '!&', value: x}]]\n", "job.yaml")
    assert [c.value for c in job.users.scope[0].clauses] == ["NO", "010", "True", "Sales,HR", "x"]
    assert [c.op for c in job.users.scope[0].clauses] == ["EQUALS"] * 3 + ["&", "!&"]


def test_entra_unfilterable_attribute_warns() -> None:
    job = load_job_config(USERS + "    scope: [[{attr: manager, op: IS NOT NULL}]]\n", "job.yaml")
    assert any("Entra cannot use 'manager'" in w for w in job.warnings)


def test_integer_operator_with_non_integer_value_warns() -> None:
    job = load_job_config(USERS + "    scope: [[{attr: employeeId, op: Greater_Than, value: abc},"
                                  " {attr: x, op: Less_Than, value: 3}]]\n", "job.yaml")
    assert any("needs an integer value" in w and w.startswith("job.yaml:5:") for w in job.warnings)
    assert any("not an Entra operator" in w for w in job.warnings)


def test_attribute_mapping_errors() -> None:
    def mapping_error(lines: str) -> str:
        return str(error_of(USERS + "    attribute_mappings:\n" + lines))

    assert mapping_error("      - {target: userName, sorce: x}\n").startswith(
        "job.yaml:6:28: unknown key 'sorce'")
    assert mapping_error("      - {target: userName, source: x, constant: y, matching_priority: 1}\n").startswith(
        "job.yaml:6:39: object_mappings.users.attribute_mappings[0]: give either")   # points at the 'constant' key
    assert "needs a 'source', a 'constant' or a 'default'" in mapping_error("      - {target: userName}\n")
    assert "flow_type must be one of" in mapping_error(
        "      - {target: userName, source: x, flow_type: Sometimes, matching_priority: 1}\n")
    assert "unknown target attribute 'usrName'" in mapping_error(
        "      - {target: usrName, source: x, matching_priority: 1}\n")
    assert "primary key 'id'" in mapping_error("      - {target: id, source: objectId, matching_priority: 1}\n")
    assert "is mapped twice" in mapping_error(
        "      - {target: userName, source: a, matching_priority: 1}\n"
        "      - {target: username, source: b}\n")
    assert "matching_priority 1 is used twice" in mapping_error(
        "      - {target: userName, source: a, matching_priority: 1}\n"
        "      - {target: externalId, source: b, matching_priority: 1}\n")
    assert "at least one matching attribute" in mapping_error("      - {target: userName, source: a}\n")
    assert "constant cannot be a matching attribute" in mapping_error(
        "      - {target: userName, constant: a, matching_priority: 1}\n")


def test_custom_extension_targets_are_accepted() -> None:
    job = load_job_config(USERS + "    attribute_mappings:\n"
                          "      - {target: userName, source: userPrincipalName, matching_priority: 1}\n"
                          "      - {target: 'urn:ietf:params:scim:schemas:extension:acme:2.0:User:badge', "
                          "source: employeeId}\n", "job.yaml")
    assert job.users.attribute_mappings[1].target.endswith(":badge")


def test_expression_syntax_error_at_its_column() -> None:
    text = USERS + ("    attribute_mappings:\n"
                    "      - {target: userName, source: userPrincipalName, matching_priority: 1}\n"
                    '      - {target: displayName, source: "Join(\\" \\", [givenName] [surname])"}\n')
    err = error_of(text)
    assert str(err).startswith("job.yaml:7:"), str(err)
    assert "expression syntax error" in str(err)
    from scimgrip.engine.expressions import ExpressionError, parse_expression
    with pytest.raises(ExpressionError) as info:
        parse_expression('Join(" ", [givenName] [surname])')
    # the YAML value's quote is at column 39; the two \" escapes before the error add one column each
    assert err.column == 39 + info.value.column + 2


def test_yaml_syntax_error_and_empty_file() -> None:
    err = error_of("source: {kind: file\ntarget: x\n")
    assert str(err).startswith("job.yaml:") and "YAML syntax error" in str(err)
    assert str(error_of("")) == "job.yaml:1:1: the job file is empty"
    assert str(error_of("- a\n")).startswith("job.yaml:1:1: the job file must be a mapping")


def test_load_job_file_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "acme.yaml"
    p.write_text(MINIMAL + "dry_run: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_job_file(p)
    assert str(info.value).startswith(f"{p}:3:10: dry_run must be true or false")
    p.write_text(MINIMAL, encoding="utf-8")
    assert load_job_file(p).id == "acme"


# -- CYC-4 fingerprint ------------------------------------------------------------------------------------------
def test_mapping_fingerprint() -> None:
    base = load_job_config(FULL, "x.yaml")
    assert base.mapping_fingerprint() == load_job_config(FULL, "x.yaml").mapping_fingerprint()
    unrelated = load_job_config(FULL.replace("interval_minutes: 5", "interval_minutes: 7")
                                .replace("retries: 5", "retries: 1"), "x.yaml")
    assert unrelated.mapping_fingerprint() == base.mapping_fingerprint()
    for old, new in [("default: Employee", "default: Staff"), ("value: Sales", "value: Marketing"),
                     ("mode: all", "mode: assigned"), ("flow_types: [Add, Update]", "flow_types: [Add]"),
                     ("op: IS TRUE", "op: IS FALSE")]:
        changed = load_job_config(FULL.replace(old, new), "x.yaml")
        assert changed.mapping_fingerprint() != base.mapping_fingerprint(), old
    assert len(base.mapping_fingerprint()) == 64
