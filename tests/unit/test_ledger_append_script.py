"""ledger.append_script() (what the run_ledger action plugin runs on the host) does what ledger.append does."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from ansible_collections.ner11.ops.plugins.module_utils import ledger


def _run_script(path, data, python=sys.executable):
    proc = subprocess.run([python, "-S", "-c", ledger.append_script(), path], input=data, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def test_same_bytes_and_modes_as_append(tmp_path):
    line = ledger.build_line("health", "h1", results={"dsn": "postgresql://u:pw@db/x"}, now=1.0)
    by_module = tmp_path / "a" / "ledger.jsonl"
    by_script = tmp_path / "b" / "ledger.jsonl"
    for _attempt in range(2):  # a second run appends, never rewrites
        assert ledger.append(str(by_module), line) == len(ledger.encode(line))
        assert _run_script(str(by_script), ledger.encode(line)) == {"bytes": len(ledger.encode(line))}
    assert by_script.read_bytes() == by_module.read_bytes()
    assert len(by_script.read_bytes().splitlines()) == 2 and b"pw@" not in by_script.read_bytes()
    for path in (by_module, by_script):
        assert stat.S_IMODE(os.stat(str(path)).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(str(path.parent)).st_mode) == 0o700


def test_a_created_directory_is_0700_an_existing_one_keeps_its_mode_and_errors_are_reported(tmp_path):
    # The stack's config directory is made 0700 by the stack role; the ledger writer changes the
    # mode only of what it creates (a ledger path in a shared directory must not close it).
    target = tmp_path / "cfg"
    target.mkdir(mode=0o755)
    assert _run_script(str(target / "ledger.jsonl"), b"{}\n") == {"bytes": 3}
    assert stat.S_IMODE(os.stat(str(target)).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(str(target / "ledger.jsonl")).st_mode) == 0o600
    assert _run_script(str(tmp_path / "new" / "ledger.jsonl"), b"{}\n") == {"bytes": 3}
    assert stat.S_IMODE(os.stat(str(tmp_path / "new")).st_mode) == 0o700
    blocker = tmp_path / "file"
    blocker.write_text("x")
    answer = _run_script(str(blocker / "ledger.jsonl"), b"{}\n")
    assert "error" in answer and "File exists" in answer["error"]
    assert "cannot append to the run ledger" in str(ledger.append_error("/x", answer["error"]))


def test_the_module_and_the_action_share_one_spec():
    pytest.importorskip("ansible")  # the module imports ansible-core; make units39 has no ansible
    import ansible_collections.ner11.ops.plugins.modules.run_ledger as mod

    assert mod.ARGUMENT_SPEC is ledger.ARGUMENT_SPEC
    assert ledger.ARGUMENT_SPEC["secret_values"]["no_log"] is True
