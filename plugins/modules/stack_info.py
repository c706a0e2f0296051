#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: stack_info
short_description: Find the containers, volumes and network a NER11 stack actually runs on
version_added: 1.1.0
description:
  - The one discovery step every role of the collection uses. Reads the Docker Engine API over its socket
    (the same documents as C(docker inspect); no docker CLI or SDK needed) and finds, per service
    (C(postgres), C(api), C(frontend)), the container that runs it, in this order -
    an explicit C(container_name) in O(stack), the collection's labels C(io.ner11.project)/C(io.ner11.service),
    docker-compose labels C(com.docker.compose.project)/C(com.docker.compose.service) (compose v1 and v2),
    the collection's derived name C(<project>-<service>-1).
  - Returns per service the actual container name, id, image, state, health, mounts, volumes, published ports
    and networks, whether the collection manages it or adopted it (a compose-made container), and the drift
    between the stack model and what runs (image, env, ports, volumes, healthcheck, memory limit). Values
    of secret variables are never returned.
  - The returned RV(containers) map is the only source of container names for the roles; a container that
    does not exist yet is listed under the name the collection would create.
  - Also lists the running containers outside the stack that publish the stack's host ports (RV(port_conflicts)).
  - Read-only; runs the same in check mode.
options:
  stack:
    description:
      - The C(ner11_stack) overrides from inventory (see docs/stack-model.md); completed with the
        collection's defaults the same way as the P(ner11.ops.stack_model#filter) filter.
    type: dict
    default: {}
  services:
    description: The services this host runs; RV(adopted), RV(missing), RV(port_conflicts) cover only these.
    type: list
    elements: str
    choices: [postgres, api, frontend]
    default: [postgres, api, frontend]
  docker_host:
    description:
      - The engine to read, V(unix:///var/run/docker.sock) or V(tcp://host:port) (no TLS).
      - Defaults to the E(DOCKER_HOST) environment variable, else V(unix:///var/run/docker.sock).
    type: str
extends_documentation_fragment:
  - ner11.ops.attributes
attributes:
  check_mode:
    support: full
    details: Read-only; the same answer in check mode.
  diff_mode:
    support: N/A
    details: Read-only; drift is returned in RV(services), not as a diff of a change.
  idempotent:
    support: full
author:
  - ner11.ops maintainers (@ner11-ops)
notes:
  - Needs permission to read the engine's socket on the managed node; nothing else (python3 only).
seealso:
  - name: Adopting an existing stack
    description: docs/adopting.md in the collection.
    link: https://github.com/ner11/ner11.ops/blob/main/docs/adopting.md
"""

EXAMPLES = r"""
- name: Find the stack's containers
  ner11.ops.stack_info:
    stack: "{{ ner11_stack | default({}) }}"
  register: found

- name: Back up from the database container that actually runs
  ner11.ops.pg_backup:
    container: "{{ found.containers.postgres }}"
    backup_dir: /var/backups/ner11
"""

RETURN = r"""
selected:
  description: The services this host runs (from O(services), else its inventory groups), in start order.
  returned: always
  type: list
  elements: str
project:
  description: The stack's project name.
  returned: always
  type: str
containers:
  description: Service -> actual container name (the derived name when the container does not exist).
  returned: always
  type: dict
  sample: {postgres: ner11_postgres_1, api: ner11_api_1, frontend: ner11_frontend_1}
ids:
  description: Service -> container id (empty when missing).
  returned: always
  type: dict
services:
  description:
    - Per service - C(found), C(name), C(id), C(image), C(state), C(running), C(health), C(origin)
      (C(name), C(collection), C(compose), C(default_name)), C(managed), C(adopted), C(compose) (project,
      service, version), C(mounts), C(volumes), C(ports), C(networks), C(drift) (list of field/model/actual),
      C(kept_volumes) (volumes in use that differ from the model and are kept) and C(desired) (the
      container the model asks for, with the volumes in use kept).
  returned: always
  type: dict
adopted:
  description: Selected services whose container exists and is not managed by the collection (created by compose or by hand).
  returned: always
  type: list
  elements: str
managed:
  description: Selected services whose container carries the collection's labels.
  returned: always
  type: list
  elements: str
missing:
  description: Selected services without a container.
  returned: always
  type: list
  elements: str
running:
  description: Selected services whose container runs.
  returned: always
  type: list
  elements: str
drifted:
  description: Selected services whose container differs from the model.
  returned: always
  type: list
  elements: str
drift_report:
  description: One line per drifted field, for the operator.
  returned: always
  type: list
  elements: str
network:
  description: The network the stack's containers are attached to (the model's network when none exists).
  returned: always
  type: str
volumes:
  description: Named volumes mounted by the selected services' containers.
  returned: always
  type: list
  elements: str
port_conflicts:
  description: C([port, container]) for running containers outside the stack that publish a host port of the selected services.
  returned: always
  type: list
  elements: list
docker_root_dir:
  description: The engine's data root (for disk checks).
  returned: always
  type: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.ner11.ops.plugins.module_utils.discovery import (
    SERVICES,
    DiscoveryError,
    discover,
    drift_text,
    explicit_names_of,
)
from ansible_collections.ner11.ops.plugins.module_utils.docker_socket import Engine, EngineError
from ansible_collections.ner11.ops.plugins.module_utils.stack_model import (
    StackModelError,
    container_spec,
    normalize,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            stack=dict(type="dict", default={}),
            services=dict(type="list", elements="str", choices=list(SERVICES), default=list(SERVICES)),
            docker_host=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    try:
        model = normalize(module.params["stack"] or {})
    except StackModelError as exc:
        module.fail_json(msg="invalid ner11_stack: %s" % exc)

    engine_host = module.params["docker_host"] or os.environ.get("DOCKER_HOST") or ""
    try:
        engine = Engine(engine_host or None)
        info = engine.info()
        containers = engine.containers()
    except (EngineError, ValueError) as exc:
        module.fail_json(
            msg="The Docker engine does not answer (%s). Start it (systemctl start docker), or check that this user "
            "may read its socket, and run this again." % exc
        )
    root_dir = info.get("DockerRootDir") or ""

    specs = {s: container_spec(model, s) for s in SERVICES}
    try:
        found = discover(
            containers,
            model,
            explicit_names=explicit_names_of(module.params["stack"]),
            services=module.params["services"],
            specs=specs,
        )
    except DiscoveryError as exc:
        module.fail_json(msg=str(exc))
    found["drift_report"] = drift_text(found)
    found["docker_root_dir"] = root_dir
    module.exit_json(changed=False, **found)


if __name__ == "__main__":
    main()
