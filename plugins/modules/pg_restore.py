#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_restore
short_description: Restore a verified database backup, idempotently and guarded
version_added: 1.0.0
description:
  - Restores a C(database) backup of the ner11.ops backup catalog (written by M(ner11.ops.pg_backup))
    into a PostgreSQL database.
  - Before touching anything it checks the backup's manifest, every file checksum and that
    C(pg_restore --list) can read the dump.
  - A full restore never writes into the live database. It restores into C(<db_name>__ner11_restore),
    compares the canary row counts with the manifest, checks that the target holds no data newer than
    the backup, and only then swaps the databases with two C(ALTER DATABASE ... RENAME) in one
    transaction. A failure before the swap drops the temporary database and leaves the target intact.
  - The applied backup is recorded in the restored database (table C(ner11_ops.restore_log)) with a
    fingerprint of the state it produced (per table its identity, file node, row count and the row
    versions written since). Running the module again with the same backup returns C(changed=false)
    only while the database is still in that state; any write since (insert, update, delete,
    truncate, DDL) makes it restore again. See docs/restore.md.
  - Every run first looks for what an interrupted run left (a temporary database, a database left
    refusing connections, a replaced database due to be dropped, a C(pg_restore) still running in
    the container, a dump copy) and repairs it before going on (RV(repaired)); what it does not
    remove is reported in RV(leftovers).
  - A full restore checks free space first (database size from the manifest, plus the dump copy
    in the container) and refuses with the numbers when it does not fit.
  - With O(tables), only the rows of those tables are replaced, in one transaction
    (TRUNCATE without CASCADE + C(pg_restore --data-only)), per gap G30 of the runbooks.
  - See docs/restore.md for what "newer data" detects and what it cannot.
author: ner11.ops contributors (@ner11)
extends_documentation_fragment:
  - ner11.ops.attributes
  - ner11.ops.attributes.ACTIONGROUP_BACKUP
  - ner11.ops.postgres
attributes:
  check_mode:
    support: full
    details:
      - Returns the plan (backup, databases renamed and dropped, sessions to terminate, tables, repairs, space)
        and writes nothing anywhere; a directory dump is not copied into the container.
      - Every file's checksum is verified as in a real run. A directory dump of a container target is not listed
        with C(pg_restore --list) in check mode (that needs a sidecar container); RV(toc_entries) is then the count
        its manifest recorded at backup time.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: A backup that is already the applied one, with no write since (state fingerprint), returns C(changed=false).
options:
  db_name:
    description: The database to restore into.
    type: str
    required: true
  backup_dir:
    description: Root of the backup catalog (holds C(database/<backup_id>/)). Required unless O(path) is set.
    type: path
  backup_id:
    description: The backup to restore, e.g. C(ner11_db-20261129T020000Z).
    type: str
  path:
    description: A backup directory C(<backup_dir>/database/<backup_id>) (instead of O(backup_dir) + O(backup_id)).
    type: path
  latest:
    description:
      - Restore the newest verified FULL backup of O(source_db_name) in O(backup_dir) (ignored when
        O(backup_id) or O(path) is set). Partial,
        single-table and schema- or data-only backups and backups that fail their checksums are
        skipped (reported in RV(skipped_backups)), per G9.
      - Backups whose recorded M(ner11.ops.backup_verify) result is failed are not candidates. The backup is taken
        from one source identity (host, instance); when backups of the database from several hosts or instances
        qualify, the module refuses and lists them - set O(source_host).
    type: bool
    default: false
  source_db_name:
    description: With O(latest), the database whose backups are candidates. Defaults to O(db_name).
    type: str
  source_host:
    description:
      - With O(latest), only backups made on this source host are candidates (C(source.host) in the manifest - the
        inventory hostname of the host the backup role ran on). DR onto a new host names the old host here.
    type: str
  if_exists:
    description:
      - What to do when O(db_name) already holds user tables.
      - V(fail) refuses; V(skip) returns unchanged; V(replace) replaces the database and needs O(confirm).
      - A database that does not exist or holds no user tables is always restored.
    type: str
    choices: [fail, replace, skip]
    default: fail
  confirm:
    description: Must equal O(db_name) to replace a database or the rows of O(tables) (G47).
    type: str
  force:
    description:
      - Always restore, also when this backup is applied and nothing was written since.
      - Restore even when the target holds data newer than the backup (rows whose O(newer_columns)
        timestamps are later than anything in the backup, or a later applied backup).
    type: bool
    default: false
  keep_old:
    description: Keep the replaced database as C(<db_name>__ner11_old_<timestamp>) instead of dropping it.
    type: bool
    default: false
  tables:
    description:
      - Restore only the rows of these tables (C(table) or C(schema.table)) into the existing database,
        in one transaction. Needs a custom or directory format backup and O(confirm).
      - Tables referenced by foreign keys from tables not listed are refused (no TRUNCATE CASCADE, G30).
    type: list
    elements: str
    default: []
  jobs:
    description: Parallel C(pg_restore) workers (custom and directory formats).
    type: int
    default: 1
  newer_columns:
    description: Timestamp columns that reveal when a row was written; used by the "newer data" guard.
    type: list
    elements: str
    default: [created_at, updated_at]
notes:
  - In O(container) mode a custom or plain dump is streamed on stdin into the tools in the container;
    a directory dump (or a custom dump with O(jobs) > 1) is read by C(pg_restore -j) in a short-lived
    sidecar container of the database container's image (its network namespace, the backup mounted
    read-only, the password in a 0600 passfile) when O(login_password) is given, without a copy of the dump.
    Without a password it is copied with C(docker cp) into a private temporary directory in the
    container, removed afterwards. C(pg_restore --list) of a directory dump always reads it through a
    read-only mount into a network-less container of that image.
  - Roles from the backup's C(globals.sql) are created only when missing; existing roles (and the
    connecting role) are never altered.
seealso:
  - module: ner11.ops.pg_backup
"""

EXAMPLES = r"""
- name: Restore the newest backup into a new database
  ner11.ops.pg_restore:
    db_name: ner11_db
    backup_dir: /var/backups/ner11
    latest: true
    container: ner11-postgres-1

- name: Replace the live database with an exact backup (the api is stopped first)
  ner11.ops.pg_restore:
    db_name: ner11_db
    backup_dir: /var/backups/ner11
    backup_id: ner11_db-20261129T020000Z
    container: ner11-postgres-1
    if_exists: replace
    confirm: ner11_db
    jobs: 2

- name: Put back the rows of one table
  ner11.ops.pg_restore:
    db_name: ner11_db
    backup_dir: /var/backups/ner11
    backup_id: ner11_db-20261129T020000Z
    container: ner11-postgres-1
    tables: [vendor_equipment]
    confirm: ner11_db
"""

RETURN = r"""
refused:
  description:
    - True when the run refused to restore (newer data in the target, tables referenced by tables not listed, not
      enough free space); nothing was changed.
  returned: failure, when refused
  type: bool
backup_created_at:
  description: When the restored backup was taken (its manifest's C(created_at), UTC).
  returned: success
  type: str
format:
  description: The dump format of the backup (V(directory), V(custom) or V(plain)).
  returned: success
  type: str
db_name:
  description: The database restored (or that would be).
  returned: success
  type: str
applied:
  description:
    - The restore record (C(ner11_ops.restore_log)) of the target when it is already in the state of a backup,
      that is when the run was a no-op or a skip; null when the target holds no such record.
  returned: when the run decided to do nothing (operation V(none) or V(skip))
  type: dict
sequences:
  description: The sequences owned by the restored tables, set to their values in the backup.
  returned: when O(tables) restored tables
  type: list
  elements: str
backup_id:
  description: The backup restored (or that would be).
  returned: success
  type: str
  sample: ner11_db-20261129T020000Z
backup_path:
  description: Directory of the backup.
  returned: success
  type: str
restored:
  description: Whether data was restored by this run.
  returned: always
  type: bool
operation:
  description: V(none) (already applied), V(skip), V(create), V(replace) or V(tables).
  returned: success
  type: str
reason:
  description: Why the action was chosen.
  returned: success
  type: str
row_counts:
  description: Row counts of the canary tables (or O(tables)) in the database after the run.
  returned: success
  type: dict
  sample: {"vendor_equipment": 8, "threat_intelligence": 3, "compliance_frameworks": 5}
plan:
  description: What the run does or would do (databases renamed/dropped, sessions, tables, expected counts).
  returned: success
  type: dict
sessions_terminated:
  description: Sessions of O(db_name) that were terminated before the swap (pid, application_name).
  returned: success
  type: list
  elements: dict
globals:
  description: Roles created from the backup's globals and existing roles left unchanged.
  returned: success
  type: dict
newer_data:
  description: Tables of the target whose newest timestamp is later than anything in the backup.
  returned: success
  type: list
  elements: dict
skipped_backups:
  description: With O(latest), newer backups that were skipped and why.
  returned: success
  type: list
  elements: dict
toc_entries:
  description:
    - Entries C(pg_restore --list) reports for the dump (null for plain dumps).
    - In check mode, for a directory dump of a container target, the count recorded in the backup's manifest.
  returned: success
  type: int
old_db:
  description: The kept previous database with O(keep_old).
  returned: when kept
  type: str
duration_s:
  description: Wall time of the module in seconds.
  returned: success
  type: float
steps:
  description:
    - The steps this run took, in order, each with its wall time in seconds (C(step), C(s)); a full restore
      lists every safety step (checksums of every file, C(pg_restore --list), leftovers, free space, the
      restore into the temporary database, the restore log with the state fingerprint and the canary
      counts, the swap). A failed run returns the steps that completed before the failure.
  returned: success, and on failure once the backup was found and verified
  type: list
  elements: dict
  sample: [{"step": "pg_restore into the temporary database", "s": 14.2}]
executed_commands:
  description: The shell commands run (no secrets).
  returned: always
  type: list
  elements: str
changes_since_restore:
  description:
    - When the database records an applied restore, the writes found since it (empty when it is still in
      the state the backup produced).
  returned: when a restore was recorded
  type: list
  elements: str
  sample: ["public.vendor_equipment: 7 rows now, 8 at the restore"]
repaired:
  description: What this run repaired of an interrupted earlier run before restoring.
  returned: when something was repaired
  type: list
  elements: str
leftovers:
  description: Databases left behind (by this or an earlier run) that are not removed automatically, with their state and the fix.
  returned: always
  type: list
  elements: dict
changes:
  description: On failure, what the run had changed for good before it failed (C(changed) is true when not empty).
  returned: failure
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ner11.ops.plugins.module_utils.pgexec import (
    POSTGRES_MUTUALLY_EXCLUSIVE,
    POSTGRES_REQUIRED_ONE_OF,
    PgExecError,
    postgres_argument_spec,
)
from ansible_collections.ner11.ops.plugins.module_utils.pgrestore import Refused, RestoreError, run_restore
from ansible_collections.ner11.ops.plugins.module_utils.runner import CommandError
from ansible_collections.ner11.ops.plugins.module_utils.runner import main_thread_failures


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(
        db_name=dict(type="str", required=True),
        backup_dir=dict(type="path"),
        backup_id=dict(type="str"),
        path=dict(type="path"),
        latest=dict(type="bool", default=False),
        source_db_name=dict(type="str"),
        source_host=dict(type="str"),
        if_exists=dict(type="str", default="fail", choices=["fail", "replace", "skip"]),
        confirm=dict(type="str"),
        force=dict(type="bool", default=False),
        keep_old=dict(type="bool", default=False),
        tables=dict(type="list", elements="str", default=[]),
        jobs=dict(type="int", default=1),
        newer_columns=dict(type="list", elements="str", default=["created_at", "updated_at"]),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=POSTGRES_MUTUALLY_EXCLUSIVE + [("backup_id", "path")],
        required_one_of=POSTGRES_REQUIRED_ONE_OF + [("backup_id", "path", "latest")],
        supports_check_mode=True,
    )
    # Checksums, --list and concurrent reads run in threads: their command failures reach the main thread.
    main_thread_failures(module)
    try:
        result = run_restore(module.params, module.run_command, check_mode=module.check_mode)
    except Refused as exc:
        partial = dict(getattr(exc, "partial", {}) or {})
        partial.setdefault("changed", False)
        partial.setdefault("restored", False)
        module.fail_json(msg=str(exc), refused=True, **partial)
    except (RestoreError, PgExecError, CommandError) as exc:
        # changed is true when the run changed something before failing (roles created, a repair, the swap).
        partial = dict(getattr(exc, "partial", {}) or {})
        partial.setdefault("changed", False)
        partial.setdefault("restored", False)
        module.fail_json(msg=str(exc), **partial)
    warnings = result.pop("warnings", [])
    for warning in warnings:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
