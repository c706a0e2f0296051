#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_sessions
short_description: Diagnose PostgreSQL sessions and end the ones a rule selects
version_added: 1.1.0
description:
  - Takes one snapshot of C(pg_stat_activity) and reports the client sessions with their state, ages, wait
    events and the sessions blocking them (C(pg_blocking_pids)), the connection counts by state and the
    utilisation of C(max_connections), the blocked/blocking pairs, the deadlock counters of
    C(pg_stat_database) and the settings waiting for a restart (C(pending_restart)).
  - Query text is shown with every literal (strings, dollar-quoted strings, numbers) replaced by C(?),
    comments dropped, and cut to O(query_chars) characters, so values and passwords never reach the output.
  - Rules in O(select) pick sessions over a threshold - C(idle_in_transaction), C(idle), C(running), and
    C(blocking) (a session that keeps another waiting on a lock for O(blocked_seconds)) - on O(db_name) only,
    optionally narrowed by O(application_names) and O(users).
  - With O(action=cancel) the selected running statements are cancelled. With O(action=terminate) running
    statements are cancelled first and their sessions terminated only if the statement still runs after
    O(cancel_wait_seconds); idle and idle-in-transaction sessions are terminated. Both need O(confirm) equal to
    O(db_name).
  - Never selected - the module's own session, sessions that are not client backends (replication senders,
    autovacuum, background workers), maintenance and backup sessions (C(pg_dump), C(pg_restore),
    C(pg_basebackup), C(vacuumdb), C(reindexdb), this collection's own tools, running VACUUM/ANALYZE/REINDEX/
    CREATE INDEX) and the applications in O(protect_application_names).
  - A session is only signalled if it is still in the state it was selected in (same pid and same
    C(state_change)), so a session that moved on between the snapshot and the action is left alone.
author: ner11.ops maintainers (@ner11-ops)
extends_documentation_fragment:
  - ner11.ops.attributes
  - ner11.ops.attributes.ACTIONGROUP_OPS
  - ner11.ops.postgres
attributes:
  check_mode:
    support: full
    details: Returns the plan - RV(cancelled) and RV(terminated) list the sessions that would be signalled - and signals none.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: Ended sessions are gone, so a second run selects nothing and reports C(changed=false).
options:
  db_name:
    description: The database whose sessions may be selected (and the database the module connects to).
    type: str
    default: ner11_db
  select:
    description:
      - Rules that select sessions for O(action). Empty selects nothing (diagnosis only).
      - C(idle_in_transaction) - a transaction open and idle longer than O(idle_in_transaction_seconds).
      - C(idle) - an idle session older than O(idle_seconds).
      - C(running) - a statement running longer than O(running_seconds).
      - C(blocking) - a session not itself waiting that holds a lock another session has waited on for
        O(blocked_seconds).
    type: list
    elements: str
    choices: [idle_in_transaction, idle, running, blocking]
    default: []
  action:
    description: What to do with the selected sessions.
    type: str
    choices: [report, cancel, terminate]
    default: report
  confirm:
    description: Must equal O(db_name) for O(action=cancel) or O(action=terminate) (not needed in check mode).
    type: str
  application_names:
    description: Only select sessions of these C(application_name) values (empty - any).
    type: list
    elements: str
    default: []
  users:
    description: Only select sessions of these roles (empty - any).
    type: list
    elements: str
    default: []
  protect_application_names:
    description: Further C(application_name) values that are never selected.
    type: list
    elements: str
    default: []
  idle_seconds:
    description: Idle threshold (runbook - 30 minutes).
    type: int
    default: 1800
  idle_in_transaction_seconds:
    description: Idle-in-transaction threshold.
    type: int
    default: 300
  running_seconds:
    description: Running-statement threshold (runbook - 5 minutes).
    type: int
    default: 300
  blocked_seconds:
    description: How long a session must have waited on a lock before its blocker is selected by C(blocking).
    type: int
    default: 60
  utilisation_warn_percent:
    description: Connection utilisation (client sessions / C(max_connections)) above which RV(pool_status) warns.
    type: int
    default: 80
  query_chars:
    description: Length of the masked query text shown per session.
    type: int
    default: 200
  cancel_wait_seconds:
    description: With O(action=terminate), how long a cancelled statement may take to stop before its session is terminated.
    type: int
    default: 5
"""

EXAMPLES = r"""
- name: Diagnose the sessions of the stack's database
  ner11.ops.pg_sessions:
    container: ner11-postgres-1
    db_name: ner11_db
  register: sessions

- name: Terminate transactions left idle for over 5 minutes (pool exhausted)
  ner11.ops.pg_sessions:
    container: ner11-postgres-1
    db_name: ner11_db
    select: [idle_in_transaction]
    action: terminate
    confirm: ner11_db

- name: Cancel (then terminate) the session blocking others for over a minute
  ner11.ops.pg_sessions:
    container: ner11-postgres-1
    db_name: ner11_db
    select: [blocking]
    blocked_seconds: 60
    action: terminate
    confirm: ner11_db
"""

RETURN = r"""
server_version:
  description: The server's version (C(server_version)).
  returned: success
  type: str
reserved_connections:
  description: The connection slots reserved for superusers (C(superuser_reserved_connections)), left out of the utilisation.
  returned: success
  type: int
counts:
  description: Client sessions by state (this module's own session counts as C(active)).
  returned: success
  type: dict
  sample: {"active": 1, "idle": 6, "idle in transaction": 2}
connections:
  description: Client sessions in use, this module's included.
  returned: success
  type: int
max_connections:
  description: The server's C(max_connections).
  returned: success
  type: int
utilisation_percent:
  description: RV(connections) relative to RV(max_connections).
  returned: success
  type: float
pool_status:
  description: C(pass), C(warn) above O(utilisation_warn_percent), C(fail) at 95 % and more.
  returned: success
  type: str
sessions:
  description:
    - Every client session but this module's own - pid, datname, usename, application_name, client_addr, state,
      wait_event_type, wait_event, backend/xact/query/state ages in seconds, blocked_by (pids), the masked query,
      over_threshold (the rules it is over, whether selected or not) and protected (why it is never ended, or null).
  returned: success
  type: list
  elements: dict
blocking:
  description: One entry per blocked/blocking pair - pids, users, applications, masked queries, how long the blocked one waits.
  returned: success
  type: list
  elements: dict
selected:
  description: Sessions the rules select (pid, rules, state, user, application, age, masked query).
  returned: success
  type: list
  elements: dict
cancelled:
  description: Pids whose statement was cancelled (in check mode - would be).
  returned: success
  type: list
  elements: int
terminated:
  description: Pids whose session was terminated (in check mode - would be).
  returned: success
  type: list
  elements: int
left_alone:
  description: Selected pids not signalled (they moved on before the action, or O(action=cancel) on an idle session).
  returned: success
  type: list
  elements: int
deadlocks:
  description: C(pg_stat_database.deadlocks) per database since the last statistics reset.
  returned: success
  type: dict
deadlocks_db:
  description: The deadlock counter of O(db_name).
  returned: success
  type: int
pending_restart:
  description: Names of settings changed but waiting for a PostgreSQL restart.
  returned: success
  type: list
  elements: str
findings:
  description: One line per problem found (utilisation, sessions over thresholds, waits, deadlocks, pending restart).
  returned: success
  type: list
  elements: str
queries:
  description: The signalling statements that ran (pids and timestamps only, no user data).
  returned: success
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ner11.ops.plugins.module_utils.pgexec import postgres_module_kwargs, run_on_target
from ansible_collections.ner11.ops.plugins.module_utils.sessions import RULES, SessionsError, run


def main():
    options = dict(
        db_name=dict(type="str", default="ner11_db"),
        select=dict(type="list", elements="str", choices=list(RULES), default=[]),
        action=dict(type="str", choices=["report", "cancel", "terminate"], default="report"),
        confirm=dict(type="str"),
        application_names=dict(type="list", elements="str", default=[]),
        users=dict(type="list", elements="str", default=[]),
        protect_application_names=dict(type="list", elements="str", default=[]),
        idle_seconds=dict(type="int", default=1800),
        idle_in_transaction_seconds=dict(type="int", default=300),
        running_seconds=dict(type="int", default=300),
        blocked_seconds=dict(type="int", default=60),
        utilisation_warn_percent=dict(type="int", default=80),
        query_chars=dict(type="int", default=200),
        cancel_wait_seconds=dict(type="int", default=5),
    )
    module = AnsibleModule(**postgres_module_kwargs(options))
    result = run_on_target(module, run, SessionsError)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
