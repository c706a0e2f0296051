#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_backup
short_description: Verified logical backup of one PostgreSQL database (and its globals)
version_added: 1.0.0
description:
  - Dumps one database with the server's own C(pg_dump) straight into a C(.partial-<id>) directory
    of the backup catalog (docs/backup-catalog.md), saves C(pg_dumpall --globals-only) beside it,
    verifies the result (C(pg_restore --list) entry count or a full decompression test, sha256 of
    every file, size), writes the manifest and renames the backup into place. A failed or killed
    dump never leaves a visible backup.
  - With O(format=directory) in container mode C(pg_dumpall --globals-only), C(pg_dump -Fd -j N) and
    C(pg_restore --list) run in ONE short-lived sidecar container of the database container's image,
    in its network namespace, with the password in a read-only 0600 passfile; the error names the
    step that failed. O(format=custom) and O(format=plain) stream from C(docker exec) over the
    local socket (no password needed).
  - Idempotent per calendar period; O(period=manual) always creates a backup.
  - Checks free space before dumping (C(pg_database_size) x O(space_factor)).
author: ner11.ops maintainers (@ner11-ops)
extends_documentation_fragment:
  - ner11.ops.attributes
  - ner11.ops.attributes.ACTIONGROUP_BACKUP
  - ner11.ops.postgres
attributes:
  check_mode:
    support: full
    details: Returns the plan (backup id, path, estimated size, commands) without writing anything.
  diff_mode:
    support: none
  idempotent:
    support: partial
    details:
      - Idempotent with O(period) V(daily), V(weekly) or V(monthly) - a second run in the same period returns the
        existing backup with C(changed=false); the same O(keep_until) (a duration counts from the backup's
        C(created_at)) changes nothing either.
      - O(period=manual) (the default) and O(force=true) make a new backup on every run.
options:
  db_name:
    description: Database to back up.
    type: str
    default: ner11_db
  backup_dir:
    description: Absolute path of the backup catalog; the backup goes to C(<backup_dir>/database/<backup_id>/).
    type: path
    required: true
  format:
    description:
      - V(directory) (parallel C(-Fd -j)), V(custom) (C(-Fc)) or V(plain) (SQL script).
      - Default V(directory) when it can be written (O(login_host), or O(login_password) given in container mode),
        else V(custom). Measured on 2 cores, C(-Fd -j2 -Z1) is about 2x faster than C(-Fc) and 3.5x faster than
        the runbooks' C(pg_dump | gzip) at the same size (docs/backups.md).
    type: str
    choices: [directory, custom, plain]
  compression:
    description:
      - V(none), V(gzip:<1-9>) (or just the level) or V(zstd:<1-19>).
      - V(zstd:<level>) with O(format=directory) runs C(pg_dump -Fd -j N -Z zstd:<level>) of PostgreSQL 16 or later
        from O(client_image) in the sidecar (opt-in; the PostgreSQL 15 server's own pg_dump has gzip only). Those
        dumps are restored by C(pg_restore) 16 or later (M(ner11.ops.pg_restore) and M(ner11.ops.backup_verify) use the
        image recorded in the manifest); see docs/backup-catalog.md.
      - With O(format=plain) the SQL is piped through C(zstd).
    type: str
    default: gzip:1
  client_image:
    description:
      - Image with C(pg_dump) 16 or later used for O(compression=zstd:<level>) with O(format=directory) in container
        mode. The project builds V(ner11/pgclient:ref) locally (C(make pgclient), images/pgclient/).
      - Recorded in the manifest (C(client_image)) so restores and verification read the dump with the same tools.
    type: str
    default: ner11/pgclient:ref
  jobs:
    description: Parallel pg_dump workers for O(format=directory).
    type: int
    default: 2
  period:
    description: The calendar bucket this backup covers; a verified backup in the same bucket is not made again.
    type: str
    choices: [daily, weekly, monthly, manual]
    default: manual
  force:
    description: Make a new backup even if one exists for this period.
    type: bool
    default: false
  canary_tables:
    description: Tables whose exact row counts are recorded in the manifest; missing tables are recorded as null.
    type: list
    elements: str
    default: [vendor_equipment, threat_intelligence, compliance_frameworks]
  globals_role_passwords:
    description:
      - Include role password hashes in C(globals.sql). Off by default because they are secrets; restored roles then
        need C(ALTER ROLE ... PASSWORD).
    type: bool
    default: false
  space_factor:
    description:
      - Free space required in O(backup_dir) before dumping, as a multiple of C(pg_database_size).
        1.0 is generous for compressed dumps (a logical dump has no indexes and compresses); raise it for
        O(compression=none) of data that does not compress.
    type: float
    default: 1.0
  lock_timeout:
    description: Seconds to wait for another database backup in the same catalog; 0 fails at once naming the holder.
    type: int
    default: 0
  partial_grace_s:
    description:
      - Age after which a leftover C(.partial-*) directory is called stale. Partials are removed at the start of a run
        while the catalog lock is held; because the lock proves no writer is alive, younger partials are removed too
        and reported in RV(cleaned_partials).
    type: int
    default: 3600
  source_host:
    description:
      - The host name recorded as the backup's source (C(source.host), part of its source identity). Period
        idempotence, retention, RPO and C(latest) work per identity, so two hosts writing one catalog never answer for
        each other. The backup role passes the inventory hostname.
      - Defaults to this machine's hostname (what 1.0.0 recorded).
    type: str
  keep_until:
    description:
      - Pin the backup - M(ner11.ops.backup_prune) never deletes it before this UTC time (V(2026-12-31T00:00:00Z)) or
        for this duration after it was made (V(14d), V(36h)). See M(ner11.ops.backup_pin) to move or release the pin.
      - A duration counts from the backup's C(created_at), also for the backup this run makes, so a second run in the
        same period with the same value changes nothing.
      - When the period already has a backup, that backup is pinned instead.
    type: str
  keep_reason:
    description: Why the backup is pinned (the pin's name; default C(pinned by pg_backup keep_until)).
    type: str
"""

EXAMPLES = r"""
- name: Daily backup of ner11_db (a second run the same day changes nothing)
  ner11.ops.pg_backup:
    db_name: ner11_db
    backup_dir: /var/backups/ner11
    container: ner11-postgres-1
    login_password: "{{ ner11_db_password }}"
    period: daily

- name: Manual custom-format dump without any password (docker exec over the local socket)
  ner11.ops.pg_backup:
    backup_dir: /var/backups/ner11
    container: ner11-postgres-1
    format: custom

- name: Backup before a maintenance window, kept at least 8 days whatever the retention says
  ner11.ops.pg_backup:
    backup_dir: /var/backups/ner11
    container: ner11-postgres-1
    source_host: "{{ inventory_hostname }}"
    keep_until: 8d
    keep_reason: before maintenance window
"""

RETURN = r"""
backup_id:
  description: Id of the backup made (or of the existing one for this period).
  returned: success
  type: str
  sample: ner11_db-20261129T020000Z
path:
  description: Directory of the backup.
  returned: success
  type: str
manifest:
  description: The manifest (docs/backup-catalog.md). Not returned in check mode for a backup still to be made.
  returned: success and not check mode, or when the backup exists
  type: dict
sha256:
  description: Digest over the sha256sum lines of all files of the backup.
  returned: success
  type: str
size_bytes:
  description: Total size of the backup's files.
  returned: success
  type: int
duration_s:
  description: Seconds the backup took (0 when an existing one was returned).
  returned: success
  type: float
plan:
  description: What the run does or would do (backup_id, path, format, compression, jobs, estimated_size_bytes, commands).
  returned: always
  type: dict
cleaned_partials:
  description: Leftover partial directories removed at the start.
  returned: when a backup was made
  type: list
  elements: str
pins:
  description:
    - The backup's pins (C(reason), C(keep_until), C(pinned_at)); empty when it is not pinned.
    - In check mode for a backup still to be made, the pins it would get, a duration of O(keep_until) counted from now
      (the backup counts it from its C(created_at), a few seconds later).
  returned: success
  type: list
  elements: dict
steps:
  description:
    - The steps this run took, in order, each with its wall time in seconds (C(step), C(s)); a backup made
      lists every safety step (row counts, C(pg_restore --list) or decompression test, sha256, publish with
      a re-check of names and sizes, and fsync).
    - A directory dump in container mode runs the canary row counts beside the sidecar (before, while it starts,
      and pg_dump waits for them; after, once pg_dump has ended, while it exits). Those two steps carry
      C(at_once=true), their seconds overlap the steps around them and are not part of the sum;
      C(wait for the canary row counts ...) is the time the run waited for them.
  returned: always
  type: list
  elements: dict
  sample: [{"step": "pg_dump", "s": 7.41}]
executed_commands:
  description: Every command run, secret-free.
  returned: always
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ner11.ops.plugins.module_utils.catalog import CatalogError
from ansible_collections.ner11.ops.plugins.module_utils.pgbackup import PgBackup, PgBackupError
from ansible_collections.ner11.ops.plugins.module_utils.pgexec import (
    POSTGRES_MUTUALLY_EXCLUSIVE,
    POSTGRES_REQUIRED_ONE_OF,
    PgExecError,
    postgres_argument_spec,
)
from ansible_collections.ner11.ops.plugins.module_utils.runner import CommandError, ThreadFailure, main_thread_failures


def main():
    spec = postgres_argument_spec()
    spec.update(
        db_name=dict(type="str", default="ner11_db"),
        backup_dir=dict(type="path", required=True),
        format=dict(type="str", choices=["directory", "custom", "plain"]),
        compression=dict(type="str", default="gzip:1"),
        client_image=dict(type="str", default="ner11/pgclient:ref"),
        jobs=dict(type="int", default=2),
        period=dict(type="str", choices=["daily", "weekly", "monthly", "manual"], default="manual"),
        force=dict(type="bool", default=False),
        canary_tables=dict(
            type="list", elements="str", default=["vendor_equipment", "threat_intelligence", "compliance_frameworks"]
        ),
        globals_role_passwords=dict(type="bool", default=False),
        space_factor=dict(type="float", default=1.0),
        lock_timeout=dict(type="int", default=0),
        partial_grace_s=dict(type="int", default=3600),
        source_host=dict(type="str"),
        keep_until=dict(type="str"),
        keep_reason=dict(type="str"),
    )
    module = AnsibleModule(
        argument_spec=spec,
        mutually_exclusive=POSTGRES_MUTUALLY_EXCLUSIVE,
        required_one_of=POSTGRES_REQUIRED_ONE_OF,
        supports_check_mode=True,
    )
    # The canary counts run in threads beside the backup sidecar: a command that cannot
    # start fails that thread's work, and the main thread reports it in the one result.
    main_thread_failures(module)
    job = None
    try:
        job = PgBackup(module.params, module.run_command, check_mode=module.check_mode)
        result = job.run()
    except (PgBackupError, CatalogError, PgExecError, CommandError, ThreadFailure) as exc:
        # changed only when the run made something visible before it failed (PgBackup.wrote)
        module.fail_json(msg=str(exc), changed=bool(job and job.wrote), executed_commands=job.executed if job else [])
    except OSError as exc:
        where = exc.filename or module.params["backup_dir"]
        module.fail_json(
            msg="cannot use %s: %s; check free space and permissions on %s (df -h, ls -ld), then run again"
            % (where, exc.strerror or exc, os.path.dirname(str(where)) or where),
            changed=bool(job and job.wrote),
            executed_commands=job.executed if job else [],
        )
    for warning in job.warnings:
        module.warn(warning)
    result["executed_commands"] = job.executed
    module.exit_json(**result)


if __name__ == "__main__":
    main()
