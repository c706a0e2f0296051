# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prove database (and artifact) backups usable (module ``backup_verify``).

Manifest, checksums, archive readable with the stock tools, age against the RPO per
source identity (``identity_table``, ``rpo_errors``), and an optional test restore
into a marked scratch database (G65). Plain Python: no Ansible import.
"""

from __future__ import annotations

import os
import shlex
import time

from ansible_collections.ner11.ops.plugins.module_utils import catalog as cat
from ansible_collections.ner11.ops.plugins.module_utils import pgrestore_repair as marks
from ansible_collections.ner11.ops.plugins.module_utils.pgbackup_formats import (
    FORMATS,
    KIND,
    PgBackupError,
    DEFAULT_CLIENT_IMAGE,
    count_toc,
    counts_match,
    judge_lenient_restore,
    test_stream,
)
from ansible_collections.ner11.ops.plugins.module_utils.identifiers import NAME_RULE, is_name
from ansible_collections.ner11.ops.plugins.module_utils.pgexec import PgExecError, PgTarget, psql_args
from ansible_collections.ner11.ops.plugins.module_utils.runner import CommandRunner, last_line


def identity_table(records, now, host=None, results=()):
    """One row per source identity: newest good backup, the time its content was last confirmed, counts.

    ``records``: ``Catalog.records(kind)``; ``results``: this run's per-backup results (a backup that
    failed now is not good, even before its record is written, e.g. in check mode).
    For models/config/volume the content is confirmed current by a newer unchanged run
    (``freshness.json`` with the same content digest); a database backup counts only by its own time.
    """
    failed_now = {r["backup_id"] for r in results if r.get("status") == "failed"}
    ok_now = {r["backup_id"] for r in results if r.get("status") == "ok"}
    rows = {}
    for rec in records:
        ident = rec["identity"]
        if ident is None or (host and ident["host"] != host):
            continue
        row = rows.setdefault(
            ident["key"],
            {"identity": ident["key"], "kind": ident["kind"], "host": ident["host"], "instance": ident["instance"],
             "object": ident["object"], "good": 0, "failed": 0, "pinned": 0, "scheduled": False,
             "newest_backup_id": None, "newest_created_at": None, "confirmed_at": None},
        )  # fmt: skip
        manifest = rec["manifest"]
        state = rec["state"]
        if rec["backup_id"] in failed_now:
            state = "failed"
        elif rec["backup_id"] in ok_now and state == "failed":
            state = "good"
        if cat.effective_keep_until(rec["pins"], now):
            row["pinned"] += 1
        if manifest.get("period") != "manual" or (rec["freshness"] or {}).get("period") not in (None, "manual"):
            row["scheduled"] = True  # a scheduled run made it, or confirmed it unchanged
        if state != "good":
            row["failed"] += state == "failed"
            continue
        row["good"] += 1
        if row["newest_created_at"] is None or manifest["created_at"] >= row["newest_created_at"]:
            row["newest_backup_id"] = rec["backup_id"]
            row["newest_created_at"] = manifest["created_at"]
            fresh = rec["freshness"] or {}
            same = fresh.get("content_sha256") and fresh.get("content_sha256") == manifest.get("content_sha256")
            row["confirmed_at"] = fresh.get("confirmed_at") if same and ident["kind"] != KIND else None
    out = []
    for key in sorted(rows):
        row = rows[key]
        basis = max(t for t in (row["newest_created_at"], row["confirmed_at"]) if t) if row["good"] else None
        row["current_as_of"] = basis
        age_s = (now - cat.parse_time(basis)).total_seconds() if basis else None
        row["age_seconds"] = round(age_s, 1) if basis else None
        row["age_hours"] = round(age_s / 3600.0, 2) if basis else None
        out.append(row)
    return out


def rpo_errors(row, max_age):
    """RPO problems of one identity row (empty when within ``max_age`` hours; 0 disables)."""
    if not max_age or max_age <= 0 or not row["scheduled"]:
        return []  # an identity with only manual backups has no schedule to miss
    what = "%s backup of %s on host %s (%s)" % (row["kind"], row["object"], row["host"], row["instance"])
    if not row["good"]:
        return ["no good %s: every backup of it failed verification; run playbooks/backup.yml and inspect them" % what]
    if row["age_seconds"] > max_age * 3600.0:
        basis = "confirmed current" if row["confirmed_at"] and row["current_as_of"] == row["confirmed_at"] else "made"
        return [
            "the newest good %s (%s) was %s %.1f h ago, more than max_age_hours %s (RPO); run playbooks/backup.yml"
            % (what, row["newest_backup_id"], basis, row["age_hours"], max_age)
        ]
    return []


def client_image(manifest):
    """The image with pg_restore >= 16 that reads a zstd directory dump (None for any other dump)."""
    if manifest.get("format") == "directory" and str(manifest.get("compression") or "").startswith("zstd"):
        return manifest.get("client_image") or DEFAULT_CLIENT_IMAGE
    return None


# -- a damaged manifest: the fields verification reads, with the wrong type -------------------
def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value):
    """A manifest value for a message: ``'5' (text)``, ``[1] (a list)``."""
    kinds = ((bool, "true/false"), (str, "text"), (int, "a number"), (float, "a number"), (list, "a list"), (dict, "an object"))
    for kind, word in kinds:
        if isinstance(value, kind):
            return "%s (%s)" % (repr(value)[:60], word)
    return "null" if value is None else repr(value)[:60]


def damaged_fields(manifest, kind=KIND):
    """What is wrong with the fields verification and the test restore read (empty when usable).

    ``Catalog.read_manifest`` checks the structure (keys, ``created_at``); this checks the
    values' types, so a manifest edited or damaged by hand is a verification failure with a
    plain message, never a traceback.
    """
    problems = []

    def wrong(key, expected):
        problems.append("%s is %s, expected %s" % (key, _shown(manifest.get(key)), expected))

    for entry in manifest.get("files") or []:
        if not _is_int(entry.get("size")) or entry.get("size") < 0 or not isinstance(entry.get("sha256"), str):
            problems.append(
                "the files entry %s has size %s and sha256 %s, expected a whole number and a hex digest"
                % (_shown(entry.get("path")), _shown(entry.get("size")), _shown(entry.get("sha256")))
            )
            break
    if manifest.get("source") is not None and not isinstance(manifest.get("source"), dict):
        wrong("source", "an object")
    if kind != KIND:
        return problems
    # A manifest without format/artifact has only checksums to check (a hand-made entry); a test
    # restore needs them (``test_restore``).
    if manifest.get("format") is not None and manifest.get("format") not in FORMATS:
        wrong("format", "one of %s" % ", ".join(FORMATS))
    artifact = manifest.get("artifact")
    if (artifact is not None or manifest.get("format") is not None) and not (
        isinstance(artifact, str) and artifact and not artifact.startswith("/") and ".." not in artifact.split("/")
    ):
        wrong("artifact", "a file name inside the backup")
    for key in ("compression", "client_image"):
        if manifest.get(key) is not None and not isinstance(manifest.get(key), str):
            wrong(key, "text")
    toc = manifest.get("toc_entries")
    if toc is not None and not (_is_int(toc) and toc >= 0):
        wrong("toc_entries", "a whole number")
    jobs = manifest.get("jobs")
    if jobs is not None and not (_is_int(jobs) and jobs >= 1):
        wrong("jobs", "a whole number of 1 or more")
    tables = manifest.get("canary_tables")
    if tables is not None and not (isinstance(tables, list) and all(isinstance(t, str) for t in tables)):
        wrong("canary_tables", "a list of table names")
    for key in ("row_counts", "row_counts_after"):
        counts = manifest.get(key)
        if counts is not None and not (
            isinstance(counts, dict) and all(v is None or (_is_int(v) and v >= 0) for v in counts.values())
        ):
            wrong(key, "an object of table: row count")
    return problems


def damage_message(problems):
    return (
        "the manifest is damaged: %s; this backup cannot be trusted: make a new one (playbooks/backup.yml) and restore "
        "from another backup" % "; ".join(problems)
    )


# -- verification (module backup_verify) -----------------------------------------------
class BackupVerifier:
    """Prove backups usable: manifest, checksums, archive readable, age (RPO), optional test restore (G65)."""

    def __init__(self, params, runner, now=None):
        self.p = params
        self.cmd = CommandRunner.wrap(runner)
        self.now = now or cat.utcnow()
        self.catalog = cat.Catalog(params["backup_dir"])
        self.kind = cat.validate_kind(params.get("kind") or KIND)
        self.executed = self.cmd.commands
        self.target = None
        if params.get("container") or params.get("login_host"):
            self.target = PgTarget(params, self.cmd)
        self.image = None
        self.actions = []

    def _sh(self, line):
        return self.cmd.shell(line, check=False)

    def _image(self):
        if self.image is None and self.p.get("container"):
            status, self.image = self.target.container_state()
            if status is None:
                raise PgBackupError("container %s not found (%s); check the container option" % (self.p["container"], self.image))
            if status != "running":
                raise PgBackupError(
                    "container %s is %s; start it to read or test-restore backups" % (self.p["container"], status)
                )
        return self.image

    def _readable(self, manifest, root):
        """Errors reading the archive with the stock tools (empty when readable)."""
        fmt = manifest.get("format")
        artifact = os.path.join(root, manifest.get("artifact") or "")
        if fmt == "plain":
            method = (manifest.get("compression") or "none").partition(":")[0]
            try:
                test_stream(artifact, method, self._sh)
            except PgBackupError as exc:
                return [str(exc)]
            return []
        if fmt not in ("custom", "directory"):
            return []
        if not self.target:
            return []  # no server tools named: checksums only (reported in `checks`)
        image = self._image() if fmt == "directory" and self.p.get("container") else None
        if image and client_image(manifest):
            image = client_image(manifest)
        kind, cmd = self.target.list_dump_command(fmt, artifact, image)
        if kind == "shell":
            rc, out, err = self._sh(cmd)
        else:
            rc, out, err = self.cmd.run(cmd, env=self.target.environ(), check=False)
        if rc != 0:
            return ["%s: pg_restore --list failed: %s" % (manifest.get("artifact"), last_line(err or out))]
        toc = count_toc(out)
        expected = manifest.get("toc_entries")
        if _is_int(expected) and expected and toc != expected:
            return ["%s: %d TOC entries, manifest says %d" % (manifest.get("artifact"), toc, expected)]
        return []

    def check_one(self, backup_id, manifest=None, load_error=None):
        entry = {"backup_id": backup_id, "status": "ok", "errors": [], "checks": []}
        if manifest is None and load_error is None:
            try:
                manifest = self.catalog.read_manifest(self.kind, backup_id)
            except cat.CatalogError as exc:
                load_error = str(exc)
        if load_error:
            entry.update(status="failed", errors=[load_error])
            return entry
        entry["created_at"] = manifest["created_at"]
        entry["age_hours"] = round((self.now - cat.parse_time(manifest["created_at"])).total_seconds() / 3600.0, 2)
        if manifest.get("status") != "verified":
            entry["errors"].append("status is %r, not verified" % manifest.get("status"))
        entry["checks"].append("manifest")
        damaged = damaged_fields(manifest, self.kind)
        if damaged:
            entry.update(status="failed", errors=entry["errors"] + [damage_message(damaged)])
            return entry
        try:
            errors = self.catalog.verify(self.kind, backup_id)
        except OSError as exc:
            errors = [
                "cannot read %s: %s; check the permissions of %s (ls -l)"
                % (
                    exc.filename or self.catalog.path(self.kind, backup_id),
                    exc.strerror or exc,
                    self.catalog.path(self.kind, backup_id),
                )
            ]
        entry["checks"].append("sha256")
        entry["errors"] += errors
        if not errors and self.kind == KIND:
            readable = self._readable(manifest, self.catalog.path(self.kind, backup_id))
            if self.target or manifest.get("format") == "plain":
                entry["checks"].append("archive")
            entry["errors"] += readable
        if entry["errors"]:
            entry["status"] = "failed"
        return entry

    def run(self):
        try:
            return self._run()
        except OSError as exc:
            raise PgBackupError(
                "cannot read the backup catalog at %s: %s; check that %s exists and is readable (ls -ld), then run again"
                % (exc.filename or self.catalog.root, exc.strerror or exc, self.catalog.root)
            ) from None
        finally:
            if self.target:
                self.target.close()

    def _run(self):
        backup_id = self.p.get("backup_id")
        host = self.p.get("source_host")
        every = self.p.get("all")
        if backup_id and every:
            raise PgBackupError(
                "all=true and backup_id exclude each other: drop backup_id to verify every backup of %s, or drop all "
                "(or set all=false) to verify only %s" % (self.kind, backup_id)
            )
        if every is False and not backup_id:
            raise PgBackupError(
                "all=false needs backup_id: name the backup to verify with backup_id, or drop all (every backup of %s "
                "is verified when backup_id is not given)" % self.kind
            )
        if backup_id:
            cat.validate_backup_id(backup_id)
            if not os.path.isdir(self.catalog.path(self.kind, backup_id)):
                raise PgBackupError(
                    "backup %s/%s not found in %s; list the catalog (ner11.ops.backup_catalog) or leave out backup_id to "
                    "verify every backup" % (self.kind, backup_id, self.catalog.root)
                )
            results = [self.check_one(backup_id)]
        else:
            results = [
                self.check_one(bid, m, e)
                for bid, m, e in self.catalog.entries(self.kind)
                if not host or m is None or cat.source_identity(m)["host"] == host
            ]
        if self.p.get("record", True):
            self._record(results)
        errors = []
        match = {"host": host} if host else {}
        newest = self.catalog.latest(self.kind, **match)
        max_age = self.p.get("max_age_hours")
        newest_age = None
        if newest is not None:
            newest_age = round((self.now - cat.parse_time(newest["created_at"])).total_seconds() / 3600.0, 2)
        identities = identity_table(self.catalog.records(self.kind), self.now, host, results)
        if not identities or not any(i["good"] for i in identities):
            errors.append("no good %s backup in %s; run playbooks/backup.yml" % (self.kind, self.catalog.root))
        for ident in identities:
            late = rpo_errors(ident, max_age)
            ident["rpo"] = "failed" if late else ("ok" if ident["scheduled"] and max_age else "not judged")
            errors += late
        for entry in results:
            for err in entry["errors"]:
                errors.append("%s: %s" % (entry["backup_id"], err))
        result = {
            "changed": False,
            "backups": results,
            "identities": identities,
            "newest_backup_id": newest["backup_id"] if newest else None,
            "newest_age_hours": newest_age,
            "errors": errors,
        }
        if self.p.get("test_restore") and newest is not None and self.kind == KIND:
            result["test_restore"] = self.test_restore(newest)
            if result["test_restore"]["errors"]:
                errors += ["test restore of %s: %s" % (newest["backup_id"], e) for e in result["test_restore"]["errors"]]
                if self.p.get("record", True):
                    try:
                        self.catalog.record_verification(
                            self.kind, newest["backup_id"], "failed", ["manifest", "sha256", "test_restore"],
                            result["test_restore"]["errors"], self.now,
                        )  # fmt: skip
                    except (cat.CatalogError, OSError) as exc:
                        errors.append(
                            "%s: could not record the failed test restore beside the backup: %s; check free space and "
                            "permissions on %s" % (newest["backup_id"], exc, self.catalog.root)
                        )
        result["status"] = "failed" if errors else "ok"
        return result

    def _record(self, results):
        """Keep each result beside its backup (verify.json): latest, prune and period idempotence read it."""
        for entry in results:
            if entry.get("created_at") is None:
                continue  # no readable manifest: nothing to record beside
            try:
                self.catalog.record_verification(
                    self.kind, entry["backup_id"], entry["status"], entry["checks"], entry["errors"], self.now
                )
            except (cat.CatalogError, OSError) as exc:
                entry["errors"].append(
                    "could not record the result beside the backup: %s; check free space and permissions on %s (df -h, ls -ld)"
                    % (exc, self.catalog.root)
                )
                entry["status"] = "failed"

    # -- test restore into a scratch database ----------------------------------------------
    def test_restore(self, manifest):
        started = time.monotonic()
        scratch = self.p.get("scratch_db") or "ner11_test_restore"
        out = {"backup_id": manifest["backup_id"], "scratch_db": scratch, "errors": [], "actions": []}
        damaged = damaged_fields(manifest)
        if manifest.get("format") is None:
            damaged.append("format is missing, expected one of %s" % ", ".join(FORMATS))
        if damaged:
            out["errors"].append(damage_message(damaged) + "; nothing was restored")
            out["duration_s"] = round(time.monotonic() - started, 3)
            return out
        if not self.target:
            raise PgBackupError("test_restore needs the server: set container (or login_host) to restore into %s" % scratch)
        if not is_name(scratch):
            raise PgBackupError("scratch_db %r is not a valid database name: %s" % (scratch, NAME_RULE))
        if scratch == (manifest.get("source") or {}).get("db_name"):
            raise PgBackupError(
                "scratch_db %s is the backed-up database itself; choose another name (default ner11_test_restore)" % scratch
            )
        # Scratch databases are dropped WITH (FORCE): never a system database, and only one
        # this collection created (marked with a COMMENT), issue 9.
        refusal = marks.scratch_refusal(scratch, (manifest.get("source") or {}).get("db_name"))
        if refusal:
            raise PgBackupError(refusal)
        comment = self.target.database_comment(scratch)
        if comment is not None and not comment.startswith(marks.MARK):
            raise PgBackupError(
                "database %s exists and was not created by ner11.ops; choose another scratch_db (default "
                "ner11_test_restore) or drop it yourself" % scratch
            )
        if self.p.get("container"):
            self._image()
        try:
            error = self.target.drop_database(scratch)
            if error:
                raise PgBackupError("could not drop the earlier scratch database %s: %s" % (scratch, error))
            self.target.create_database(scratch, marks.SCRATCH_COMMENT)
            out["actions"] += ["dropped %s if it existed" % scratch, "created %s" % scratch]
            self._restore_into(manifest, scratch)
            out["actions"].append("restored %s into %s" % (manifest["backup_id"], scratch))
            tables = manifest.get("canary_tables") or list(manifest.get("row_counts") or {})
            actual = self.target.canary_counts(tables, scratch)  # G23: explicit -d
            out["row_counts"] = actual
            out["errors"] += counts_match(manifest.get("row_counts"), manifest.get("row_counts_after"), actual)
        except (PgBackupError, PgExecError) as exc:
            out["errors"].append(str(exc))
        finally:
            error = self.target.drop_database(scratch)
            if error:
                out["errors"].append("could not drop %s afterwards: %s; drop it by hand" % (scratch, error))
            else:
                out["actions"].append("dropped %s" % scratch)
        out["duration_s"] = round(time.monotonic() - started, 3)
        return out

    def _restore_into(self, manifest, scratch):
        root = self.catalog.path(KIND, manifest["backup_id"])
        artifact = os.path.join(root, manifest["artifact"])
        fmt = manifest["format"]
        method = (manifest.get("compression") or "none").partition(":")[0]
        jobs = manifest.get("jobs")
        jobs = str(jobs if _is_int(jobs) and jobs >= 1 else 1)  # damaged_fields reported any other value
        env = self.target.environ()
        if self.p.get("login_host"):
            if fmt in ("custom", "directory"):
                cmd = self.target.argv("pg_restore", ["--exit-on-error", "-j", jobs, "-d", scratch, artifact])
                rc, o, e = self.cmd.run(cmd, env=env, check=False)
            else:
                src = shlex.quote(artifact) if method == "none" else "<(%s -dc %s)" % (method, shlex.quote(artifact))
                rc, o, e = self.cmd.shell(
                    "%s < %s" % (self.target.psql_line(scratch, single_transaction=True), src), env=env, check=False
                )
        elif fmt == "custom":
            rc, o, e = self._sh(
                "%s < %s"
                % (
                    shlex.join(self.target.argv("pg_restore", ["--exit-on-error", "-d", scratch], stdin=True)),
                    shlex.quote(artifact),
                )
            )
        elif fmt == "plain":
            inner = "%s%s" % (
                "" if method == "none" else "%s -dc | " % method,
                shlex.join(self.target.inner_argv("psql", psql_args(scratch, single_transaction=True))),
            )
            cmd = self.target.argv("bash", ["-o", "pipefail", "-c", inner], stdin=True)
            rc, o, e = self._sh("%s < %s" % (shlex.join(cmd), shlex.quote(artifact)))
        else:
            if not self.p.get("login_password"):
                raise PgBackupError(
                    "a directory-format test restore in container mode runs pg_restore -j in a sidecar over TCP and "
                    "needs login_password (ner11_db_password)"
                )
            zstd = client_image(manifest)
            cmd = self.target.sidecar_argv(
                "pg_restore",
                ([] if zstd else ["--exit-on-error"]) + ["-j", jobs, "-d", scratch, artifact],
                zstd or self.image,
                volumes=["%s:%s:ro" % (root, root)],
            )
            rc, o, e = self.cmd.run(cmd, check=False)
            if zstd:
                # pg_restore 17 into a 15/16 server: only the known SET transaction_timeout error is accepted.
                problem = judge_lenient_restore(rc, e)
                if problem:
                    raise PgBackupError("restoring %s into %s failed: %s" % (manifest["backup_id"], scratch, problem))
                return
        if rc != 0:
            raise PgBackupError(
                "restoring %s into %s failed (rc=%s): %s" % (manifest["backup_id"], scratch, rc, last_line(e or o))
            )
