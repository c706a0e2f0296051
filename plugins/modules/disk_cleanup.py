#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: disk_cleanup
short_description: Ordered, safe space recovery on one filesystem
version_added: 1.1.0
description:
  - Measures the filesystem of O(path) first, then takes the O(actions) in their order and stops as soon as
    O(target_free_percent) is free. Only files and Docker objects that free space on that filesystem are candidates.
  - C(tmp_files) - regular files older than O(tmp_age_days) under O(tmp_paths); never sockets, fifos, symlinks,
    C(*.lock), C(*.pid), never everything in C(/tmp) (G45).
  - C(rotated_logs) - rotated log files (C(*.gz), C(*.1), C(*.old), C(*-YYYYMMDD), ...) older than
    O(log_age_days) under O(log_paths); active logs are left alone (G15).
  - C(stopped_containers) - exited or created containers of no project in O(protect_projects) (never the stack's, G43)
    and not matching O(protect).
  - C(dangling_images) - untagged images older than O(image_age_hours) that no container uses.
  - Never a Docker volume - there is no volume action (G43, the runbook's C(docker system prune --volumes)).
  - Oldest candidates go first; the result reports per action the items removed (in check mode - that would be
    removed), their sizes and why, and the bytes freed.
author: ner11.ops maintainers (@ner11-ops)
extends_documentation_fragment:
  - ner11.ops.attributes
  - ner11.ops.attributes.ACTIONGROUP_OPS
attributes:
  check_mode:
    support: full
    details: Returns the exact plan (each item, its size, why) and the expected free space; removes nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: Once the target is met (or no candidate is left) a second run finds nothing to remove and reports C(changed=false).
options:
  path:
    description: A path on the filesystem to free (its mount point or any directory on it).
    type: path
    required: true
  target_free_percent:
    description: Stop once this share of the filesystem is free (runbooks - alert at 80 % used, act at 90 %).
    type: float
    default: 20
  actions:
    description: The actions, in the order they are tried.
    type: list
    elements: str
    choices: [tmp_files, rotated_logs, stopped_containers, dangling_images]
    default: [tmp_files, rotated_logs, stopped_containers, dangling_images]
  tmp_paths:
    description: Directories of C(tmp_files).
    type: list
    elements: path
    default: [/tmp, /var/tmp]
  tmp_age_days:
    description: Minimum age of a temporary file.
    type: float
    default: 7
  log_paths:
    description: Directories of C(rotated_logs).
    type: list
    elements: path
    default: [/var/log]
  log_age_days:
    description: Minimum age of a rotated log.
    type: float
    default: 30
  image_age_hours:
    description: Minimum age of a dangling image (runbook C1 - 72 h).
    type: float
    default: 72
  protect:
    description: Absolute path patterns, container names or image ids (shell patterns) that are never removed.
    type: list
    elements: str
    default: []
  protect_projects:
    description: Projects (C(io.ner11.project) or C(com.docker.compose.project) label) whose containers are never removed.
    type: list
    elements: str
    default: []
  docker_cli:
    description: The docker command line client on the target host.
    type: str
    default: docker
"""

EXAMPLES = r"""
- name: Free the log filesystem down to 80 % used, oldest rotated logs first
  ner11.ops.disk_cleanup:
    path: /var/log
    target_free_percent: 20
    actions: [rotated_logs, tmp_files]
    protect_projects: [ner11]
"""

RETURN = r"""
before:
  description: The filesystem before - total_bytes, free_bytes, used_percent, free_percent.
  returned: success
  type: dict
after:
  description: free_bytes and free_percent afterwards (in check mode - expected).
  returned: success
  type: dict
target_met:
  description: Whether O(target_free_percent) is free afterwards.
  returned: success
  type: bool
actions:
  description: Per action - candidates (item, size_bytes, why), freed_bytes, errors; or skipped with the reason.
  returned: success
  type: dict
freed_bytes:
  description: Bytes freed by all actions (in check mode - that would be freed).
  returned: success
  type: int
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ner11.ops.plugins.module_utils.diskclean import ACTIONS, CleanupError, run
from ansible_collections.ner11.ops.plugins.module_utils.docker_cli import docker_cli_option


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            target_free_percent=dict(type="float", default=20),
            actions=dict(type="list", elements="str", choices=list(ACTIONS), default=list(ACTIONS)),
            tmp_paths=dict(type="list", elements="path", default=["/tmp", "/var/tmp"]),  # noqa: S108 - cleaned, not created
            tmp_age_days=dict(type="float", default=7),
            log_paths=dict(type="list", elements="path", default=["/var/log"]),
            log_age_days=dict(type="float", default=30),
            image_age_hours=dict(type="float", default=72),
            protect=dict(type="list", elements="str", default=[]),
            protect_projects=dict(type="list", elements="str", default=[]),
            docker_cli=docker_cli_option(),
        ),
        supports_check_mode=True,
    )
    try:
        result = run(dict(module.params), module.check_mode, runner=module.run_command)
    except CleanupError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
