#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_maintenance
short_description: VACUUM, ANALYZE and REINDEX of the objects that need it, with before/after measurements
version_added: 1.1.0
description:
  - Measures every user table (size, live and dead tuples, rows changed since the last ANALYZE, estimated bloat)
    and index (size, estimated bloat) of O(db_name), selects the objects over the thresholds, runs O(operation)
    on each of them one by one, and measures them again. The result holds each object's before and after figures.
  - Only objects over the thresholds are touched, so a run right after a run selects nothing and reports
    C(changed=false). O(force) touches every object in scope.
  - C(vacuum_full) and C(reindex) with O(concurrently=false) lock each object against reads and writes; they are
    refused while any other client session is connected to the database. C(reindex) uses C(REINDEX CONCURRENTLY)
    by default, which lets the application keep working.
  - Before a rewrite (C(vacuum_full), C(reindex)) the free space on the filesystem of the data directory must hold
    the largest selected object again plus O(space_margin_bytes) (read inside the container; with O(login_host) the
    server's disk cannot be read and the check is skipped).
  - Every statement runs with O(lock_timeout) and O(statement_timeout), so a maintenance window cannot hang on a lock.
  - Bloat figures are estimates from the planner statistics (C(pg_class), C(pg_stats)); C(vacuum) and C(analyze)
    decide on the exact dead-tuple and changed-row counters.
author: ner11.ops maintainers (@ner11-ops)
extends_documentation_fragment:
  - ner11.ops.attributes
  - ner11.ops.attributes.ACTIONGROUP_OPS
  - ner11.ops.postgres
attributes:
  check_mode:
    support: full
    details: Measures and returns the plan (RV(planned) with the statement and reason per object, the space needed);
      runs no maintenance statement. Refusals (sessions connected, not enough space) fail in check mode too.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: Objects below the thresholds are left alone, and maintenance brings each object below them.
      Not idempotent with O(force=true).
options:
  db_name:
    description: The database to maintain.
    type: str
    default: ner11_db
  operation:
    description:
      - C(analyze) - C(ANALYZE) the tables with rows changed since their last ANALYZE.
      - C(vacuum) - C(VACUUM (ANALYZE)) the tables with dead tuples or changed rows.
      - C(vacuum_full) - C(VACUUM (FULL, ANALYZE)) the tables whose dead or estimated free share is at least
        O(min_bloat_ratio) (and whose size is at least O(min_size_bytes)); returns their space to the filesystem.
      - C(reindex) - rebuild the btree indexes whose estimated bloat is at least O(min_bloat_ratio) (and size at
        least O(min_size_bytes)), and any invalid index left by an interrupted build.
    type: str
    required: true
    choices: [analyze, vacuum, vacuum_full, reindex]
  tables:
    description:
      - Limit the run to these tables (C(name) or C(schema.name); for C(reindex), their indexes).
      - Empty - every user table.
    type: list
    elements: str
    default: []
  concurrently:
    description: Use C(REINDEX CONCURRENTLY). With C(false), REINDEX is refused while other sessions are connected.
    type: bool
    default: true
  force:
    description: Touch every object in scope, whatever the measurements say.
    type: bool
    default: false
  min_dead_tuples:
    description: C(vacuum) selects a table with at least this many dead tuples.
    type: int
    default: 1
  min_changed_rows:
    description: C(analyze) and C(vacuum) select a table with at least this many rows changed since its last ANALYZE.
    type: int
    default: 1
  min_bloat_ratio:
    description: C(vacuum_full) and C(reindex) select an object whose dead or estimated free share is at least this (0 to 1).
    type: float
    default: 0.3
  min_size_bytes:
    description: C(vacuum_full) and C(reindex) leave objects smaller than this alone (rewriting them gains nothing).
    type: int
    default: 8388608
  space_margin_bytes:
    description: Free space to keep on top of the largest object a rewrite copies.
    type: int
    default: 67108864
  lock_timeout:
    description: Seconds a statement waits for a lock before it gives up (the object is reported as failed).
    type: int
    default: 10
  statement_timeout:
    description: Seconds one statement may run.
    type: int
    default: 3600
  fingerprint:
    description:
      - Also return RV(fingerprint), the state fingerprint of the data taken before the operation (the one
        M(ner11.ops.pg_restore) records; docs/restore.md). Reads every table once (a count).
    type: bool
    default: false
  writes_since:
    description:
      - A RV(fingerprint) returned earlier. Also return RV(writes_since), what was written since it.
      - Only data writes count (tables created or dropped, row counts, rows inserted or updated, sequence values);
        the rewrites of VACUUM FULL and REINDEX do not.
    type: dict
notes:
  - The collection's PostgreSQL container gets a sized C(/dev/shm); with Docker's default 64 MB, parallel index
    builds on large tables fail with C(could not resize shared memory segment).
"""

EXAMPLES = r"""
- name: Weekly VACUUM ANALYZE of what changed
  ner11.ops.pg_maintenance:
    container: ner11_postgres
    operation: vacuum

- name: Rebuild bloated indexes without blocking the API
  ner11.ops.pg_maintenance:
    container: ner11_postgres
    operation: reindex

- name: Monthly VACUUM FULL of two tables (the API is stopped first)
  ner11.ops.pg_maintenance:
    container: ner11_postgres
    operation: vacuum_full
    tables: [documents, entities]
    lock_timeout: 5
    statement_timeout: 1800
"""

RETURN = r"""
db_name:
  description: The database maintained.
  returned: success
  type: str
operation:
  description: The operation run.
  returned: always
  type: str
planned:
  description: >-
    The objects selected, with C(table) or C(index), C(reason), C(size_bytes) and the C(statement)
    (in check mode - would run).
  returned: always
  type: list
  elements: dict
objects:
  description: >-
    Each object maintained with C(status) (C(done)/C(failed)), C(error), C(duration_s), C(before) and C(after)
    (C(size_bytes), C(live_tuples), C(dead_tuples), C(dead_ratio), C(bloat_ratio), C(changed_since_analyze); for
    an index C(size_bytes), C(bloat_ratio)). Empty in check mode.
  returned: always
  type: list
  elements: dict
db_size_before_bytes:
  description: C(pg_database_size) before the run.
  returned: always
  type: int
db_size_after_bytes:
  description: C(pg_database_size) after the run.
  returned: always
  type: int
freed_bytes:
  description: How much the database shrank.
  returned: always
  type: int
space_needed_bytes:
  description: Free space a rewrite needs (0 for C(analyze)/C(vacuum)).
  returned: always
  type: int
space_free_bytes:
  description: Free space measured on the data directory's filesystem (null when not measured).
  returned: always
  type: int
duration_s:
  description: Wall time of the run, seconds.
  returned: always
  type: float
fingerprint:
  description: With O(fingerprint), the state fingerprint of the data before the operation.
  returned: when O(fingerprint=true)
  type: dict
writes_since:
  description: >-
    With O(writes_since), why data may have been written since that fingerprint, one reason per change
    (empty - nothing was written). A fingerprint that cannot be compared gives a reason too (the safe direction).
  returned: when O(writes_since) is set
  type: list
  elements: str
queries:
  description: The maintenance statements that ran.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ner11.ops.plugins.module_utils.pgexec import postgres_module_kwargs, run_on_target
from ansible_collections.ner11.ops.plugins.module_utils.pgmaint import OPERATIONS, MaintenanceError, run


def main():
    options = dict(
        db_name=dict(type="str", default="ner11_db"),
        operation=dict(type="str", required=True, choices=list(OPERATIONS)),
        tables=dict(type="list", elements="str", default=[]),
        concurrently=dict(type="bool", default=True),
        force=dict(type="bool", default=False),
        min_dead_tuples=dict(type="int", default=1),
        min_changed_rows=dict(type="int", default=1),
        min_bloat_ratio=dict(type="float", default=0.3),
        min_size_bytes=dict(type="int", default=8388608),
        space_margin_bytes=dict(type="int", default=67108864),
        lock_timeout=dict(type="int", default=10),
        statement_timeout=dict(type="int", default=3600),
        fingerprint=dict(type="bool", default=False),
        writes_since=dict(type="dict"),
    )
    module = AnsibleModule(**postgres_module_kwargs(options))
    result = run_on_target(module, run, MaintenanceError)
    if result.pop("failed", False):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
