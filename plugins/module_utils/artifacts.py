# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Artifact backups (docs/artifacts.md): the ``artifact_backup`` job and what the restore job shares.

The backup streams a source (host directory, config files, a directory in a
running container, a Docker volume) into ``data.tar`` of a catalog partial,
lists it (:func:`artifact_tar.scan_tar`), skips it when its content digest equals
the latest backup of the same source, else publishes it with its manifest.
Check mode lists the source without writing anything.

Layout: ``artifact_tar`` (listing, digests, plans; pure), ``artifact_extract``
(safe host extraction), ``artifact_docker`` (containers, volumes), this file
(the backup job), ``artifact_restorer`` (the restore job). Plain Python: the
caller passes a ``runner`` with the signature of ``AnsibleModule.run_command``.
"""

from __future__ import annotations

import os
import time

from ansible_collections.ner11.ops.plugins.module_utils.artifact_docker import (
    choose_helper_image,
    live_postgres_users,
    mount_for_path,
    tar_create_args,
    tar_out_of_volume,
    stream_listing,
    volume_users,
)
from ansible_collections.ner11.ops.plugins.module_utils.artifact_tar import (
    ARCHIVE,
    DEFAULT_EXCLUDES,
    ArtifactError,
    build_manifest,
    changed_paths,
    config_root,
    content_digest,
    is_excluded,
    is_sensitive,
    list_config,
    list_host_tree,
    public_manifest,
    scan_tar,
    source_instance,
    summarize,
    write_tar,
)
from ansible_collections.ner11.ops.plugins.module_utils.docker_cli import DockerCli, cli_path
from ansible_collections.ner11.ops.plugins.module_utils.runner import last_line

KINDS = ("models", "config", "volume")
DEFAULT_MODELS_PATH = "/app/models"
PIN_REASON = "pinned by artifact_backup keep_until"


def _catalog():
    # imported lazily so the pure functions above stay importable on their own
    from ansible_collections.ner11.ops.plugins.module_utils import catalog

    return catalog


def _hostname():
    import socket

    return socket.gethostname()


def os_error_message(exc, what, dirs):
    """An OSError in plain words: what failed, on which path, and where to look.

    ``dirs`` are the directories the job writes to or reads from (the catalog, the target, its
    parent), most likely first: the deepest one holding the failing path is named, else the
    path's own directory, else the first of ``dirs``.
    """
    path = getattr(exc, "filename", None)
    dirs = [os.path.abspath(d) for d in dirs if d]
    if path:
        path = os.path.abspath(str(path))
        holding = [d for d in dirs if path == d or path.startswith(d.rstrip("/") + "/")]
        where = max(holding, key=len) if holding else os.path.dirname(path) or "/"
    else:
        where = dirs[0] if dirs else "/"
    return "%s failed: %s%s; check free space and permissions on %s, then run again" % (
        what,
        getattr(exc, "strerror", None) or exc,
        " (%s)" % path if path else "",
        where,
    )


def absolute_path(path, option):
    if not isinstance(path, str) or not path or not os.path.isabs(path):
        raise ArtifactError("%s must be an absolute path, got %r" % (option, path))
    return os.path.normpath(path)


class ArtifactJob:
    """What backup and restore share: the validated kind, the catalog and the docker runner."""

    def __init__(self, params, runner):
        self.cat = _catalog()
        self.p = params
        self.kind = params.get("kind")
        if self.kind not in KINDS:
            raise ArtifactError("invalid kind %r: use one of %s" % (self.kind, ", ".join(KINDS)))
        self.catalog = self.cat.Catalog(params.get("backup_dir"))
        self.docker = DockerCli(runner, cli_path(params))


class ArtifactBackup(ArtifactJob):
    """``artifact_backup``: stream a source into ``data.tar`` of a catalog partial, describe, publish."""

    def __init__(self, params, runner, check_mode=False, tmpdir=None, now=None):
        super().__init__(params, runner)
        cat = self.cat
        excludes = params.get("excludes")
        self.excludes = list(DEFAULT_EXCLUDES if excludes is None else excludes)
        self.period = params.get("period") or "manual"
        self.force = bool(params.get("force"))
        self.check_mode = check_mode
        self.tmpdir = tmpdir
        self.now = now or cat.utcnow()
        self.warnings = []
        cat.period_key(self.period, self.now)  # validates the period
        # source identity (docs/backup-catalog.md): the name the role passes, else this machine's
        self.source_host = params.get("source_host") or _hostname()
        self.pins = cat.new_backup_pins(params.get("keep_until"), params.get("keep_reason"), self.now, PIN_REASON)

    # -- sources -----------------------------------------------------------------------
    def resolve(self):
        """Return (source dict, id name, stream(tar_path), listing()).

        ``listing()`` lists the source's content like :func:`scan_tar` lists the
        tar ``stream`` writes, without writing anything (check mode).
        """
        src = self.p.get("src")
        if isinstance(src, str):
            src = [src]
        src = list(src or [])
        host = self.source_host
        if self.kind == "config":
            root = config_root(src)
            paths = sorted(os.path.normpath(p) for p in src)

            def stream(tar_path):
                _root, entries = list_config(paths, self.excludes)
                write_tar(tar_path, root, entries)

            def listing():
                return [e for e in list_config(paths, self.excludes)[1] if not is_excluded(e["path"], self.excludes)]

            source = {"host": host, "path": root, "paths": paths}
            return source, "config-%s" % (os.path.basename(root) or "root"), stream, listing
        if self.kind == "volume":
            if len(src) != 1:
                raise ArtifactError("kind volume takes one volume name in src, got %r" % (src,))
            return self._volume_source(src[0], host)
        container = self.p.get("container")
        if container:
            if len(src) > 1:
                raise ArtifactError("kind models takes one directory in src, got %r" % (src,))
            path = absolute_path(src[0] if src else DEFAULT_MODELS_PATH, "src")
            return self._container_source(container, path, host)
        if len(src) != 1:
            raise ArtifactError(
                "kind models needs container (the api container, src defaults to /app/models) "
                "or one absolute host directory in src"
            )
        path = absolute_path(src[0], "src")
        if not os.path.isdir(path):
            raise ArtifactError(
                "models directory %s does not exist on this host (/app/models is a path inside the api container); "
                "set container to the api container name, or src to the host directory" % path
            )

        def stream_host(tar_path):
            write_tar(tar_path, path, list_host_tree(path, self.excludes))

        def listing():
            return list_host_tree(path, self.excludes)

        return {"host": host, "path": path}, "models-%s" % (os.path.basename(path) or "root"), stream_host, listing

    def _container_source(self, container, path, host):
        info = self.docker.inspect(container)
        if info is None:
            raise ArtifactError("container %s not found; check the name with `docker ps -a`" % container)
        mount = mount_for_path(info, path)
        if not (info.get("State") or {}).get("Running"):
            hint = " or back up its volume instead: kind: volume, src: %s" % mount if mount else ""
            raise ArtifactError(
                "container %s is not running (state %s): start it%s" % (container, (info.get("State") or {}).get("Status"), hint)
            )
        rc, _out, _err = self.docker.exec(container, ["test", "-d", path], check=False)
        if rc != 0:
            raise ArtifactError("%s is not a directory in container %s; fix src (default /app/models)" % (path, container))
        source = {"host": host, "container": container, "path": path, "image": (info.get("Config") or {}).get("Image")}
        if mount:
            source["mount"] = mount

        def stream(tar_path):
            rc, _out, err = self.docker.to_file(
                self.docker.exec_argv(container, tar_create_args(path, self.excludes)),
                tar_path,
                ok_rcs=(0, 1),
                what="streaming %s out of container %s" % (path, container),
            )
            if rc == 1:
                self.warnings.append("tar reported files changing during the copy: %s" % last_line(err))

        def listing():
            return stream_listing(
                self.docker,
                self.docker.exec_argv(container, tar_create_args(path, self.excludes)),
                self.excludes,
                "listing %s in %s" % (path, container),
            )

        return source, "models-%s" % container, stream, listing

    def _volume_source(self, volume, host):
        info = self.docker.inspect(volume, "volume")
        if info is None:
            raise ArtifactError("Docker volume %s not found; list volumes with `docker volume ls`" % volume)
        users = volume_users(self.docker, volume)
        live = live_postgres_users(users)
        if live and not self.p.get("allow_live"):
            raise ArtifactError(
                "volume %s is the data directory of the running PostgreSQL container %s: a file copy of a live "
                "database is not crash-consistent. Stop %s first (e.g. ner11.ops.service), use pg_backup "
                "for a logical backup, or set allow_live: true to copy it anyway" % (volume, ", ".join(live), live[0])
            )
        if live:
            self.warnings.append(
                "copying the live PostgreSQL data volume %s (allow_live): the copy may not be crash-consistent" % volume
            )
        image, image_name = self._helper_image(volume, users, None)
        source = {
            "host": host,
            "volume": volume,
            "driver": info.get("Driver"),
            "labels": info.get("Labels") or {},
            "helper_image": image_name,
            "users": [u["name"] for u in users],
            "live": bool(live),
        }

        def stream(tar_path):
            args = tar_out_of_volume(self.docker, image, volume, self.excludes)
            ok_rcs = (0, 1) if live else (0,)
            rc, _out, err = self.docker.to_file(args, tar_path, ok_rcs=ok_rcs, what="copying volume %s" % volume)
            if rc == 1:
                self.warnings.append("tar reported files changing during the copy: %s" % last_line(err))

        def listing():
            args = tar_out_of_volume(self.docker, image, volume, self.excludes)
            return stream_listing(self.docker, args, self.excludes, "listing volume %s" % volume)

        return source, volume, stream, listing

    def _helper_image(self, volume, users, recorded):
        return choose_helper_image(self.docker, self.p.get("helper_image"), volume, users, recorded)

    # -- the run -----------------------------------------------------------------------
    def _new_id(self, name):
        base = self.cat.new_backup_id(name, self.now)
        backup_id, n = base, 1
        while os.path.exists(self.catalog.path(self.kind, backup_id)) or os.path.exists(
            self.catalog.partial_path(self.kind, backup_id)
        ):
            n += 1
            backup_id = "%s-%d" % (base, n)
        return backup_id

    def run(self):
        started = time.monotonic()
        source, name, stream, listing = self.resolve()
        source["instance"] = source_instance(self.kind, source)
        source["machine"] = _hostname()
        if self.check_mode:
            # Decide from a listing of the source: nothing is written, not even a temp file.
            latest = self._latest(source)
            return self._check_result(source, name, listing(), None, latest)
        with self.catalog.lock(self.kind, wait=int(self.p.get("lock_timeout") or 0) > 0, timeout=self.p.get("lock_timeout") or 0):
            cleaned = [os.path.basename(p) for p in self.catalog.clean_stale_partials(self.kind, 0)]
            latest = self._latest(source)
            backup_id = self._new_id(name)
            partial = self.catalog.begin(self.kind, backup_id)
            try:
                tar_path = os.path.join(partial, ARCHIVE)
                stream(tar_path)
                contents = scan_tar(tar_path, self.excludes)
                digest = content_digest(contents)
                if latest and latest.get("content_sha256") == digest and not self.force:
                    self.catalog.discard(self.kind, backup_id)
                    return self._existing_result(latest, contents, cleaned, digest)
                sha = self.cat.sha256_file(tar_path)
                archive = {"path": ARCHIVE, "size": os.path.getsize(tar_path), "sha256": sha, "mode": "0600"}
                duration = time.monotonic() - started
                manifest = build_manifest(
                    self.kind,
                    backup_id,
                    source,
                    contents,
                    archive,
                    self.cat.isoformat(self.now),
                    self.cat.isoformat(self.cat.utcnow()),
                    self.period,
                    self.cat.period_key(self.period, self.now),
                    duration,
                    excludes=self.excludes,
                    tool={"name": "ner11.ops.artifact_backup", "version": None},
                    previous_backup_id=latest["backup_id"] if latest else None,
                )
                final = self.catalog.publish(self.kind, backup_id, manifest, pins=self.pins)
            except BaseException:
                self.catalog.discard(self.kind, backup_id)
                raise
        manifest = self.catalog.read_manifest(self.kind, backup_id)
        result = self._result(manifest, True, final)
        result["changed_paths"] = changed_paths(latest.get("contents") or [], contents) if latest else None
        result["cleaned_partials"] = cleaned
        result["pins"] = self.pins
        return result

    def _latest(self, source):
        """The newest good backup of this source identity (a failed verification does not count)."""
        return self.catalog.latest(self.kind, instance=source["instance"], host=self.source_host)

    def _plan(self, source, backup_id, contents, archive_size, latest, action, reason):
        summary = summarize(contents)
        sensitive = is_sensitive(self.kind, contents)
        return {
            "action": action,
            "reason": reason,
            "backup_id": backup_id,
            "kind": self.kind,
            "source": source,
            "file_count": summary["file_count"],
            "content_bytes": summary["content_bytes"],
            "archive_bytes": archive_size,
            # a sensitive backup's digest is derived from its secret files' hashes: never returned
            "content_sha256": None if sensitive else content_digest(contents),
            "sensitive": sensitive,
            "unchanged": bool(latest and latest.get("content_sha256") == content_digest(contents)),
            "latest_backup_id": latest["backup_id"] if latest else None,
            "excludes": self.excludes,
        }

    def _check_result(self, source, name, contents, archive_size, latest):
        unchanged = bool(latest and latest.get("content_sha256") == content_digest(contents))
        if unchanged and not self.force:
            plan = self._plan(source, latest["backup_id"], contents, archive_size, latest, "none", "content unchanged")
            plan["freshness"] = "would record that %s is still current" % latest["backup_id"]
            pin_changed = cat_pin_plan(self, latest["backup_id"])
            result = self._result(latest, pin_changed, self.catalog.path(self.kind, latest["backup_id"]))
        else:
            backup_id = self.cat.new_backup_id(name, self.now)
            reason = "force" if unchanged else ("content changed" if latest else "no backup of this source yet")
            plan = self._plan(source, backup_id, contents, archive_size, latest, "create", reason)
            plan["pins"] = self.pins
            result = {
                "changed": True,
                "backup_id": backup_id,
                "path": self.catalog.path(self.kind, backup_id),
                "sha256": None,
                "content_sha256": plan["content_sha256"],
                "size_bytes": archive_size,
                "duration_s": 0.0,
                "file_count": plan["file_count"],
                "content_bytes": plan["content_bytes"],
                "changed_paths": changed_paths(latest.get("contents") or [], contents) if latest else None,
            }
        result["plan"] = plan
        return result

    def _existing_result(self, latest, contents, cleaned, digest):
        """Unchanged content: record that the latest backup is still current (an audit entry, not a change)."""
        backup_id = latest["backup_id"]
        freshness = self.catalog.record_freshness(self.kind, backup_id, digest, self.source_host, self.cat.utcnow(), self.period)
        pin_changed = cat_pin_plan(self, backup_id, apply=True)
        result = self._result(latest, pin_changed, self.catalog.path(self.kind, backup_id))
        result["changed_paths"] = []
        result["cleaned_partials"] = cleaned
        result["freshness"] = freshness
        if result["content_sha256"] is None:  # a sensitive backup: the digest stays on disk
            result["freshness"] = dict(freshness, content_sha256=None)
        result["pins"] = self.catalog.pins(self.kind, backup_id)
        result["plan"] = {"action": "none", "reason": "content unchanged", "backup_id": backup_id}
        return result

    def _result(self, manifest, changed, path):
        """The module's result for a published backup; a sensitive one carries no per-file hash."""
        shown = public_manifest(manifest)
        return {
            "changed": changed,
            "backup_id": manifest["backup_id"],
            "path": path,
            "manifest": shown,
            "sha256": manifest.get("sha256"),
            "content_sha256": shown.get("content_sha256"),
            "size_bytes": manifest.get("size_bytes"),
            "duration_s": manifest.get("duration_s", 0.0) if changed else 0.0,
            "file_count": manifest.get("file_count"),
            "content_bytes": manifest.get("content_bytes"),
        }


def cat_pin_plan(job, backup_id, apply=False):
    """keep_until on a run that makes no new backup pins the existing one; True when that pin changes.

    Called with the kind's lock held when ``apply`` (the real run), so plan and write are one step.
    """
    keep_until = job.p.get("keep_until")
    if not keep_until:
        return False
    reason = (job.p.get("keep_reason") or "").strip() or PIN_REASON
    changed, _before, after = job.catalog.plan_pin(job.kind, backup_id, keep_until, reason, "present", job.now)
    if changed and apply:
        job.catalog.set_pins(job.kind, backup_id, after)
    return changed
