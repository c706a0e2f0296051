#!/usr/bin/env bash
# Build ner11/py39 (Debian 11 bullseye, Python 3.9) without any registry:
# the base image's own debootstrap script with SUITE=bullseye, `docker import`ed as
# ner11/py39-base, then images/bullseye/Dockerfile adds pytest and hypothesis from apt.
# Skipped when the tag for the current sources exists. Called by scripts/build-images.sh
# (NER11_IMAGES_PY39=1) and by `make units39`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
NS=${NER11_IMAGES_NAMESPACE:-ner11}
export DOCKER_BUILDKIT=0

log() { printf 'py39: %s\n' "$*" >&2; }

hash=$(cat "$ROOT/images/base/build-rootfs.sh" "$ROOT/images/bullseye/Dockerfile" "$ROOT/images/bullseye/build.sh" |
  sha256sum | cut -c1-12)
tag="$NS/py39:$hash"
if [ "${NER11_IMAGES_FORCE:-0}" != 1 ] && docker image inspect "$tag" >/dev/null 2>&1; then
  docker tag "$tag" "$NS/py39:ref"
  log "$tag exists (skipped)"
  exit 0
fi

work=$(mktemp -d /var/tmp/ner11-py39.XXXXXX)
trap 'rm -rf "$work"' EXIT
sed 's/^SUITE=bookworm$/SUITE=bullseye/' "$ROOT/images/base/build-rootfs.sh" >"$work/build-rootfs.sh"
grep -qx 'SUITE=bullseye' "$work/build-rootfs.sh" || { log "images/base/build-rootfs.sh has no SUITE=bookworm line"; exit 1; }

t0=$(date +%s)
log "debootstrap bullseye -> $NS/py39-base:$hash"
bash "$work/build-rootfs.sh" "$NS/py39-base:$hash" "org.ner11.image=py39-base" "org.ner11.source-hash=$hash"
docker build --pull=false --rm --force-rm --build-arg "BASE=$NS/py39-base:$hash" \
  --label org.ner11.image=py39 --label "org.ner11.source-hash=$hash" -t "$tag" "$ROOT/images/bullseye" >"$work/build.log" 2>&1 || {
  tail -n 60 "$work/build.log" >&2
  exit 1
}
docker tag "$tag" "$NS/py39:ref"
log "built $tag in $(($(date +%s) - t0)) s"
