"""pg_backup's reads at once (issue 16): the canary counts beside the backup sidecar.

Against the scripted server (pg_double), which runs the real sidecar script with stand-in client
tools. Each overlap is proven by a barrier that only calls running at the same time can pass: run
one after the other (the code before issue 16's overlap), the barrier times out and the test fails.
The meaning is checked too: pg_dump starts only after the counts "before" returned, the counts
"after" start only after pg_dump ended, and a failure in any branch fails the backup with its own
message and leaves no partial.
"""

from __future__ import annotations

import os
import threading
import time

import pg_double
import pytest
from pg_double import TOC, ScriptedServer

from ansible_collections.ner11.ops.plugins.module_utils import pgbackup as pb
from ansible_collections.ner11.ops.plugins.module_utils.pgexec import PgExecError
from ansible_collections.ner11.ops.plugins.module_utils.runner import ThreadFailure

COUNTS = {"public.t": 3, "vendor_equipment": 5}
BARRIER_S = 5


def _params(tmp_path, **extra):
    extra.setdefault("login_password", "s3cret")
    extra.setdefault("format", "directory")
    return pg_double.backup_params(tmp_path, COUNTS, **extra)


def _server():
    server = ScriptedServer(COUNTS)
    server.toc = TOC + ";     Dumped by pg_dump version: 15.4 (Debian 15.4-2)\n"
    return server


def _is_sidecar(text):
    return "--entrypoint sh " in text


def _is_counts(text):
    return "count(*) AS c FROM" in text


def _partial(tmp_path):
    kind = tmp_path / "b" / "database"
    found = [p for p in kind.iterdir() if p.name.startswith(".partial-")]
    assert len(found) == 1, found
    return str(found[0])


def _no_partial_left(tmp_path):
    kind = tmp_path / "b" / "database"
    return not kind.exists() or [p.name for p in kind.iterdir() if p.name != ".lock"] == []


def test_counts_before_run_while_the_sidecar_starts_and_pg_dump_waits_for_them(tmp_path):
    server = _server()
    barrier = threading.Barrier(2, timeout=BARRIER_S)
    seen = {}
    calls = {"counts": 0}

    def counts(line, data):
        calls["counts"] += 1
        if calls["counts"] == 1:  # "before"
            barrier.wait()  # the sidecar is starting at this moment
            time.sleep(0.5)  # a slow count: the sidecar has long dumped the globals
            partial = _partial(tmp_path)
            seen["globals"] = os.path.exists(os.path.join(partial, "globals.sql"))
            seen["dump"] = os.path.exists(os.path.join(partial, "dump"))
        return server._canary_counts(line, data)

    def sidecar(line, data):
        barrier.wait()
        return server._run_sidecar_script(line, data)

    server.answer(_is_counts, counts)
    server.answer(_is_sidecar, sidecar)
    made = pb.PgBackup(_params(tmp_path), server).run()
    # the sidecar ran its globals step beside the counts, but pg_dump had not started when they returned
    assert seen == {"globals": True, "dump": False}
    assert made["manifest"]["row_counts"] == COUNTS and "row_counts_after" not in made["manifest"]
    steps = {s["step"]: s["s"] for s in made["steps"]}
    assert steps["wait for the canary row counts before"] >= 0.3, made["steps"]
    assert steps["canary row counts before (at once with the sidecar start)"] >= 0.5
    # the signal files are gone: never hashed, never published
    names = {f["path"] for f in made["manifest"]["files"]}
    assert names == {"globals.sql", "dump/toc.dat", "dump/3001.dat.gz"}
    assert not [n for n in os.listdir(made["path"]) if n.startswith(".ner11-")]


def test_counts_after_run_while_the_sidecar_exits_and_only_after_pg_dump(tmp_path):
    server = _server()
    barrier = threading.Barrier(2, timeout=BARRIER_S)
    seen = {}
    calls = {"counts": 0}

    def counts(line, data):
        calls["counts"] += 1
        if calls["counts"] == 2:  # "after"
            partial = _partial(tmp_path)
            seen["dump_done"] = os.path.exists(os.path.join(partial, pb.SIGNAL_DUMPED))
            barrier.wait()  # the sidecar has not exited yet
            server.counts["public.t"] = 4  # a write after the dump
        return server._canary_counts(line, data)

    def sidecar(line, data):
        out = server._run_sidecar_script(line, data)
        barrier.wait()  # a slow exit: docker run returns only once the counts "after" run
        return out

    server.answer(_is_counts, counts)
    server.answer(_is_sidecar, sidecar)
    made = pb.PgBackup(_params(tmp_path), server).run()
    assert seen == {"dump_done": True}
    assert made["manifest"]["row_counts"]["public.t"] == 3 and made["manifest"]["row_counts_after"]["public.t"] == 4


def test_failed_counts_before_fail_the_backup_with_their_message_and_stop_the_sidecar(tmp_path):
    server = _server()
    server.answer(_is_counts, (2, "", 'psql: error: relation "x" is locked'))
    started = time.monotonic()
    with pytest.raises(PgExecError, match=r"psql failed on container pg1 .*rc=2.*is locked"):
        pb.PgBackup(_params(tmp_path), server).run()
    assert time.monotonic() - started < 10  # the abort signal ended the waiting sidecar at once
    assert "pg_dump" not in [t.split()[0] for t in server.sidecar_tools]  # no snapshot was ever taken
    assert _no_partial_left(tmp_path)
    assert any(c.startswith("docker ps -aq --filter label=io.ner11.pg_backup.catalog=") for c in server.lines())


def test_failed_counts_after_fail_the_backup_and_leave_no_partial(tmp_path):
    server = _server()
    calls = {"counts": 0}

    def counts(line, data):
        calls["counts"] += 1
        if calls["counts"] == 2:
            return 2, "", "psql: error: server closed the connection"
        return server._canary_counts(line, data)

    server.answer(_is_counts, counts)
    with pytest.raises(PgExecError, match="server closed the connection"):
        pb.PgBackup(_params(tmp_path), server).run()
    assert _no_partial_left(tmp_path)


def test_a_failed_sidecar_raises_its_own_message_and_skips_the_counts_after(tmp_path):
    server = _server()
    server.fail["pg_dump"] = (1, "pg_dump: error: boom")
    with pytest.raises(pb.PgBackupError, match=r"pg_dump of my-db failed .*rc=42"):
        pb.PgBackup(_params(tmp_path), server).run()
    assert sum(1 for c in server.lines() if _is_counts(c)) == 1  # before only: pg_dump never ended
    assert _no_partial_left(tmp_path)


def test_a_command_that_cannot_start_in_a_worker_thread_fails_the_backup(tmp_path):
    """fail_json in a worker thread raises ThreadFailure (runner.main_thread_failures): the backup fails, no partial."""
    server = _server()

    def cannot_start(line, data):
        assert threading.current_thread() is not threading.main_thread()
        raise ThreadFailure("Failed to execute the command: [Errno 11] Resource temporarily unavailable")

    server.answer(_is_sidecar, cannot_start)
    with pytest.raises(ThreadFailure, match="Resource temporarily unavailable"):
        pb.PgBackup(_params(tmp_path), server).run()
    assert _no_partial_left(tmp_path)


def test_the_sidecar_gives_up_waiting_with_its_own_message():
    msg = pb.sidecar_failure(44, "", "my-db", "container pg1", "/p/dump", "img")
    assert "gave up waiting for the canary row counts" in msg and "rc=44" in msg and "nothing was published" in msg
