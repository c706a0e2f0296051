#!/usr/bin/env bash
# Build the ner11 base image: a minimal Debian 12 (bookworm) rootfs made with
# debootstrap from the machine's own apt mirror, imported with `docker import`.
# No registry is involved. Called by scripts/build-images.sh:
#
#   images/base/build-rootfs.sh <image:tag> [label=value ...]
#
# Env: NER11_DEBIAN_MIRROR overrides the mirror read from the apt sources.
set -euo pipefail

SUITE=bookworm
INCLUDE=python3,ca-certificates

log() { printf 'base: %s\n' "$*" >&2; }

tag=${1:?usage: build-rootfs.sh <image:tag> [label=value ...]}
shift
labels=("$@")

if [ "$(id -u)" != 0 ]; then
  log "debootstrap needs root; run as root (or with sudo)"
  exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  log "debootstrap is missing: run scripts/bootstrap-docker.sh (or apt-get install debootstrap)"
  exit 1
fi

# The Debian mirror this machine uses: the first deb URI of a deb822 .sources stanza
# (or a one-line sources.list entry) that carries the given suite.
find_mirror() {
  local f uri suite=$1
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    uri=$(awk -v suite="$suite" '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && uris != "" && enabled != "no") {
          split(uris, u, " "); print u[1]; found = 1; exit
        }
        types = ""; suites = ""; uris = ""; enabled = ""
      }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      { key = tolower($1); sub(/:$/, "", key); $1 = ""; sub(/^ +/, "");
        if (key == "types") types = $0; else if (key == "suites") suites = $0;
        else if (key == "uris") uris = $0; else if (key == "enabled") enabled = tolower($0) }
      END { if (!found) flush() }' "$f")
    if [ -n "$uri" ]; then printf '%s\n' "$uri"; return; fi
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    uri=$(awk -v suite="$suite" '
      $1 == "deb" { i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                    if ($(i+1) == suite) { print $i; exit } }' "$f")
    if [ -n "$uri" ]; then printf '%s\n' "$uri"; return; fi
  done
  return 1
}

# Another release (bullseye for the Python 3.9 image) comes from the same archive as
# the host's own release when no source names it.
host_suite=$(. /etc/os-release 2>/dev/null && printf '%s' "${VERSION_CODENAME:-}")
mirror=${NER11_DEBIAN_MIRROR:-$(find_mirror "$SUITE" || { [ -n "$host_suite" ] && find_mirror "$host_suite"; } || true)}
[ -n "$mirror" ] || { log "no Debian mirror found in /etc/apt/sources.list*; set NER11_DEBIAN_MIRROR to the mirror URL your apt uses"; exit 1; }
log "debootstrap $SUITE from $mirror"

workdir=$(mktemp -d /var/tmp/ner11-base.XXXXXX)
cleanup() { rm -rf --one-file-system "$workdir"; }
trap cleanup EXIT
rootfs=$workdir/rootfs

debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$rootfs" "$mirror" \
  >"$workdir/debootstrap.log" 2>&1 || {
  log "debootstrap failed; last lines of its log:"
  tail -n 30 "$workdir/debootstrap.log" >&2
  [ -f "$rootfs/debootstrap/debootstrap.log" ] && tail -n 30 "$rootfs/debootstrap/debootstrap.log" >&2
  exit 1
}

# apt inside child builds must use the same mirror as this machine: copy the host's
# enabled sources (only Debian ones whose keyring exists in the rootfs), else write
# a deb822 file for the mirror we used.
rm -f "$rootfs/etc/apt/sources.list"
mkdir -p "$rootfs/etc/apt/sources.list.d"
copied=0
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [ -r "$f" ] || continue
  # Skip third-party repositories: their keyrings are not in the rootfs.
  keyrings=$(grep -ohE '(signed-by|Signed-By:)[= ]*[^] ]+' "$f" | sed -E 's/^(signed-by|Signed-By:)[= ]*//' | sort -u || true)
  ok=1
  for k in $keyrings; do
    [ -e "$rootfs$k" ] || ok=0
  done
  grep -qE '^[^#]*(deb|URIs:)' "$f" || ok=0
  grep -qE "^[^#]*[[:space:]]$SUITE([[:space:]-]|\$)" "$f" || ok=0   # only this release's entries
  if [ "$ok" = 1 ]; then
    cp "$f" "$rootfs/etc/apt/sources.list.d/$(basename "$f")"
    [ "$(basename "$f")" = sources.list ] && mv "$rootfs/etc/apt/sources.list.d/sources.list" "$rootfs/etc/apt/sources.list.d/host.list"
    copied=$((copied + 1))
  else
    log "not copying $f (no $SUITE entries or a keyring missing from the rootfs)"
  fi
done
if [ "$copied" = 0 ]; then
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $mirror
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

# apt settings for image builds. Snapshot mirrors serve expired Release files: keep
# the host's choice on Valid-Until checks.
{
  echo 'APT::Install-Recommends "false";'
  echo 'APT::Install-Suggests "false";'
  echo 'Acquire::Languages "none";'
  echo 'Acquire::GzipIndexes "true";'
  echo 'Dpkg::Use-Pty "0";'
  host_apt_config=$(apt-config dump 2>/dev/null || true)
  if grep -q '^Acquire::Check-Valid-Until "false";' <<<"$host_apt_config"; then
    echo 'Acquire::Check-Valid-Until "false";'
  fi
} >"$rootfs/etc/apt/apt.conf.d/90ner11"
# Do not keep downloaded packages in image layers.
cat >"$rootfs/etc/apt/apt.conf.d/91ner11-clean" <<'CONF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
CONF
# Keep documentation and translations out of this and every child image (copyright
# files stay).
mkdir -p "$rootfs/etc/dpkg/dpkg.cfg.d"
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/90ner11-nodoc" <<'CONF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
CONF
# Services must not start inside builds.
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod 0755 "$rootfs/usr/sbin/policy-rc.d"

# Trim: apt lists and caches, logs, docs and man pages.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
  "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* \
  "$rootfs"/debootstrap "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
  "$rootfs"/usr/share/lintian/* "$rootfs"/tmp/* "$rootfs"/var/tmp/*
find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf '{}' +
: >"$rootfs/etc/hostname"
: >"$rootfs/etc/resolv.conf"
rm -f "$rootfs/etc/machine-id" && : >"$rootfs/etc/machine-id"

changes=(
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  --change 'ENV LANG=C.UTF-8'
  --change 'CMD ["/bin/bash"]'
)
for l in "${labels[@]}"; do
  changes+=(--change "LABEL $l")
done

# Import under a temporary tag first: a partial tar stream must never get the real tag.
tmp_tag="${tag%%:*}:tmp-$$"
tar --numeric-owner --xattrs -C "$rootfs" -c . | docker import "${changes[@]}" - "$tmp_tag" >/dev/null
docker tag "$tmp_tag" "$tag"
docker rmi "$tmp_tag" >/dev/null
log "imported $tag"
