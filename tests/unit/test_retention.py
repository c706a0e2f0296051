import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.ner11.ops.plugins.module_utils import retention

UTC = datetime.timezone.utc
BASE = datetime.datetime(2026, 1, 1, tzinfo=UTC)


def _entry(i, dt, verified=True):
    return {"backup_id": "db-%03d" % i, "created_at": dt.strftime("%Y-%m-%dT%H:%M:%SZ"), "verified": verified}


entries_st = st.lists(
    st.tuples(st.integers(min_value=0, max_value=800 * 24 * 3600), st.booleans()),
    max_size=60,
).map(lambda xs: [_entry(i, BASE + datetime.timedelta(seconds=s), v) for i, (s, v) in enumerate(xs)])
policy_st = st.fixed_dictionaries(
    {
        "keep_daily": st.integers(0, 10),
        "keep_weekly": st.integers(0, 6),
        "keep_monthly": st.integers(0, 14),
        "keep_min": st.integers(0, 5),
    }
)


def _newest_verified(entries):
    verified = [e for e in entries if e["verified"]]
    return max(verified, key=lambda e: (e["created_at"], e["backup_id"]))["backup_id"] if verified else None


@settings(max_examples=300, deadline=None)
@given(entries_st, policy_st)
def test_properties(entries, policy):
    result = retention.plan(entries, **policy)
    kept, deleted = set(result["kept"]), set(result["deleted"])
    verified = {e["backup_id"] for e in entries if e["verified"]}
    unverified = {e["backup_id"] for e in entries if not e["verified"]}
    # a partition of the verified backups; unverified ones are neither kept nor deleted
    assert kept | deleted == verified and not kept & deleted
    assert set(result["unverified"]) == unverified and not unverified & (kept | deleted)
    # never deletes the newest (so never the only verified backup)
    newest = _newest_verified(entries)
    if newest:
        assert newest in kept
    # keeps at most what the policy allows
    assert len(kept) <= retention.max_kept(retention.validate_policy(**policy))
    # keep_min newest are kept
    ordered = sorted((e for e in entries if e["verified"]), key=lambda e: (e["created_at"], e["backup_id"]), reverse=True)
    assert {e["backup_id"] for e in ordered[: policy["keep_min"]]} <= kept
    # idempotent: pruning the kept set again deletes nothing
    again = retention.plan([e for e in entries if e["backup_id"] not in deleted], **policy)
    assert again["deleted"] == [] and set(again["kept"]) == kept


def test_gfs_calendar_example():
    # 60 daily backups at 02:00 plus an extra one at 14:00 on the newest day
    entries = [_entry(i, BASE + datetime.timedelta(days=i, hours=2)) for i in range(60)]
    entries.append({"backup_id": "db-extra", "created_at": "2026-03-01T14:00:00Z", "verified": True})
    result = retention.plan(entries, keep_daily=7, keep_weekly=4, keep_monthly=12, keep_min=1)
    kept = result["kept"]
    # newest of 2026-03-01 is the 14:00 one; the 02:00 one of that day is not a daily keeper
    assert kept["db-extra"][:2] == ["newest", "keep_min"] and "daily 2026-03-01" in kept["db-extra"]
    assert "db-059" not in kept
    dailies = [i for i, reasons in kept.items() if any(r.startswith("daily") for r in reasons)]
    assert len(dailies) == 7
    months = sorted(r for reasons in kept.values() for r in reasons if r.startswith("monthly"))
    assert months == ["monthly 2026-01", "monthly 2026-02", "monthly 2026-03"]
    # monthly keeper of January is the newest of January (the 31st), not the first
    assert "monthly 2026-01" in kept["db-030"]
    assert len(result["deleted"]) == len(entries) - len(kept)


def test_uses_created_at_not_order_and_reports_unverified():
    entries = [
        _entry(1, BASE + datetime.timedelta(days=3)),
        _entry(2, BASE + datetime.timedelta(days=1)),
        _entry(3, BASE + datetime.timedelta(days=5), verified=False),
    ]
    result = retention.plan(entries, keep_daily=1, keep_weekly=0, keep_monthly=0, keep_min=0)
    assert list(result["kept"]) == ["db-001"]
    assert result["deleted"] == ["db-002"]
    assert result["unverified"] == ["db-003"]


def test_all_zero_still_keeps_the_only_backup():
    result = retention.plan([_entry(1, BASE)], keep_daily=0, keep_weekly=0, keep_monthly=0, keep_min=0)
    assert result["kept"] == {"db-001": ["newest"]} and result["deleted"] == []


@pytest.mark.parametrize("key,value", [("keep_daily", -1), ("keep_min", "3"), ("keep_weekly", True)])
def test_bad_policy_names_the_fix(key, value):
    with pytest.raises(retention.RetentionError, match="%s must be an integer >= 0" % key):
        retention.plan([], **{key: value})


def test_duplicate_and_bad_timestamp_rejected():
    with pytest.raises(retention.RetentionError, match="listed twice"):
        retention.plan([_entry(1, BASE), _entry(1, BASE)])
    with pytest.raises(retention.RetentionError, match="YYYY-MM-DD"):
        retention.plan([{"backup_id": "x", "created_at": "yesterday", "verified": True}])


# -- per identity, manual rule, pins, recorded failures (issue 8) ------------------------------
NOW = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _e(backup_id, days_ago, identity="a", period="daily", failed=False, keep_until=None):
    dt = NOW - datetime.timedelta(days=days_ago)
    return {"backup_id": backup_id, "created_at": dt.strftime("%Y-%m-%dT%H:%M:%SZ"), "verified": True,
            "failed": failed, "identity": identity, "period": period, "keep_until": keep_until}  # fmt: skip


def test_each_identity_keeps_its_own_backups():
    # two volumes backed up by one run: the older identity's only backup is not "consumed" by the other's
    entries = [_e("models-1", 0.1, "volume|h|volume:models|models"), _e("other-1", 0.2, "volume|h|volume:other|other")]
    result = retention.plan(entries, keep_daily=1, keep_weekly=0, keep_monthly=0, keep_min=0, now=NOW)
    assert set(result["kept"]) == {"models-1", "other-1"} and result["deleted"] == []
    assert set(result["identities"]) == {"volume|h|volume:models|models", "volume|h|volume:other|other"}


def test_manual_backups_have_their_own_rule_and_never_take_a_daily_slot():
    entries = [_e("daily-old", 0.5), _e("manual-new", 0.1, period="manual"), _e("manual-old", 40, period="manual")]
    result = retention.plan(entries, keep_daily=1, keep_weekly=0, keep_monthly=0, keep_min=0, keep_manual_days=30, now=NOW)
    assert result["kept"]["daily-old"] == ["daily 2026-03-01"]  # the manual one did not take the day's slot
    assert result["kept"]["manual-new"] == ["newest", "manual (kept 30 days)"]
    assert result["deleted"] == ["manual-old"]


def test_pins_hold_until_they_expire():
    until = NOW + datetime.timedelta(days=1)
    entries = [_e("new", 0), _e("pinned", 100, keep_until=until), _e("expired", 90, keep_until=NOW)]
    result = retention.plan(entries, keep_daily=1, keep_weekly=0, keep_monthly=0, keep_min=0, now=NOW)
    assert result["kept"]["pinned"] == ["pinned until 2026-03-02T12:00:00Z"] and result["deleted"] == ["expired"]
    later = retention.plan(entries, keep_daily=1, keep_weekly=0, keep_monthly=0, keep_min=0, now=until)
    assert set(later["deleted"]) == {"pinned", "expired"}


def test_a_failed_newest_backup_leaves_its_slot_to_the_older_good_one():
    entries = [_e("corrupt", 0, failed=True), _e("good", 1), _e("older", 2)]
    result = retention.plan(entries, keep_daily=1, keep_weekly=0, keep_monthly=0, keep_min=0, now=NOW)
    assert "good" in result["kept"] and result["failed_backups"] == ["corrupt"] and result["deleted"] == ["older"]
    assert "corrupt" not in result["deleted"]  # flagged for a human, never deleted by the policy
