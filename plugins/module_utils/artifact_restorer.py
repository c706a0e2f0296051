# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Artifact restores (docs/artifacts.md): the ``artifact_restore`` job.

Verify the backup against its manifest, list the target (host directory,
directory in a running container, Docker volume), plan (mirror for models and
volumes, overlay for config), check free space, swap the content in, and list
the target again to prove it equals the backup. Check mode plans only.
"""

from __future__ import annotations

import os

from ansible_collections.ner11.ops.plugins.module_utils.artifact_docker import (
    SPACE_SCRIPT,
    SWAP_SCRIPT,
    choose_helper_image,
    helper_argv,
    live_postgres_users,
    stream_listing,
    tar_create_args,
    volume_users,
)
from ansible_collections.ner11.ops.plugins.module_utils.artifact_extract import host_restore_mirror, host_restore_overlay, new_tag
from ansible_collections.ner11.ops.plugins.module_utils.artifact_tar import (
    ARCHIVE,
    ArtifactError,
    corrupt_members,
    diff_lines,
    host_entry,
    is_sensitive,
    list_host_tree,
    plan_needs_confirm,
    restore_plan,
    summarize,
)
from ansible_collections.ner11.ops.plugins.module_utils.artifacts import ArtifactJob, absolute_path
from ansible_collections.ner11.ops.plugins.module_utils.runner import last_line


class ArtifactRestore(ArtifactJob):
    """``artifact_restore``: verify a backup, plan against the target, swap it in, verify the target."""

    def __init__(self, params, runner, check_mode=False, diff=False, tmpdir=None):
        super().__init__(params, runner)
        cat = self.cat
        self.check_mode = check_mode
        self.diff = diff
        self.tmpdir = tmpdir
        self.warnings = []
        # What this run wrote to the target (reported as changed when it fails afterwards).
        self.touched = []
        # The target (host path, container path or volume name), once known: named in error messages.
        self.target_name = None
        if bool(params.get("backup_id")) == bool(params.get("latest")):
            raise ArtifactError("set exactly one of backup_id or latest: true")
        if params.get("backup_id"):
            cat.validate_backup_id(params["backup_id"])
        if params.get("dest") is not None:
            absolute_path(params["dest"], "dest")
        if params.get("volume") and (params.get("dest") or params.get("container")):
            raise ArtifactError("volume restores take no dest or container; set either volume, or dest (with container)")
        if params.get("container") and not params.get("dest"):
            raise ArtifactError("container needs dest: the absolute directory inside the container, e.g. /app/models")

    # -- selection and verification ------------------------------------------------------
    def manifest(self):
        if self.p.get("latest"):
            # the newest good backup of one source identity (never another host's by accident)
            good = self.catalog.list(self.kind)
            volume = self.p.get("volume")
            if volume:  # restoring a volume: its own backups first, when there are any
                good = [m for m in good if (m.get("source") or {}).get("volume") == volume] or good
            try:
                found, _ident = self.cat.choose_identity(good, "%s backups" % self.kind, self.p.get("source_host"))
            except self.cat.CatalogError as exc:
                raise ArtifactError(str(exc)) from None
            if not found:
                raise ArtifactError(
                    "no good %s backup%s in %s; run ner11.ops.artifact_backup first"
                    % (self.kind, " of host %s" % self.p["source_host"] if self.p.get("source_host") else "", self.catalog.root)
                )
            return found[-1]
        return self.catalog.read_manifest(self.kind, self.p["backup_id"])

    def verify(self, manifest):
        backup_id = manifest["backup_id"]
        if manifest.get("artifact") != ARCHIVE or not isinstance(manifest.get("contents"), list):
            raise ArtifactError(
                "backup %s/%s was not written by artifact_backup (no %s/contents)" % (self.kind, backup_id, ARCHIVE)
            )
        problems = self.catalog.verify(self.kind, backup_id)
        if problems:
            tar_path = os.path.join(self.catalog.path(self.kind, backup_id), ARCHIVE)
            members = corrupt_members(tar_path, manifest["contents"]) if os.path.exists(tar_path) else []
            detail = " (damaged members: %s)" % ", ".join(members[:10]) if members else ""
            raise ArtifactError(
                "backup %s/%s is corrupt, nothing was restored: %s%s; restore another backup (backup_id) or take a "
                "new one with artifact_backup" % (self.kind, backup_id, "; ".join(problems), detail)
            )

    # -- targets -----------------------------------------------------------------------
    def target(self, manifest):
        """(type, name, details): host / container / volume, defaulting to where the backup came from."""
        src = manifest.get("source") or {}
        if self.p.get("volume"):
            return "volume", self.p["volume"], {}
        if self.p.get("container"):
            return "container", self.p["dest"], {"container": self.p["container"]}
        if self.p.get("dest"):
            return "host", os.path.normpath(self.p["dest"]), {}
        if src.get("volume"):
            return "volume", src["volume"], {}
        if src.get("container"):
            return "container", src["path"], {"container": src["container"]}
        if src.get("path"):
            return "host", src["path"], {}
        raise ArtifactError("set dest (host path), container + dest, or volume: the backup records no source")

    def listing(self, ttype, name, details, manifest):
        """The target's current contents (None when it does not exist)."""
        excludes = manifest.get("excludes") or ()
        if ttype == "host":
            if self.kind == "config":
                found = []
                for e in manifest["contents"]:
                    full = os.path.join(name, e["path"])
                    if os.path.lexists(full):
                        found.append(host_entry(full, e["path"]))
                return found if os.path.isdir(name) else None
            if not os.path.lexists(name):
                return None
            if not os.path.isdir(name) or os.path.islink(name):
                raise ArtifactError("dest %s exists and is not a directory; remove it or choose another dest" % name)
            return list_host_tree(name, excludes)
        if ttype == "container":
            container = details["container"]
            if self.docker.exec(container, ["test", "-d", name], check=False)[0] != 0:
                return None
            cmd = self.docker.exec_argv(container, tar_create_args(name, excludes))
            return stream_listing(self.docker, cmd, excludes, "reading the restore target")
        if self.docker.inspect(name, "volume") is None:
            return None
        image, _name = choose_helper_image(
            self.docker, self.p.get("helper_image"), name, self._users(name), self._recorded(manifest)
        )
        args = helper_argv(self.docker, image, name, "/dst", True, "tar", tar_create_args("/dst", excludes)[1:])
        return stream_listing(self.docker, args, excludes, "reading the restore target")

    def _users(self, volume):
        if not hasattr(self, "_users_cache"):
            self._users_cache = volume_users(self.docker, volume)
        return self._users_cache

    @staticmethod
    def _recorded(manifest):
        return (manifest.get("source") or {}).get("helper_image") or (manifest.get("source") or {}).get("image")

    # -- space pre-flight ------------------------------------------------------------------
    def space_check(self, ttype, name, details, manifest, plan, mode):
        """Free space on the target's filesystem before anything is touched.

        A mirror restore unpacks every file beside the old content and swaps (the old
        content stays until then), so it needs the backup's whole size; an overlay
        needs the files it writes. Returns the numbers and ``error`` when they do not fit.
        """
        sizes = {e["path"]: int(e.get("size") or 0) for e in manifest["contents"] if e.get("type") == "file"}
        if mode == "overlay":
            need = sum(sizes.get(p, 0) for p in plan["write"] + plan["replace"])
        else:
            need = sum(sizes.values())
        out = {"checked": False, "need_bytes": need}
        free, where = None, name
        if ttype == "host":
            probe = name
            while probe and not os.path.exists(probe):
                probe = os.path.dirname(probe)
            st = os.statvfs(probe or "/")
            free, where = st.f_bavail * st.f_frsize, probe
        else:
            if ttype == "container":
                args = self.docker.exec_argv(details["container"], ["sh", "-c", SPACE_SCRIPT, "sh", name])
            elif self.docker.inspect(name, "volume") is not None:
                image, _n = choose_helper_image(
                    self.docker, self.p.get("helper_image"), name, self._users(name), self._recorded(manifest)
                )
                args = helper_argv(self.docker, image, name, "/dst", True, "sh", ["-c", SPACE_SCRIPT, "sh", "/dst"])
            else:
                out["note"] = "not checked: volume %s does not exist yet (it is created on Docker's data root)" % name
                return out
            rc, text, _err = self.docker.runner.run(args, check=False)
            rows = [line.split() for line in (text or "").splitlines()[1:] if line.strip()]
            if rc != 0 or not rows or len(rows[-1]) < 6 or not rows[-1][3].isdigit():
                out["note"] = "not checked: df failed on the target (%s)" % last_line(text)
                return out
            free, where = int(rows[-1][3]) * 1024, rows[-1][-1]
        out.update(checked=True, free_bytes=free, filesystem=where)
        if need > free:
            out["error"] = (
                "not enough free space to restore %s/%s into %s: it needs %.1f MB (%s) but %s has %.1f MB free. "
                "Free space there (or restore to another dest); nothing was changed"
                % (
                    self.kind,
                    manifest["backup_id"],
                    name,
                    need / 1048576.0,
                    "the files it writes" if mode == "overlay" else "the backup's files; the old content stays until the swap",
                    where,
                    free / 1048576.0,
                )
            )
        return out

    # -- the run -----------------------------------------------------------------------
    def run(self):
        manifest = self.manifest()
        backup_id = manifest["backup_id"]
        self.verify(manifest)
        ttype, name, details = self.target(manifest)
        self.target_name = name
        if self.kind == "config" and ttype != "host":
            raise ArtifactError("config backups restore to a host directory: set dest (default: the original directory)")
        mode = "overlay" if self.kind == "config" else "mirror"
        contents = manifest["contents"]
        if ttype == "container":
            info = self.docker.inspect(details["container"])
            if info is None or not (info.get("State") or {}).get("Running"):
                raise ArtifactError(
                    "container %s is not running; start it (docker start %s), or restore into its volume with volume: <name>"
                    % (details["container"], details["container"])
                )
        if ttype == "volume":
            live = live_postgres_users(self._users(name)) if self.docker.inspect(name, "volume") else []
            if live:
                raise ArtifactError(
                    "volume %s is the data directory of the running PostgreSQL container %s: stop %s before restoring "
                    "its files" % (name, ", ".join(live), live[0])
                )
        current = self.listing(ttype, name, details, manifest)
        # A swap that failed and could not be rolled back left the old content in .ner11-old-<tag>:
        # refused here, before anything is touched (the swap itself checks again).
        tops = {(e["path"][2:] if e["path"].startswith("./") else e["path"]).split("/", 1)[0] for e in current or []}
        kept = sorted(t for t in tops if t.startswith(".ner11-old-"))
        if kept:
            raise ArtifactError(
                "%s %s holds %s, left by an earlier restore whose swap failed: it may be the only copy of the old "
                "content. Move its entries back into %s (or delete it when the content is not needed), then run "
                "again; nothing was changed" % (ttype, name, kept[0], name)
            )
        plan = restore_plan(contents, current, mode)
        plan.update({"backup_id": backup_id, "target_type": ttype, "target": name})
        if details.get("container"):
            plan["container"] = details["container"]
        needs_confirm = plan_needs_confirm(plan, current)
        plan["confirm_required"] = needs_confirm
        force = bool(self.p.get("force"))
        result = {"backup_id": backup_id, "plan": plan, "files": summarize(contents)["file_count"], "target": name}
        if not plan["identical"] or force:
            plan["space"] = self.space_check(ttype, name, details, manifest, plan, mode)
            if plan["space"].get("error"):
                raise ArtifactError(plan["space"]["error"])
        if self.diff:
            changed = plan["write"] + plan["replace"] + plan["remove"]
            # a sensitive backup's file hashes never reach the output: a per-run random key hides them
            key = os.urandom(32) if manifest.get("sensitive") or is_sensitive(self.kind, contents) else None
            result["diff"] = {
                "before_header": "%s %s" % (ttype, name),
                "after_header": "%s/%s" % (self.kind, backup_id),
                "before": diff_lines(changed, current, key),
                "after": diff_lines(changed, contents, key),
            }
        if plan["identical"] and not force:
            result.update(changed=False, restored=False)
            return result
        if self.check_mode:
            if needs_confirm and self.p.get("confirm") != name:
                self.warnings.append("the real run needs confirm: %s (it replaces or removes data in the target)" % name)
            result.update(changed=True, restored=False)
            return result
        if needs_confirm and self.p.get("confirm") != name:
            raise ArtifactError(
                "restoring %s/%s would replace %d and remove %d entries in %s %s; set confirm: %s to proceed "
                "(take an artifact_backup of the target first if its content matters)"
                % (self.kind, backup_id, len(plan["replace"]), len(plan["remove"]), ttype, name, name)
            )
        tar_path = os.path.join(self.catalog.path(self.kind, backup_id), ARCHIVE)
        tag = new_tag()
        self.touched.append("started writing %s %s" % (ttype, name))
        if ttype == "host":
            if mode == "overlay":
                paths = [e["path"] for e in contents] if force else plan["write"] + plan["replace"]
                plan["strategy"] = host_restore_overlay(tar_path, name, paths)
            else:
                plan["strategy"] = host_restore_mirror(tar_path, name, tag)
        elif ttype == "container":
            self.docker.from_file(
                self.docker.exec_argv(details["container"], ["sh", "-c", SWAP_SCRIPT, "sh", name, tag], interactive=True),
                tar_path,
                what="restoring into %s:%s" % (details["container"], name),
            )
            plan["strategy"] = "contents-swap"
        else:
            if self.docker.inspect(name, "volume") is None:
                labels = (manifest.get("source") or {}).get("labels") or {}
                args = ["volume", "create"]
                for key in sorted(labels):
                    args += ["--label", "%s=%s" % (key, labels[key])]
                self.docker.call(args + [name], what="creating volume %s" % name)
            image, _n = choose_helper_image(
                self.docker, self.p.get("helper_image"), name, self._users(name), self._recorded(manifest)
            )
            args = helper_argv(self.docker, image, name, "/dst", False, "sh", ["-c", SWAP_SCRIPT, "sh", "/dst", tag], stdin=True)
            self.docker.from_file(args, tar_path, what="restoring volume %s" % name)
            plan["strategy"] = "contents-swap"
        after = self.listing(ttype, name, details, manifest)
        check = restore_plan(contents, after, mode)
        if not check["identical"]:
            raise ArtifactError(
                "restore of %s/%s into %s finished but the target differs from the backup: %s; check free space and "
                "permissions, then run again"
                % (self.kind, backup_id, name, ", ".join((check["write"] + check["replace"] + check["remove"])[:10]))
            )
        result.update(changed=True, restored=True)
        return result
