"""pg_restore's steps and its fewer round trips (issue 16), through the core against a scripted server.

The canary counts of the restored copy come from the state fingerprint's own row counts
(the restore_log INSERT ... RETURNING, one psql call, one scan of each table); a canary the
fingerprint does not count alone is counted with count(*). The same paths run against a real
server in tests/integration/test_restore.py.
"""

from __future__ import annotations

import datetime
import json

import pytest
from pg_double import ScriptedServer, backup_params

from ansible_collections.ner11.ops.plugins.module_utils import pgbackup as pb
from ansible_collections.ner11.ops.plugins.module_utils import pgrestore as pr
from ansible_collections.ner11.ops.plugins.module_utils import pgrestore_sql as rsql

COUNTS = {"public.t": 3, "vendor_equipment": 5}
NOW = datetime.datetime(2026, 11, 29, 2, 0, 0, tzinfo=datetime.timezone.utc)
SEP = "\x1f"
FUSED = "RETURNING 'fp', fingerprint"


def make_backup(tmp_path, **extra):
    return pb.PgBackup(backup_params(tmp_path, COUNTS, **extra), ScriptedServer(COUNTS), now=NOW).run()


def restore_params(tmp_path, backup_id, **extra):
    params = {"container": "pg1", "db_name": "my-db", "backup_dir": str(tmp_path / "b"), "backup_id": backup_id}
    params.update(extra)
    return params


def fused_reply(rels, keys):
    """What psql prints for the log INSERT ... RETURNING and the canary lookup."""
    fp = json.dumps({"v": 1, "h": 700, "rels": rels})
    rows = ["fp%s%s" % (SEP, fp)] + ["canary%s%s%s%s" % (SEP, t, SEP, k) for t, k in keys]
    return 0, "\n".join(rows) + "\n", ""


PLAIN = {
    "public.t": ["r", 16384, 16384, "740", "3/3"],
    "public.vendor_equipment": ["r", 16390, 16390, "741", "5/5"],
}
KEYS = [("public.t", "public.t"), ("vendor_equipment", "public.vendor_equipment")]


def test_sql_texts_of_the_fused_steps():
    assert rsql.create_db_sql("a b", "mark's") == (
        "CREATE DATABASE \"a b\" TEMPLATE template0;\nCOMMENT ON DATABASE \"a b\" IS 'mark''s';\n"
    )
    assert rsql.create_db_sql("x") == 'CREATE DATABASE "x" TEMPLATE template0;\n'
    assert rsql.canary_lookup_sql([]) == ""
    sql = rsql.canary_lookup_sql(["public.t", "Odd-Name"])
    assert "('public.t', '\"public\".\"t\"', 0), ('Odd-Name', '\"Odd-Name\"', 1)" in sql
    assert "c.relkind = 'r' AND NOT c.relhassubclass" in sql and sql.endswith("ORDER BY x.o;\n")
    with pytest.raises(Exception, match="canary table"):
        rsql.canary_lookup_sql(["a.b.c"])
    log = rsql.log_insert_sql("b1", "ab", "full", None, "db", "2026-11-29T02:00:00Z", False, returning=True)
    assert log.rstrip().endswith(")) RETURNING 'fp', fingerprint;")
    assert FUSED not in rsql.log_insert_sql("b1", "ab", "full", None, "db", "2026-11-29T02:00:00Z", False)


def test_counts_from_the_fingerprint_leave_out_what_it_did_not_count():
    rows = [line.split(SEP) for line in fused_reply(PLAIN, KEYS)[1].splitlines()]
    assert rsql.counts_from_fingerprint(rows, list(COUNTS)) == COUNTS
    # missing table -> None; partitioned/inherited ('' key), unknown key, sequence-like value -> left out
    rels = dict(PLAIN, **{"public.s": ["S", 1, 1, "1", "12/true"]})
    keys = [("gone", "missing"), ("parted", ""), ("public.t", "public.t"), ("public.s", "public.s"), ("other", "x.y")]
    rows = [line.split(SEP) for line in fused_reply(rels, keys)[1].splitlines()]
    tables = ["gone", "parted", "public.t", "public.s", "other"]
    assert rsql.counts_from_fingerprint(rows, tables) == {"gone": None, "public.t": 3}
    # no fingerprint row, or an unreadable one: nothing but the missing tables
    assert rsql.counts_from_fingerprint(rows[1:], tables) == {"gone": None}
    assert rsql.counts_from_fingerprint([["fp", "{not json"]] + rows[1:], tables) == {"gone": None}
    # rows of tables that are not canaries are ignored
    assert rsql.counts_from_fingerprint(rows, ["public.t"]) == {"public.t": 3}


def test_a_new_database_restore_counts_canaries_from_the_fingerprint_and_returns_its_steps(tmp_path):
    made = make_backup(tmp_path)
    server = ScriptedServer(COUNTS)
    server.answer(FUSED, lambda line, data: fused_reply(PLAIN, KEYS))
    done = pr.run_restore(restore_params(tmp_path, made["backup_id"]), server, now=NOW)
    assert done["restored"] is True and done["row_counts"] == COUNTS
    lines = server.lines()
    assert not any("count(*) AS c FROM" in c for c in lines)  # no second scan of the canaries
    fused = [c for c in lines if FUSED in c]
    assert len(fused) == 1 and "-d my-db__ner11_restore" in fused[0] and "SELECT 'canary', x.t" in fused[0]
    create = [c for c in lines if 'CREATE DATABASE "my-db__ner11_restore"' in c]
    assert len(create) == 1 and 'COMMENT ON DATABASE "my-db__ner11_restore"' in create[0]  # one psql call
    names = [s["step"] for s in done["steps"]]
    assert names == [
        "find the backup, its checksums in the background",
        "pg_restore --list",
        "look for leftovers of a killed run",
        "inspect the target, decide",
        "wait for the checksums and pg_restore --list",
        "free space",
        "globals (roles)",
        "create the temporary database",
        "pg_restore into the temporary database",
        "restore log, fingerprint and canary counts",
        "rename into place",
    ]
    assert all(s["s"] >= 0 for s in done["steps"]) and sum(s["s"] for s in done["steps"]) <= done["duration_s"] + 0.01


def test_a_count_mismatch_from_the_fingerprint_drops_the_copy_and_names_the_backup(tmp_path):
    made = make_backup(tmp_path)
    server = ScriptedServer(COUNTS)
    short = dict(PLAIN, **{"public.t": ["r", 16384, 16384, "740", "2/2"]})
    server.answer(FUSED, lambda line, data: fused_reply(short, KEYS))
    with pytest.raises(pr.RestoreError, match="does not match backup %s .*public.t" % made["backup_id"]) as info:
        pr.run_restore(restore_params(tmp_path, made["backup_id"]), server, now=NOW)
    lines = server.lines()
    assert any('DROP DATABASE IF EXISTS "my-db__ner11_restore" WITH (FORCE)' in c for c in lines)
    assert not any("RENAME TO" in c for c in lines)  # never swapped
    assert [s["step"] for s in info.value.partial["steps"]][-1] == "restore log, fingerprint and canary counts"


def test_a_canary_the_fingerprint_does_not_count_is_counted_alone(tmp_path):
    made = make_backup(tmp_path)
    server = ScriptedServer(COUNTS)
    keys = [("public.t", "public.t"), ("vendor_equipment", "")]  # e.g. a partitioned table
    server.answer(FUSED, lambda line, data: fused_reply(PLAIN, keys))
    done = pr.run_restore(restore_params(tmp_path, made["backup_id"]), server, now=NOW)
    assert done["row_counts"] == COUNTS
    counted = [c for c in server.lines() if "count(*) AS c FROM" in c]
    assert len(counted) == 1 and "'vendor_equipment'" in counted[0] and "'public.t'" not in counted[0]


CHANGES = ("CREATE DATABASE", "DROP DATABASE", "ALTER DATABASE", "CREATE ROLE", "docker cp", "--exit-on-error", "RENAME")


def corrupt(made, name="dump.pgdump"):
    path = made["path"] + "/" + name
    with open(path, "r+b") as fh:  # same size, one byte flipped: only the sha256 can tell
        first = fh.read(1)
        fh.seek(0)
        fh.write(bytes([first[0] ^ 0xFF]))


def test_a_named_backup_with_a_corrupt_file_is_refused_before_anything_changes(tmp_path):
    made = make_backup(tmp_path)
    corrupt(made)
    for check_mode in (True, False):
        server = ScriptedServer(COUNTS, databases={"my-db"})
        params = restore_params(tmp_path, made["backup_id"], if_exists="replace", confirm="my-db")
        with pytest.raises(
            pr.RestoreError, match="backup %s fails verification \\(dump.pgdump: sha256 mismatch\\)" % made["backup_id"]
        ):
            pr.run_restore(params, server, check_mode=check_mode, now=NOW)
        assert not any(word in c for c in server.lines() for word in CHANGES), server.lines()
    # latest skips it (verified while choosing, as before)
    with pytest.raises(pr.RestoreError, match="fails verification: dump.pgdump: sha256 mismatch"):
        pr.run_restore(dict(restore_params(tmp_path, None), latest=True), ScriptedServer(COUNTS), now=NOW)


def test_the_checksum_failure_wins_over_an_error_raised_while_hashing(tmp_path):
    made = make_backup(tmp_path)
    corrupt(made)
    server = ScriptedServer(COUNTS)
    server.answer("--list", (1, "", "pg_restore: error: could not read input file: end of file"))
    with pytest.raises(pr.RestoreError, match="fails verification") as info:
        pr.run_restore(restore_params(tmp_path, made["backup_id"]), server, now=NOW)
    assert info.value.partial["changed"] is False
    # an intact backup reports the unreadable dump itself
    made2 = make_backup(tmp_path / "x")
    with pytest.raises(pr.RestoreError, match="the dump is unreadable"):
        pr.run_restore(dict(restore_params(tmp_path / "x", made2["backup_id"])), server, now=NOW)


def test_a_file_that_cannot_be_read_counts_as_damaged(tmp_path, monkeypatch):
    from ansible_collections.ner11.ops.plugins.module_utils import catalog as cat

    made = make_backup(tmp_path)

    def unreadable(self, kind, backup_id):
        raise OSError("Permission denied: dump.pgdump")

    monkeypatch.setattr(cat.Catalog, "verify", unreadable)
    with pytest.raises(pr.RestoreError, match="fails verification \\(cannot be read: Permission denied: dump.pgdump\\)"):
        pr.run_restore(restore_params(tmp_path, made["backup_id"]), ScriptedServer(COUNTS), now=NOW)


def test_a_directory_dump_is_listed_in_the_background_and_an_unreadable_one_changes_nothing(tmp_path):
    made = make_backup(tmp_path, format="directory", login_password="pw", compression=None)
    params = restore_params(tmp_path, made["backup_id"], jobs=2, login_password="pw")
    server = ScriptedServer(COUNTS)
    done = pr.run_restore(params, server, now=NOW)
    assert done["restored"] is True and done["toc_entries"] == 2
    names = [s["step"] for s in done["steps"]]
    assert names[1] == "start pg_restore --list in the background"
    assert names.index("wait for the checksums and pg_restore --list") < names.index("globals (roles)")
    assert any("--entrypoint pg_restore" in c and "--network none" in c and "--list" in c for c in server.lines())
    # an unreadable dump (its checksums match): refused before anything changes
    server = ScriptedServer(COUNTS)
    server.answer(lambda t: "--list" in t and "--network none" in t, (1, "", "pg_restore: error: unsupported version"))
    with pytest.raises(pr.RestoreError, match="the dump is unreadable; restore another backup.*unsupported version"):
        pr.run_restore(params, server, now=NOW)
    assert not any(word in c for c in server.lines() for word in CHANGES), server.lines()
    # an empty listing too
    server = ScriptedServer(COUNTS)
    server.toc = ";\n; nothing\n"
    with pytest.raises(pr.RestoreError, match="shows no entries"):
        pr.run_restore(params, server, now=NOW)
    assert not any(word in c for c in server.lines() for word in CHANGES), server.lines()
    # a damaged file and an unreadable listing: the checksum failure is the reason
    corrupt(made, "dump/toc.dat")
    server = ScriptedServer(COUNTS)
    server.answer(lambda t: "--list" in t and "--network none" in t, (1, "", "pg_restore: error: bad toc"))
    with pytest.raises(pr.RestoreError, match="fails verification \\(dump/toc.dat: sha256 mismatch\\)"):
        pr.run_restore(params, server, now=NOW)
    assert not any(word in c for c in server.lines() for word in CHANGES), server.lines()


@pytest.mark.filterwarnings("ignore:Exception in thread ner11-list-toc")  # the SystemExit in the thread (pytest >= 6.2 warns)
def test_a_listing_thread_that_ends_without_a_result_fails_clearly(tmp_path):
    made = make_backup(tmp_path, format="directory", login_password="pw", compression=None)
    server = ScriptedServer(COUNTS)

    def exits(line, data):  # AnsibleModule.run_command's fail_json ends the thread with SystemExit
        raise SystemExit(1)

    server.answer(lambda t: "--list" in t and "--network none" in t, exits)
    with pytest.raises(pr.RestoreError, match="pg_restore --list of .* stopped without a result"):
        pr.run_restore(restore_params(tmp_path, made["backup_id"], jobs=2, login_password="pw"), server, now=NOW)
    assert not any(word in c for c in server.lines() for word in CHANGES), server.lines()


def test_the_free_space_and_the_servers_roles_are_read_at_once(tmp_path):
    """The df of the free-space check and the roles for the globals run at the same time (issue 16)."""
    import threading

    made = make_backup(tmp_path)
    server = ScriptedServer(COUNTS)
    barrier = threading.Barrier(2, timeout=5)  # one after the other, the first wait would time out

    def roles(line, data):
        barrier.wait()
        return 0, "".join(r + "\n" for r in server.roles), ""

    server.answer(" df -P -k ", lambda line, data: (barrier.wait(), server._df(line, data))[1])
    server.answer("rolname FROM pg_roles", roles)
    server.answer(FUSED, lambda line, data: fused_reply(PLAIN, KEYS))
    done = pr.run_restore(restore_params(tmp_path, made["backup_id"]), server, now=NOW)
    assert done["restored"] is True and done["plan"]["space"]["checked"] is True
    assert len([c for c in server.lines() if "rolname FROM pg_roles" in c]) == 1  # read once, used by the globals step
