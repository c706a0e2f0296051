"""Backups over months, simulated: retention, pins, manual backups and recorded verification (issue 8).

A simulated clock runs 400+ days over a real catalog directory. Several source
identities (two hosts, two databases on one catalog) get random daily, manual and
pinned backups; random bytes are flipped and found by the verifier. Every day the
same module_utils functions the modules run are called - ``BackupVerifier`` (backup_verify),
``retention.prune_catalog`` (backup_prune), ``catalog.apply_pin`` (backup_pin),
``catalog.new_backup_pins`` + ``Catalog.publish`` (pg_backup / artifact_backup) - and
the properties are checked on the catalog as it is on disk:

* never a day where an identity that had a good backup has none after the prune;
* a pinned backup is never deleted before its keep_until;
* the calendar tiers hold per identity (at most what the policy keeps), manual
  backups younger than keep_manual_days are never deleted and older ones go;
* a backup whose recorded verification failed never counts: the older good one stays.
"""

from __future__ import annotations

import datetime
import os
import random
import shutil
import tempfile

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ansible_collections.ner11.ops.plugins.module_utils import catalog as cat
from ansible_collections.ner11.ops.plugins.module_utils import retention
from ansible_collections.ner11.ops.plugins.module_utils.pgbackup import BackupVerifier

UTC = datetime.timezone.utc
START = datetime.datetime(2026, 1, 5, 2, 0, tzinfo=UTC)
DAYS = 410
KIND = "database"
IDENTITIES = (
    {"host": "db-a", "db_name": "ner11_db", "instance": "container:ner11-postgres-1"},
    {"host": "db-b", "db_name": "ner11_db", "instance": "container:ner11-postgres-1"},  # same names, other host
    {"host": "db-a", "db_name": "ner11_audit", "instance": "container:ner11-postgres-1"},
)
# tmpfs when there is one: the simulation publishes ~1000 backups, each fsynced
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def publish(catalog, source, now, period, pins, rng):
    """What pg_backup does for a new backup: a partial, hashed files, the manifest, pins, one rename."""
    backup_id = cat.new_backup_id("%s_%s" % (source["db_name"], source["host"]), now)
    n = 1
    while os.path.exists(catalog.path(KIND, backup_id)):
        n += 1
        backup_id = "%s-%d" % (cat.new_backup_id("%s_%s" % (source["db_name"], source["host"]), now), n)
    partial = catalog.begin(KIND, backup_id)
    with open(os.path.join(partial, "dump.pgdump"), "wb") as fh:
        fh.write(rng.randbytes(96))
    files = cat.hash_tree(partial)
    manifest = {
        "created_at": cat.isoformat(now),
        "period": period,
        "period_key": cat.period_key(period, now),
        "source": dict(source),
        "format": "custom",
        "artifact": "dump.pgdump",
        "files": files,
        "size_bytes": 96,
    }
    catalog.publish(KIND, backup_id, manifest, pins=pins)
    return backup_id


def good_by_identity(catalog):
    out = {}
    for rec in catalog.records(KIND):
        if rec["state"] == "good":
            out.setdefault(rec["identity"]["key"], []).append(rec)
    return out


def flip_a_byte(catalog, backup_id, rng):
    path = os.path.join(catalog.path(KIND, backup_id), "dump.pgdump")
    data = bytearray(open(path, "rb").read())
    data[rng.randrange(len(data))] ^= 0xFF
    with open(path, "wb") as fh:
        fh.write(bytes(data))


policy_st = st.fixed_dictionaries(
    {
        "keep_daily": st.integers(1, 7),
        "keep_weekly": st.integers(0, 4),
        "keep_monthly": st.integers(0, 12),
        "keep_min": st.integers(0, 2),
        "keep_manual_days": st.integers(1, 40),
    }
)


# Each example is a whole simulated year (about 1,200 backups): few examples, no shrinking (too slow
# to be useful here; a failure prints the example and the day).
@settings(
    max_examples=3,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    policy=policy_st,
    seed=st.integers(0, 2**32 - 1),
    p_daily=st.floats(0.5, 1.0),
    p_manual=st.floats(0.0, 0.15),
    p_corrupt=st.floats(0.0, 0.08),
)
def test_a_year_of_backups_keeps_the_promises(policy, seed, p_daily, p_manual, p_corrupt):
    rng = random.Random(seed)
    root = tempfile.mkdtemp(prefix="ner11-policy-", dir=SCRATCH)
    try:
        simulate(cat.Catalog(root), policy, rng, p_daily, p_manual, p_corrupt)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def simulate(catalog, policy, rng, p_daily, p_manual, p_corrupt):
    pinned = {}  # backup_id -> keep_until (datetime) as the pin said when made
    manual = {}  # backup_id -> created_at
    maintenance_pin = None  # (backup_id, reason) pinned "until the next window"
    corrupted = set()
    stats = {"deleted": 0, "failed_recorded": 0, "pinned": 0}
    for day in range(DAYS):
        now = START + datetime.timedelta(days=day)
        # -- the day's runs -----------------------------------------------------------------
        for source in IDENTITIES:
            if rng.random() < p_daily:
                publish(catalog, source, now + datetime.timedelta(minutes=rng.randrange(50)), "daily", [], rng)
            if rng.random() < p_manual:
                created = now + datetime.timedelta(hours=3, minutes=rng.randrange(600))
                pins = []
                if rng.random() < 0.5:  # a pre-restore backup kept for a while (pg_backup keep_until)
                    pins = cat.new_backup_pins("%dd" % rng.randrange(1, 90), "before restore", created, "x")
                backup_id = publish(catalog, source, created, "manual", pins, rng)
                manual[backup_id] = created
                if pins:
                    pinned[backup_id] = cat.parse_time(pins[0]["keep_until"])
        # weekly maintenance: pin today's newest backup of db-a until the next window, release the previous one
        if day % 7 == 3:
            newest = catalog.latest(KIND, host="db-a", db_name="ner11_db")
            if maintenance_pin:
                cat.apply_pin(catalog, KIND, maintenance_pin[0], reason=maintenance_pin[1], state="absent", now=now)
                pinned.pop(maintenance_pin[0], None)
                maintenance_pin = None
            if newest:
                reason = "before maintenance window %d" % day
                until = now + datetime.timedelta(days=8)
                result = cat.apply_pin(catalog, KIND, newest["backup_id"], cat.isoformat(until), reason, now=now)
                assert result["keep_until"] >= cat.isoformat(until)  # another, longer pin may hold it too
                maintenance_pin = (newest["backup_id"], reason)
                pinned[newest["backup_id"]] = now + datetime.timedelta(days=8)
                stats["pinned"] += 1
        # -- random damage, found by the verifier (backup_verify records it) -----------------
        good = [r for r in catalog.records(KIND) if r["state"] == "good"]
        if good and rng.random() < p_corrupt:
            victim = rng.choice(good)["backup_id"]
            flip_a_byte(catalog, victim, rng)
            verifier = BackupVerifier({"backup_dir": catalog.root, "kind": KIND, "max_age_hours": 0}, None, now=now)
            result = verifier.run()
            failed_now = {b["backup_id"] for b in result["backups"] if b["status"] == "failed"}
            assert victim in failed_now and failed_now <= corrupted | {victim}
            corrupted.add(victim)
            assert catalog.verification(KIND, victim)["status"] == "failed"
            assert catalog.latest(KIND, include_failed=True) is not None
            stats["failed_recorded"] += 1
        # -- the prune the backup role runs after every backup ------------------------------
        before = good_by_identity(catalog)
        present_before = {r["backup_id"] for r in catalog.records(KIND)}
        result = retention.prune_catalog(catalog, KIND, retention.validate_policy(**policy), now=now)
        after = good_by_identity(catalog)
        present = {r["backup_id"] for r in catalog.records(KIND)}
        stats["deleted"] += len(result["deleted"])
        assert present == present_before - set(result["deleted"])
        # never a day where an identity that had a good backup has none
        for key, recs in before.items():
            assert after.get(key), "day %d: %s lost its last good backup" % (day, key)
            # and the one kept is the newest good one (a failed newer one does not replace it)
            newest = max(recs, key=lambda r: (r["manifest"]["created_at"], r["backup_id"]))
            assert newest["backup_id"] in present
        # pinned never deleted before keep_until
        for backup_id, until in pinned.items():
            if until > now and backup_id in present_before:
                assert backup_id in present, "day %d: pinned %s deleted before %s" % (day, backup_id, until)
        # failed backups are flagged, never deleted by the policy
        assert not set(result["failed_backups"]) & set(result["deleted"])
        # per identity: the calendar tiers hold, manual backups follow their own rule
        for key, recs in after.items():
            unpinned_scheduled = [
                r for r in recs if r["manifest"]["period"] != "manual" and not cat.effective_keep_until(r["pins"], now)
            ]
            assert len(unpinned_scheduled) <= retention.max_kept(policy), (day, key, len(unpinned_scheduled))
            days = [r["manifest"]["created_at"][:10] for r in unpinned_scheduled]
            assert len(days) == len(set(days)), "day %d: two scheduled backups of one day kept for %s" % (day, key)
            newest_id = max(recs, key=lambda r: (r["manifest"]["created_at"], r["backup_id"]))["backup_id"]
            for r in recs:
                if r["backup_id"] in manual and r["backup_id"] != newest_id:
                    age = now - manual[r["backup_id"]]
                    active_pin = cat.effective_keep_until(r["pins"], now)
                    assert age < datetime.timedelta(days=policy["keep_manual_days"]) or active_pin, (day, r["backup_id"])
        for backup_id, created in manual.items():
            if backup_id in present_before and now - created < datetime.timedelta(days=policy["keep_manual_days"]):
                assert backup_id in present, "day %d: manual %s deleted too early" % (day, backup_id)
    assert stats["deleted"] > 0 and stats["pinned"] > 0
