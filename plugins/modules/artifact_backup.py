#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: artifact_backup
short_description: Verified backup of ML models, config files or a Docker volume, with a per-file sha256 manifest
version_added: 1.0.0
description:
  - Streams the source into one uncompressed tar (C(data.tar)) inside a C(.partial-<id>) directory of the backup
    catalog (docs/backup-catalog.md), lists B(every) member with type, mode, owner, size and sha256 in the manifest
    (C(contents), G27 - not only C(*.pkl)), and publishes it by an atomic rename. Nothing is held in memory.
  - O(kind=models) streams a directory out of the api container with C(docker exec <container> tar -C <src> -cf - .)
    (G27 - C(/app/models) is a container path), or archives a host directory when O(container) is not set.
  - O(kind=config) archives host files and directories (for example the compose file and C(.env)) relative to their
    common parent, keeping modes. The manifest says C(sensitive=true) - these hold secrets - the backup is
    0600/0700 and any offsite copy must be encrypted.
  - A sensitive backup (O(kind=config), or any backup holding files under a C(secrets/) directory) returns no hash
    of its files - no per-file C(sha256) in RV(manifest) and no RV(content_sha256) - because an unsalted hash of a
    secret file (for example C(secrets/db_password), the bare database password) can be cracked offline from job
    output. C(manifest.json) on disk (0600) keeps them; restores and M(ner11.ops.backup_verify) check them there.
  - O(kind=volume) copies a named Docker volume through a short-lived helper container (C(--rm), no network,
    never pulled) of an image already present locally. The live PostgreSQL data volume is refused while its
    container runs (G28) unless O(allow_live=true).
  - Idempotent by content - when the newest backup of the same source has the same C(content_sha256) (a digest of
    every path, type, mode and sha256), no backup is made and that backup is returned with C(changed=false),
    whatever O(period). Changed content always makes a new backup. O(force) makes one anyway.
author: ner11.ops maintainers (@ner11-ops)
extends_documentation_fragment:
  - ner11.ops.attributes
  - ner11.ops.attributes.ACTIONGROUP_BACKUP
attributes:
  check_mode:
    support: full
    details:
      - Returns the plan (file count, bytes, whether the content is unchanged, the backup id it would create).
      - To know whether the content changed, check mode lists the source - host files are hashed in place; a container
        directory is streamed by C(docker exec <container> tar -cf -) into the module's Python and hashed; a Docker
        volume is read through a temporary helper container (C(docker run --rm), the volume mounted read-only, no
        network) that is removed when it exits.
      - It writes nothing to the source, the volume, the backup catalog or the host's files (no temporary file).
  diff_mode:
    support: none
  idempotent:
    support: full
    details:
      - A second run with unchanged source content returns the existing backup with C(changed=false).
      - It records in C(freshness.json) beside that backup that its content was confirmed current (an audit entry,
        not a change), so the RPO of M(ner11.ops.backup_verify) is judged on it.
options:
  kind:
    description: What is backed up.
    type: str
    required: true
    choices: [models, config, volume]
  src:
    description:
      - O(kind=models) - the model directory inside O(container) (default C(/app/models)), or an absolute host
        directory when O(container) is not set.
      - O(kind=config) - absolute host paths of files and directories.
      - O(kind=volume) - the name of the Docker volume.
    type: list
    elements: str
  backup_dir:
    description: Absolute path of the backup catalog; the backup goes to C(<backup_dir>/<kind>/<backup_id>/).
    type: path
    required: true
  container:
    description: The api container to stream O(src) out of (O(kind=models) only).
    type: str
  period:
    description: The calendar bucket recorded in the manifest (C(period), C(period_key)) for retention.
    type: str
    choices: [daily, weekly, monthly, manual]
    default: manual
  force:
    description: Make a new backup even when the content equals the newest backup of the same source.
    type: bool
    default: false
  excludes:
    description:
      - Patterns left out of the backup. A pattern matches any path component or the whole relative path (like GNU
        tar's C(--exclude), which this module places before the operands - G27).
    type: list
    elements: str
    default: ['*.pyc', '__pycache__']
  allow_live:
    description:
      - O(kind=volume) - copy the data volume of a running PostgreSQL container anyway. The copy is not
        crash-consistent (G28); prefer M(ner11.ops.pg_backup) or stop the container first.
    type: bool
    default: false
  helper_image:
    description:
      - O(kind=volume) - local image (with C(tar)) of the helper container. Default - the image of a container that
        uses the volume. Images are never pulled.
    type: str
  docker_cli:
    description: The docker command line client on the target host.
    type: str
    default: docker
  lock_timeout:
    description: Seconds to wait for another backup of the same kind in this catalog; 0 fails at once naming the holder.
    type: int
    default: 0
  source_host:
    description:
      - The host name recorded as the backup's source (C(source.host), part of its source identity). "Unchanged",
        retention, RPO and C(latest) work per identity, so two hosts writing one catalog never answer for each other.
        The backup role passes the inventory hostname.
      - Defaults to this machine's hostname (what 1.0.0 recorded).
    type: str
  keep_until:
    description:
      - Pin the backup - M(ner11.ops.backup_prune) never deletes it before this UTC time (V(2026-12-31T00:00:00Z)) or
        for this duration after it was made (V(14d), V(36h)). See M(ner11.ops.backup_pin) to move or release the pin.
      - When the content is unchanged, the existing backup is pinned instead.
    type: str
  keep_reason:
    description: Why the backup is pinned (the pin's name; default C(pinned by artifact_backup keep_until)).
    type: str
notes:
  - Stale C(.partial-*) directories of the kind are removed at the start of a run while the kind's lock is held.
  - The archive restores with stock tools - C(tar -xpf data.tar --numeric-owner -C <dir>) (see the manifest's C(restore)).
seealso:
  - module: ner11.ops.artifact_restore
  - module: ner11.ops.pg_backup
"""

EXAMPLES = r"""
- name: Back up the models of the api container (a re-run with unchanged models changes nothing)
  ner11.ops.artifact_backup:
    kind: models
    container: ner11-api-1
    backup_dir: /var/backups/ner11

- name: Back up the compose file and .env (secrets - the backup is 0600, encrypt offsite copies)
  ner11.ops.artifact_backup:
    kind: config
    src:
      - /srv/ner11/docker-compose.yml
      - /srv/ner11/.env
    backup_dir: /var/backups/ner11
    period: daily

- name: Back up the models volume through a helper container of the api image
  ner11.ops.artifact_backup:
    kind: volume
    src: ner11_models
    backup_dir: /var/backups/ner11
"""

RETURN = r"""
backup_id:
  description: Id of the backup made, or of the existing backup with the same content.
  returned: success
  type: str
  sample: models-ner11-api-1-20261129T100000Z
path:
  description: Directory of the backup.
  returned: success
  type: str
manifest:
  description:
    - The manifest (docs/backup-catalog.md, docs/artifacts.md). Not returned in check mode for a backup still to be made.
    - For a sensitive backup the C(contents) entries have no C(sha256), C(content_sha256) is null and C(redacted) says
      why; C(manifest.json) on disk has them.
  returned: when the backup exists
  type: dict
sha256:
  description:
    - The catalog's whole-backup digest - sha256 over the C(sha256sum)-style lines of the backup's files (here
      C(data.tar)). Use RV(content_sha256) to compare content across backups.
  returned: success
  type: str
content_sha256:
  description:
    - Digest over the sorted (path, type, mode, sha256 or link target) list; equal for equal content.
    - Null for a sensitive backup (it is derived from the secret files' hashes); read it from C(manifest.json) on disk.
  returned: success
  type: str
size_bytes:
  description: Size of the archive.
  returned: success
  type: int
file_count:
  description: Regular files in the backup.
  returned: success
  type: int
content_bytes:
  description: Sum of the sizes of those files.
  returned: success
  type: int
duration_s:
  description: Seconds the backup took (0 when an existing one was returned).
  returned: success
  type: float
changed_paths:
  description: Paths added, removed or modified since the previous backup of the same source (null when there is none).
  returned: success
  type: list
  elements: str
plan:
  description:
    - The decision - action (create/none), reason, backup_id, file_count, content_bytes, archive_bytes,
      unchanged, latest_backup_id; in check mode also content_sha256 (null when sensitive) and sensitive.
  returned: always
  type: dict
pins:
  description: The backup's pins (C(reason), C(keep_until), C(pinned_at)); empty when it is not pinned.
  returned: when not check mode
  type: list
  elements: dict
freshness:
  description:
    - When the content was unchanged, the record written beside the backup (C(confirmed_at), C(content_sha256)).
    - Its C(content_sha256) is null for a sensitive backup (the file on disk has it).
  returned: when the content was unchanged and not check mode
  type: dict
cleaned_partials:
  description: Leftover partial directories removed at the start.
  returned: when not check mode
  type: list
  elements: str
executed_commands:
  description: Every docker command run.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ner11.ops.plugins.module_utils.artifact_tar import DEFAULT_EXCLUDES, ArtifactError
from ansible_collections.ner11.ops.plugins.module_utils.artifacts import ArtifactBackup, os_error_message
from ansible_collections.ner11.ops.plugins.module_utils.catalog import CatalogError
from ansible_collections.ner11.ops.plugins.module_utils.docker_cli import docker_cli_option
from ansible_collections.ner11.ops.plugins.module_utils.runner import CommandError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            kind=dict(type="str", required=True, choices=["models", "config", "volume"]),
            src=dict(type="list", elements="str"),
            backup_dir=dict(type="path", required=True),
            container=dict(type="str"),
            period=dict(type="str", choices=["daily", "weekly", "monthly", "manual"], default="manual"),
            force=dict(type="bool", default=False),
            excludes=dict(type="list", elements="str", default=list(DEFAULT_EXCLUDES)),
            allow_live=dict(type="bool", default=False),
            helper_image=dict(type="str"),
            docker_cli=docker_cli_option(),
            lock_timeout=dict(type="int", default=0),
            source_host=dict(type="str"),
            keep_until=dict(type="str"),
            keep_reason=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    job = None
    try:
        job = ArtifactBackup(module.params, module.run_command, check_mode=module.check_mode, tmpdir=module.tmpdir)
        result = job.run()
    except (ArtifactError, CatalogError, CommandError, ValueError) as exc:
        module.fail_json(msg=str(exc), executed_commands=job.docker.commands if job else [])
    except OSError as exc:
        # e.g. [Errno 28] No space left on device: say on which path and where to look
        what = "backing up %s into %s" % (module.params["kind"], module.params["backup_dir"])
        dirs = [module.params["backup_dir"]] + [p for p in module.params.get("src") or [] if p.startswith("/")]
        module.fail_json(msg=os_error_message(exc, what, dirs), executed_commands=job.docker.commands if job else [])
    for warning in job.warnings:
        module.warn(warning)
    result["executed_commands"] = job.docker.commands
    module.exit_json(**result)


if __name__ == "__main__":
    main()
