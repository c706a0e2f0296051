# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: host_services
short_description: The NER11 services a host runs, from its inventory groups
version_added: 1.0.0
description:
  - Maps the host's groups to services with the collection's one map (C(ner11_db) runs
    C(postgres), C(ner11_api) the C(api), C(ner11_frontend) the C(frontend)); a host in none of
    these groups runs all three. Explicit services, when given, win.
  - The same rule as the O(ner11.ops.ner_health#module:groups) option of M(ner11.ops.ner_health);
    both use the one map in C(plugins/module_utils/stack_model.py).
options:
  _input:
    description: The host's groups, usually C(group_names).
    type: list
    elements: str
    required: true
  services:
    description: Explicit services; when not empty they are the answer (in start order).
    type: list
    elements: str
    default: []
author:
  - ner11.ops maintainers
"""

EXAMPLES = r"""
- name: The services of this host
  ansible.builtin.debug:
    msg: "{{ group_names | ner11.ops.host_services }}"  # ['api'] on a host of ner11_api
"""

RETURN = r"""
_value:
  description: Service names in start order, a subset of C(postgres), C(api), C(frontend).
  type: list
  elements: str
"""

from ansible_collections.ner11.ops.plugins.module_utils.stack_model import host_services as _host_services


def host_services(groups, services=None):
    return _host_services(list(services or []), list(groups or []))


class FilterModule(object):
    def filters(self):
        return {"host_services": host_services}
