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
    line = I.record_line({"playbook": "incident_db", "host": "h", "results": {"incident_id": "db-1"}})
    paths = I.write(folder, {"incident.md": "# x\n", "incident.json": {"b": 1, "a": [1]}}, ledger, line)
    assert paths == [folder + "/incident.json", folder + "/incident.md"]
    assert mode(folder) == 0o700 and mode(os.path.dirname(folder)) == 0o700
    assert all(mode(p) == 0o600 for p in paths) and mode(ledger) == 0o600
    assert json.loads(open(paths[0]).read()) == {"a": [1], "b": 1}
    line2 = I.record_line({"playbook": "incident_db", "host": "h", "status": "failed", "results": {"incident_id": "db-2"}})
    I.write(str(tmp_path / "incidents" / "db-2"), {}, ledger, line2)
    lines = [json.loads(text) for text in open(ledger)]
    assert [entry["results"]["incident_id"] for entry in lines] == ["db-1", "db-2"]
    assert [entry["status"] for entry in lines] == ["ok", "failed"] and all(entry["schema"] == 1 for entry in lines)
    assert not [n for n in os.listdir(folder) if n.startswith(".")]  # no temporary file left


def test_an_existing_directory_above_the_record_keeps_its_mode(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(str(shared), 0o1777)  # noqa: S103 - a sticky shared directory, as /tmp is; a record directory in /tmp must not lock others out of /tmp
    folder = str(shared / "api-1")
    I.write(folder, {"incident.md": "# x\n"})
    assert mode(str(shared)) == 0o1777 and mode(folder) == 0o700


def test_the_files_are_redacted_like_the_ledger_line(tmp_path):
    folder = str(tmp_path / "db-3")
    log = "connecting to postgresql://ner11:Sup3rSecret@db:5432/ner11_db\nauth failed for Sup3rSecret-2\n"
    paths = I.write(folder, {"api.log": log, "incident.json": {"db_password": "x1y2z3w4", "n": 1}}, secret_values=["Sup3rSecret"])
    stored = "".join(open(p).read() for p in paths)
    assert "Sup3rSecret" not in stored and "x1y2z3w4" not in stored
    assert "postgresql://ner11:(redacted)@db:5432" in stored and "auth failed for (redacted)-2" in stored
    assert json.loads(open(paths[1]).read()) == {"db_password": "(redacted)", "n": 1}


def test_the_ledger_line_is_the_standard_one_redacted_and_refuses_bad_input():
    line = I.record_line(
        {
            "playbook": "incident_api",
            "host": "node1",
            "status": "changed",
            "results": {"note": "reconnected with S3cret-9 in the DSN", "password": "S3cret-9"},
            "started_at": 100.0,
            "finished_at": 112.5,
            "awx_job_id": "12",
            "secret_values": ["S3cret-9"],
        }
    )
    assert "S3cret-9" not in json.dumps(line)
    assert line["playbook"] == "incident_api" and line["awx_job_id"] == "12" and line["duration_s"] == 12.5
    with pytest.raises(I.RecordError, match="playbook must be the playbook's name"):
        I.record_line({"playbook": "../x", "host": "h"})
    with pytest.raises(I.RecordError, match="status must be one of"):
        I.record_line({"playbook": "incident_db", "host": "h", "status": "weird"})


def test_a_ledger_it_cannot_append_to_names_the_fix(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    line = I.record_line({"playbook": "incident_db", "host": "h"})
    with pytest.raises(I.RecordError, match="cannot append to the run ledger .*check free space and permissions"):
        I.write(str(tmp_path / "rec"), {"a.md": "x"}, str(blocker / "ledger.jsonl"), line)
    assert os.path.exists(str(tmp_path / "rec" / "a.md")), "the record's files come first"


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
