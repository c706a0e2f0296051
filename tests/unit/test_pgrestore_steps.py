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
from ansible_collections.ner11.ops.plugins.module_utils import pgrestore_repair as repair
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


PREFLIGHT = "'ner11:datadir'"
SCAN = "/proc/[0-9]*"
SIDECARS = "ps -aq --filter"
# The reads the first round replaced (issue 16): each was a round trip of its own before the restore.
DF = "pg1 df -P -k "  # docker exec pg1 df ... (the scan's own df is inside its script)
SEPARATE_READS = ("SELECT 1 FROM pg_database WHERE datname", "SHOW data_directory", DF, "rolname FROM pg_roles ORDER BY 1")


def before_restore(server):
    """The commands before pg_restore restores (``--exit-on-error``), in the order they ran."""
    lines = server.lines()
    first = next(i for i, c in enumerate(lines) if "--exit-on-error" in c)
    return lines[:first]


def test_everything_before_the_restore_is_read_in_one_round(tmp_path):
    """One psql call, the container scan and the sidecar lookup at once; then only the changes (issue 16).

    Before: pg_restore --list, [leftovers psql | scan | sidecars], db_exists, [SHOW data_directory |
    roles], df, globals, create: 7 sequential round trips. Now: --list, the round, globals, create.
    """
    import threading

    made = make_backup(tmp_path)
    server = ScriptedServer(COUNTS)
    barrier = threading.Barrier(3, timeout=5)  # one after the other, the first wait would time out
    server.answer(PREFLIGHT, lambda line, data: (barrier.wait(), server._preflight(line, data))[1])
    server.answer(SCAN, lambda line, data: (barrier.wait(), server._scan(line, data))[1])
    server.answer(SIDECARS, lambda line, data: (barrier.wait(), (0, "", ""))[1])
    server.answer(FUSED, lambda line, data: fused_reply(PLAIN, KEYS))
    done = pr.run_restore(restore_params(tmp_path, made["backup_id"]), server, now=NOW)
    assert done["restored"] is True and done["operation"] == "create"
    space = done["plan"]["space"]
    assert space["checked"] is True and space["filesystems"][0]["path"] == "/var/lib/postgresql/data"
    assert space["filesystems"][0]["free_bytes"] == server.free_kb * 1024
    assert done["globals"]["created"] == ["app"]  # the roles came from the same psql call
    lines = before_restore(server)
    assert len(lines) == 6, lines
    assert "--list" in lines[0]
    assert sorted(PREFLIGHT in c or SCAN in c or SIDECARS in c for c in lines[1:4]) == [True] * 3
    assert "CREATE ROLE app" in lines[4] and 'CREATE DATABASE "my-db__ner11_restore"' in lines[5]
    assert not any(read in c for c in server.lines() for read in SEPARATE_READS), server.lines()


def test_an_existing_target_is_known_from_the_first_round(tmp_path):
    made = make_backup(tmp_path)
    server = ScriptedServer(COUNTS, databases={"my-db"})
    server.answer("FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace\nWHERE c.relkind IN", (0, "public\x1ft\n", ""))
    with pytest.raises(pr.Refused, match="if_exists=replace and confirm=my-db"):
        pr.run_restore(restore_params(tmp_path, made["backup_id"]), server, now=NOW)
    assert not any("SELECT 1 FROM pg_database" in c for c in server.lines())
    assert not any(word in c for c in server.lines() for word in CHANGES), server.lines()
    # no such database: created, never asked a second time
    server = ScriptedServer(COUNTS, databases={"other"})
    server.answer(FUSED, lambda line, data: fused_reply(PLAIN, KEYS))
    assert pr.run_restore(restore_params(tmp_path, made["backup_id"]), server, now=NOW)["operation"] == "create"
    assert not any("SELECT 1 FROM pg_database" in c for c in server.lines())


def test_a_login_that_may_not_read_the_data_directory_gets_not_checked(tmp_path):
    """pg_settings hides data_directory without pg_read_all_settings: the row is empty, never an error."""
    made = make_backup(tmp_path)
    server = ScriptedServer(COUNTS)
    server.data_directory = ""
    server.answer(FUSED, lambda line, data: fused_reply(PLAIN, KEYS))
    params = restore_params(tmp_path, made["backup_id"], login_user="app")
    done = pr.run_restore(params, server, now=NOW)
    assert done["restored"] is True
    space = done["plan"]["space"]
    assert space["checked"] is False
    assert space["note"] == "not checked: app may not read data_directory (grant it pg_read_all_settings)"
    assert not any(read in c for c in server.lines() for read in SEPARATE_READS[:3]), server.lines()


def test_too_little_free_space_in_the_scan_refuses_before_anything_changes(tmp_path):
    made = make_backup(tmp_path)
    for check_mode in (True, False):
        server = ScriptedServer(COUNTS, free_kb=1)
        with pytest.raises(pr.Refused, match="not enough free space to restore backup %s into my-db: /var/lib/postgresql/data"
                           % made["backup_id"]) as info:  # fmt: skip
            pr.run_restore(restore_params(tmp_path, made["backup_id"]), server, check_mode=check_mode, now=NOW)
        assert "nothing was changed" in str(info.value)
        assert not any(word in c for c in server.lines() for word in CHANGES), server.lines()
        assert not any(DF in c for c in server.lines())  # the scan's df row decided


def test_a_data_directory_the_scan_did_not_df_is_measured_on_its_own(tmp_path):
    """$PGDATA of the image is not the server's data_directory: df runs for the real path, as before."""
    made = make_backup(tmp_path)
    server = ScriptedServer(COUNTS, free_kb=1)
    server.data_directory = "/srv/pgdata"
    with pytest.raises(pr.Refused, match="not enough free space .*: /srv/pgdata in container pg1"):
        pr.run_restore(restore_params(tmp_path, made["backup_id"]), server, now=NOW)
    assert len([c for c in server.lines() if DF + "/srv/pgdata" in c]) == 1
    # no $PGDATA in the container: the same
    server = ScriptedServer(COUNTS)
    server.pgdata = None
    server.answer(FUSED, lambda line, data: fused_reply(PLAIN, KEYS))
    done = pr.run_restore(restore_params(tmp_path, made["backup_id"]), server, now=NOW)
    assert done["plan"]["space"]["checked"] is True
    assert len([c for c in server.lines() if DF + "/var/lib/postgresql/data" in c]) == 1


def test_after_a_repair_the_free_space_and_sessions_are_read_again(tmp_path):
    """A repair drops databases (space is freed): what the first round read is not used after it."""
    made = make_backup(tmp_path)
    server = ScriptedServer(COUNTS, free_kb=1)
    old = "my-db__ner11_old_20261128T010000"

    def preflight(line, data):
        rc, out, err = server._preflight(line, data)
        return rc, "%s\x1ff\x1f%s\n" % (old, repair.old_comment("b0", False)) + out, err

    server.answer(PREFLIGHT, preflight)
    # the repair freed space: the scan saw 1 kB free, the df after the repair sees 10 GB
    server.answer(DF, (0, "Filesystem 1024-blocks Used Available Capacity Mounted on\noverlay 100000000 0 10485760 1% /\n", ""))
    server.answer(FUSED, lambda line, data: fused_reply(PLAIN, KEYS))
    done = pr.run_restore(restore_params(tmp_path, made["backup_id"]), server, now=NOW)
    assert done["repaired"] == ["dropped %s (replaced by a completed restore)" % old]
    assert done["restored"] is True and done["plan"]["space"]["checked"] is True  # the fresh df, not the scan's
    lines = server.lines()
    drop = next(i for i, c in enumerate(lines) if 'DROP DATABASE IF EXISTS "%s"' % old in c)
    assert any("SHOW data_directory" in c for c in lines[drop:]) and any(DF in c for c in lines[drop:])
