"""Check mode writes nothing anywhere, and the space pre-flight refuses before touching anything (issue 9).

* check mode of pg_restore (a directory dump with jobs=2, which the apply copies into
  the container) and artifact_restore: the database container's and the api
  container's /tmp, the host temp dirs the modules use, the catalog and the server's
  databases are compared before and after;
* a PostgreSQL container whose data directory and /tmp are small tmpfs mounts:
  pg_restore and artifact_restore refuse with the numbers, and nothing was created.
"""

from __future__ import annotations

import os
import uuid

import pytest
from conftest import docker, run_module, wait_postgres
from test_restore import DB, raw_backup

PG_IMAGE = "ner11/postgres:ref"


def tree(path):
    out = []
    for dirpath, dirnames, filenames in os.walk(path):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            out.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    return sorted(out)


def container_tmp(container):
    return docker(
        "exec", "-u", "0", container, "sh", "-c", "find /tmp -mindepth 1 -exec stat -c '%n %s %Y' {} +", check=False
    ).stdout


def dbs_with_comments(stack):
    return stack.psql(
        "SELECT datname, datallowconn, coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database ORDER BY 1",
        db="postgres",
    )


def test_check_mode_writes_nothing_anywhere(shared_stack, tmp_path):
    stack = shared_stack
    catalog = tmp_path / "catalog"
    backup = raw_backup(stack, str(catalog), fmt="directory")
    models = run_module(
        "ner11.ops.artifact_backup", {"kind": "models", "container": stack.container("api"), "backup_dir": str(catalog)}
    )
    assert not models.get("failed"), models.get("msg")
    private = tmp_path / "tmp"
    for sub in ("tmp", "remote", "local"):
        (private / sub).mkdir(parents=True)
    env = {
        "TMPDIR": str(private / "tmp"),
        "ANSIBLE_REMOTE_TMP": str(private / "remote"),
        "ANSIBLE_LOCAL_TEMP": str(private / "local"),
    }

    def snapshot():
        return {
            "pg_tmp": container_tmp(stack.container("postgres")),
            "api_tmp": container_tmp(stack.container("api")),
            # TMPDIR (what the modules' tempfile calls would use) must not even change its mtime;
            # Ansible's own temp dirs (the module payload) must hold nothing afterwards.
            # Host temp dirs: TMPDIR (the modules' tempfile calls; Ansible unpacks its payload there
            # too, and removes it) and Ansible's own temp dirs: nothing new afterwards.
            "host_tmp": [(p, size) for p, size, _mtime in tree(str(private))],
            "catalog": tree(str(catalog)),
            "databases": dbs_with_comments(stack),
        }

    before = snapshot()
    pg = {"backup_dir": str(catalog), "backup_id": backup, "container": stack.container("postgres"), "jobs": 2}
    replace = run_module(
        "ner11.ops.pg_restore", dict(pg, db_name=DB, if_exists="replace", confirm=DB, force=True), check=True, env=env
    )
    assert not replace.get("failed"), replace.get("msg")
    assert replace["changed"] is True and replace["plan"]["action"] == "replace"
    assert replace["plan"]["copy_dump_into_container"] is True and replace["plan"]["space"]["checked"] is True
    assert not any(c.startswith("docker cp") or " cp " in c for c in replace["executed_commands"]), replace["executed_commands"]
    create = run_module("ner11.ops.pg_restore", dict(pg, db_name="it_check_only"), check=True, env=env)
    assert not create.get("failed"), create.get("msg")
    assert create["changed"] is True and create["plan"]["action"] == "create"
    # The free space came from the first round (issue 16): the container scan's df of $PGDATA, which is
    # the server's data_directory here, read in the same psql call as the leftovers; no df of its own.
    space = create["plan"]["space"]
    assert space["checked"] is True and space["filesystems"][0]["path"] == "/var/lib/postgresql/data", space
    assert not any("df -P -k /var/lib/postgresql/data" in c for c in create["executed_commands"]), create["executed_commands"]
    assert not any("SHOW data_directory" in c for c in create["executed_commands"])
    # A login without pg_read_all_settings: pg_settings hides data_directory, so the space is "not checked" (no error).
    stack.psql("DROP ROLE IF EXISTS it_plain_login; CREATE ROLE it_plain_login LOGIN", db="postgres")
    try:
        plain = run_module(
            "ner11.ops.pg_restore", dict(pg, db_name="it_check_only", login_user="it_plain_login"), check=True, env=env
        )
    finally:
        stack.psql("DROP ROLE IF EXISTS it_plain_login", db="postgres")
    assert not plain.get("failed"), plain.get("msg")
    assert plain["plan"]["action"] == "create" and plain["plan"]["space"]["checked"] is False
    assert plain["plan"]["space"]["note"] == (
        "not checked: it_plain_login may not read data_directory (grant it pg_read_all_settings)"
    )
    art = run_module(
        "ner11.ops.artifact_restore",
        {
            "kind": "models",
            "backup_dir": str(catalog),
            "backup_id": models["backup_id"],
            "container": stack.container("api"),
            "dest": "/tmp/it-models-%s" % uuid.uuid4().hex[:6],
        },
        check=True,
        env=env,
    )
    assert not art.get("failed"), art.get("msg")
    assert art["changed"] is True and art["plan"]["write"] and art["plan"]["space"]["checked"] is True
    after = snapshot()
    for key in before:
        assert after[key] == before[key], key


class SmallServer:
    """A PostgreSQL container with a small tmpfs data directory and /tmp (not a whole stack)."""

    def __init__(self):
        self.name = "itsp%s-postgres" % uuid.uuid4().hex[:8]

    def container(self, _service):
        return self.name

    def psql(self, sql, db=None):
        return docker(
            "exec", "-u", "postgres", self.name, "psql", "-X", "-v", "ON_ERROR_STOP=1", "-At", "-d", db or DB, "-c", sql
        ).stdout.strip()  # fmt: skip


@pytest.fixture(scope="module")
def small_server():
    server = SmallServer()
    docker(
        "run", "-d", "--name", server.name, "--label", "io.ner11.test=1", "-e", "POSTGRES_PASSWORD=x", "-e", "POSTGRES_DB=" + DB,
        "--tmpfs", "/var/lib/postgresql/data:rw,size=128m,mode=0700", "--tmpfs", "/tmp:rw,size=2m,mode=1777", PG_IMAGE,
    )  # fmt: skip
    try:
        wait_postgres(server.name, DB)
        yield server
    finally:
        docker("rm", "-f", "-v", server.name, check=False)


def test_space_preflight_refuses_with_the_numbers_and_touches_nothing(small_server, tmp_path):
    server = small_server
    server.psql(
        "CREATE TABLE it_fill AS SELECT g AS id, md5(g::text) || md5((g + 1)::text) AS v FROM generate_series(1, 100000) g"
    )
    size = int(server.psql("SELECT pg_database_size(current_database())"))
    rows = int(server.psql("SELECT count(*) FROM it_fill"))
    backup = raw_backup(
        server,
        str(tmp_path),
        fmt="custom",
        row_counts={"it_fill": rows},
        extra={"canary_tables": ["it_fill"], "db_size_bytes": size},
    )
    # Fill the data directory's filesystem up to 8 MB free: less than the database needs.
    server.psql("CHECKPOINT")
    docker(
        "exec", "-u", "postgres", server.name, "sh", "-c",
        'd=/var/lib/postgresql/data; free=$(df -P -k "$d" | awk "NR == 2 { print \\$4 }"); '
        'fallocate -l "$(( (free - 8192) * 1024 ))" "$d/it_filler"',
    )  # fmt: skip
    assert size * 1.1 > 8 * 1048576
    before_dbs = server.psql("SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database", db="postgres")
    for check in (True, False):
        res = run_module(
            "ner11.ops.pg_restore",
            {"db_name": "it_space", "backup_dir": str(tmp_path), "backup_id": backup, "container": server.name},
            check=check,
        )
        assert res.get("failed") and res.get("refused"), res
        assert "not enough free space" in res["msg"] and "/var/lib/postgresql/data" in res["msg"], res["msg"]
        assert " MB free" in res["msg"] and "nothing was changed" in res["msg"]
        assert res["changed"] is False
    assert server.psql("SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database", db="postgres") == before_dbs
    assert container_tmp(server.name) == ""

    # artifact_restore into the container's 2 MB /tmp: a 3 MB model file does not fit.
    docker(
        "exec",
        "-u",
        "0",
        server.name,
        "sh",
        "-c",
        "mkdir -p /opt/itmodels && head -c 3145728 /dev/urandom > /opt/itmodels/blob.bin",
    )
    made = run_module(
        "ner11.ops.artifact_backup",
        {"kind": "models", "container": server.name, "src": ["/opt/itmodels"], "backup_dir": str(tmp_path)},
    )
    assert not made.get("failed"), made.get("msg")
    for check in (True, False):
        res = run_module(
            "ner11.ops.artifact_restore",
            {"kind": "models", "backup_dir": str(tmp_path), "backup_id": made["backup_id"], "container": server.name,
             "dest": "/tmp/itmodels"},
            check=check,
        )  # fmt: skip
        assert res.get("failed") and "not enough free space" in res["msg"] and "MB free" in res["msg"], res
        assert res["changed"] is False
    assert container_tmp(server.name) == ""
