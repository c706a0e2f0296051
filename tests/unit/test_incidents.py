"""Unit tests of plugins/module_utils/incidents.py (the incident record writer), on a real tmp dir."""

from __future__ import annotations

import json
import os
import stat

import pytest

from ansible_collections.ner11.ops.plugins.module_utils import incidents as I


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_writes_every_file_0600_in_0700_dirs_and_appends_the_ledger(tmp_path):
    folder = str(tmp_path / "incidents" / "db-1")
    ledger = str(tmp_path / "ledger.jsonl")
    paths = I.write(folder, {"incident.md": "# x\n", "incident.json": {"b": 1, "a": [1]}}, ledger, {"id": "db-1"})
    assert paths == [folder + "/incident.json", folder + "/incident.md"]
    assert mode(folder) == 0o700 and mode(os.path.dirname(folder)) == 0o700
    assert all(mode(p) == 0o600 for p in paths) and mode(ledger) == 0o600
    assert json.loads(open(paths[0]).read()) == {"a": [1], "b": 1}
    I.write(str(tmp_path / "incidents" / "db-2"), {}, ledger, {"id": "db-2"})
    assert [json.loads(line)["id"] for line in open(ledger)] == ["db-1", "db-2"]
    assert not [n for n in os.listdir(folder) if n.startswith(".")]  # no temporary file left


@pytest.mark.parametrize(
    "directory, files, ledger, message",
    [
        ("relative/dir", {}, None, "absolute"),
        ("/tmp/x", {"../escape": "x"}, None, "plain file name"),
        ("/tmp/x", {"a/b": "x"}, None, "plain file name"),
        ("/tmp/x", {}, "ledger.jsonl", "ledger must be an absolute path"),
    ],
)
def test_plan_refuses_paths_outside_the_record(directory, files, ledger, message):
    with pytest.raises(I.RecordError, match=message):
        I.plan(directory, files, ledger)


def test_write_failure_names_the_fix(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(I.RecordError, match="check free space and permissions"):
        I.write(str(blocker / "db-1"), {"a.md": "x"})
