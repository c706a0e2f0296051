import datetime
import os
import time

import pytest

from ansible_collections.ner11.ops.plugins.module_utils import catalog as cat
from ansible_collections.ner11.ops.plugins.module_utils import pgrestore_plan as plan
from ansible_collections.ner11.ops.plugins.module_utils import pgrestore_repair as repair
from ansible_collections.ner11.ops.plugins.module_utils import pgrestore_runner as rrun
from ansible_collections.ner11.ops.plugins.module_utils import pgrestore_sql as rsql
from ansible_collections.ner11.ops.plugins.module_utils import pgrestore_state as fpr

T0 = plan.epoch("2026-11-29T02:00:00Z")
BACKUP = {"backup_id": "ner11_db-20261129T020000Z", "sha256": "abc", "created_at": T0}


def state(**kw):
    base = {"exists": True, "user_tables": 5, "applied": None, "newest_write": None}
    base.update(kw)
    return base


# -- decide ----------------------------------------------------------------------------
def test_missing_or_empty_target_is_created_without_confirm():
    assert plan.decide("db", BACKUP, state(exists=False))["action"] == "create"
    assert plan.decide("db", BACKUP, state(user_tables=0))["action"] == "create"


def test_non_empty_target_needs_replace_and_confirm():
    with pytest.raises(plan.Refused, match="if_exists=replace and confirm=db"):
        plan.decide("db", BACKUP, state())
    with pytest.raises(plan.Refused, match="needs confirm=db"):
        plan.decide("db", BACKUP, state(), if_exists="replace", confirm="other")
    assert plan.decide("db", BACKUP, state(), if_exists="skip") == {
        "action": "skip",
        "changed": False,
        "reason": "database db already holds 5 user tables and if_exists=skip",
    }
    assert plan.decide("db", BACKUP, state(), if_exists="replace", confirm="db")["action"] == "replace"


def test_already_applied_backup_changes_nothing_unless_written_since():
    applied = {"backup_id": BACKUP["backup_id"], "sha256": "abc", "scope": "full", "applied_at": T0 + 100}
    done = plan.decide("db", BACKUP, state(applied=applied, changes=[]))
    assert done["action"] == "none" and done["changed"] is False
    # Written after the restore (the fingerprint differs): a replace again, with its guards.
    with pytest.raises(plan.Refused):
        plan.decide("db", BACKUP, state(applied=applied, changes=["public.t: 7 rows, 8 after the restore"]))
    again = plan.decide("db", BACKUP, state(applied=applied, changes=["public.t: 7 rows"]), if_exists="replace", confirm="db")
    assert again["action"] == "replace" and "public.t: 7 rows" in again["reason"]
    # No fingerprint known: treated as changed.
    assert plan.decide("db", BACKUP, state(applied=applied), if_exists="replace", confirm="db")["action"] == "replace"
    # force always restores.
    forced = plan.decide("db", BACKUP, state(applied=applied, changes=[]), if_exists="replace", confirm="db", force=True)
    assert forced["action"] == "replace" and "(forced)" in forced["reason"]
    # Same id, other content: not the applied one.
    other = dict(applied, sha256="zzz")
    assert plan.decide("db", BACKUP, state(applied=other, changes=[]), if_exists="replace", confirm="db")["action"] == "replace"


def _fp(**rels):
    base = {"public.t": ["r", "1", "1", "700", "8/0"], "public.t_id_seq": ["S", "2", "2", "700", "8/true"]}
    base.update(rels)
    return {"v": fpr.FINGERPRINT_VERSION, "h": 710, "next": 711, "db_oid": "5", "rels": base}


def test_fingerprint_diff_names_every_kind_of_write():
    rec = _fp()
    assert fpr.fingerprint_diff(rec, _fp()) == []
    assert fpr.fingerprint_diff(rec, _fp(**{"public.t": ["r", "1", "1", "700", "7/0"]})) == [
        "public.t: 7 rows now, 8 at the restore"
    ]
    assert fpr.fingerprint_diff(rec, _fp(**{"public.t": ["r", "1", "1", "700", "8/1"]})) == [
        "public.t: rows inserted or updated since the restore"
    ]
    assert "public.t was rewritten or truncated" in fpr.fingerprint_diff(rec, _fp(**{"public.t": ["r", "1", "9", "712", "8/8"]}))
    assert fpr.fingerprint_diff(rec, _fp(**{"public.t": ["r", "1", "1", "720", "8/0"]})) == [
        "public.t: its definition or privileges changed"
    ]
    assert fpr.fingerprint_diff(rec, _fp(**{"public.t_id_seq": ["S", "2", "2", "700", "9/true"]})) == [
        "public.t_id_seq: sequence moved from 8/true to 9/true"
    ]
    assert fpr.fingerprint_diff(rec, _fp(**{"public.new": ["r", "3", "3", "720", "0/0"]})) == ["public.new was created"]
    gone = _fp()
    del gone["rels"]["public.t"]
    assert fpr.fingerprint_diff(rec, gone) == ["public.t was dropped"]
    assert fpr.fingerprint_diff(rec, dict(_fp(), db_oid="6")) == ["the database was dropped and created again"]
    # Cannot be trusted: treated as changed.
    assert fpr.fingerprint_diff(rec, dict(_fp(), next=710 + 2**31)) != []
    assert fpr.fingerprint_diff(None, _fp()) == ["no state fingerprint was taken at the restore"]
    assert fpr.fingerprint_diff(rec, None) == ["the state fingerprint could not be read now"]
    assert fpr.fingerprint_diff(dict(rec, v=0), _fp()) != []


def test_fingerprint_sql_scopes_and_horizon():
    full = fpr.fingerprint_sql()
    assert "txid_snapshot_xmin(txid_current_snapshot())" in full and "'ner11_ops'" in full
    fixed = fpr.fingerprint_sql(1234, ["s.t"])
    assert "1234::bigint" in fixed and '\'"s"."t"\'' in fixed and "pg_depend" in fixed
    assert fpr.parse_fingerprint("not json") is None and fpr.parse_fingerprint('{"v": 1}') == {"v": 1}


def test_fingerprint_sql_counts_newer_rows_with_age_once_per_row():
    sql = fpr.fingerprint_sql(1234)
    assert "age((h % 4294967296)::text::xid) AS a" in sql and "hz.a::bigint - 2147483647, hz.a" in sql
    assert "age(xmin) BETWEEN %s AND %s" in sql and "xmin::text::bigint" not in sql


def test_the_age_test_equals_the_circular_xid_comparison():
    """The per-row test of the fingerprint is the circular one it replaced (issue 16), for every normal xid."""
    import random

    space, half = 2**32, 2**31
    rng = random.Random(16)
    cases = []
    for _attempt in range(20000):
        now = rng.randrange(3, space)
        horizon = (now - rng.randrange(0, half)) % space  # at most 2^31 - 1 back (else: "too many transactions")
        xmin = rng.randrange(3, space)
        cases.append((xmin, horizon, now))
    for now in (3, 1000, half, space - 1):  # the edges: at and around the horizon, across the wrap
        for horizon in {(now - d) % space for d in (0, 1, half - 1)}:
            for d in (0, 1, -1, half - 1, half, -half, half + 1):
                cases.append(((horizon + d) % space, horizon, now))
    checked = 0
    for xmin, horizon, now in cases:
        if min(xmin, horizon, now) < 3:
            continue  # not normal xids
        checked += 1
        assert fpr.newer_than_horizon(xmin, horizon, now) == (((xmin - horizon) % space) < half), (xmin, horizon, now)
    assert checked > 20000
    assert fpr.newer_than_horizon(2, 10, 20) is False  # a frozen id is never newer


def test_a_later_applied_backup_refuses_unless_forced():
    applied = {"backup_id": "ner11_db-20261130T020000Z", "sha256": "x", "scope": "full", "applied_at": T0 + 90000}
    applied["source_created_at"] = T0 + 86400
    with pytest.raises(plan.Refused, match="newer restore"):
        plan.decide("db", BACKUP, state(applied=applied), if_exists="replace", confirm="db")
    assert plan.decide("db", BACKUP, state(applied=applied), if_exists="replace", confirm="db", force=True)["action"] == "replace"


def test_tables_need_an_existing_database_and_confirm():
    with pytest.raises(plan.Refused, match="does not exist"):
        plan.decide("db", BACKUP, state(exists=False), tables=["t"], confirm="db")
    with pytest.raises(plan.Refused, match="confirm=db"):
        plan.decide("db", BACKUP, state(), tables=["t"])
    assert plan.decide("db", BACKUP, state(), tables=["t"], confirm="db")["action"] == "tables"
    applied = {"backup_id": BACKUP["backup_id"], "scope": "tables", "tables": ["t"], "applied_at": T0 + 10}
    same = plan.decide("db", BACKUP, state(applied=applied, changes=[], counts_match=True), tables=["t"])
    assert same["action"] == "none"
    forced = plan.decide("db", BACKUP, state(applied=applied, changes=[]), tables=["t"], confirm="db", force=True)
    assert forced["action"] == "tables"
    written = plan.decide("db", BACKUP, state(applied=applied, changes=["public.t: 1 rows"]), tables=["t"], confirm="db")
    assert written["action"] == "tables"
    changed_rows = plan.decide("db", BACKUP, state(applied=applied, counts_match=False), tables=["t"], confirm="db")
    assert changed_rows["action"] == "tables"


def test_newer_tables_compares_the_target_with_the_restored_copy():
    target = {"public.a": T0 + 10, "public.b": T0, "public.c": None, "public.d": T0 + 1}
    backup = {"public.a": T0 + 5, "public.b": T0, "public.c": T0}
    newer = plan.newer_tables(target, backup)
    assert [n["table"] for n in newer] == ["public.a", "public.d"]
    assert newer[1]["backup_newest"] is None


# -- names and SQL ---------------------------------------------------------------------------
def test_names_fit_postgres_identifiers():
    assert plan.temp_db_name("ner11_db") == "ner11_db__ner11_restore"
    now = datetime.datetime(2026, 11, 29, 2, 0, 0, tzinfo=datetime.timezone.utc)
    assert plan.old_db_name("ner11_db", now) == "ner11_db__ner11_old_20261129T020000"
    assert len(plan.old_db_name("x" * 63, now)) == 63
    assert plan.old_db_name("x" * 63, now).startswith(plan.old_prefix("x" * 63))
    with pytest.raises(plan.RestoreError):
        plan.validate_db_name('db"; DROP DATABASE x; --')
    assert plan.split_table("vendor_equipment") == ("public", "vendor_equipment")
    assert plan.qualified("s.t") == '"s"."t"'
    with pytest.raises(plan.RestoreError):
        plan.split_table("t; DROP")


def test_swap_is_one_transaction_and_terminations_are_scoped():
    sql = rsql.swap_sql("db", "db__ner11_restore", "db__ner11_old_1")
    assert sql.startswith("BEGIN;") and sql.rstrip().endswith("COMMIT;")
    assert sql.index('RENAME TO "db__ner11_old_1"') < sql.index('"db__ner11_restore" RENAME TO "db"')
    term = rsql.terminate_sql("it's")
    assert "datname = 'it''s'" in term and "pg_backend_pid()" in term


def test_table_wrapper_truncates_without_cascade_and_checks_in_the_transaction():
    pre, post = rsql.table_restore_wrapper(
        ["vendor_equipment"], {"vendor_equipment": (8, 8)}, {"vendor_equipment": ["created_at"]}, False
    )
    assert 'TRUNCATE ONLY "public"."vendor_equipment";' in pre and "CASCADE" not in pre
    assert "newer than the backup" in post and "NOT BETWEEN 8 AND 8" in post
    pre, post = rsql.table_restore_wrapper(["t"], {}, {"t": ["created_at"]}, True)
    assert "newer" not in post and "ner11_before SELECT" not in pre


def test_log_insert_quotes_values():
    sql = rsql.log_insert_sql("id'1", "s", "tables", ["a_b"], "db", "2026-11-29T02:00:00Z", True)
    assert "'id''1'" in sql and "ARRAY['a_b']" in sql and "CREATE TABLE IF NOT EXISTS ner11_ops.restore_log" in sql
    # The state fingerprint is taken in the same statement (and the same transaction for tables).
    assert "ADD COLUMN IF NOT EXISTS fingerprint" in sql and "txid_snapshot_xmin" in sql


# -- globals ------------------------------------------------------------------------------------
GLOBALS = "\n".join(
    [
        "--",
        "-- Roles",
        "--",
        "",
        "CREATE ROLE postgres;",
        "ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS;",
        'CREATE ROLE "app ""x""";',
        'ALTER ROLE "app ""x""" WITH NOSUPERUSER LOGIN;',
        "CREATE ROLE reporting;",
        "ALTER ROLE reporting WITH NOLOGIN;",
        'GRANT reporting TO "app ""x""" GRANTED BY postgres;',
    ]
)


def test_globals_create_missing_roles_and_never_alter_existing_ones():
    sql, created, kept = plan.filter_globals(GLOBALS, ["postgres", "reporting"], "postgres")
    assert created == ['app "x"'] and kept == ["postgres", "reporting"]
    assert "ALTER ROLE postgres" not in sql and "ALTER ROLE reporting" not in sql
    assert 'CREATE ROLE "app ""x""";' in sql and "GRANT reporting" in sql
    # The connecting role is protected even if the server does not list it.
    sql, created, _kept = plan.filter_globals(GLOBALS, [], "postgres")
    assert "ALTER ROLE postgres" not in sql and "postgres" not in created


# -- catalog: candidates -------------------------------------------------------------------------
def _publish(c, backup_id, created, extra=None, data=b"PGDMP" + b"x" * 64):
    partial = c.begin("database", backup_id)
    with open(os.path.join(partial, "dump.pgdump"), "wb") as fh:
        fh.write(data)
    manifest = {
        "created_at": created,
        "files": cat.hash_tree(partial),
        "source": {"db_name": "ner11_db"},
        "format": "custom",
        "artifact": "dump.pgdump",
        "row_counts": {"vendor_equipment": 8, "threat_intelligence": None},
        "row_counts_after": {"vendor_equipment": 9},
    }
    manifest.update(extra or {})
    return c.publish("database", backup_id, manifest)


def test_latest_skips_partial_single_table_and_damaged_backups(tmp_path):
    c = cat.Catalog(str(tmp_path))
    _publish(c, "ner11_db-20261127T020000Z", "2026-11-27T02:00:00Z")
    _publish(c, "ner11_db-20261128T020000Z", "2026-11-28T02:00:00Z", {"tables": ["vendor_equipment"]})
    _publish(c, "ner11_db-20261129T020000Z", "2026-11-29T02:00:00Z", {"scope": "schema"})
    damaged = _publish(c, "ner11_db-20261130T020000Z", "2026-11-30T02:00:00Z")
    with open(os.path.join(damaged, "dump.pgdump"), "ab") as fh:
        fh.write(b"!")
    os.makedirs(c.partial_path("database", "ner11_db-20261201T020000Z"))
    _catalog, manifest, path, skipped = plan.resolve_backup(str(tmp_path), latest=True, source_db="ner11_db")
    assert manifest["backup_id"] == "ner11_db-20261127T020000Z"
    assert path == c.path("database", "ner11_db-20261127T020000Z")
    reasons = {s["backup_id"]: s["reason"] for s in skipped}
    assert set(reasons) == {"ner11_db-20261128T020000Z", "ner11_db-20261129T020000Z", "ner11_db-20261130T020000Z"}
    assert "fails verification: dump.pgdump: size 70" in reasons["ner11_db-20261130T020000Z"]
    with pytest.raises(plan.RestoreError, match="no verified full backup of database other"):
        plan.resolve_backup(str(tmp_path), latest=True, source_db="other")


def test_named_backup_is_verified_and_path_must_be_a_catalog_entry(tmp_path):
    c = cat.Catalog(str(tmp_path))
    good = _publish(c, "ner11_db-20261127T020000Z", "2026-11-27T02:00:00Z")
    assert plan.resolve_backup(path=good)[1]["backup_id"] == "ner11_db-20261127T020000Z"
    with pytest.raises(plan.RestoreError, match="expected <backup_dir>/database/<backup_id>"):
        plan.resolve_backup(path=str(tmp_path))
    with open(os.path.join(good, "dump.pgdump"), "ab") as fh:
        fh.write(b"!")
    with pytest.raises(plan.RestoreError, match="fails verification"):
        plan.resolve_backup(str(tmp_path), backup_id="ner11_db-20261127T020000Z")
    with pytest.raises(plan.RestoreError, match="invalid backup id"):
        plan.resolve_backup(str(tmp_path), backup_id="../x")


def test_dump_info_and_expected_counts(tmp_path):
    c = cat.Catalog(str(tmp_path))
    path = _publish(c, "ner11_db-20261127T020000Z", "2026-11-27T02:00:00Z")
    manifest = c.read_manifest("database", "ner11_db-20261127T020000Z")
    info = plan.dump_info(manifest, path)
    assert info["format"] == "custom" and info["path"].endswith("dump.pgdump") and info["globals_path"] is None
    expected = plan.expected_counts(manifest)
    assert expected == {"vendor_equipment": (8, 9)}
    assert plan.count_mismatches(expected, {"vendor_equipment": 9}) == []
    assert plan.count_mismatches(expected, {"vendor_equipment": 7}) == ["vendor_equipment: 7 rows, backup has 8-9"]
    assert plan.expected_counts(manifest, ["threat_intelligence"]) == {}
    with pytest.raises(plan.RestoreError, match="outside itself"):
        plan.dump_info(dict(manifest, artifact="../x"), path)
    with pytest.raises(plan.RestoreError, match="format"):
        plan.dump_info(dict(manifest, format="tar"), path)
    plain = plan.dump_info(dict(manifest, format="plain", artifact="dump.pgdump", compression="gzip:6"), path)
    assert plain["decompress"] == "gzip"


# -- interrupted runs: leftovers and repair ------------------------------------------------------
def test_leftovers_are_classified_and_only_marked_ones_dropped():
    rows = [
        ("db", "f", ""),
        ("db__ner11_restore", "t", repair.TEMP_COMMENT),
        ("db__ner11_old_20261129T020000", "f", repair.old_comment("b1", False)),
        ("db__ner11_old_20261128T020000", "t", repair.old_comment("b0", True)),
        ("db__ner11_old_20261127T020000", "t", "someone else's"),
    ]
    found = repair.classify_leftovers("db", rows)
    assert found["target_blocked"] is True and found["temp"]["ours"] is True
    assert [o["drop"] for o in found["old"]] == [False, False, True]
    steps = repair.repair_plan("db", found, ["/tmp/ner11-restore-db-abc"], [{"pid": 7, "tool": "pg_restore"}])
    assert steps[0] == "stop pg_restore still running in the database container (pid 7)"
    assert any("allow connections to db" in x for x in steps) and any("db__ner11_restore" in x for x in steps)
    assert any("db__ner11_old_20261129T020000" in x for x in steps)
    assert not any("20261128" in x or "20261127" in x for x in steps)
    report = repair.leftover_report("db", found)
    assert [r["database"] for r in report] == ["db__ner11_old_20261127T020000", "db__ner11_old_20261128T020000"]
    assert "never dropped automatically" in report[0]["state"] and "DROP DATABASE" in report[0]["fix"]
    # A database with our temporary name that we did not create: refused, not dropped.
    foreign = repair.classify_leftovers("db", [("db__ner11_restore", "t", "")])
    with pytest.raises(plan.Refused, match="not created by ner11.ops"):
        repair.repair_plan("db", foreign)
    assert repair.repair_plan("db", repair.classify_leftovers("db", [("db", "t", "")])) == []


def test_swap_marks_the_replaced_database_in_the_same_transaction():
    sql = rsql.swap_sql("db", "db__ner11_restore", "db__ner11_old_1", repair.old_comment("b1", False))
    assert sql.index("RENAME") < sql.index('COMMENT ON DATABASE "db__ner11_old_1"') < sql.index("COMMIT")
    assert "drop pending" in sql and 'COMMENT ON DATABASE "db" IS NULL' in sql
    assert "ner11_old" in repair.leftovers_sql("db") and "left(datname, 14) = 'db__ner11_old_'" in repair.leftovers_sql("db")


def test_pause_hook_is_inert_unless_named(tmp_path):
    assert repair.test_pause("copy", {}) is False
    env = {"NER11_OPS_TEST_PAUSE_AT": "drop", "NER11_OPS_TEST_PAUSE_DIR": str(tmp_path), "NER11_OPS_TEST_PAUSE_SECONDS": "0"}
    assert repair.test_pause("copy", env) is False
    assert repair.test_pause("drop", env) is True and (tmp_path / "drop").read_text().strip().isdigit()


def test_scratch_databases_refuse_system_source_and_reserved_names():
    for name in ("postgres", "template0", "template1"):
        assert "system database" in repair.scratch_refusal(name, "ner11_db")
    assert "backed-up database itself" in repair.scratch_refusal("ner11_db", "ner11_db")
    assert "keeps for itself" in repair.scratch_refusal("x__ner11_restore")
    assert "keeps for itself" in repair.scratch_refusal("x__ner11_old_1")
    assert repair.scratch_refusal("ner11_test_restore", "ner11_db") is None
    assert repair.created_comment("b1").startswith(repair.MARK) and repair.SCRATCH_COMMENT.startswith(repair.MARK)


class _FakeTarget:
    """Just enough of pgexec.PgTarget for the space pre-flight (a named stand-in for `df` in a container)."""

    container, docker, user = "pg", "docker", "postgres"

    def scalar(self, sql, db="postgres"):
        assert sql == "SHOW data_directory;"
        return "/var/lib/postgresql/data"


def _df_runner(rows):
    def run(cmd, **_kw):
        assert cmd[:5] == ["docker", "exec", "pg", "df", "-P"]
        lines = ["Filesystem 1024-blocks Used Available Capacity Mounted on"]
        lines += ["%s 100000 0 %d 1%% %s" % (fs, free_kb, mnt) for fs, free_kb, mnt in rows[: len(cmd) - 6]]
        return 0, "\n".join(lines) + "\n", ""

    return run


def test_space_check_adds_the_dump_copy_when_it_shares_the_filesystem():
    manifest = {"backup_id": "b1", "db_size_bytes": 40 * 1048576, "files": [{"path": "dump/toc.dat", "size": 30 * 1048576}]}
    info = {"artifact": "dump"}
    fits = rrun.Restorer(_FakeTarget(), _df_runner([("overlay", 200 * 1024, "/"), ("overlay", 200 * 1024, "/")]), db="db")
    out = fits.space_check(manifest, info, staged=True)
    assert out["checked"] and "error" not in out
    assert out["filesystems"][0]["need_bytes"] == int(40 * 1048576 * 1.1) + 30 * 1048576  # one filesystem: summed
    tight = rrun.Restorer(_FakeTarget(), _df_runner([("overlay", 60 * 1024, "/"), ("overlay", 60 * 1024, "/")]), db="db")
    err = tight.space_check(manifest, info, staged=True)["error"]
    assert "needs 74.0 MB" in err and "has 60.0 MB free" in err and "jobs=1" in err and "nothing was changed" in err
    # Streamed (no copy): only the data directory counts.
    assert "error" not in tight.space_check(manifest, info, staged=False)
    # Unknown database size: nothing to compare, never a refusal.
    assert "error" not in tight.space_check({"backup_id": "b0"}, info, staged=False)


def test_space_check_reads_the_size_where_pg_backup_records_it():
    """pg_backup writes db_size_bytes under ``source``: the restored copy's space is checked from there too."""
    manifest = {"backup_id": "b1", "source": {"db_name": "db", "db_size_bytes": 80 * 1048576}, "files": []}
    tight = rrun.Restorer(_FakeTarget(), _df_runner([("overlay", 60 * 1024, "/")]), db="db")
    out = tight.space_check(manifest, {"artifact": "dump.pgdump"}, staged=False)
    assert out["db_size_bytes"] == 80 * 1048576 and "needs 88.0 MB" in out["error"] and "has 60.0 MB free" in out["error"]
    assert plan.backup_db_size(manifest) == 80 * 1048576 and plan.backup_db_size({}) == 0
    assert plan.backup_db_size({"db_size_bytes": 7, "source": {"db_size_bytes": 123}}) == 7
    assert plan.backup_db_size({"db_size_bytes": "x", "source": None}) == 0


def test_concurrently_runs_the_calls_at_once_and_raises_the_first_error():
    """The leftovers check's three reads run at once (issue 16): a barrier only three parties pass proves it."""
    import threading

    barrier = threading.Barrier(3, timeout=10)
    assert rrun.concurrently(*[lambda i=i: (barrier.wait(), i)[1] for i in range(3)]) == [0, 1, 2]

    def boom():
        raise rrun.RestoreError("scan failed")

    with pytest.raises(rrun.RestoreError, match="scan failed"):
        rrun.concurrently(lambda: 1, boom)

    # Two fail: the first in the order given is raised, even when the later one failed first.
    def late():
        time.sleep(0.3)
        raise rrun.RestoreError("first in order")

    with pytest.raises(rrun.RestoreError, match="first in order"):
        rrun.concurrently(late, boom)
