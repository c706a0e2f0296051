# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: stack_model
short_description: Complete and validate a NER11 stack model
version_added: 1.0.0
description:
  - Merges the C(ner11_stack) overrides from inventory onto the collection's defaults
    (one place for every default), validates them and derives names, URLs, the start
    order (dependencies first) and the stop order (the reverse).
  - Fails with a message naming the key to fix for unknown keys, port collisions (G5),
    dependency cycles and invalid names.
options:
  _input:
    description: The C(ner11_stack) overrides; an empty mapping gives the reference stack.
    type: dict
    required: true
author:
  - ner11.ops maintainers
"""

EXAMPLES = r"""
- name: Complete the stack model
  ansible.builtin.set_fact:
    __model: "{{ ner11_stack | default({}) | ner11.ops.stack_model }}"

- name: Start order
  ansible.builtin.debug:
    msg: "{{ ({} | ner11.ops.stack_model).start_order }}"  # ['postgres', 'api', 'frontend']
"""

RETURN = r"""
_value:
  description:
    - The complete stack model with C(services), C(start_order), C(stop_order), C(containers),
      C(api_url) and C(frontend_url).
  type: dict
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.ner11.ops.plugins.module_utils.stack_model import (
    StackModelError,
    container_spec,
    normalize,
)


def stack_model(value):
    try:
        return normalize(value or {})
    except StackModelError as exc:
        raise AnsibleFilterError("invalid ner11_stack: %s" % exc) from None


def stack_container_spec(model, service):
    try:
        return container_spec(model, service)
    except (KeyError, StackModelError) as exc:
        raise AnsibleFilterError("cannot build the container of %r: %s" % (service, exc)) from None


def port_owners(containers, ports):
    """[port, container name] for every container publishing one of ``ports``."""
    wanted = {int(p) for p in ports}
    owners = set()
    for container in containers or []:
        name = (container.get("Names") or ["?"])[0].lstrip("/")
        for port in container.get("Ports") or []:
            if port.get("PublicPort") in wanted:
                owners.add(("%s" % port["PublicPort"], name))
    return [list(o) for o in sorted(owners)]


class FilterModule:
    def filters(self):
        return {"stack_model": stack_model}
