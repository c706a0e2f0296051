#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: incident_record
short_description: Write the files of an incident record and its run-ledger line
version_added: 1.1.0
description:
  - Writes every file of O(files) into O(dir) (0700; its parent is created 0700 when missing, an existing one keeps
    its mode) as 0600 files, each atomically (temporary file, fsync, rename), then appends the run's line
    (O(ledger_line)) to the run ledger O(ledger).
  - Every file is redacted first as the ledger line is - the secret values of O(ledger_line), the password of
    C(scheme://user:password@host) URLs, C(password=...) pairs, values under secret-looking keys - so container
    logs kept in a record hold no credentials.
  - The line is built, redacted and appended as M(ner11.ops.run_ledger) does it (one locked C(write), C(fsync)), from
    the options of O(ledger_line), which are M(ner11.ops.run_ledger)'s options of the same names (its other
    fields - window, steps, backup ids, extra - stay empty).
  - Used by the P(ner11.ops.incident#role) role.
  - The record is an audit trail of the run, not managed state - the module reports C(changed=false), so a
    diagnosis run reports no change.
author: ner11.ops maintainers (@ner11-ops)
extends_documentation_fragment:
  - ner11.ops.attributes
attributes:
  check_mode:
    support: full
    details: Returns the paths it would write (RV(paths)) and the line it would append (RV(ledger_line)); writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: none
    details: Every run appends its own ledger line (records are per run); C(changed) is always false.
options:
  dir:
    description: Absolute directory of this record.
    type: path
    required: true
  files:
    description: File name to content. Strings are written as they are, other values as indented JSON.
    type: dict
    default: {}
  ledger:
    description: Absolute path of the run ledger (JSON lines).
    type: path
  ledger_line:
    description:
      - The ledger line of this run, written when O(ledger) is set (M(ner11.ops.run_ledger)'s options of the same names).
      - An action plugin completes it from the play - the AWX job id and the database password to redact.
    type: dict
    suboptions:
      playbook:
        description: As O(ner11.ops.run_ledger#module:playbook) - V(incident_db), V(incident_api), V(incident_disk).
        type: str
        required: true
      host:
        description: As O(ner11.ops.run_ledger#module:host).
        type: str
        required: true
      status:
        description: The run's outcome (O(ner11.ops.run_ledger#module:status)).
        type: str
        default: ok
        choices: [ok, changed, failed, skipped, refused, rolled_back]
      results:
        description: What the run found and did (the incident's id, branch, actions, health before and after).
        type: dict
        default: {}
      started_at:
        description: As O(ner11.ops.run_ledger#module:started_at).
        type: float
      finished_at:
        description: As O(ner11.ops.run_ledger#module:finished_at).
        type: float
      awx_job_id:
        description: As O(ner11.ops.run_ledger#module:awx_job_id) - by default the play's, taken by the action plugin.
        type: str
      secret_values:
        description: As O(ner11.ops.run_ledger#module:secret_values) - the play's C(ner11_db_password) is always added.
        type: list
        elements: str
        default: []
"""

EXAMPLES = r"""
- name: Write the record
  ner11.ops.incident_record:
    dir: /var/lib/ner11/ner11/incidents/db-20261202T071819-071389
    files:
      incident.json: "{{ record }}"
      incident.md: "{{ lookup('ansible.builtin.template', 'incident.md.j2') }}"
    ledger: /var/lib/ner11/ner11/ledger.jsonl
    ledger_line:
      playbook: incident_db
      host: "{{ inventory_hostname }}"
      results: {incident_id: db-20261202T071819-071389, branch: healthy}
"""

RETURN = r"""
paths:
  description: The files written (in check mode - that would be written).
  returned: always
  type: list
  elements: str
ledger_line:
  description: The redacted ledger line appended (in check mode - that would be appended).
  returned: when O(ledger) and O(ledger_line) are set
  type: dict
  sample: {"schema": 1, "playbook": "incident_db", "host": "node1", "status": "ok", "results": {"branch": "healthy"}}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ner11.ops.plugins.module_utils.incidents import LINE_OPTIONS, RecordError, plan, record_line, write
from ansible_collections.ner11.ops.plugins.module_utils.ledger import ARGUMENT_SPEC


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dir=dict(type="path", required=True),
            files=dict(type="dict", default={}),
            ledger=dict(type="path"),
            ledger_line=dict(type="dict", options={k: ARGUMENT_SPEC[k] for k in LINE_OPTIONS}),
        ),
        supports_check_mode=True,
    )
    p = module.params
    out = {}
    try:
        line = record_line(p["ledger_line"]) if p["ledger"] and p["ledger_line"] else None
        if module.check_mode:
            paths = plan(p["dir"], p["files"], p["ledger"])
        else:
            secrets = (p["ledger_line"] or {}).get("secret_values")
            paths = write(p["dir"], p["files"], p["ledger"], line, secrets)
    except RecordError as exc:
        module.fail_json(msg=str(exc))
    if line is not None:
        out["ledger_line"] = line
    module.exit_json(changed=False, paths=paths, **out)


if __name__ == "__main__":
    main()
