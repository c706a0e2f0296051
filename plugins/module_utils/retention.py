# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Calendar (grandfather-father-son) retention for the backup catalog (G57).

The runbooks ask for 7 daily, 4 weekly and 12 monthly backups (e.1, d.6) but
only ever delete daily dumps by mtime. Here one pure function decides, from the
manifests' ``created_at`` (never the mtime), which verified backups to keep:

* the newest backup of each of the last ``keep_daily`` days that have one,
* the newest of each of the last ``keep_weekly`` ISO weeks that have one,
* the newest of each of the last ``keep_monthly`` months that have one,
* the ``keep_min`` newest, and always the newest one (never delete the only
  verified backup).

Entries that are not verified (no manifest, a broken one, a partial) are never
counted as kept and never deleted: they are reported for a human to look at.

Plain Python: no Ansible import, unit-tested (with hypothesis) in tests/unit.
"""

from __future__ import annotations

import datetime

POLICY_KEYS = ("keep_daily", "keep_weekly", "keep_monthly", "keep_min")


class RetentionError(ValueError):
    """The policy is invalid; the message names the fix."""


def _as_datetime(value):
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)
    try:
        return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except (TypeError, ValueError):
        raise RetentionError("invalid created_at %r: expected YYYY-MM-DDTHH:MM:SSZ" % (value,)) from None


def validate_policy(keep_daily=7, keep_weekly=4, keep_monthly=12, keep_min=1):
    policy = {"keep_daily": keep_daily, "keep_weekly": keep_weekly, "keep_monthly": keep_monthly, "keep_min": keep_min}
    for key, value in policy.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise RetentionError("%s must be an integer >= 0, got %r (0 disables that tier)" % (key, value))
    return policy


def max_kept(policy):
    """Upper bound of the number of backups a policy keeps."""
    return policy["keep_daily"] + policy["keep_weekly"] + policy["keep_monthly"] + max(policy["keep_min"], 1)


def _bucket(tier, dt):
    if tier == "daily":
        return dt.strftime("%Y-%m-%d")
    if tier == "weekly":
        year, week, _day = dt.isocalendar()
        return "%04d-W%02d" % (year, week)
    return dt.strftime("%Y-%m")


def plan(entries, keep_daily=7, keep_weekly=4, keep_monthly=12, keep_min=1):
    """Decide what to keep.

    ``entries``: iterable of dicts with ``backup_id``, ``created_at`` (datetime or
    catalog timestamp) and ``verified`` (bool), optionally ``size_bytes``.

    Returns ``{"kept": {id: [reasons]}, "deleted": [ids newest first],
    "unverified": [ids]}``.
    """
    policy = validate_policy(keep_daily, keep_weekly, keep_monthly, keep_min)
    verified = []
    unverified = []
    seen = set()
    for entry in entries:
        backup_id = entry["backup_id"]
        if backup_id in seen:
            raise RetentionError("backup id %r is listed twice" % (backup_id,))
        seen.add(backup_id)
        if not entry.get("verified"):
            unverified.append(backup_id)
            continue
        verified.append((_as_datetime(entry["created_at"]), backup_id))
    # Newest first; ties broken by id so the result does not depend on input order.
    verified.sort(reverse=True)

    kept = {}

    def keep(backup_id, reason):
        kept.setdefault(backup_id, []).append(reason)

    for index, (_dt, backup_id) in enumerate(verified):
        if index == 0:
            keep(backup_id, "newest")
        if index < policy["keep_min"]:
            keep(backup_id, "keep_min")

    for tier in ("daily", "weekly", "monthly"):
        limit = policy["keep_" + tier]
        buckets = []
        for dt, backup_id in verified:
            if len(buckets) >= limit:
                break
            key = _bucket(tier, dt)
            if key in buckets:
                continue  # an older backup of a bucket that already has its newest
            buckets.append(key)
            keep(backup_id, "%s %s" % (tier, key))

    deleted = [backup_id for _dt, backup_id in verified if backup_id not in kept]
    return {"kept": kept, "deleted": deleted, "unverified": sorted(unverified)}


def prune_catalog(catalog, kind, policy, db_name=None, check_mode=False, lock_timeout=0):
    """Apply ``plan`` to one kind of a ``catalog.Catalog`` (under the kind's lock unless check mode).

    ``db_name`` limits the candidates to backups whose ``source.db_name`` matches
    (other backups are neither counted nor touched).
    """

    def collect():
        entries, sizes, ids = [], {}, []
        for backup_id, manifest, _error in catalog.entries(kind):
            if db_name and manifest is not None and (manifest.get("source") or {}).get("db_name") != db_name:
                continue
            ids.append(backup_id)
            verified = manifest is not None and manifest.get("status") == "verified"
            entries.append(
                {"backup_id": backup_id, "created_at": manifest["created_at"] if manifest else None, "verified": verified}
            )
            sizes[backup_id] = int((manifest or {}).get("size_bytes") or 0)
        return entries, sizes

    def decide():
        entries, sizes = collect()
        result = plan(entries, **policy)
        result["freed_bytes"] = sum(sizes[b] for b in result["deleted"])
        return result

    if check_mode:
        result = decide()
        result["changed"] = bool(result["deleted"])
        return result
    with catalog.lock(kind, wait=lock_timeout > 0, timeout=lock_timeout):
        result = decide()
        for backup_id in result["deleted"]:
            catalog.delete(kind, backup_id)
    result["changed"] = bool(result["deleted"])
    return result
