# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: maintenance_window
short_description: Where now stands against a maintenance window (inside, id, deadline)
version_added: 1.1.0
description:
- Evaluates a window C({weekday, start, end, nth, months}) (UTC; C(nth) the n-th weekday of the month,
  C(months) the months it applies to) at the time O(now) and returns C(inside), C(forced), C(allowed),
  C(window_id), C(start), C(end), C(deadline) (epoch seconds new steps must finish by), C(remaining_s)
  and C(reason) (in words).
- Outside the window C(allowed) is false unless O(force); forced runs get a deadline of O(force_budget_s).
options:
  _input:
    description: The window mapping (C(ner11_maintenance_window)).
    type: dict
    required: true
  now:
    description: Epoch seconds to evaluate (default now).
    type: float
  force:
    description: Allow a run outside the window.
    type: bool
    default: false
  force_budget_s:
    description: Time budget of a forced run, seconds.
    type: int
    default: 14400
  tier:
    description: Tier name, the prefix of the window id.
    type: str
    default: weekly
author:
- ner11.ops maintainers
"""

EXAMPLES = r"""
- name: Where are we?
  ansible.builtin.debug:
    msg: "{{ {'weekday': 'sunday', 'nth': 1, 'start': '02:00', 'end': '06:00'} | ner11.ops.maintenance_window }}"
"""

RETURN = r"""
_value:
  description: The evaluation (inside, forced, allowed, window_id, start, end, deadline, remaining_s, reason).
  type: dict
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.ner11.ops.plugins.module_utils.maintwindow import WindowError, evaluate


def maintenance_window(spec, now=None, force=False, force_budget_s=14400, tier="weekly"):
    try:
        return evaluate(spec, now=now, force=bool(force), force_budget_s=int(force_budget_s), tier=str(tier))
    except WindowError as exc:
        raise AnsibleFilterError(str(exc)) from None


class FilterModule(object):
    def filters(self):
        return {"maintenance_window": maintenance_window}
