# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Safe extraction of an artifact tar on the host, and the swaps that put it in place.

Member names are validated (no absolute paths, no ``..``), symlinks are created
last so nothing is written through a link, devices are refused; a mirror restore
extracts beside the target and swaps, so a failure leaves the target untouched.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import time

from ansible_collections.ner11.ops.plugins.module_utils.artifact_tar import CHUNK, ArtifactError, member_path


def extract_tar(tar_path, root, only=None, chown=None):
    """Extract a tar under ``root`` without ever leaving it.

    Member names are validated; symlinks are created last, so no file is ever
    written through a link; devices are refused. Modes and mtimes are restored,
    numeric owners too when ``chown`` (default: when running as root). ``only``
    restricts extraction to a set of paths (overlay restores).
    """
    chown = (os.geteuid() == 0) if chown is None else chown
    dirs, links = [], []
    with tarfile.open(tar_path, "r:") as tf:
        for m in tf:
            rel = member_path(m.name)
            if only is not None and rel not in only:
                continue
            target = root if rel == "." else os.path.join(root, rel)
            if m.isdir():
                os.makedirs(target, mode=0o700, exist_ok=True)
                dirs.append((target, m))
                continue
            parent = os.path.dirname(target)
            os.makedirs(parent, mode=0o700, exist_ok=True)
            if m.isreg():
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(tf.extractfile(m), out, CHUNK)
                _apply_meta(target, m, chown)
            elif m.islnk():
                os.link(os.path.join(root, member_path(m.linkname)), target)
            elif m.issym():
                links.append((target, m))
            else:
                raise ArtifactError("archive member %s is a device, FIFO or socket; refusing to extract it" % rel)
    for target, m in links:
        os.symlink(m.linkname, target)
        if chown:
            os.lchown(target, m.uid, m.gid)
    for target, m in sorted(dirs, key=lambda d: d[0].count(os.sep), reverse=True):
        _apply_meta(target, m, chown)


def _apply_meta(path, m, chown):
    if chown:
        os.chown(path, m.uid, m.gid)
    os.chmod(path, m.mode & 0o7777)
    os.utime(path, (m.mtime, m.mtime))


def host_restore_mirror(tar_path, dest, tag):
    """Make ``dest`` exactly the archive: extract into ``<dest>.ner11-new-<tag>``, swap, drop the old tree.

    The old directory is kept as ``<dest>.ner11-old-<tag>`` until the new one is
    in place and is removed after; any failure before the swap leaves ``dest``
    untouched. A mount point cannot be renamed: its contents are swapped instead
    (staging inside it, then one rename per top-level entry; when one of those
    renames fails, the entries already moved are moved back, newest first, and
    the error names where the old content is if that fails too).
    """
    dest = os.path.normpath(dest)
    if os.path.isdir(dest) and os.path.ismount(dest):
        return _host_swap_contents(tar_path, dest, tag)
    new = "%s.ner11-new-%s" % (dest, tag)
    old = "%s.ner11-old-%s" % (dest, tag)
    for leftover in (new, old):
        if os.path.lexists(leftover):
            shutil.rmtree(leftover)
    os.makedirs(os.path.dirname(dest) or "/", exist_ok=True)
    try:
        os.mkdir(new, 0o700)
        extract_tar(tar_path, new)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    had_old = os.path.lexists(dest)
    if had_old:
        os.rename(dest, old)
    try:
        os.rename(new, dest)
    except OSError as exc:
        cause = "%s (%s)" % (exc.strerror or exc, exc.filename) if exc.filename else str(exc)
        if had_old:
            try:
                os.rename(old, dest)
            except OSError as undo:
                raise ArtifactError(
                    "restoring into %s failed at the final rename: %s, and renaming the old directory back failed "
                    "too (%s). The old content is in %s, the new in %s: rename %s back to %s by hand, delete %s, "
                    "then run again" % (dest, cause, undo.strerror or undo, old, new, old, dest, new)
                ) from None
        shutil.rmtree(new, ignore_errors=True)
        raise ArtifactError(
            "restoring into %s failed at the final rename: %s; %s was left as it was. Fix the cause "
            "(permissions or a mount on %s) and run again" % (dest, cause, dest, os.path.dirname(dest) or "/")
        ) from None
    if had_old:
        shutil.rmtree(old, ignore_errors=True)
    return "sibling-swap"


def _host_swap_contents(tar_path, dest, tag):
    stage_name, old_name = ".ner11-restore-%s" % tag, ".ner11-old-%s" % tag
    stage = os.path.join(dest, stage_name)
    old = os.path.join(dest, old_name)
    for leftover in (stage, old):
        if os.path.lexists(leftover):
            shutil.rmtree(leftover)
    earlier = sorted(n for n in os.listdir(dest) if n.startswith(".ner11-old-"))
    if earlier:
        # A swap that failed and could not be rolled back left the old content there: a mirror
        # restore would remove it as an extra entry, and it may be the only copy.
        raise ArtifactError(
            "%s holds %s, left by an earlier restore whose swap failed: it may be the only copy of the old "
            "content. Move its entries back into %s (or delete it when the content is not needed), then run "
            "again; nothing was changed" % (dest, os.path.join(dest, earlier[0]), dest)
        )
    os.mkdir(stage, 0o700)
    try:
        extract_tar(tar_path, stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    os.mkdir(old, 0o700)
    moved_out, moved_in = [], []
    try:
        for name in sorted(os.listdir(dest)):
            if name not in (stage_name, old_name):
                os.rename(os.path.join(dest, name), os.path.join(old, name))
                moved_out.append(name)
        for name in sorted(os.listdir(stage)):
            os.rename(os.path.join(stage, name), os.path.join(dest, name))
            moved_in.append(name)
    except OSError as exc:
        raise _swap_failed(exc, dest, stage, old, moved_out, moved_in) from None
    st = os.stat(stage)
    os.chmod(dest, stat.S_IMODE(st.st_mode))
    os.rmdir(stage)
    shutil.rmtree(old, ignore_errors=True)
    return "contents-swap"


def _swap_failed(exc, dest, stage, old, moved_out, moved_in):
    """Undo a partial contents swap (best effort, newest move first); the error says where the data is."""
    cause = "%s (%s)" % (exc.strerror or exc, exc.filename) if exc.filename else str(exc)
    stuck = []
    for name in reversed(moved_in):
        try:
            os.rename(os.path.join(dest, name), os.path.join(stage, name))
        except OSError as undo:
            stuck.append("%s: %s" % (os.path.join(dest, name), undo.strerror or undo))
    for name in reversed(moved_out):
        try:
            os.rename(os.path.join(old, name), os.path.join(dest, name))
        except OSError as undo:
            stuck.append("%s: %s" % (os.path.join(old, name), undo.strerror or undo))
    if not stuck:
        shutil.rmtree(stage, ignore_errors=True)
        try:
            os.rmdir(old)
        except OSError:
            pass
        return ArtifactError(
            "restoring into %s failed while swapping its entries: %s. The entries already moved were put back, "
            "%s holds its old content again. Fix the cause (for example a mount point or a busy file inside %s) "
            "and run again" % (dest, cause, dest, dest)
        )
    return ArtifactError(
        "restoring into %s failed while swapping its entries: %s, and putting them back failed too (%s). "
        "The old content still missing from %s is in %s, the new content not yet moved is in %s. Move the "
        "entries of %s back into %s by hand (remove the new entries of the same name first), delete %s, "
        "then run again" % (dest, cause, "; ".join(stuck[:5]), dest, old, stage, old, dest, stage)
    )


def host_restore_overlay(tar_path, dest, paths):
    """Write only ``paths`` of the archive under ``dest``, each by rename from a staging dir in ``dest``.

    Other files in ``dest`` are left alone (config restores). Directories are
    handled shallow-first so parents exist (with their modes) before children.
    """
    paths = set(paths)
    if not paths:
        return "overlay"
    os.makedirs(dest, mode=0o700, exist_ok=True)
    stage = os.path.join(dest, ".ner11-restore-%s" % new_tag())
    os.mkdir(stage, 0o700)
    try:
        extract_tar(tar_path, stage, only=paths)
        for rel in sorted(paths, key=lambda p: (p.count("/"), p)):
            src = os.path.join(stage, rel)
            dst = os.path.join(dest, rel)
            if os.path.isdir(src) and not os.path.islink(src):
                if not (os.path.isdir(dst) and not os.path.islink(dst)):
                    if os.path.lexists(dst):
                        _remove(dst)
                    os.mkdir(dst, 0o700)
                st = os.stat(src)
                if os.geteuid() == 0:
                    os.chown(dst, st.st_uid, st.st_gid)
                os.chmod(dst, stat.S_IMODE(st.st_mode))
                continue
            if os.path.isdir(dst) and not os.path.islink(dst):
                shutil.rmtree(dst)
            os.rename(src, dst)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return "overlay"


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def new_tag():
    return "%d-%d" % (int(time.time()), os.getpid())
