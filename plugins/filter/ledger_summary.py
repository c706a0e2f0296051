# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: ledger_summary
short_description: One global summary of a run from the run-ledger lines of all hosts
version_added: 1.1.0
description:
- Folds the ledger records of every host of a run (the C(line) returned by M(ner11.ops.run_ledger), or the
  registered result holding it) into one summary for M(ansible.builtin.set_stats) with C(per_host=false)
  - status (the worst host status), hosts and their status, failed hosts, window, backup ids per host,
  AWX job id and the longest duration.
- A host whose entry is undefined or has no line (it failed before recording) is listed in
  C(hosts_without_record) and makes the status C(failed).
options:
  _input:
    description: Ledger lines, or registered M(ner11.ops.run_ledger) results, one per host.
    type: list
    elements: raw
    required: true
  hosts:
    description: Host names in the same order as the input, used to name hosts without a record.
    type: list
    elements: str
author:
- ner11.ops maintainers
"""

EXAMPLES = r"""
- name: Summary of the run
  ansible.builtin.set_stats:
    data:
      ner11_run: >-
        {{ ansible_play_hosts_all | map('extract', hostvars, '__ledger') | list
           | ner11.ops.ledger_summary(ansible_play_hosts_all) }}
    per_host: false
  run_once: true
"""

RETURN = r"""
_value:
  description:
  - The summary - playbook, status, hosts, hosts_without_record, failed_hosts, window, backup_ids,
    awx_job_id, duration_s_max.
  type: dict
"""

from ansible_collections.ner11.ops.plugins.module_utils.ledger import summary


def ledger_summary(items, hosts=None):
    lines = []
    hosts = list(hosts or [])
    for i, item in enumerate(items or []):
        line = item.get("line") if isinstance(item, dict) and isinstance(item.get("line"), dict) else item
        if not isinstance(line, dict) or not line.get("playbook"):
            lines.append({"host": hosts[i] if i < len(hosts) else str(i), "no_record": True})
        else:
            lines.append(line)
    return summary(lines)


class FilterModule(object):
    def filters(self):
        return {"ledger_summary": ledger_summary}
