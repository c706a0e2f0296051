"""Conventions of roles/ and playbooks/ that keep the layers apart (docs/architecture.md).

- A role reads only the ``__`` (internal) variables it defines itself: what another role
  returns comes through documented, role-prefixed facts (``common_discovered``,
  ``service_result``, ``stack_result``, ...), never through that role's internals.
- A playbook reads only the ``__`` variables it defines itself.
- The host-group -> service map exists once, in the internal role ner11.ops.common.
- Every role has meta/argument_specs.yml with an entry for each file called with tasks_from,
  and a README.md with an Idempotence section.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

# Controller-side checks of roles and playbooks: the Python 3.9 managed-node image
# (make units39) has no PyYAML, and no managed node runs this code.
yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
ROLES = sorted(p for p in (ROOT / "roles").iterdir() if p.is_dir())
PLAYBOOKS = sorted((ROOT / "playbooks").glob("*.yml"))

# Keys whose string values are bare Jinja expressions (no braces).
BARE = {"when", "that", "changed_when", "failed_when", "until"}
EXPR = re.compile(r"\{\{(.*?)\}\}|\{%(.*?)%\}", re.S)
STRING = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
INTERNAL = re.compile(r"(?<![\w.])__[a-z][a-z0-9_]*")


def _names(expr):
    """The ``__`` names an expression reads, string literals left out."""
    return set(INTERNAL.findall(STRING.sub("''", expr)))


def _referenced(value, key=None):
    out = set()
    if isinstance(value, dict):
        for k, v in value.items():
            out |= _referenced(v, k)
    elif isinstance(value, list):
        for v in value:
            out |= _referenced(v, key)
    elif isinstance(value, str):
        if key in BARE:
            out |= _names(value)
        for m in EXPR.finditer(value):
            out |= _names(m.group(1) or m.group(2) or "")
    return out


def _defined(value):
    out = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "register" and isinstance(v, str):
                out.add(v)
            elif k in ("set_fact", "ansible.builtin.set_fact", "vars") and isinstance(v, dict):
                out |= {n for n in v if isinstance(n, str)}
            elif k == "loop_control" and isinstance(v, dict) and "loop_var" in v:
                out.add(v["loop_var"])
            out |= _defined(v)
    elif isinstance(value, list):
        for v in value:
            out |= _defined(v)
    return out


def _load(path):
    return yaml.safe_load(path.read_text()) or {}


def _role_files(role):
    return sorted(p for p in role.rglob("*") if p.is_file() and p.suffix in (".yml", ".yaml", ".j2"))


def _role_names(role):
    referenced, defined = {}, set()
    for path in _role_files(role):
        rel = path.relative_to(ROOT)
        if path.suffix == ".j2":
            text = path.read_text()
            names = set()
            for m in EXPR.finditer(text):
                names |= _names(m.group(1) or m.group(2) or "")
            referenced[rel] = names
            continue
        data = _load(path)
        if path.parent.name in ("vars", "defaults") and isinstance(data, dict):
            defined |= set(data)
        defined |= _defined(data)
        referenced[rel] = _referenced(data)
    return referenced, defined


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_a_role_reads_only_its_own_internal_variables(role):
    referenced, defined = _role_names(role)
    foreign = {str(path): sorted(names - defined) for path, names in referenced.items() if names - defined}
    assert foreign == {}, "internal variables read but not defined by role %s: %s" % (role.name, foreign)


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_a_role_defines_internal_variables_with_its_prefix(role):
    _referenced_by_file, defined = _role_names(role)
    # Task-level `vars:` may hold short local helpers; facts and registered results may not.
    facts = set()
    for path in _role_files(role):
        if path.suffix != ".j2":
            facts |= _facts(_load(path))
    wrong = sorted(n for n in facts if n.startswith("__") and not n.startswith("__%s_" % role.name))
    assert wrong == [], "role %s sets internal facts without the __%s_ prefix: %s" % (role.name, role.name, wrong)


def _facts(value):
    out = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "register" and isinstance(v, str):
                out.add(v)
            elif k in ("set_fact", "ansible.builtin.set_fact") and isinstance(v, dict):
                out |= {n for n in v if isinstance(n, str)}
            out |= _facts(v)
    elif isinstance(value, list):
        for v in value:
            out |= _facts(v)
    return out


@pytest.mark.parametrize("playbook", PLAYBOOKS, ids=lambda p: p.name)
def test_a_playbook_reads_only_its_own_internal_variables(playbook):
    data = _load(playbook)
    foreign = sorted(_referenced(data) - _defined(data))
    assert foreign == [], "%s reads internal variables of a role: %s" % (playbook.name, foreign)


def test_the_group_to_service_map_exists_once():
    # One map, in Python (stack_model.GROUP_SERVICES): ner_health uses it, the roles through the
    # ner11.ops.host_services filter. No role or playbook holds a copy.
    yaml_form = re.compile(r"^\s*ner11_db:\s*postgres\s*$", re.M)
    py_form = re.compile(r"[\"']ner11_db[\"']:\s*[\"']postgres[\"']")
    holders = [
        str(p.relative_to(ROOT)) for p in list((ROOT / "roles").rglob("*.yml")) + PLAYBOOKS if yaml_form.search(p.read_text())
    ]
    holders += [str(p.relative_to(ROOT)) for p in (ROOT / "plugins").rglob("*.py") if py_form.search(p.read_text())]
    assert holders == ["plugins/module_utils/stack_model.py"]


def _tasks_from_calls():
    calls = set()
    for path in list((ROOT / "roles").rglob("*.yml")) + PLAYBOOKS:
        text = path.read_text()
        for m in re.finditer(r"name:\s*ner11\.ops\.(\w+)\s*\n\s*tasks_from:\s*(\w+)", text):
            calls.add(m.groups())
    return sorted(calls)


def test_every_entry_point_called_has_an_argument_spec():
    calls = _tasks_from_calls()
    assert ("common", "discovery") in calls
    missing = []
    for role, entry in calls:
        specs = _load(ROOT / "roles" / role / "meta" / "argument_specs.yml")["argument_specs"]
        if entry not in specs:
            missing.append("%s:%s" % (role, entry))
    assert missing == []


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_role_has_a_readme_with_idempotence(role):
    readme = role / "README.md"
    assert readme.is_file(), "roles/%s has no README.md" % role.name
    text = readme.read_text()
    assert "## Idempotence" in text and "argument_specs" in text
