import pytest

from ansible_collections.ner11.ops.plugins.module_utils import pgbackup as pb
from ansible_collections.ner11.ops.plugins.module_utils import pgbackup_formats as formats
from ansible_collections.ner11.ops.plugins.module_utils import pgbackup_verify as ver
from ansible_collections.ner11.ops.plugins.module_utils import pgexec


@pytest.mark.parametrize(
    "fmt,value,expected",
    [
        ("directory", "gzip:1", ("gzip", 1)),
        ("custom", "5", ("gzip", 5)),
        ("custom", "none", ("none", 0)),
        ("plain", "0", ("none", 0)),
        ("plain", "zstd:3", ("zstd", 3)),
        ("plain", "zstd", ("zstd", 3)),
        ("directory", "zstd:1", ("zstd", 1)),
    ],
)
def test_parse_compression(fmt, value, expected):
    assert formats.parse_compression(fmt, value) == expected


@pytest.mark.parametrize(
    "fmt,value,needle",
    [
        ("custom", "zstd:3", "zstd is available for format=directory"),
        ("plain", "gzip:12", "gzip level must be 1-9"),
        ("plain", "zstd:30", "zstd level must be 1-19"),
        ("plain", "lz4", "unknown compression"),
    ],
)
def test_parse_compression_errors_name_the_fix(fmt, value, needle):
    with pytest.raises(formats.PgBackupError, match=needle):
        formats.parse_compression(fmt, value)


def test_artifacts_and_format_choice():
    assert formats.artifact_name("directory", "gzip") == "dump"
    assert formats.artifact_name("plain", "zstd") == "dump.sql.zst"
    assert formats.choose_format(None, True) == "directory"
    assert formats.choose_format(None, False) == "custom"
    assert formats.choose_format("plain", True) == "plain"


@pytest.mark.parametrize(
    "params,needle",
    [
        ({"format": "tar"}, "unknown format"),
        ({"backup_dir": "rel"}, "absolute path"),
        ({"jobs": 0}, "jobs must be between 1 and 64"),
        ({"db_name": "x; drop"}, "db_name 'x; drop' is not a valid PostgreSQL identifier"),
        ({"canary_tables": ["a b"]}, "canary table"),
        ({"space_factor": -1.0}, "space_factor"),
        ({"lock_timeout": -1}, "lock_timeout"),
    ],
)
def test_validate_params(params, needle):
    base = {"backup_dir": "/b", "db_name": "ner11_db", "jobs": 2}
    base.update(params)
    with pytest.raises(formats.PgBackupError, match=needle):
        pb.validate_params(base)


def test_validate_params_accepts_dashed_names_and_qualified_canaries():
    pb.validate_params({"backup_dir": "/b", "db_name": "my-db", "jobs": 2, "canary_tables": ["public.t", "t"]})


def test_count_toc_ignores_comments():
    listing = ";\n; Archive created at\n;     dbname: x\n215; 1259 16385 TABLE public t postgres\n3356; 0 16385 TABLE DATA public t postgres\n\n"
    assert formats.count_toc(listing) == 2


def test_tree_sha256_matches_sha256sum_lines():
    import hashlib

    files = [{"path": "a", "sha256": "00" * 32, "size": 1}, {"path": "dump/toc.dat", "sha256": "11" * 32, "size": 2}]
    text = "%s  a\n%s  dump/toc.dat\n" % ("00" * 32, "11" * 32)
    assert formats.tree_sha256(files) == hashlib.sha256(text.encode()).hexdigest()


def test_restore_commands_use_stock_tools_and_on_error_stop():
    d = formats.restore_commands("directory", "gzip", "dump", 2, True)["commands"]
    assert d == [
        "psql -X -d postgres -f globals.sql",
        "createdb -T template0 {target_db}",
        "pg_restore --exit-on-error -j 2 -d {target_db} dump",
    ]
    p = formats.restore_commands("plain", "gzip", "dump.sql.gz", 1, False)["commands"]
    assert p[-1] == "gzip -dc dump.sql.gz | psql -X -v ON_ERROR_STOP=1 --single-transaction -d {target_db}"
    n = formats.restore_commands("plain", "none", "dump.sql", 1, False)["commands"]
    assert "ON_ERROR_STOP=1" in n[-1] and n[-1].endswith("-f dump.sql")


def test_space_error_names_both_numbers_and_the_fix():
    assert formats.space_error(100, 1.0, 100, "/b") is None
    msg = formats.space_error(1000, 1.5, 10, "/b/database")
    assert "10 bytes free" in msg and "1500 bytes" in msg and "backup_prune" in msg and "G69" not in msg


def test_row_counts_and_match():
    sql = pgexec.canary_count_sql(["vendor_equipment", "s.t", "my-t"])
    assert "to_regclass('\"vendor_equipment\"')" in sql and '"s"."t"' in sql and "UNION ALL" in sql
    assert "to_regclass('\"my-t\"')" in sql and not sql.endswith(";")
    assert pgexec.canary_count_sql([]).endswith("WHERE false")
    assert pgexec.parse_canary_counts([["a", "3"], ["b", ""]]) == {"a": 3, "b": None}
    with pytest.raises(ValueError, match="canary table 'a;b'"):
        pgexec.canary_count_sql(["a;b"])
    assert formats.counts_match({"a": 3, "b": None}, None, {"a": 3}) == []
    assert formats.counts_match({"a": 3}, None, {"a": 2}) == ["a: restored 2 rows, manifest says 3"]
    # writes during the dump: anything between the before and after counts is right
    assert formats.counts_match({"a": 3}, {"a": 5}, {"a": 4}) == []
    assert formats.counts_match({"a": 3}, {"a": 5}, {"a": 6}) == ["a: restored 6 rows, manifest says 3-5"]


def test_instance_identity():
    assert pb.instance_of({"container": "c1"}) == "container:c1"
    assert pb.instance_of({"login_host": "db", "login_port": 5433}) == "host:db:5433"


def test_test_stream_gzip(tmp_path):
    import gzip

    good = tmp_path / "a.sql.gz"
    with gzip.open(good, "wb") as fh:
        fh.write(b"SELECT 1;\n" * 1000)
    formats.test_stream(str(good), "gzip")
    bad = tmp_path / "b.sql.gz"
    bad.write_bytes(good.read_bytes()[:-20])
    with pytest.raises(formats.PgBackupError, match="b.sql.gz is not a valid gzip stream"):
        formats.test_stream(str(bad), "gzip")


# -- RPO per identity, judged on freshness for artifacts (issue 8) ------------------------------
def _rec(backup_id, kind, created, host="h1", obj="models", state="good", fresh=None, period="daily", digest="d1"):
    source = {"host": host, "instance": "volume:%s" % obj, "volume": obj} if kind != "database" else {
        "host": host, "instance": "container:pg", "db_name": obj}  # fmt: skip
    manifest = {"backup_id": backup_id, "kind": kind, "created_at": created, "period": period, "source": source,
                "content_sha256": digest}  # fmt: skip
    from ansible_collections.ner11.ops.plugins.module_utils import catalog

    return {"backup_id": backup_id, "manifest": manifest, "identity": catalog.source_identity(manifest), "state": state,
            "pins": [], "verification": None, "freshness": fresh}  # fmt: skip


def test_rpo_of_unchanged_artifacts_counts_from_the_last_confirmation_and_database_stays_strict():
    import datetime

    now = datetime.datetime(2026, 12, 5, 3, 0, tzinfo=datetime.timezone.utc)
    fresh = {"confirmed_at": "2026-12-05T02:00:00Z", "content_sha256": "d1", "period": "daily"}
    records = [
        _rec("m1", "volume", "2026-12-01T02:00:00Z", fresh=fresh),  # unchanged for 4 days, confirmed today
        _rec(
            "v1",
            "volume",
            "2026-12-01T02:00:00Z",
            obj="other",
            fresh={"confirmed_at": "2026-12-05T02:00:00Z", "content_sha256": "stale-digest"},
        ),  # fmt: skip
    ]
    rows = ver.identity_table(records, now)
    by_obj = {r["object"]: r for r in rows}
    assert by_obj["models"]["current_as_of"] == "2026-12-05T02:00:00Z" and by_obj["models"]["age_hours"] == 1.0
    assert ver.rpo_errors(by_obj["models"], 26) == []
    late = ver.rpo_errors(by_obj["other"], 26)  # a confirmation of other content does not count
    assert len(late) == 1 and "was made 97.0 h ago, more than max_age_hours 26" in late[0] and "G55" not in late[0]
    db = ver.identity_table([_rec("d1", "database", "2026-12-01T02:00:00Z", obj="ner11_db", fresh=fresh)], now)
    assert db[0]["confirmed_at"] is None and ver.rpo_errors(db[0], 26)


def test_rpo_is_per_identity_skips_manual_only_and_names_a_source_without_good_backup():
    import datetime

    now = datetime.datetime(2026, 12, 5, 3, 0, tzinfo=datetime.timezone.utc)
    records = [
        _rec("a", "database", "2026-12-05T02:00:00Z", host="h1", obj="ner11_db"),
        _rec("b", "database", "2026-12-01T02:00:00Z", host="h2", obj="ner11_db"),
        _rec("c", "database", "2026-11-01T02:00:00Z", host="h1", obj="scratch", period="manual"),
        _rec("d", "database", "2026-12-05T02:00:00Z", host="h1", obj="audit", state="failed"),
    ]
    rows = {(r["host"], r["object"]): r for r in ver.identity_table(records, now)}
    assert ver.rpo_errors(rows[("h1", "ner11_db")], 26) == []
    assert ver.rpo_errors(rows[("h2", "ner11_db")], 26)  # host b is late, host a does not answer for it
    assert ver.rpo_errors(rows[("h1", "scratch")], 26) == []  # manual only: no schedule to miss
    assert "no good database backup of audit on host h1" in ver.rpo_errors(rows[("h1", "audit")], 26)[0]
    only_h1 = ver.identity_table(records, now, host="h1")
    assert {r["host"] for r in only_h1} == {"h1"}


OLD_SERVER_ERR = (
    'pg_restore: error: could not execute query: ERROR:  unrecognized configuration parameter "transaction_timeout"\n'
    "Command was: SET transaction_timeout = 0;\n"
)


def test_a_lenient_restore_accepts_only_the_known_old_server_error():
    two_workers = OLD_SERVER_ERR * 2 + "pg_restore: warning: errors ignored on restore: 2\n"
    assert formats.unexpected_restore_errors(two_workers) == []
    assert formats.judge_lenient_restore(1, two_workers) is None
    assert formats.judge_lenient_restore(0, "") is None
    other = 'pg_restore: error: could not execute query: ERROR:  relation "t" already exists\nCommand was: CREATE TABLE t ();\n'
    problem = formats.judge_lenient_restore(1, OLD_SERVER_ERR + other + "pg_restore: warning: errors ignored on restore: 2\n")
    assert problem and 'relation "t" already exists' in problem
    # the known message for another statement is not the known error
    odd = OLD_SERVER_ERR.replace("SET transaction_timeout = 0;", "SET transaction_timeout = 5;")
    assert formats.judge_lenient_restore(1, odd)
    # rc 1 without the known error, or a killed pg_restore, fails
    assert formats.judge_lenient_restore(1, "pg_restore: warning: something\n")
    assert "rc=137" in formats.judge_lenient_restore(137, OLD_SERVER_ERR)


def test_zstd_directory_restore_commands_name_the_tools():
    out = formats.restore_commands("directory", "zstd", "dump", 2, True, "pg_dump (PostgreSQL) 17.6")
    assert any(c.startswith("pg_restore -j 2 -d {target_db} dump 2> restore.log") for c in out["commands"])
    assert any("PostgreSQL 16 or later" in n and "17.6" in n and "ner11/pgclient:ref" in n for n in out["notes"])
    gzip = formats.restore_commands("directory", "gzip", "dump", 2, True)
    assert "pg_restore --exit-on-error -j 2 -d {target_db} dump" in gzip["commands"]


def test_dumped_by_reads_the_version_from_the_listing():
    listing = ";\n; Archive created at 2026-12-02\n;     Dumped by pg_dump version: 17.6 (Debian 17.6-1)\n"
    assert pb.dumped_by(listing) == "pg_dump (PostgreSQL) 17.6 (Debian 17.6-1)"
    assert pb.dumped_by("") is None
