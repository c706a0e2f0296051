"""The cheap structural checks of ``make checks`` (part of ``make test``).

``coverage``: branch coverage (coverage.py ``--branch``) of every core file in
plugins/module_utils by tests/unit; prints the per-file table and fails when a
file is below ``THRESHOLD`` percent (``EXEMPT`` lists files with the reason).

``duplicates``: pylint's duplicate-code check (6 similar lines, comments,
docstrings, imports and signatures ignored) over plugins/. Module documentation
(the ``DOCUMENTATION``, ``EXAMPLES`` and ``RETURN`` strings) is boilerplate by
design (the same option text in several modules), so those strings are blanked
in a scratch copy of plugins/ before the scan; everything else counts.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
THRESHOLD = 80.0
CORE = os.path.join("plugins", "module_utils")
# Files below the threshold, each with the reason; keep this empty when possible.
EXEMPT = {}
DOC_NAMES = ("DOCUMENTATION", "EXAMPLES", "RETURN")


def _run(argv, **kwargs):
    return subprocess.run(argv, cwd=ROOT, check=False, text=True, **kwargs)  # noqa: S603 - fixed argv


def coverage():
    data = os.path.join(tempfile.mkdtemp(prefix="ner11-cov-"), ".coverage")
    env = dict(os.environ, COVERAGE_FILE=data)
    source = os.path.join(ROOT, CORE)
    test = _run(
        [
            PY,
            "-m",
            "coverage",
            "run",
            "--branch",
            "--source",
            source,
            "-m",
            "pytest",
            "tests/unit",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        env=env,
        capture_output=True,
    )
    if test.returncode != 0:
        sys.stdout.write(test.stdout[-4000:] + test.stderr[-2000:])
        print("checks: the unit tests failed under coverage (rc=%s)" % test.returncode)
        return 1
    report = _run([PY, "-m", "coverage", "report", "--precision=1"], env=env, capture_output=True)
    shutil.rmtree(os.path.dirname(data), ignore_errors=True)
    print(report.stdout)
    low = []
    for line in report.stdout.splitlines():
        match = re.match(r"^(\S+\.py)\s+.*?(\d+(?:\.\d+)?)%$", line.strip())
        if not match:
            continue
        name, percent = os.path.basename(match.group(1)), float(match.group(2))
        if name == "__init__.py" or percent >= THRESHOLD:
            continue
        if name in EXEMPT:
            print("exempt: %s %.1f%% (%s)" % (name, percent, EXEMPT[name]))
            continue
        low.append("%s %.1f%%" % (name, percent))
    if low:
        print("checks: branch coverage below %d%% by tests/unit: %s" % (THRESHOLD, ", ".join(low)))
        return 1
    print("checks: every core file has at least %d%% branch coverage by tests/unit" % THRESHOLD)
    return 0


def blank_documentation(path):
    """Replace the DOCUMENTATION/EXAMPLES/RETURN assignments by empty lines (line numbers kept)."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    lines = text.split("\n")
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in DOC_NAMES for t in node.targets):
            first, last = node.lineno, node.end_lineno
            for number in range(first, last + 1):
                lines[number - 1] = ""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))


def duplicates():
    scratch = tempfile.mkdtemp(prefix="ner11-dup-")
    try:
        copy = os.path.join(scratch, "plugins")
        shutil.copytree(os.path.join(ROOT, "plugins"), copy, ignore=shutil.ignore_patterns("__pycache__"))
        for dirpath, _dirs, files in os.walk(copy):
            for name in files:
                if name.endswith(".py"):
                    blank_documentation(os.path.join(dirpath, name))
        # options: [tool.pylint.*] in pyproject.toml (duplicate-code only, 6 lines)
        scan = _run(
            [PY, "-m", "pylint", "--rcfile", os.path.join(ROOT, "pyproject.toml"), copy],
            capture_output=True,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    found = scan.stdout.replace(scratch + os.sep, "")
    if "R0801" in found or scan.returncode not in (0,):
        print(found + scan.stderr[-2000:])
        print("checks: duplicated code in plugins/ (6 or more similar lines): move it to one place")
        return 1
    print("checks: no duplicated code in plugins/ (6 lines; DOCUMENTATION/EXAMPLES/RETURN strings excluded)")
    return 0


def main(argv):
    what = argv[1:] or ["coverage", "duplicates"]
    rc = 0
    for name in what:
        rc |= {"coverage": coverage, "duplicates": duplicates}[name]()
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv))
