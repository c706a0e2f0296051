"""Unit tests of plugins/module_utils/ledger.py (the run ledger) and the ledger_summary filter, on a real tmp dir."""

from __future__ import annotations

import json
import os
import stat
import threading

import pytest

from ansible_collections.ner11.ops.plugins.filter.ledger_summary import ledger_summary
from ansible_collections.ner11.ops.plugins.module_utils import ledger as L


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_line_has_the_contract_fields_and_computes_the_duration():
    line = L.build_line(
        "maintenance", "db1", status="changed", window="w1", steps=["health", {"name": "vacuum", "changed": True, "duration_s": "1.25"}],
        backup_ids=["b1"], started_at=100.0, finished_at=112.5, awx_job_id=42, now=0,
    )  # fmt: skip
    assert line["schema"] == 1 and line["playbook"] == "maintenance" and line["host"] == "db1"
    assert line["window"] == "w1" and line["backup_ids"] == ["b1"] and line["awx_job_id"] == "42"
    assert line["duration_s"] == 12.5
    assert line["steps"] == [
        {"name": "health", "status": "ok", "changed": False, "duration_s": None},
        {"name": "vacuum", "status": "ok", "changed": True, "duration_s": 1.25},
    ]
    assert line["recorded_at"] == "1970-01-01T00:00:00Z"


def test_secrets_are_redacted_by_key_by_url_by_pair_and_by_value():
    line = L.build_line(
        "deploy", "h",
        results={
            "db_password": "hunter2hunter2", "nested": [{"api_token": "t0k3n"}], "password_file": "/run/secrets/db",
            "dsn_text": "postgresql://postgres:s3cr3tpw@db:5432/ner11_db", "cmd": "PGPASSWORD=abcd psql",
            "note": "the password is Xyzzy-1234 really", "password_given": True, "empty_password": "",
        },
        secret_values=["Xyzzy-1234"],
    )  # fmt: skip
    text = json.dumps(line)
    for secret in ("hunter2hunter2", "t0k3n", "s3cr3tpw", "abcd", "Xyzzy-1234"):
        assert secret not in text
    res = line["results"]
    assert res["db_password"] == L.REDACTED and res["nested"][0]["api_token"] == L.REDACTED
    assert res["password_file"] == "/run/secrets/db"  # a path is not the secret
    assert res["dsn_text"] == "postgresql://postgres:(redacted)@db:5432/ner11_db"
    assert res["password_given"] is True and res["empty_password"] == ""


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"playbook": "../x"}, "playbook"),
        ({"host": ""}, "host"),
        ({"status": "great"}, "status must be one of"),
        ({"steps": [{"status": "ok"}]}, "steps[0]"),
        ({"started_at": "soon"}, "started_at must be a number"),
    ],
)
def test_invalid_input_names_the_field(kwargs, words):
    args = dict(kwargs)
    playbook = args.pop("playbook", "health")
    host = args.pop("host", "h")
    with pytest.raises(L.LedgerError, match=r".*" + words.replace("[", r"\[").replace("]", r"\]")):
        L.build_line(playbook, host, **args)


def test_append_is_0600_in_a_0700_dir_and_read_returns_lines_in_order(tmp_path):
    path = str(tmp_path / "stack" / "ledger.jsonl")
    L.append(path, L.build_line("health", "h", now=1))
    L.append(path, L.build_line("maintenance", "h", window="w", now=2))
    assert mode(path) == 0o600 and mode(os.path.dirname(path)) == 0o700
    with open(path, "ab") as fh:
        fh.write(b"{torn\n")  # a damaged line is skipped by read, never fatal
    assert [x["playbook"] for x in L.read(path)] == ["health", "maintenance"]
    assert [x["window"] for x in L.read(path, playbook="maintenance")] == ["w"]
    assert L.read(str(tmp_path / "none.jsonl")) == []


def test_the_redact_filter_is_the_ledger_rule():
    from ansible_collections.ner11.ops.plugins.filter.redact import FilterModule

    redact = FilterModule().filters()["redact"]
    assert redact("dsn postgresql://u:pw1234@h/db password=abc") == "dsn postgresql://u:(redacted)@h/db password=(redacted)"
    assert redact("login as Sup3rSecret failed", ["Sup3rSecret"]) == "login as (redacted) failed"


def test_an_existing_shared_directory_keeps_its_mode(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(str(shared), 0o1777)  # noqa: S103 - like /tmp: a ledger path there must not lock others out
    path = str(shared / "ledger.jsonl")
    L.append(path, L.build_line("health", "h", now=1))
    assert mode(str(shared)) == 0o1777 and mode(path) == 0o600


def test_a_write_cut_short_by_the_disk_leaves_no_torn_line(tmp_path):
    """A real short write: the append program (the one the action plugin runs) under a file-size
    limit (RLIMIT_FSIZE, SIGXFSZ ignored) gets EFBIG part way through its line."""
    import resource
    import signal
    import subprocess
    import sys

    path = str(tmp_path / "ledger.jsonl")
    L.append(path, L.build_line("health", "h", now=1))
    size = os.path.getsize(path)
    line = L.encode(L.build_line("maintenance", "h", results={"blob": "x" * 4000}, now=2))

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, size + 100))

    cmd = [sys.executable, "-c", L.append_script(), path]
    proc = subprocess.run(cmd, input=line, capture_output=True, preexec_fn=limit, check=False)  # noqa: PLW1509
    assert "error" in json.loads(proc.stdout), proc.stdout
    assert os.path.getsize(path) == size  # the 100 bytes it wrote were cut back
    proc = subprocess.run(cmd, input=line, capture_output=True, check=False)
    assert json.loads(proc.stdout) == {"bytes": len(line)}
    assert [x["playbook"] for x in L.read(path)] == ["health", "maintenance"]


def test_concurrent_appends_never_interleave(tmp_path):
    path = str(tmp_path / "ledger.jsonl")
    big = {"blob": "x" * 70000}  # larger than a pipe buffer: one locked write keeps it whole

    def worker(n):
        for i in range(5):
            L.append(path, L.build_line("health", "h%d" % n, results=dict(big, i=i)))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = open(path, "rb").read().splitlines()
    assert len(lines) == 20 and all(json.loads(raw)["results"]["blob"] == big["blob"] for raw in lines)


def test_append_to_an_unwritable_place_says_what_to_do(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(L.LedgerError, match="check free space and permissions"):
        L.append(str(blocker / "ledger.jsonl"), {"a": 1})
    with pytest.raises(L.LedgerError, match="absolute"):
        L.append("relative.jsonl", {"a": 1})


def test_job_id_prefers_awx_then_tower():
    assert L.job_id({"tower_job_id": 7}) == "7"
    assert L.job_id({"awx_job_id": 9, "tower_job_id": 7}) == "9"
    assert L.job_id({}) is None


def test_with_play_context_fills_the_job_id_and_adds_the_password_never_overriding_the_task():
    play = {"awx_job_id": 9, "tower_job_id": 7, "ner11_db_password": "Xyzzy-1234", "other": "ignored"}
    given = {"playbook": "health", "host": "h", "secret_values": ["token-1"]}
    out = L.with_play_context(given, play)
    assert out == {"playbook": "health", "host": "h", "awx_job_id": "9", "secret_values": ["token-1", "Xyzzy-1234"]}
    assert given == {"playbook": "health", "host": "h", "secret_values": ["token-1"]}, "the task's options were changed"
    # What the task gives wins; the password is not listed twice.
    out = L.with_play_context({"awx_job_id": "3", "secret_values": ["Xyzzy-1234"]}, play)
    assert out == {"awx_job_id": "3", "secret_values": ["Xyzzy-1234"]}
    # Outside AWX and without a password: nothing added; an empty job id falls back to the play's.
    assert L.with_play_context({"playbook": "p"}, {}) == {"playbook": "p"}
    assert L.with_play_context({"awx_job_id": ""}, {"tower_job_id": 7})["awx_job_id"] == "7"
    assert L.with_play_context({}, {"ner11_db_password": ""}) == {}
    # A task's secret_values given as a string is read as the module reads a list option (split
    # at commas), not split into characters that redaction would then ignore.
    assert L.with_play_context({"secret_values": "tok-1234,key-5678"}, play)["secret_values"] == [
        "tok-1234",
        "key-5678",
        "Xyzzy-1234",
    ]
    assert L.with_play_context({"secret_values": 98765}, play)["secret_values"] == ["98765", "Xyzzy-1234"]
    # The line built from the completed options never shows the password.
    opts = L.with_play_context({"results": {"note": "dsn with Xyzzy-1234"}}, play)
    line = L.build_line(
        "health", "h", results=opts["results"], awx_job_id=opts["awx_job_id"], secret_values=opts["secret_values"]
    )
    assert "Xyzzy-1234" not in json.dumps(line) and line["awx_job_id"] == "9"


def test_summary_is_global_worst_status_and_names_hosts_without_a_record():
    a = L.build_line("maintenance", "a", status="ok", window="w", backup_ids=["b-a"], duration_s=3, awx_job_id="5")
    b = L.build_line("maintenance", "b", status="rolled_back", window="w", duration_s=9, awx_job_id="5")
    out = ledger_summary([{"line": a}, b], ["a", "b"])
    assert out["status"] == "rolled_back" and out["hosts"] == {"a": "ok", "b": "rolled_back"}
    assert out["backup_ids"] == {"a": ["b-a"]} and out["window"] == "w" and out["awx_job_id"] == "5"
    assert out["duration_s_max"] == 9.0 and out["failed_hosts"] == []
    out = ledger_summary([{"line": a}, {}], ["a", "c"])
    assert out["status"] == "failed" and out["hosts_without_record"] == ["c"] and out["failed_hosts"] == ["c"]
    assert ledger_summary([], [])["status"] == "skipped"


def test_ledger_path_from_the_path_or_the_stack_model():
    # path wins; else ledger.jsonl in the completed model's config_dir (the default and a set one)
    assert L.ledger_path({"path": "/srv/l.jsonl", "stack": {"project": "abc"}}) == "/srv/l.jsonl"
    assert L.ledger_path({"path": None, "stack": {"project": "abc"}}) == "/var/lib/ner11/abc/ledger.jsonl"
    assert L.ledger_path({"stack": {"project": "abc", "config_dir": "/etc/n"}}) == "/etc/n/ledger.jsonl"
    with pytest.raises(L.LedgerError) as err:
        L.ledger_path({"path": None, "stack": {"project": "Bad Name!"}})
    assert "not a valid project name" in str(err.value) and "Fix ner11_stack or pass path" in str(err.value)


def test_a_modules_own_run_line_takes_its_place_status_and_start_from_the_module():
    # ner11.ops.ner_health's `ledger` option: the file from the model's config_dir unless a path is given,
    # the module's start unless the run's is given, secrets removed from the results too.
    options = {
        "playbook": "health",
        "host": "n1",
        "path": None,
        "started_at": None,
        "awx_job_id": 12,
        "secret_values": ["s3cr3t"],
    }
    path, line = L.own_run_line(options, "/etc/n", "failed", {"error": "login s3cr3t refused"}, started_at=100.0, now=103.5)
    assert path == "/etc/n/ledger.jsonl"
    assert line["status"] == "failed" and line["host"] == "n1" and line["playbook"] == "health"
    assert line["started_at"] == 100.0 and line["duration_s"] == 3.5 and line["awx_job_id"] == "12"
    assert "s3cr3t" not in json.dumps(line) and L.REDACTED in line["results"]["error"]
    path, line = L.own_run_line(
        dict(options, path="/srv/l.jsonl", started_at=90.0), "/etc/n", "ok", {}, started_at=100.0, now=100.0
    )
    assert path == "/srv/l.jsonl" and line["started_at"] == 90.0 and line["duration_s"] == 10.0
    with pytest.raises(L.LedgerError, match="no place"):
        L.own_run_line(options, None, "ok", {})
    with pytest.raises(L.LedgerError, match="absolute"):
        L.own_run_line(dict(options, path="rel.jsonl"), None, "ok", {})
    with pytest.raises(L.LedgerError, match="status must be one of"):
        L.own_run_line(options, "/etc/n", "great", {})
