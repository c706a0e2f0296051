# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Retention for the backup catalog: calendar tiers per source identity, manual rule, pins (G57).

The runbooks ask for 7 daily, 4 weekly and 12 monthly backups (e.1, d.6) but
only ever delete daily dumps by mtime. Here one pure function decides, from the
manifests' ``created_at`` (never the mtime), which backups to keep, **separately
for each source identity** (kind, host, instance, database/volume/path; see
catalog.source_identity), so one volume's backups never count for another's:

* the newest good backup of the identity, always (never delete the last good one),
* the newest good scheduled (daily/weekly/monthly) backup of each of the last
  ``keep_daily`` days, ``keep_weekly`` ISO weeks and ``keep_monthly`` months
  that have one, and the ``keep_min`` newest scheduled ones,
* manual backups by their own rule: younger than ``keep_manual_days`` (they
  never fill or consume a calendar tier),
* every backup pinned (``pins.json``) until a time still in the future,
* every backup whose ``pins.json`` is damaged (unreadable, not the documented shape,
  a ``keep_until`` that is not a UTC time): the pin cannot be judged, so the backup
  is kept and the damage reported until a human fixes or removes the file.

Good: published as verified and not failed by a recorded verification. A
failed backup never fills a tier (an older good one keeps the slot) and is
never deleted by the policy: it is reported for a human. Entries that are not
verified at all (no manifest, a broken one) are reported and left alone too.

Plain Python: no Ansible import, unit-tested (with hypothesis) in tests/unit.
"""

from __future__ import annotations

import datetime
import os

from ansible_collections.ner11.ops.plugins.module_utils.catalog import CatalogError

POLICY_KEYS = ("keep_daily", "keep_weekly", "keep_monthly", "keep_min", "keep_manual_days")


class RetentionError(ValueError):
    """The policy is invalid; the message names the fix."""


def _as_datetime(value):
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)
    try:
        return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except (TypeError, ValueError):
        raise RetentionError("invalid created_at %r: expected YYYY-MM-DDTHH:MM:SSZ" % (value,)) from None


def validate_policy(keep_daily=7, keep_weekly=4, keep_monthly=12, keep_min=1, keep_manual_days=30):
    policy = {
        "keep_daily": keep_daily,
        "keep_weekly": keep_weekly,
        "keep_monthly": keep_monthly,
        "keep_min": keep_min,
        "keep_manual_days": keep_manual_days,
    }
    for key, value in policy.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise RetentionError("%s must be an integer >= 0, got %r (0 disables that tier)" % (key, value))
    return policy


def max_kept(policy):
    """Upper bound of the scheduled backups a policy keeps per identity (manual and pinned ones come on top)."""
    return policy["keep_daily"] + policy["keep_weekly"] + policy["keep_monthly"] + max(policy["keep_min"], 1)


def _bucket(tier, dt):
    if tier == "daily":
        return dt.strftime("%Y-%m-%d")
    if tier == "weekly":
        year, week, _day = dt.isocalendar()
        return "%04d-W%02d" % (year, week)
    return dt.strftime("%Y-%m")


def plan(entries, keep_daily=7, keep_weekly=4, keep_monthly=12, keep_min=1, keep_manual_days=30, now=None):
    """Decide what to keep.

    ``entries``: iterable of dicts with ``backup_id``, ``created_at`` (datetime or
    catalog timestamp) and ``verified`` (bool); optionally ``failed`` (a recorded
    verification failed), ``identity`` (the source identity key; one group when
    absent), ``period`` (``manual`` has its own rule), ``keep_until`` (datetime or
    timestamp of the latest pin), ``hold`` (a reason to keep it whatever the
    policy says, e.g. its pins cannot be read) and ``size_bytes``. ``now``
    (default: the current time) judges pins and the manual rule.

    Returns ``{"kept": {id: [reasons]}, "deleted": [ids newest first],
    "unverified": [ids], "failed_backups": [ids], "identities": {key: summary}}``.
    """
    policy = validate_policy(keep_daily, keep_weekly, keep_monthly, keep_min, keep_manual_days)
    now = _as_datetime(now) if now is not None else datetime.datetime.now(datetime.timezone.utc)
    groups = {}
    holds = {}
    unverified, failed = [], []
    seen = set()
    for entry in entries:
        backup_id = entry["backup_id"]
        if backup_id in seen:
            raise RetentionError("backup id %r is listed twice" % (backup_id,))
        seen.add(backup_id)
        if not entry.get("verified"):
            unverified.append(backup_id)
            continue
        if entry.get("failed"):
            failed.append(backup_id)
            continue
        if entry.get("hold"):
            holds[backup_id] = entry["hold"]
        until = entry.get("keep_until")
        groups.setdefault(entry.get("identity") or "", []).append(
            (_as_datetime(entry["created_at"]), backup_id, entry.get("period") or "", _as_datetime(until) if until else None)
        )

    kept = {}
    deleted = []
    identities = {}

    def keep(backup_id, reason):
        kept.setdefault(backup_id, []).append(reason)

    for key in sorted(groups):
        # Newest first; ties broken by id so the result does not depend on input order.
        good = sorted(groups[key], reverse=True)
        scheduled = [g for g in good if g[2] != "manual"]
        keep(good[0][1], "newest")
        for index, (_dt, backup_id, _period, _until) in enumerate(scheduled):
            if index < policy["keep_min"]:
                keep(backup_id, "keep_min")
        for tier in ("daily", "weekly", "monthly"):
            limit = policy["keep_" + tier]
            buckets = []
            for dt, backup_id, _period, _until in scheduled:
                if len(buckets) >= limit:
                    break
                bucket = _bucket(tier, dt)
                if bucket in buckets:
                    continue  # an older backup of a bucket that already has its newest
                buckets.append(bucket)
                keep(backup_id, "%s %s" % (tier, bucket))
        manual_limit = datetime.timedelta(days=policy["keep_manual_days"])
        for dt, backup_id, period, until in good:
            if period == "manual" and now - dt < manual_limit:
                keep(backup_id, "manual (kept %d days)" % policy["keep_manual_days"])
            if until is not None and until > now:
                keep(backup_id, "pinned until %s" % until.strftime("%Y-%m-%dT%H:%M:%SZ"))
            if backup_id in holds:
                keep(backup_id, holds[backup_id])
        gone = [backup_id for _dt, backup_id, _p, _u in good if backup_id not in kept]
        deleted += gone
        identities[key] = {"newest": good[0][1], "kept": len(good) - len(gone), "deleted": len(gone)}

    created = {backup_id: dt for grp in groups.values() for dt, backup_id, _p, _u in grp}
    deleted.sort(key=lambda b: (created[b], b), reverse=True)
    return {
        "kept": kept,
        "deleted": deleted,
        "unverified": sorted(unverified),
        "failed_backups": sorted(failed),
        "identities": identities,
    }


def catalog_entries(catalog, kind, db_name=None, source_host=None, warnings=None):
    """The ``plan`` entries of one kind of a ``catalog.Catalog`` (+ sizes by id), from its records.

    ``db_name`` / ``source_host`` limit the candidates to backups of that
    database / host (other backups are neither counted nor touched). A damaged
    ``pins.json`` holds its backup (``hold``); every damaged manifest or record of
    the candidates is appended to ``warnings`` (a list) when given.
    """
    from ansible_collections.ner11.ops.plugins.module_utils import catalog as cat

    entries, sizes = [], {}
    warnings = [] if warnings is None else warnings
    for rec in catalog.records(kind):
        manifest = rec["manifest"]
        if manifest is not None:
            if db_name and (manifest.get("source") or {}).get("db_name") != db_name:
                continue
            if source_host and rec["identity"]["host"] != source_host:
                continue
        until = cat.effective_keep_until(rec["pins"])
        if rec["error"]:
            warnings.append(
                "%s; it is neither counted nor deleted: fix or remove %s" % (rec["error"], catalog.path(kind, rec["backup_id"]))
            )
        warnings += [rec["damaged"][name] for name in sorted(rec["damaged"])]
        entries.append(
            {
                "backup_id": rec["backup_id"],
                "created_at": manifest["created_at"] if manifest else None,
                "verified": rec["state"] in ("good", "failed"),
                "failed": rec["state"] == "failed",
                "identity": rec["identity"]["key"] if rec["identity"] else None,
                "period": (manifest or {}).get("period"),
                "keep_until": until,
                "hold": rec["damaged"].get(cat.PINS),
            }
        )
        sizes[rec["backup_id"]] = int((manifest or {}).get("size_bytes") or 0)
    return entries, sizes


def prune_catalog(catalog, kind, policy, db_name=None, check_mode=False, lock_timeout=0, source_host=None, now=None):
    """Apply ``plan`` to one kind of a ``catalog.Catalog`` (under the kind's lock unless check mode).

    The same function backup_prune runs; ``now`` is the clock (tests set it). Besides
    the plan, the result has ``damaged`` (damaged entries and records: shown, never
    deleted), ``cleaned`` (leftovers of earlier interrupted runs removed: ``.deleting-*``,
    stale ``.partial-*``; in check mode those that would be) and ``delete_errors``
    (backup id to the message of a deletion that did not finish: the backup is out of
    the catalog, the message says where its files are; the caller must fail).
    """

    def decide():
        warnings = []
        entries, sizes = catalog_entries(catalog, kind, db_name, source_host, warnings)
        result = plan(entries, now=now, **policy)
        result["freed_bytes"] = sum(sizes[b] for b in result["deleted"])
        result["damaged"] = warnings
        result["delete_errors"] = {}
        return result, sizes

    if check_mode:
        result, _sizes = decide()
        result["cleaned"] = [os.path.basename(p) for p in catalog.stale_partials(kind)]
        result["changed"] = bool(result["deleted"] or result["cleaned"])
        return result
    with catalog.lock(kind, wait=lock_timeout > 0, timeout=lock_timeout):
        result, sizes = decide()
        result["cleaned"] = [os.path.basename(p) for p in catalog.clean_stale_partials(kind)]
        for backup_id in result["deleted"]:
            try:
                catalog.delete(kind, backup_id)
            except CatalogError as exc:
                result["delete_errors"][backup_id] = str(exc)
                result["freed_bytes"] -= sizes[backup_id]
    result["changed"] = bool(result["deleted"] or result["cleaned"])
    return result
