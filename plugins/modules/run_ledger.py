#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: run_ledger
short_description: Append one redacted JSON line per playbook run to the host's run ledger
version_added: 1.1.0
description:
  - Builds the ledger record of one run on one host (playbook, maintenance window id, steps, results,
    backup ids, durations, AWX job id) and appends it as one JSON line to O(path) (0600, directory 0700).
  - Secrets are redacted before anything is written or returned - values under secret-looking keys
    (password, token, secret, ...), URL credentials, C(password=) pairs, and every exact value listed
    in O(secret_values).
  - The line is written with one locked C(write) and C(fsync), so concurrent runs never interleave.
  - An action plugin of the same name builds the line on the controller and appends it with one plain
    command run by the host's Python (no module start-up on the host); where it cannot (the host's
    Python is not known yet, or the connection cannot pass the line on stdin) it runs this module.
    Both write the same line the same way; C(recorded_at) and C(finished_at) come from the controller's
    clock on the fast path.
  - The ledger is an audit record of the run, not state the module manages - it reports C(changed=false),
    so an idempotent playbook still reports no change on its second run.
  - The global summary over all hosts (for M(ansible.builtin.set_stats)) is made with the
    P(ner11.ops.ledger_summary#filter) filter from the RV(line) of each host.
  - M(ner11.ops.ner_health) appends the same line for its own run with its O(ner11.ops.ner_health#module:ledger) option
    (in C(playbooks/health.yml) - one task per host instead of the check and this module).
author: ner11.ops maintainers (@ner11-ops)
extends_documentation_fragment:
  - ner11.ops.attributes
attributes:
  check_mode:
    support: full
    details: Returns the redacted line it would append (RV(line)) and writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: none
    details: Every run appends its own line (the ledger is per run); C(changed) is always false.
options:
  path:
    description:
      - Absolute path of the ledger file (JSON lines).
      - One of O(path) and O(stack) is required.
    type: path
  stack:
    description:
      - The stack model (C(ner11_stack), completed with the defaults of P(ner11.ops.stack_model#filter)); the ledger
        is C(ledger.jsonl) in its C(config_dir).
      - The playbooks pass the model here rather than templating the path with the filter in every host's task.
    type: dict
  playbook:
    description: Name of the playbook that ran, such as C(maintenance).
    type: str
    required: true
  host:
    description: The host the run is recorded for, usually C(inventory_hostname).
    type: str
    required: true
  status:
    description: Outcome of the run on this host.
    type: str
    default: ok
    choices: [ok, changed, failed, skipped, refused, rolled_back]
  window:
    description: Id of the maintenance window (or any run id the playbook uses), if any.
    type: str
  steps:
    description:
      - The steps of the run - each a step name or a mapping with C(name) and optional C(status),
        C(changed), C(duration_s) and other keys.
    type: list
    elements: raw
    default: []
  results:
    description: Free-form results of the run (redacted before writing).
    type: dict
    default: {}
  backup_ids:
    description: Ids of the backups the run took, pinned or used.
    type: list
    elements: str
    default: []
  started_at:
    description: Start of the run, seconds since the epoch.
    type: float
  finished_at:
    description: End of the run, seconds since the epoch; now when not given.
    type: float
  duration_s:
    description: Duration of the run in seconds; computed from O(started_at) when not given.
    type: float
  awx_job_id:
    description:
      - The AWX job id, when the run is an AWX job.
      - Default - the play's C(awx_job_id), else its C(tower_job_id) (set by AWX), taken by the action plugin.
    type: str
  extra:
    description: More top-level fields for the line (redacted too; they never replace the standard fields).
    type: dict
    default: {}
  secret_values:
    description:
      - Exact secret strings that must never appear in the line (replaced wherever they occur).
      - The action plugin always adds the play's C(ner11_db_password) when it is set.
    type: list
    elements: str
    default: []
"""

EXAMPLES = r"""
- name: Record the run
  ner11.ops.run_ledger:
    path: /var/lib/ner11/ner11/ledger.jsonl
    playbook: maintenance
    host: "{{ inventory_hostname }}"
    status: ok
    window: w20261206T0200
    steps:
      - {name: vacuum_analyze, status: ok, changed: true, duration_s: 4.2}
    backup_ids: [ner11_db-20261206T020012Z-manual]
    # The AWX job id and ner11_db_password (redacted) come from the play; no need to pass them.
  register: ledger

- name: One summary for the whole run (AWX passes it to the next workflow node)
  ansible.builtin.set_stats:
    data:
      ner11_run: "{{ ansible_play_hosts_all | map('extract', hostvars, 'ledger') | ner11.ops.ledger_summary }}"
    per_host: false
  run_once: true
"""

RETURN = r"""
ledger_writer:
  description:
    - How the line was appended when the task ran through the module's action plugin - V(command) (one plain
      command run by the host's Python, no module start-up) or V(module) (this module, when that command could not
      run).
  returned: when run through the action plugin (always, in a playbook)
  type: str
  sample: command
line:
  description: The redacted record (written, or in check mode that would be written).
  returned: always
  type: dict
path:
  description: The ledger file.
  returned: always
  type: str
bytes:
  description: Bytes appended (0 in check mode).
  returned: always
  type: int
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ner11.ops.plugins.module_utils.ledger import (
    ARGUMENT_SPEC,
    MUTUALLY_EXCLUSIVE,
    REQUIRED_ONE_OF,
    LedgerError,
    append,
    ledger_path,
    line_from_params,
)


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        required_one_of=REQUIRED_ONE_OF,
        mutually_exclusive=MUTUALLY_EXCLUSIVE,
        supports_check_mode=True,
    )
    p = module.params
    try:
        path = ledger_path(p)
        line = line_from_params(p)
        written = 0 if module.check_mode else append(path, line)
    except LedgerError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, line=line, path=path, bytes=written)


if __name__ == "__main__":
    main()
