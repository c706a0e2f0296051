#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_verify
short_description: Prove backups of the ner11.ops catalog are usable (checksums, archive, age, test restore)
version_added: 1.0.0
description:
  - For one backup or all backups of a kind, checks that the manifest is valid, every file's sha256 and size match
    (naming the file on a mismatch), the archive reads with the stock tools (C(pg_restore --list) for
    custom/directory dumps, a full decompression test for compressed plain dumps) and, for each source identity
    (kind, host, instance, database/volume/path), that its newest good backup is younger than O(max_age_hours)
    (RPO). Returns one row per identity in RV(identities).
  - For models, config and volumes an unchanged source makes no new backup; M(ner11.ops.artifact_backup) records
    when the content was last confirmed current, and the RPO is judged on that time. A database backup counts only
    by the time it was made.
  - Records each result (time, checks run, ok/failed, errors) in C(verify.json) beside the backup, written
    atomically (docs/backup-catalog.md). A backup whose last result is C(failed) is skipped by C(latest), by the
    period idempotence of the backup modules and by the calendar tiers of M(ner11.ops.backup_prune), until a later
    verification passes.
  - Replaces C(verify_backups.sh), which checked only today's dump and exited 0 on failures.
  - With O(test_restore=true) the newest database backup is restored into the scratch database O(scratch_db) on
    the same server (dropped first if it exists, and dropped again afterwards, also on failure), and the canary row
    counts are compared with the manifest, connecting with an explicit database.
author: ner11.ops maintainers (@ner11-ops)
extends_documentation_fragment:
  - ner11.ops.attributes
  - ner11.ops.attributes.ACTIONGROUP_BACKUP
  - ner11.ops.postgres
attributes:
  check_mode:
    support: full
    details:
      - Read-only checks run in check mode too and nothing is recorded; the test restore is skipped in check mode and
        reported as planned.
  diff_mode:
    support: none
  idempotent:
    support: full
    details:
      - Never changes a backup and always reports C(changed=false); the C(verify.json) result it keeps beside each
        backup is an audit record, not a change. A test restore creates and drops the scratch database; the
        C(actions) list of RV(test_restore) says so.
options:
  backup_dir:
    description: Absolute path of the backup catalog.
    type: path
    required: true
  kind:
    description: Kind of backups to verify.
    type: str
    choices: [database, models, config, volume]
    default: database
  backup_id:
    description: Verify only this backup. Mutually exclusive with O(all=true).
    type: str
  all:
    description:
      - Verify every backup of O(kind). Not set - every backup when O(backup_id) is not given, else only that one.
      - O(all=true) with O(backup_id) is an error, and so is O(all=false) without O(backup_id).
    type: bool
  test_restore:
    description: Restore the newest database backup into O(scratch_db) and compare row counts.
    type: bool
    default: false
  scratch_db:
    description: Scratch database for the test restore; must differ from the backed-up database.
    type: str
    default: ner11_test_restore
  max_age_hours:
    description: The newest good backup of each source identity must be at most this old (RPO); 0 disables the age check.
    type: float
    default: 26
  source_host:
    description:
      - Only verify and judge the identities of this source host (C(source.host) - the backup role passes the
        inventory hostname). Default - every backup of O(kind).
    type: str
  fail_on_error:
    description: Fail the task when any check fails (else only RV(status=failed)).
    type: bool
    default: true
notes:
  - O(container) or O(login_host) is needed to read custom/directory archives with C(pg_restore --list) and for
    O(test_restore); without them only manifests, checksums and ages are checked.
  - A directory-format test restore in container mode runs C(pg_restore -j) in a sidecar and needs O(login_password).
"""

EXAMPLES = r"""
- name: Verify every database backup and test-restore the newest one
  ner11.ops.backup_verify:
    backup_dir: /var/backups/ner11
    container: ner11-postgres-1
    login_password: "{{ ner11_db_password }}"
    test_restore: true
"""

RETURN = r"""
status:
  description: C(ok) when every check passed, else C(failed).
  returned: always
  type: str
backups:
  description: Per backup C(backup_id), C(status) (ok/failed), C(errors), C(checks) run, C(created_at), C(age_hours).
  returned: always
  type: list
  elements: dict
errors:
  description: Every problem found, each naming the backup and file.
  returned: always
  type: list
  elements: str
newest_backup_id:
  description: The newest good backup of O(kind) (of O(source_host) when set).
  returned: always
  type: str
newest_age_hours:
  description: Age of the newest good backup in hours.
  returned: always
  type: float
identities:
  description:
    - One row per source identity - C(identity) key, C(kind), C(host), C(instance), C(object), C(good), C(failed) and
      C(pinned) counts, C(newest_backup_id), C(newest_created_at), C(confirmed_at) (unchanged content confirmed
      current), C(current_as_of), C(age_hours), C(age_seconds), C(scheduled) (false when it has manual backups only - no RPO),
      C(rpo) (V(ok), V(failed) or V(not judged)).
  returned: always
  type: list
  elements: dict
test_restore:
  description: C(backup_id), C(scratch_db), C(row_counts), C(errors), C(actions), C(duration_s) of the test restore.
  returned: when O(test_restore=true)
  type: dict
executed_commands:
  description: Every command run, secret-free.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ner11.ops.plugins.module_utils.catalog import CatalogError
from ansible_collections.ner11.ops.plugins.module_utils.pgbackup_verify import BackupVerifier, PgBackupError
from ansible_collections.ner11.ops.plugins.module_utils.pgexec import (
    POSTGRES_MUTUALLY_EXCLUSIVE,
    PgExecError,
    postgres_argument_spec,
)
from ansible_collections.ner11.ops.plugins.module_utils.runner import CommandError


def main():
    spec = postgres_argument_spec()
    spec.update(
        backup_dir=dict(type="path", required=True),
        kind=dict(type="str", choices=["database", "models", "config", "volume"], default="database"),
        backup_id=dict(type="str"),
        all=dict(type="bool"),
        test_restore=dict(type="bool", default=False),
        scratch_db=dict(type="str", default="ner11_test_restore"),
        max_age_hours=dict(type="float", default=26),
        source_host=dict(type="str"),
        fail_on_error=dict(type="bool", default=True),
    )
    module = AnsibleModule(argument_spec=spec, mutually_exclusive=POSTGRES_MUTUALLY_EXCLUSIVE, supports_check_mode=True)
    params = dict(module.params)
    if module.check_mode and params["test_restore"]:
        params["test_restore"] = False
    params["record"] = not module.check_mode  # check mode writes nothing
    verifier = None
    try:
        verifier = BackupVerifier(params, module.run_command)
        result = verifier.run()
    except (PgBackupError, CatalogError, PgExecError, CommandError) as exc:
        # verify.json is an audit record, not a change: changed stays false (attributes.idempotent)
        module.fail_json(msg=str(exc), executed_commands=verifier.executed if verifier else [])
    if module.check_mode and module.params["test_restore"]:
        result["test_restore"] = {"planned": True, "scratch_db": params["scratch_db"], "backup_id": result["newest_backup_id"]}
    result["executed_commands"] = verifier.executed
    if result["status"] != "ok" and module.params["fail_on_error"]:
        module.fail_json(msg="backup verification failed: " + "; ".join(result["errors"]), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
