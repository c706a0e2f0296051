# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: startup_summary
short_description: The startup summary of every host of a batch, from each host's registered results
version_added: 1.1.0
description:
- Builds the C(ner11_startup) entry of every host of a batch in one task (run_once) from what each
  host registered - its pre-flight M(ner11.ops.ner_health) result, its verify result and the step
  records of its starts - instead of two tasks per host (P(ner11.ops.startup#role), issue 14).
- Each entry has C(project), C(check_mode), C(status), C(started), C(already_running), C(steps),
  C(preflight) (disk and memory checks), C(failed_checks), C(warnings) and C(total_s) (from the
  pre-flight's C(started_epoch) to O(now)) and C(report), the lines an operator reads (the total,
  then each step next to the runbook's expected time).
options:
  _input:
    description: The host names of the batch.
    type: list
    elements: str
    required: true
  results:
    description:
    - What each host of the batch registered, in the order of the input - C(hostvars) of each host
      (C(ansible_play_batch | map('extract', hostvars) | list)). Its C(__startup_first) (the
      pre-flight result), C(__startup_verified) (the verify result) and C(__startup_steps) (the step
      records of its starts) are read; a missing one counts as not run.
    - One extraction of each host's variables for the three (each C(hostvars[host]) computes that
      host's variables again on the controller; issue 14).
    type: list
    elements: dict
    required: true
  check_mode:
    description: Whether the run is in check mode.
    type: bool
    default: false
  now:
    description: Seconds since the epoch at the summary.
    type: float
author:
- ner11.ops maintainers
"""

EXAMPLES = r"""
- name: Summarise the startup of every host of the batch
  ansible.builtin.set_fact:
    __startup_summaries: >-
      {{ ansible_play_batch | ner11.ops.startup_summary(ansible_play_batch | map('extract', hostvars) | list,
                                                        ansible_check_mode, now().timestamp()) }}
  run_once: true
"""

RETURN = r"""
_value:
  description: The summary of every host, keyed by host name.
  type: dict
"""

from ansible_collections.ner11.ops.plugins.module_utils.startup_summary import batch_summary


def startup_summary(hosts, results, check_mode=False, now=None):
    results = list(results or [])
    firsts = [r.get("__startup_first", {}) for r in results]
    verifieds = [r.get("__startup_verified", {}) for r in results]
    steps = [r.get("__startup_steps", []) for r in results]
    return batch_summary(hosts, firsts, verifieds, steps, bool(check_mode), now)


class FilterModule:
    def filters(self):
        return {"startup_summary": startup_summary}
