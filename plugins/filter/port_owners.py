# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: port_owners
short_description: Which containers publish given host ports
version_added: 1.0.0
description:
- Given the container list of M(community.docker.docker_host_info) (with C(verbose_output=true)) and a
  list of host ports, returns C([port, container name]) pairs for every container publishing one of the
  ports. Used to name the owner of a busy port before deploying (G5).
options:
  _input:
    description: Containers as returned by M(community.docker.docker_host_info).
    type: list
    elements: dict
    required: true
  ports:
    description: Host ports to look for.
    type: list
    elements: int
    required: true
author:
- ner11.ops maintainers
"""

EXAMPLES = r"""
- name: Who holds 8000?
  ansible.builtin.debug:
    msg: "{{ host_info.containers | ner11.ops.port_owners([8000]) }}"
"""

RETURN = r"""
_value:
  description: Sorted C([port, container name]) pairs.
  type: list
  elements: list
"""

from ansible_collections.ner11.ops.plugins.filter.stack_model import port_owners


class FilterModule(object):
    def filters(self):
        return {"port_owners": port_owners}
