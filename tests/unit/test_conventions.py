"""Conventions that keep the collection readable for operators (checked on every file).

Gap codes (``G1`` ... ``G71``) name the runbook gaps of the design notes; they mean
nothing to an operator, so they may appear in comments, docstrings and module
documentation, never in text the collection prints: Python string literals that
are not documentation, task names and messages in roles and playbooks, and the
rendered part of templates.
"""

from __future__ import annotations

import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GAP = re.compile(r"\bG[1-9][0-9]?\b")
DOC_ASSIGNMENTS = {"DOCUMENTATION", "EXAMPLES", "RETURN", "__doc__"}


def _files(top, suffixes):
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, top)):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(suffixes):
                yield os.path.join(dirpath, name)


def _docstring_nodes(tree):
    """Constant nodes that are docstrings or module documentation blocks."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                skip.add(id(body[0].value))
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in DOC_ASSIGNMENTS for t in node.targets):
            for sub in ast.walk(node.value):
                skip.add(id(sub))
    return skip


def python_violations(path):
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), filename=path)
    skip = _docstring_nodes(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip and GAP.search(node.value):
            out.append("%s:%d: %r" % (os.path.relpath(path, ROOT), node.lineno, node.value[:80]))
    return out


def yaml_violations(path):
    """Non-comment lines of task/playbook YAML and rendered template text that name a gap code."""
    rel = os.path.relpath(path, ROOT)
    out = []
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    if path.endswith(".j2"):
        text = re.sub(r"\{#.*?#\}", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    for number, line in enumerate(text.splitlines(), 1):
        code = line.split(" #", 1)[0] if not path.endswith(".j2") else line
        if code.lstrip().startswith("#"):
            continue
        if GAP.search(code):
            out.append("%s:%d: %s" % (rel, number, line.strip()[:100]))
    return out


def test_gap_codes_only_in_comments_and_docs_python():
    found = []
    for path in _files("plugins", (".py",)):
        found += python_violations(path)
    assert not found, "gap codes in strings an operator reads (move them to a comment):\n" + "\n".join(found)


def test_gap_codes_only_in_comments_and_docs_yaml():
    found = []
    for top in ("roles", "playbooks"):
        for path in _files(top, (".yml", ".yaml", ".j2")):
            if os.sep + "meta" + os.sep in path:
                continue  # argument_specs descriptions are documentation
            found += yaml_violations(path)
    assert not found, "gap codes in task names or messages (move them to a comment):\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('"""Docstring (G7)."""\nX = 1\n', 0),
        ('msg = "no healthcheck defined, G6"\n', 1),
        ('DOCUMENTATION = r"""\ndescription: G57 retention\n"""\n', 0),
        ("x = 'G100 is not a gap code'\n", 0),
    ],
)
def test_python_scanner_finds_what_it_should(tmp_path, source, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert len(python_violations(str(path))) == expected


def test_yaml_scanner_ignores_comments(tmp_path):
    path = tmp_path / "t.yml"
    path.write_text("# G5 is fine here\n- name: Check ports  # and G5 here\n- name: Check ports (G5)\n")
    assert len(yaml_violations(str(path))) == 1


# ---------------------------------------------------------------------------
# One way to build command lines and name rules (issue 11)
# ---------------------------------------------------------------------------
# docker and PostgreSQL client command lines are built only by the runner, the Docker client
# and the PostgreSQL access helper; name rules (identifier regexes) live only in identifiers.py.
COMMAND_OWNERS = {"runner.py", "docker_cli.py", "pgexec.py", "identifiers.py"}
CLIENT_TOOLS = {"docker", "psql", "pg_dump", "pg_dumpall", "pg_restore"}
DOCKER_NAMES = {"docker", "docker_cli", "docker_bin", "cli"}
_RE_FUNCS = {"compile", "match", "fullmatch", "search"}


def _is_docker_head(node):
    """True when ``node`` (the first element of a list) names a client tool or the docker CLI option."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value in CLIENT_TOOLS
    if isinstance(node, ast.BoolOp):
        return any(_is_docker_head(v) for v in node.values)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        return bool(node.args) and isinstance(node.args[0], ast.Constant) and node.args[0].value == "docker_cli"
    if isinstance(node, ast.Name):
        return node.id in DOCKER_NAMES
    if isinstance(node, ast.Attribute):
        return node.attr in DOCKER_NAMES
    return False


def _is_name_regex(node):
    """``re.compile/match/...`` of an anchored pattern over letters: a rule for valid names."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _RE_FUNCS):
        return False
    if not (isinstance(node.func.value, ast.Name) and node.func.value.id == "re" and node.args):
        return False
    pattern = node.args[0]
    if not (isinstance(pattern, ast.Constant) and isinstance(pattern.value, str)):
        return False
    text = pattern.value
    letters = "a-z" in text or "A-Z" in text
    return letters and ((text.startswith("^") and text.endswith("$")) or (text.startswith("[") and "]{0," in text))


def command_violations(path):
    """Command lines and name regexes built in ``path`` (a Python file): ``file:line: what``."""
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), filename=path)
    rel = os.path.relpath(path, ROOT)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.List) and node.elts and _is_docker_head(node.elts[0]):
            out.append("%s:%d: command line %s" % (rel, node.lineno, ast.unparse(node)[:70]))
        elif _is_name_regex(node):
            out.append("%s:%d: name regex %s" % (rel, node.lineno, node.args[0].value))
    return out


def test_command_lines_and_name_rules_have_one_home():
    found = []
    for path in _files("plugins", (".py",)):
        name = os.path.basename(path)
        if name in COMMAND_OWNERS:
            continue
        found += command_violations(path)
    assert not found, (
        "docker/psql command lines go through runner.py, docker_cli.py or pgexec.py and name rules live in "
        "identifiers.py:\n" + "\n".join(found)
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('cmd = ["docker", "inspect", name]\n', 1),
        ('cmd = [self.p.get("docker_cli") or "docker", "ps"]\n', 1),
        ("cmd = [self.docker, 'exec', c]\n", 1),
        ('cmd = ["psql", "-X"]\n', 1),
        ('args = ["-X", "psql"]\n', 0),
        ('import re\nR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")\n', 1),
        ('import re\nR = re.compile(r"^[0-9]+(ms|s)$")\n', 0),
        ('import re\nok = re.match(r"^https?://", url)\n', 0),
        ('import re\nR = re.compile(r"[a-z][a-z0-9_]{0,30}")\n', 1),
    ],
)
def test_command_scanner_finds_what_it_should(tmp_path, source, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert len(command_violations(str(path))) == expected


def test_the_docker_cli_default_lives_in_one_place():
    found = []
    for path in _files("plugins", (".py",)):
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        if re.search(r"""get\(["']docker_cli["']\)\s*or\s*["']docker["']""", text) and not path.endswith("docker_cli.py"):
            found.append(os.path.relpath(path, ROOT))
    assert not found, "use docker_cli.cli_path(params) instead of repeating the default: " + ", ".join(found)
