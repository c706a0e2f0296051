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
  - Writes every file of O(files) into O(dir) (created 0700, its parent too) as 0600 files, each atomically
    (temporary file, fsync, rename), then appends O(ledger_line) as one JSON line to O(ledger) (0600).
  - Used by the P(ner11.ops.incident#role) role; the caller passes only non-secret, masked content.
  - The record is an audit trail of the run, not managed state - the module reports C(changed=false), so a
    diagnosis run reports no change.
author: ner11.ops maintainers (@ner11-ops)
extends_documentation_fragment:
  - ner11.ops.attributes
attributes:
  check_mode:
    support: full
    details: Returns the paths it would write (RV(paths)) and writes nothing.
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
    description: The ledger entry of this run (one JSON object).
    type: dict
"""

EXAMPLES = r"""
- name: Write the record
  ner11.ops.incident_record:
    dir: /var/lib/ner11/ner11/incidents/db-20261202T071819-071389
    files:
      incident.json: "{{ record }}"
      incident.md: "{{ lookup('ansible.builtin.template', 'incident.md.j2') }}"
    ledger: /var/lib/ner11/ner11/ledger.jsonl
    ledger_line: {playbook: incident_db, branch: healthy}
"""

RETURN = r"""
paths:
  description: The files written (in check mode - that would be written).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ner11.ops.plugins.module_utils.incidents import RecordError, plan, write


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dir=dict(type="path", required=True),
            files=dict(type="dict", default={}),
            ledger=dict(type="path"),
            ledger_line=dict(type="dict"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        if module.check_mode:
            paths = plan(p["dir"], p["files"], p["ledger"])
        else:
            paths = write(p["dir"], p["files"], p["ledger"], p["ledger_line"])
    except RecordError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, paths=paths)


if __name__ == "__main__":
    main()
