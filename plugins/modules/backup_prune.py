#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_prune
short_description: Retention per source for the ner11.ops backup catalog (calendar tiers, manual rule, pins)
version_added: 1.0.0
description:
  - Applies the policy separately to each source identity (kind, host, instance, database/volume/path - see
    docs/backup-catalog.md), so the backups of one volume or host never count for another's.
  - Per identity, keeps the newest good scheduled backup of each of the last O(keep_daily) days, O(keep_weekly) ISO
    weeks and O(keep_monthly) months that have one, plus the O(keep_min) newest, judged by the manifests'
    C(created_at), never by mtime (G57).
  - Manual backups (C(period=manual)) follow their own rule - kept for O(keep_manual_days) - and never fill or
    consume a calendar tier. Backups pinned with M(ner11.ops.backup_pin) (or C(keep_until)) are kept until the pin
    expires. The newest good backup of an identity is never deleted.
  - A backup whose recorded verification failed (M(ner11.ops.backup_verify)) never fills a tier, so an older good
    backup keeps its slot; it is not deleted but reported in RV(failed_backups). Entries without a valid, verified manifest
    are neither counted nor deleted; they are reported in RV(unverified).
  - A backup whose C(pins.json) cannot be read (not JSON, not the documented shape, a C(keep_until) that is not a UTC
    time) is kept, whatever the policy says, until the file is fixed or removed; the damage is reported in RV(kept)
    and RV(damaged), and shown as a warning. Damaged manifests and other records are reported the same way.
  - Takes the kind's catalog lock, so it never races a running backup, and removes what interrupted runs left
    (C(.deleting-*), C(.partial-*) older than an hour), see RV(cleaned).
  - Fails when a planned deletion does not finish (RV(delete_errors)); that backup is already out of the catalog and
    the message says where its files are.
author: ner11.ops maintainers (@ner11-ops)
extends_documentation_fragment:
  - ner11.ops.attributes
  - ner11.ops.attributes.ACTIONGROUP_BACKUP
attributes:
  check_mode:
    support: full
    details: Returns the plan (RV(kept) with reasons, RV(deleted), RV(freed_bytes)) without deleting.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  backup_dir:
    description: Absolute path of the backup catalog.
    type: path
    required: true
  kind:
    description: Kind of backups to prune.
    type: str
    choices: [database, models, config, volume]
    default: database
  db_name:
    description: Only consider database backups of this database (C(source.db_name)).
    type: str
  keep_daily:
    description: Days (that have a backup) whose newest backup is kept.
    type: int
    default: 7
  keep_weekly:
    description: ISO weeks whose newest backup is kept.
    type: int
    default: 4
  keep_monthly:
    description: Months whose newest backup is kept.
    type: int
    default: 12
  keep_min:
    description: The newest this many good scheduled backups of each identity are always kept.
    type: int
    default: 1
  keep_manual_days:
    description: Manual backups younger than this many days are kept (older ones go unless pinned or the newest).
    type: int
    default: 30
  source_host:
    description:
      - Only prune the identities of this source host (C(source.host) - the backup role passes the inventory
        hostname), so hosts sharing one catalog each prune their own backups. Default - every identity.
    type: str
  lock_timeout:
    description: Seconds to wait for a running backup of the same kind; 0 fails at once naming the holder.
    type: int
    default: 0
"""

EXAMPLES = r"""
- name: Apply 7 daily / 4 weekly / 12 monthly to database backups
  ner11.ops.backup_prune:
    backup_dir: /var/backups/ner11
    keep_daily: 7
    keep_weekly: 4
    keep_monthly: 12
"""

RETURN = r"""
kept:
  description: Backup id to the reasons it is kept (C(newest), C(keep_min), C(daily 2026-11-29), C(weekly 2026-W48), ...).
  returned: always
  type: dict
deleted:
  description: Backup ids deleted (in check mode, those that would be deleted), newest first.
  returned: always
  type: list
  elements: str
failed_backups:
  description: Backups whose recorded verification failed - never counted as kept, never deleted; inspect them.
  returned: always
  type: list
  elements: str
identities:
  description: Per source identity key, C(newest) (the newest good backup), C(kept) and C(deleted) counts.
  returned: always
  type: dict
unverified:
  description: Entries without a valid verified manifest, left alone for a human to inspect.
  returned: always
  type: list
  elements: str
freed_bytes:
  description: Bytes the deleted backups held (from their manifests).
  returned: always
  type: int
damaged:
  description: Damaged manifests and record files (C(pins.json), C(verify.json), C(freshness.json)), each with its fix.
  returned: always
  type: list
  elements: str
cleaned:
  description: Leftovers of interrupted runs removed (C(.deleting-<id>), stale C(.partial-<id>)); in check mode, those
    that would be removed.
  returned: always
  type: list
  elements: str
delete_errors:
  description: Backup id to the reason its deletion did not finish (the module then fails) and where its files remain.
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ner11.ops.plugins.module_utils.catalog import Catalog, CatalogError, os_error_message
from ansible_collections.ner11.ops.plugins.module_utils.retention import RetentionError, prune_catalog, validate_policy


def main():
    module = AnsibleModule(
        argument_spec=dict(
            backup_dir=dict(type="path", required=True),
            kind=dict(type="str", choices=["database", "models", "config", "volume"], default="database"),
            db_name=dict(type="str"),
            keep_daily=dict(type="int", default=7),
            keep_weekly=dict(type="int", default=4),
            keep_monthly=dict(type="int", default=12),
            keep_min=dict(type="int", default=1),
            keep_manual_days=dict(type="int", default=30),
            source_host=dict(type="str"),
            lock_timeout=dict(type="int", default=0),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        policy = validate_policy(p["keep_daily"], p["keep_weekly"], p["keep_monthly"], p["keep_min"], p["keep_manual_days"])
        result = prune_catalog(
            Catalog(p["backup_dir"]),
            p["kind"],
            policy,
            p["db_name"],
            module.check_mode,
            max(p["lock_timeout"], 0),
            source_host=p["source_host"],
        )
    except (RetentionError, CatalogError) as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:  # e.g. a full disk or a read-only backup_dir
        module.fail_json(msg=os_error_message(exc, p["backup_dir"], "backup_prune failed"))
    for warning in result["damaged"]:
        module.warn(warning)
    if result["delete_errors"]:
        module.fail_json(msg="; ".join(result["delete_errors"][b] for b in sorted(result["delete_errors"])), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
