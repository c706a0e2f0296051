# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Artifacts in containers and Docker volumes: tar streams, helper containers, volume users.

Every docker command goes through ``docker_cli.DockerCli`` (recorded for
``executed_commands``). A volume is read and written by a short-lived helper
container (no network, root, never pulled) running an image already present.
"""

from __future__ import annotations

import json
import os
import sys

from ansible_collections.ner11.ops.plugins.module_utils.artifact_tar import LIST_STREAM_SCRIPT, ArtifactError
from ansible_collections.ner11.ops.plugins.module_utils.runner import last_line

PG_DATA = "/var/lib/postgresql/data"
HELPER_LABEL = "io.ner11.helper=artifact"
# df of the nearest existing directory of "$1" (a restore target that may not exist yet).
SPACE_SCRIPT = 'd="$1"; while [ ! -e "$d" ] && [ "$d" != / ]; do d=$(dirname "$d"); done; df -P -k "$d"'
# Swap a tar from stdin into directory $1 (a container path or a helper's volume mount), by
# rename. When a rename fails partway, the moved entries are put back (the new ones into the
# staging directory, then the old ones into $1) and the last stderr line says where things are.
SWAP_SCRIPT = r"""
set -eu
d=$1; tag=$2
s="$d/.ner11-restore-$tag"; o="$d/.ner11-old-$tag"
mkdir -p "$d"
rm -rf "$s" "$o"
for e in "$d"/.ner11-old-*; do
  [ -e "$e" ] || continue
  m="$d holds $e, left by an earlier restore whose swap failed: it may be the only copy of the old content."
  echo "$m Move its entries back into $d (or delete it when the content is not needed), then run again; nothing was changed" >&2
  exit 4
done
mkdir "$s"
if ! tar -C "$s" -xpf - --numeric-owner; then rm -rf "$s"; echo "extracting the archive into $d failed" >&2; exit 3; fi
back() {
  ok=0
  if [ "$1" = 2 ]; then
    for e in "$d"/* "$d"/.[!.]* "$d"/..?*; do
      { [ -e "$e" ] || [ -L "$e" ]; } || continue
      case "$e" in "$s"|"$o") continue;; esac
      mv "$e" "$s"/ || ok=1
    done
  fi
  for e in "$o"/* "$o"/.[!.]* "$o"/..?*; do
    { [ -e "$e" ] || [ -L "$e" ]; } || continue
    mv "$e" "$d"/ || ok=1
  done
  if [ "$ok" = 0 ]; then
    rm -rf "$s"; rmdir "$o" 2>/dev/null || true
    m="restoring into $d failed while swapping its entries (see the mv error above); the entries already moved were put back,"
    echo "$m $d holds its old content again. Fix the cause (for example a mount point or a busy file inside $d) and run again" >&2
  else
    m="restoring into $d failed while swapping its entries, and putting them back failed too (see the mv errors above)."
    m="$m The old content still missing from $d is in $o, the new content not yet moved is in $s."
    m="$m Move the entries of $o back into $d by hand (remove the new entries of the same name first),"
    echo "$m delete $s, then run again" >&2
  fi
  exit 5
}
mkdir "$o"
for e in "$d"/* "$d"/.[!.]* "$d"/..?*; do
  { [ -e "$e" ] || [ -L "$e" ]; } || continue
  case "$e" in "$s"|"$o") continue;; esac
  mv "$e" "$o"/ || back 1
done
for e in "$s"/* "$s"/.[!.]* "$s"/..?*; do
  { [ -e "$e" ] || [ -L "$e" ]; } || continue
  mv "$e" "$d"/ || back 2
done
chmod "$(stat -c %a "$s")" "$d"
chown "$(stat -c %u:%g "$s")" "$d" 2>/dev/null || true
rmdir "$s"
rm -rf "$o"
"""


def tar_create_args(path, excludes):
    """``tar`` arguments that stream ``path``'s contents; excludes before the operand (G27)."""
    args = ["tar", "-C", path, "--numeric-owner"]
    args += ["--exclude=%s" % pattern for pattern in excludes or ()]
    return args + ["-cf", "-", "."]


def helper_argv(docker, image, volume, mount, read_only, entrypoint, argv, stdin=False):
    """``docker run`` of a short-lived helper container: no network, root, never pulled."""
    return docker.run_argv(
        image,
        argv,
        entrypoint=entrypoint,
        volumes=["%s:%s%s" % (volume, mount, ":ro" if read_only else "")],
        labels=[HELPER_LABEL],
        user="0:0",
        network="none",
        interactive=stdin,
    )


def tar_out_of_volume(docker, image, volume, excludes):
    """argv streaming a volume's contents as a tar on stdout (read-only mount)."""
    return helper_argv(docker, image, volume, "/src", True, "tar", tar_create_args("/src", excludes)[1:])


def stream_listing(docker, cmd, excludes, what):
    """The tar the docker argv ``cmd`` streams, listed by the module's own Python reading the pipe: nothing is written."""
    here = os.path.dirname(os.path.abspath(__file__))
    into = [sys.executable or "python3", "-c", LIST_STREAM_SCRIPT, here, json.dumps(list(excludes or ()))]
    _rc, out, _err = docker.pipe(cmd, into, ok_rcs=(0, 1), what=what)
    try:
        return json.loads(out)
    except ValueError:
        raise ArtifactError("%s gave no listing (%s); check that tar exists in the container" % (what, last_line(out))) from None


def volume_users(docker, volume):
    """Containers (any state) that mount ``volume``: name, running, image id/name, mount destination."""
    _rc, out, _err = docker.call(["ps", "-a", "--filter", "volume=%s" % volume, "--format", "{{.ID}}"])
    ids = out.split()
    if not ids:
        return []
    _rc, out, _err = docker.call(["inspect", "--type", "container"] + ids)
    return volume_users_from_inspect(json.loads(out or "[]"), volume)


def volume_users_from_inspect(inspected, volume):
    users = []
    for c in inspected:
        for m in c.get("Mounts") or []:
            if m.get("Type") == "volume" and m.get("Name") == volume:
                users.append(
                    {
                        "name": (c.get("Name") or "").lstrip("/"),
                        "running": bool((c.get("State") or {}).get("Running")),
                        "image_id": c.get("Image"),
                        "image": (c.get("Config") or {}).get("Image"),
                        "destination": m.get("Destination"),
                        "pgdata": _pgdata(c),
                    }
                )
    return sorted(users, key=lambda u: u["name"])


def _pgdata(container):
    for item in (container.get("Config") or {}).get("Env") or []:
        if item.startswith("PGDATA="):
            return item.split("=", 1)[1]
    return None


def live_postgres_users(users):
    """Running containers that use the volume as their PostgreSQL data directory (G2, G28)."""
    live = []
    for u in users:
        if not u["running"]:
            continue
        dest = (u["destination"] or "").rstrip("/")
        pgdata = (u.get("pgdata") or "").rstrip("/")
        if dest == PG_DATA or (pgdata and (pgdata == dest or pgdata.startswith(dest + "/"))):
            live.append(u["name"])
    return live


def mount_for_path(container, path):
    """The volume mounted at ``path`` in an inspected container (for messages), or None."""
    for m in container.get("Mounts") or []:
        if m.get("Destination", "").rstrip("/") == path.rstrip("/"):
            return m.get("Name") or m.get("Source")
    return None


def choose_helper_image(docker, wanted, volume, users, recorded):
    """(image to run, image name to record): the option, else a user's image, else the recorded one."""
    if wanted:
        if not docker.image_exists(wanted):
            raise ArtifactError(
                "helper_image %s is not present locally; images are never pulled: build or load it, "
                "or name a local image that has tar" % wanted
            )
        return wanted, wanted
    for u in sorted(users, key=lambda u: not u["running"]):
        if u.get("image_id") and docker.image_exists(u["image_id"]):
            return u["image_id"], u.get("image") or u["image_id"]
    if recorded and docker.image_exists(recorded):
        return recorded, recorded
    raise ArtifactError(
        "no local image to run the copy of volume %s in (no container uses it%s): set helper_image to a local "
        "image that has tar, e.g. the stack's postgres or api image; images are never pulled"
        % (volume, ", and the recorded image %s is not present" % recorded if recorded else "")
    )
