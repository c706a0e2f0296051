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
