# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: stack_container_spec
short_description: The docker_container options of one service of a NER11 stack model
version_added: 1.0.0
description:
- Given a model completed by P(ner11.ops.stack_model#filter) and a service name, returns the options for
  M(community.docker.docker_container) (name, image, env, mounts, published ports, network with the service
  alias, healthcheck, stop timeout, labels).
- Secrets are mounted as read-only files (C(secrets_mode=file)) or returned in C(secret_vars) for the
  caller to set from the vault (C(secrets_mode=env)).
options:
  _input:
    description: The complete stack model.
    type: dict
    required: true
  service:
    description: One of C(postgres), C(api), C(frontend).
    type: str
    required: true
author:
- ner11.ops maintainers
"""

EXAMPLES = r"""
- name: Options of the api container
  ansible.builtin.debug:
    msg: "{{ (ner11_stack | ner11.ops.stack_model) | ner11.ops.stack_container_spec('api') }}"
"""

RETURN = r"""
_value:
  description: The container options.
  type: dict
"""

from ansible_collections.ner11.ops.plugins.filter.stack_model import stack_container_spec


class FilterModule(object):
    def filters(self):
        return {"stack_container_spec": stack_container_spec}
