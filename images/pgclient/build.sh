#!/usr/bin/env bash
# Build ner11/pgclient (PostgreSQL 17 client tools on ner11/base; images/pgclient/Dockerfile).
# Tagged ner11/pgclient:<hash12> (this directory + the base image id) and :ref; skipped when
# the hash tag exists. Needs ner11/base (scripts/build-images.sh) and the base's apt mirror.
# `make pgclient` runs it; the zstd backup test depends on it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
NS=${NER11_IMAGES_NAMESPACE:-ner11}
export DOCKER_BUILDKIT=0

log() { printf 'pgclient: %s\n' "$*" >&2; }

base_id=$(docker image inspect --format '{{.Id}}' "$NS/base:ref" 2>/dev/null) ||
  { log "image $NS/base:ref is missing; run scripts/build-images.sh (make images)"; exit 1; }
hash=$( { cat "$ROOT/images/pgclient/Dockerfile" "$ROOT/images/pgclient/build.sh"; echo "$base_id"; } | sha256sum | cut -c1-12)
tag="$NS/pgclient:$hash"
if [ "${NER11_IMAGES_FORCE:-0}" != 1 ] && docker image inspect "$tag" >/dev/null 2>&1; then
  docker tag "$tag" "$NS/pgclient:ref"
  log "$tag exists (skipped)"
  exit 0
fi
work=$(mktemp -d /var/tmp/ner11-pgclient.XXXXXX)
trap 'rm -rf "$work"' EXIT
t0=$(date +%s)
docker build --pull=false --rm --force-rm --build-arg "BASE=$NS/base:ref" \
  --label org.ner11.image=pgclient --label "org.ner11.source-hash=$hash" -t "$tag" "$ROOT/images/pgclient" >"$work/build.log" 2>&1 || {
  tail -n 60 "$work/build.log" >&2
  exit 1
}
docker tag "$tag" "$NS/pgclient:ref"
log "built $tag in $(($(date +%s) - t0)) s"
