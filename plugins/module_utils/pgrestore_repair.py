# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a killed or failed restore left, and how the next run repairs it (pure).

Part of ``pg_restore``'s core (overview in ``pgrestore.py``; docs/restore.md,
"Interrupted restores"). Databases this collection creates or renames carry a
COMMENT starting with ``MARK``; only those are ever dropped by a repair, and
scratch databases (test restores, DR drills) must be marked too.
"""

from __future__ import annotations

# ruff: noqa: S608 -- every identifier goes through quote_ident and every value through quote_literal.

import os
import time

from ansible_collections.ner11.ops.plugins.module_utils.identifiers import quote_literal, quote_name
from ansible_collections.ner11.ops.plugins.module_utils.pgrestore_plan import (
    OLD_INFIX,
    TEMP_SUFFIX,
    Refused,
    old_prefix,
    temp_db_name,
)

quote_ident = quote_name

# mktemp -d (0700) inside the DB container, per database; removed after the restore
# (and by the next run's repair when a run was killed).
CONTAINER_STAGE_PREFIX = "/tmp/ner11-restore-"  # noqa: S108
# Databases this collection creates or renames carry a COMMENT starting with MARK;
# only those are ever dropped by a repair.
MARK = "ner11.ops:"
TEMP_COMMENT = MARK + " temporary database of a restore in progress (dropped by the next run if left)"
DROP_PENDING = "drop pending"
# Test-only hook (docs/restore.md "Interrupted restores"): with NER11_OPS_TEST_PAUSE_AT=<phase>
# the module writes <NER11_OPS_TEST_PAUSE_DIR>/<phase> and sleeps at that phase, so a test can
# kill the whole job there. Phases: copy, pg_restore, connections, drop.
PAUSE_PHASES = ("copy", "pg_restore", "connections", "drop")


def test_pause(phase, environ=None):
    """The test-only pause hook: a no-op unless NER11_OPS_TEST_PAUSE_AT names this phase."""
    environ = os.environ if environ is None else environ
    if environ.get("NER11_OPS_TEST_PAUSE_AT") != phase:
        return False
    directory = environ.get("NER11_OPS_TEST_PAUSE_DIR")
    if directory:
        with open(os.path.join(directory, phase), "w") as fh:
            fh.write("%d\n" % os.getpid())
    time.sleep(float(environ.get("NER11_OPS_TEST_PAUSE_SECONDS") or 300))
    return True


PROTECTED_DBS = ("postgres", "template0", "template1")
SCRATCH_COMMENT = MARK + " scratch database (test restore or DR drill), dropped after use"


def created_comment(backup_id):
    return "%s created by the restore of %s" % (MARK, backup_id)


def scratch_refusal(name, source_db=None):
    """Why ``name`` must not be used as a scratch database (None when it may) (pure).

    Scratch databases are dropped WITH (FORCE) without a confirmation, so they can
    never be a system database, the backed-up (source) database, or one of the
    names a restore uses for its own temporary and replaced databases.
    """
    if name in PROTECTED_DBS:
        return (
            "scratch database %s is a system database (postgres, template0 and template1 are never used); choose another name"
            % name
        )
    if source_db and name == source_db:
        return "scratch database %s is the backed-up database itself; choose another name" % name
    if name.endswith(TEMP_SUFFIX) or OLD_INFIX in name:
        return "scratch database %s uses a name the restore keeps for itself; choose another name" % name
    return None


def stage_pattern(db):
    return CONTAINER_STAGE_PREFIX + db + "-"


def old_comment(backup_id, keep_old):
    return "%s replaced by the restore of %s; %s" % (MARK, backup_id, "kept (keep_old)" if keep_old else DROP_PENDING)


def classify_leftovers(db, rows):
    """What a killed or failed run left, from ``(datname, datallowconn, comment)`` rows (pure).

    Returns {target_blocked, temp (None or {name, ours}), old: [{name, allow, comment, drop}]}.
    ``drop`` is true only for a database this collection renamed and meant to drop.
    """
    temp = temp_db_name(db)
    out = {"target_exists": False, "target_blocked": False, "temp": None, "old": []}
    prefix = old_prefix(db)
    for name, allow, comment in rows:
        allowed = allow in (True, "t", "true")
        comment = comment or ""
        if name == db:
            out["target_exists"] = True
            out["target_blocked"] = not allowed
        elif name == temp:
            out["temp"] = {"name": name, "ours": comment.startswith(MARK), "allow": allowed}
        elif name.startswith(prefix):
            ours = comment.startswith(MARK)
            out["old"].append(
                {"name": name, "allow": allowed, "comment": comment, "ours": ours, "drop": ours and DROP_PENDING in comment}
            )
    out["old"].sort(key=lambda o: o["name"])
    return out


def repair_plan(db, found, stage_dirs=(), clients=()):
    """The repair steps (descriptions) for what ``classify_leftovers`` found (pure).

    Raises Refused when a database with our temporary name was not made by us.
    """
    steps = []
    if found["temp"] and not found["temp"]["ours"]:
        raise Refused(
            "database %s exists but was not created by ner11.ops (it has no ner11.ops comment); rename or drop it "
            "yourself before restoring %s; nothing was changed" % (found["temp"]["name"], db)
        )
    for client in clients:
        if client.get("sidecar"):
            steps.append("remove the %s sidecar container %s of a killed restore" % (client["tool"], client["sidecar"][:12]))
        else:
            steps.append("stop %s still running in the database container (pid %s)" % (client["tool"], client["pid"]))
    if found["target_blocked"]:
        steps.append("allow connections to %s again (a killed restore left them disallowed)" % db)
    if found["temp"]:
        steps.append("drop the half-built temporary database %s" % found["temp"]["name"])
    for old in found["old"]:
        if old["drop"]:
            steps.append("drop %s (the database a completed restore replaced; it was due to be dropped)" % old["name"])
    for stage in stage_dirs:
        steps.append("remove the dump copy %s in the database container" % stage)
    return steps


def leftover_report(db, found):
    """Leftovers this run does not remove: what they are and what to run (for ``leftovers``)."""
    out = []
    for old in found["old"]:
        if old["drop"]:
            continue
        why = "kept on request (keep_old)" if old["ours"] else "not marked by ner11.ops, so never dropped automatically"
        out.append(
            {
                "database": old["name"],
                "state": "%s; %s" % ("accepts connections" if old["allow"] else "refuses connections", why),
                "fix": "inspect it, then DROP DATABASE %s; (it holds the content %s had before a restore)"
                % (quote_ident(old["name"]), db),
            }
        )
    return out


def leftovers_sql(db):
    temp = temp_db_name(db)
    prefix = old_prefix(db)
    return (
        "SELECT datname, datallowconn, coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database "
        "WHERE datname IN (%s, %s) OR left(datname, %d) = %s ORDER BY 1;"
        % (quote_literal(db), quote_literal(temp), len(prefix), quote_literal(prefix))
    )


# Lists, inside the DB container, the client processes working on the temporary
# database (pg_restore/psql; "$1" is its name), the dump copies of this database
# and the free space where the restored copy and a dump copy would go (one docker exec).
CONTAINER_SCAN = r"""
for p in /proc/[0-9]*; do
  c=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null) || continue
  case "$c" in *" $1 "*|*" $1") ;; *) continue ;; esac
  case "$c" in pg_restore\ *|psql\ *|*/pg_restore\ *|*/psql\ *) echo "pid ${p#/proc/} ${c%% *}" ;; esac
done
for d in "$2"*; do [ -d "$d" ] && echo "stage $d"; done
for d in "${PGDATA:-}" /tmp; do
  [ -n "$d" ] && [ -d "$d" ] || continue
  df -P -k "$d" 2>/dev/null | { read -r _h; read -r row && printf 'df\t%s\t%s\n' "$d" "$row"; }
done
exit 0
"""
# The scan's last loop prints ``df<TAB><path><TAB><df -P -k row>`` for the image's data directory
# ($PGDATA) and /tmp: the free-space check uses a row only when its path is the server's own
# data_directory (read in the same round, ``pgrestore_sql.preflight_sql``), else it runs df itself.
