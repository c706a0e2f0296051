# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: redact
short_description: Mask secrets in text or data before it is shown or stored
version_added: 1.0.0
description:
- "Masks what the run ledger masks (M(ner11.ops.run_ledger)), with the same rule: values under secret-looking
  keys (C(password), C(token), ...), the password of C(scheme://user:password@host) URLs, C(password=...)
  pairs in free text, and every occurrence of the given secret values."
- Used on container log lines before a task prints them or an incident record keeps them.
options:
  _input:
    description: Text, or a list or dict of values.
    type: raw
    required: true
  secret_values:
    description: Exact values to mask wherever they appear (values shorter than 4 characters are ignored).
    type: list
    elements: str
    default: []
author:
- ner11.ops maintainers
"""

EXAMPLES = r"""
- name: Show the last log lines without credentials
  ansible.builtin.debug:
    msg: "{{ logs.stdout | ner11.ops.redact }}"
"""

RETURN = r"""
_value:
  description: The input with every secret replaced by C((redacted)).
  type: raw
"""

from ansible_collections.ner11.ops.plugins.module_utils.ledger import redact


class FilterModule(object):
    def filters(self):
        return {"redact": redact}
