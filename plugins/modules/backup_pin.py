#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_pin
short_description: Pin or release a backup of the ner11.ops catalog so retention keeps it until a given time
version_added: 1.1.0
description:
  - Pins an existing backup with a O(reason) and an expiry O(keep_until). M(ner11.ops.backup_prune) never deletes a
    backup before its latest active pin expires; after that the backup follows the normal retention again, so pins
    cannot make the catalog grow without bound.
  - Pins are kept in C(pins.json) beside the backup's manifest (written atomically, under the kind's catalog lock);
    the manifest and its checksums are never changed (docs/backup-catalog.md).
  - One pin per O(reason) - a maintenance window and a restore can pin the same backup and release it independently.
  - Fails, without writing, when the backup's C(pins.json) cannot be read (not JSON, not the documented shape, a
    C(keep_until) that is not a UTC time); M(ner11.ops.backup_prune) keeps such a backup until the file is fixed or
    removed.
author: ner11.ops maintainers (@ner11-ops)
extends_documentation_fragment:
  - ner11.ops.attributes
  - ner11.ops.attributes.ACTIONGROUP_BACKUP
attributes:
  check_mode:
    support: full
    details: Returns the pins the backup would have (RV(pins)) and writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
    details:
      - A relative O(keep_until) counts from the backup's creation time, so the same task pins to the same time on
        every run.
options:
  backup_dir:
    description: Absolute path of the backup catalog.
    type: path
    required: true
  kind:
    description: Kind of the backup.
    type: str
    choices: [database, models, config, volume]
    default: database
  backup_id:
    description: The backup to pin or release (as returned by M(ner11.ops.pg_backup) or M(ner11.ops.artifact_backup)).
    type: str
    required: true
  keep_until:
    description:
      - Keep the backup at least until this UTC time (V(2026-12-31T00:00:00Z)), or for a duration after the backup
        was made (V(14d), V(36h)). Required with O(state=present).
    type: str
  reason:
    description:
      - Why the backup is kept (shown in reports), and the name of the pin - pinning again with the same reason moves
        that pin; O(state=absent) releases it. Required with O(state=present).
    type: str
  state:
    description:
      - V(present) pins, V(absent) releases the pin named by O(reason) (every pin of the backup when O(reason) is not
        given).
    type: str
    choices: [present, absent]
    default: present
  lock_timeout:
    description: Seconds to wait for a running backup or prune of the same kind.
    type: int
    default: 60
"""

EXAMPLES = r"""
- name: Keep the pre-maintenance backup until the next window has passed
  ner11.ops.backup_pin:
    backup_dir: /var/backups/ner11
    kind: database
    backup_id: "{{ pre_window.backup_id }}"
    keep_until: 8d
    reason: before maintenance window {{ now(utc=true, fmt='%Y-%m-%d') }}

- name: Release it after the next successful window
  ner11.ops.backup_pin:
    backup_dir: /var/backups/ner11
    kind: database
    backup_id: "{{ pre_window.backup_id }}"
    reason: before maintenance window 2026-12-02
    state: absent
"""

RETURN = r"""
backup_id:
  description: The backup.
  returned: always
  type: str
path:
  description: Directory of the backup.
  returned: always
  type: str
pins:
  description:
    - The backup's pins after the task (in check mode, the pins it would have).
    - Each has C(reason), C(keep_until), C(pinned_at).
  returned: always
  type: list
  elements: dict
pins_before:
  description: The pins before the task.
  returned: always
  type: list
  elements: dict
keep_until:
  description: The latest active pin's expiry, or null when nothing pins the backup any more.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ner11.ops.plugins.module_utils.catalog import Catalog, CatalogError, apply_pin, os_error_message


def main():
    module = AnsibleModule(
        argument_spec=dict(
            backup_dir=dict(type="path", required=True),
            kind=dict(type="str", choices=["database", "models", "config", "volume"], default="database"),
            backup_id=dict(type="str", required=True),
            keep_until=dict(type="str"),
            reason=dict(type="str"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            lock_timeout=dict(type="int", default=60),
        ),
        required_if=[("state", "present", ("keep_until", "reason"))],
        supports_check_mode=True,
    )
    p = module.params
    try:
        result = apply_pin(
            Catalog(p["backup_dir"]),
            p["kind"],
            p["backup_id"],
            p["keep_until"],
            p["reason"],
            p["state"],
            module.check_mode,
            max(p["lock_timeout"], 0),
        )
    except CatalogError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:  # e.g. a full disk or a read-only backup_dir
        module.fail_json(msg=os_error_message(exc, p["backup_dir"], "backup_pin failed"))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
