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
    C(*.lock), C(*.pid), never everything in C(/tmp).
  - C(rotated_logs) - rotated log files (C(*.gz), C(*.1), C(*.old), C(*-YYYYMMDD), ...) older than
    O(log_age_days) under O(log_paths); active logs are left alone.
  - The file actions never enter, and never list a file of, a protected directory tree, whichever O(tmp_paths)
    and O(log_paths) are given - a PostgreSQL data directory (a directory holding C(PG_VERSION); its C(*.1) files
    are table data) or a tablespace (its C(PG_<major>_<catalog version>) directory), a backup (a directory holding
    C(manifest.json); its C(*.gz) files are the dump), a backup
    being written or deleted (C(.partial-*), C(.deleting-*)), and Docker's data root (the engine's
    C(DockerRootDir), and C(/var/lib/docker) in any case) with its volumes and container filesystems. A path of
    O(tmp_paths) or O(log_paths) inside such a tree is not walked at all. Each skipped tree is reported in
    RV(actions) with the reason, in check mode too.
  - C(stopped_containers) - exited or created containers of no project in O(protect_projects) (never the stack's)
    and not matching O(protect).
  - C(dangling_images) - untagged images older than O(image_age_hours) that no container uses.
  - Never a Docker volume - there is no volume action, no C(docker system prune --volumes).
  - Oldest candidates go first; the result reports per action the items removed (in check mode - that would be
    removed), their sizes and why, and the bytes freed. A removal that fails is not a change - the module warns
    with the item, the cause and what to do, and goes on with the next candidate.
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
    details:
      - C(changed) means something was removed (in check mode - something would be removed); a removal that fails is
        a warning, not a change.
      - Once the target is met (or no candidate is left) a second run finds nothing to remove and reports
        C(changed=false).
options:
  path:
    description: A path on the filesystem to free (its mount point or any directory on it).
    type: path
    required: true
  target_free_percent:
    description: Stop once this share (percent) of the filesystem is free (runbooks - alert at 80 % used, act at 90 %).
    type: float
    default: 20
  actions:
    description: The actions, in the order they are tried.
    type: list
    elements: str
    choices: [tmp_files, rotated_logs, stopped_containers, dangling_images]
    default: [tmp_files, rotated_logs, stopped_containers, dangling_images]
  tmp_paths:
    description: Directories of C(tmp_files). Protected trees below them (or around them) are skipped.
    type: list
    elements: path
    default: [/tmp, /var/tmp]
  tmp_age_days:
    description: Minimum age of a temporary file.
    type: float
    default: 7
  log_paths:
    description:
      - Directories of C(rotated_logs). Protected trees below them (or around them) are skipped.
      - Give log directories, not a whole data disk - a rotated-log name (C(*.1), C(*.gz)) also fits data files.
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
    description:
      - The docker command line client on the target host.
      - The file actions ask it for Docker's data root (to protect it) and fall back to C(/var/lib/docker) when it is
        missing or the engine does not answer; the Docker actions need it.
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
path:
  description: The measured path (O(path)).
  returned: success
  type: str
  sample: /var/log
target_free_percent:
  description: The share of the filesystem (percent) to have free (O(target_free_percent)).
  returned: success
  type: float
  sample: 20.0
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
  description:
    - Per action (the action's name as key) - C(candidates), the items removed (in check mode - that would be
      removed), each with item, size_bytes and why; C(freed_bytes); C(errors), one message per item that could not be
      removed (file or object, cause, what to do - also a warning).
    - For C(tmp_files) and C(rotated_logs) also C(protected) - the protected trees met and not entered, each with
      item (the directory) and why.
    - An action not needed (target already met) or not useful (Docker's data root on another filesystem) has
      C(skipped) with the reason instead.
  returned: success
  type: dict
  sample:
    rotated_logs:
      candidates: [{item: /var/log/app/api.log.3.gz, size_bytes: 2097152, why: "rotated log, 41 day(s) old (older than 30)"}]
      freed_bytes: 2097152
      errors: []
      protected: [{item: /var/log/pgdata, why: "a PostgreSQL data directory (holds PG_VERSION): ..."}]
docker_data_root:
  description: Docker's data root the file actions protected (the engine's answer, or C(/var/lib/docker)).
  returned: when C(tmp_files) or C(rotated_logs) looked for files (not skipped)
  type: str
  sample: /var/lib/docker
freed_bytes:
  description: Bytes freed by all actions (in check mode - that would be freed).
  returned: success
  type: int
"""

import functools

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
    # A missing docker client is an OSError the core handles (the file actions then protect
    # /var/lib/docker, the docker actions fail with the fix), not a failure of run_command.
    runner = functools.partial(module.run_command, handle_exceptions=False)
    try:
        result = run(dict(module.params), module.check_mode, runner=runner)
    except CleanupError as exc:
        module.fail_json(msg=str(exc))
    for action in result["actions"].values():
        for error in action.get("errors") or []:
            module.warn(error)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
