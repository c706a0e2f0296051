#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: artifact_restore
short_description: Restore a models, config or volume backup, verified and guarded
version_added: 1.0.0
description:
  - Verifies every checksum of the backup (C(data.tar) and, on damage, each member) before touching anything and
    refuses a corrupt backup naming the file.
  - Compares the target with the manifest (path, type, mode, sha256). An identical target is left alone
    (C(changed=false)).
  - Models and volumes are restored as a mirror - the target becomes exactly the backup, entries not in it are removed.
    Config backups are an overlay - their files are written, other files in the directory are left alone.
  - A host directory is restored into a sibling C(<dest>.ner11-new-<tag>) and swapped in by rename; the old one is
    kept as C(<dest>.ner11-old-<tag>) until the new one is in place, then removed. A mount point (and every
    container path or volume) is restored by extracting into C(<dest>/.ner11-restore-<tag>) and swapping the
    entries by rename. Modes and numeric owners are restored. The target is listed again afterwards and must equal
    the backup.
  - Replacing or removing anything in a non-empty target needs O(confirm) equal to the target name.
  - Before writing, the free space of the target's filesystem is checked (a mirror needs the backup's whole size,
    the old content stays until the swap; an overlay the files it writes); when it does not fit the module fails
    with the numbers and touches nothing (C(space) in RV(plan)).
  - When it fails after it started writing, it reports C(changed=true) and what it did in RV(changes).
author: ner11.ops maintainers (@ner11-ops)
extends_documentation_fragment:
  - ner11.ops.attributes
  - ner11.ops.attributes.ACTIONGROUP_BACKUP
attributes:
  check_mode:
    support: full
    details:
      - Returns the plan - paths to write, replace and remove, whether O(confirm) is needed, the space check.
      - The target is listed from a tar stream piped into the module's Python (no temporary file) - a host directory
        is walked, a container directory is read with C(docker exec), and a Docker volume is read (listing and C(df))
        through a temporary helper container (C(docker run --rm), the volume mounted read-only, no network) that is
        removed when it exits.
      - It writes nothing to the target, the volume, the backup catalog or the host's files, and creates no volume.
  diff_mode:
    support: full
    details:
      - The changed paths with type, mode and sha256 prefix, before (target) and after (backup).
      - For a sensitive backup (config, or files under C(secrets/)) the prefix is of a keyed digest with a random
        key used for this run only - equal files show equal prefixes, but the output cannot be checked against a
        guessed secret.
  idempotent:
    support: full
    details: A second run finds the target identical and returns C(changed=false).
options:
  kind:
    description: Kind of the backup.
    type: str
    required: true
    choices: [models, config, volume]
  backup_id:
    description: The backup to restore. Mutually exclusive with O(latest).
    type: str
  latest:
    description:
      - Restore the newest good backup of O(kind) (verified, and not failed by a recorded M(ner11.ops.backup_verify)).
      - It is taken from one source identity (host, instance, volume/path) - with O(volume), that volume's backups
        first. When backups of several sources qualify the module refuses and lists them - set O(source_host).
    type: bool
    default: false
  source_host:
    description:
      - With O(latest), only consider backups made on this source host (C(source.host) in the manifest - the inventory
        hostname of the host the backup role ran on). Needed for DR onto a new host when the catalog holds backups of
        several hosts.
    type: str
  backup_dir:
    description: Absolute path of the backup catalog.
    type: path
    required: true
  dest:
    description:
      - Absolute host directory to restore into, or with O(container) the absolute directory inside the container.
      - Default - where the backup came from (the manifest's source).
    type: str
  container:
    description: Restore into O(dest) inside this running container (C(docker exec ... tar -x), then rename).
    type: str
  volume:
    description: Restore into this Docker volume (created with the recorded labels when missing) through a helper container.
    type: str
  helper_image:
    description:
      - Local image (with C(tar) and C(sh)) of the helper container for O(volume). Default - the image of a container
        using the volume, else the one recorded in the manifest. Images are never pulled.
    type: str
  confirm:
    description: Must equal the target (O(dest) or O(volume)) when the restore replaces or removes anything in it.
    type: str
  force:
    description: Restore even when the target is already identical.
    type: bool
    default: false
  docker_cli:
    description: The docker command line client on the target host.
    type: str
    default: docker
notes:
  - The PostgreSQL data volume is refused while its container runs (G28); stop it first.
  - Restart the api after restoring its models - models are loaded at start (runbooks e.8).
seealso:
  - module: ner11.ops.artifact_backup
"""

EXAMPLES = r"""
- name: Restore the newest models backup into the api container
  ner11.ops.artifact_restore:
    kind: models
    latest: true
    backup_dir: /var/backups/ner11
    container: ner11-api-1
    dest: /app/models
    confirm: /app/models

- name: Restore the config files into the project directory
  ner11.ops.artifact_restore:
    kind: config
    backup_id: config-ner11-20261129T020000Z
    backup_dir: /var/backups/ner11
    dest: /srv/ner11
    confirm: /srv/ner11
"""

RETURN = r"""
backup_id:
  description: The backup restored (or compared).
  returned: success
  type: str
restored:
  description: Whether anything was written.
  returned: success
  type: bool
files:
  description: Regular files in the backup.
  returned: success
  type: int
target:
  description: The target directory or volume name.
  returned: success
  type: str
plan:
  description:
    - write/replace/remove path lists, unchanged count, identical, mode (mirror/overlay), target,
      confirm_required, strategy, space (need_bytes, free_bytes, filesystem, checked).
  returned: success
  type: dict
changes:
  description: On failure, what the run had written before it failed (C(changed) is true when not empty).
  returned: failure
  type: list
  elements: str
executed_commands:
  description: Every docker command run.
  returned: always
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ner11.ops.plugins.module_utils.artifact_restorer import ArtifactRestore
from ansible_collections.ner11.ops.plugins.module_utils.artifact_tar import ArtifactError
from ansible_collections.ner11.ops.plugins.module_utils.artifacts import os_error_message
from ansible_collections.ner11.ops.plugins.module_utils.catalog import CatalogError
from ansible_collections.ner11.ops.plugins.module_utils.docker_cli import docker_cli_option
from ansible_collections.ner11.ops.plugins.module_utils.runner import CommandError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            kind=dict(type="str", required=True, choices=["models", "config", "volume"]),
            backup_id=dict(type="str"),
            latest=dict(type="bool", default=False),
            source_host=dict(type="str"),
            backup_dir=dict(type="path", required=True),
            dest=dict(type="str"),
            container=dict(type="str"),
            volume=dict(type="str"),
            helper_image=dict(type="str"),
            confirm=dict(type="str"),
            force=dict(type="bool", default=False),
            docker_cli=docker_cli_option(),
        ),
        mutually_exclusive=[("backup_id", "latest"), ("volume", "dest"), ("volume", "container")],
        required_by={"container": "dest"},
        supports_check_mode=True,
    )
    job = None
    try:
        job = ArtifactRestore(
            module.params, module.run_command, check_mode=module.check_mode, diff=module._diff, tmpdir=module.tmpdir
        )
        result = job.run()
    except (ArtifactError, CatalogError, CommandError, OSError, ValueError) as exc:
        msg = str(exc)
        if isinstance(exc, OSError):
            # e.g. [Errno 28] No space left on device: say on which path and where to look
            target = getattr(job, "target_name", None) or module.params.get("dest") or module.params.get("volume")
            what = "restoring %s into %s" % (module.params["kind"], target or "the target")
            dirs = [module.params["backup_dir"]]
            if target and target.startswith("/"):
                dirs = [target, os.path.dirname(target)] + dirs
            msg = os_error_message(exc, what, dirs)
        # changed is true when the run had already written to the target (a created volume, the swap).
        touched = list(getattr(job, "touched", []) or [])
        module.fail_json(msg=msg, changed=bool(touched), changes=touched, executed_commands=job.docker.commands if job else [])
    for warning in job.warnings:
        module.warn(warning)
    result["executed_commands"] = job.docker.commands
    module.exit_json(**result)


if __name__ == "__main__":
    main()
