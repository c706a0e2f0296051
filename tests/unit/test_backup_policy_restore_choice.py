"""Restore's choice of backup by source identity (pgrestore.select_latest / resolve_backup, issue 8)."""

from __future__ import annotations

import os

import pytest

from ansible_collections.ner11.ops.plugins.module_utils import catalog as cat
from ansible_collections.ner11.ops.plugins.module_utils import pgrestore


def _backup(c, backup_id, host, created):
    partial = c.begin("database", backup_id)
    with open(os.path.join(partial, "dump.pgdump"), "wb") as fh:
        fh.write(b"PGDMP" + b"x" * 64)
    manifest = {
        "created_at": created,
        "period": "daily",
        "format": "custom",
        "artifact": "dump.pgdump",
        "source": {"host": host, "db_name": "ner11_db", "instance": "container:ner11-postgres-1"},
        "files": cat.hash_tree(partial),
    }
    c.publish("database", backup_id, manifest)


def test_latest_is_the_newest_good_backup_of_the_only_identity(tmp_path):
    c = cat.Catalog(str(tmp_path))
    _backup(c, "a1", "db-a", "2026-11-28T02:00:00Z")
    _backup(c, "a2", "db-a", "2026-11-29T02:00:00Z")
    _catalog, manifest, _path, _skipped = pgrestore.resolve_backup(str(tmp_path), latest=True, source_db="ner11_db")
    assert manifest["backup_id"] == "a2"
    # a recorded failed verification takes it out of the candidates
    c.record_verification("database", "a2", "failed", ["sha256"], ["dump.pgdump: sha256 mismatch"])
    _catalog, manifest, _path, _skipped = pgrestore.resolve_backup(str(tmp_path), latest=True, source_db="ner11_db")
    assert manifest["backup_id"] == "a1"


def test_latest_refuses_between_two_hosts_and_lists_them(tmp_path):
    c = cat.Catalog(str(tmp_path))
    _backup(c, "a1", "db-a", "2026-11-28T02:00:00Z")
    _backup(c, "b1", "db-b", "2026-11-29T02:00:00Z")
    with pytest.raises(pgrestore.RestoreError) as err:
        pgrestore.resolve_backup(str(tmp_path), latest=True, source_db="ner11_db")
    text = str(err.value)
    assert "host db-b (container:ner11-postgres-1): newest b1" in text and "host db-a" in text
    assert "set source_host to one of db-a, db-b" in text
    _catalog, manifest, _path, _skipped = pgrestore.resolve_backup(
        str(tmp_path), latest=True, source_db="ner11_db", source_host="db-a"
    )
    assert manifest["backup_id"] == "a1"
    with pytest.raises(pgrestore.RestoreError, match="no verified full backup of database ner11_db from host db-c"):
        pgrestore.resolve_backup(str(tmp_path), latest=True, source_db="ner11_db", source_host="db-c")
