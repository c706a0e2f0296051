# -*- coding: utf-8 -*-
# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    # Descriptions of the attributes every module states (support is per module).
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description:
      - Can run in check_mode and return changed status prediction without modifying target.
      - ner11.ops modules return the plan of what would happen.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
  idempotent:
    description:
      - When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
      - This assumes that the system controlled/queried by the module has not changed in a relevant way.
"""

    ACTIONGROUP_BACKUP = r"""
options: {}
attributes:
  action_group:
    description: Use C(group/ner11.ops.backup) in C(module_defaults) to set defaults for this module.
    support: full
    membership:
      - ner11.ops.backup
"""

    ACTIONGROUP_OPS = r"""
options: {}
attributes:
  action_group:
    description: Use C(group/ner11.ops.ops) in C(module_defaults) to set defaults for this module.
    support: full
    membership:
      - ner11.ops.ops
"""
