#!/usr/bin/env bash
# Build the NER11 reference images locally, without any registry.
#
#   ner11/base      debootstrap'ed Debian 12 rootfs, `docker import`ed (images/base/)
#   ner11/postgres  PostgreSQL 15           FROM base  (images/postgres/)
#   ner11/ner-api   the NER11 API (FastAPI)  FROM base  (images/ner-api/)
#   ner11/frontend  nginx, static page + /api/ proxy FROM base (images/frontend/)
#
# Every image is tagged ner11/<name>:<hash12> and ner11/<name>:ref. <hash12> is the
# first 12 hex digits of a sha256 over the image's source directory (sorted paths,
# file modes and contents) and the parent image's hash, so a change of the base
# rebuilds the children. An image whose hash tag already exists is skipped; :ref is
# re-pointed to the hash tag on every run.
#
# Env:
#   NER11_IMAGES_FORCE=1   rebuild even when the hash tag exists
#   NER11_IMAGES_NAMESPACE repository namespace (default ner11: ner11/<name>); another
#                          value builds a separate set, e.g. for a cold-build test
#   NER11_DEBIAN_MIRROR    Debian mirror for the base (default: this machine's apt sources)
#
# Needs a Docker engine that answers and, to build the base, root and debootstrap
# (scripts/bootstrap-docker.sh provides both on Debian).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGES=$ROOT/images
CHILDREN=(postgres ner-api frontend)
FORCE=${NER11_IMAGES_FORCE:-0}
NS=${NER11_IMAGES_NAMESPACE:-ner11}
[[ $NS =~ ^[a-z0-9]+([._-][a-z0-9]+)*$ ]] || { echo "build-images: NER11_IMAGES_NAMESPACE=$NS is not a valid repository namespace" >&2; exit 1; }
export DOCKER_BUILDKIT=0 # legacy builder: no buildx plugin needed, never pulls

log() { printf 'build-images: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v docker >/dev/null 2>&1 ||
  die "the docker CLI is not installed; run scripts/bootstrap-docker.sh"
timeout 20 docker info >/dev/null 2>&1 ||
  die "the Docker engine does not answer (docker info failed); run scripts/bootstrap-docker.sh"

# One build at a time on this machine (others may share the engine).
lockfile=/var/tmp/ner11-build-images.lock
[ -w /var/tmp ] || lockfile=/tmp/ner11-build-images.$(id -u).lock
exec 9>>"$lockfile"
if command -v flock >/dev/null 2>&1 && ! flock -n 9; then
  log "another build-images.sh is running; waiting for it"
  flock 9
fi

# hash_dir DIR PARENT_HASH: sha256 over sorted "mode sha256 path" lines + the parent.
hash_dir() {
  local dir=$1 parent=$2
  {
    (
      cd "$dir"
      find . -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path './tests/*' \
        ! -path '*/.pytest_cache/*' -print0 | LC_ALL=C sort -z |
        while IFS= read -r -d '' f; do
          if [ -x "$f" ]; then m=x; else m=-; fi
          printf '%s %s %s\n' "$m" "$(sha256sum <"$f" | cut -d' ' -f1)" "$f"
        done
    )
    printf 'parent %s\n' "$parent"
  } | sha256sum | cut -d' ' -f1
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

declare -A HASH STATUS SECONDS_TAKEN

tmp=$(mktemp -d /var/tmp/ner11-build-images.XXXXXX)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

start_all=$(date +%s)

# ---- base -------------------------------------------------------------------------
HASH[base]=$(hash_dir "$IMAGES/base" "debian-bookworm-minbase")
base_tag="$NS/base:${HASH[base]:0:12}"
if [ "$FORCE" != 1 ] && image_exists "$base_tag"; then
  STATUS[base]=skipped
  SECONDS_TAKEN[base]=0
else
  command -v debootstrap >/dev/null 2>&1 ||
    die "debootstrap is missing (needed to build $NS/base); run scripts/bootstrap-docker.sh"
  [ "$(id -u)" = 0 ] || die "building $NS/base runs debootstrap, which needs root"
  log "building $base_tag (debootstrap, about 40 s)"
  t0=$(date +%s)
  if ! bash "$IMAGES/base/build-rootfs.sh" "$base_tag" \
    "org.ner11.image=base" "org.ner11.source-hash=${HASH[base]}" >"$tmp/base.log" 2>&1; then
    log "building $NS/base failed; its log:"
    cat "$tmp/base.log" >&2
    exit 1
  fi
  STATUS[base]=built
  SECONDS_TAKEN[base]=$(($(date +%s) - t0))
fi
docker tag "$base_tag" "$NS/base:ref"

# ---- children, in parallel ----------------------------------------------------------
build_child() {
  local name=$1 tag=$2 hash=$3
  docker build --pull=false --rm --force-rm \
    --build-arg "BASE=$base_tag" \
    --label "org.ner11.image=$name" \
    --label "org.ner11.source-hash=$hash" \
    --label "org.ner11.base=$base_tag" \
    -t "$tag" "$IMAGES/$name"
}

declare -A PID TAG
for name in "${CHILDREN[@]}"; do
  HASH[$name]=$(hash_dir "$IMAGES/$name" "${HASH[base]}")
  TAG[$name]="$NS/$name:${HASH[$name]:0:12}"
  if [ "$FORCE" != 1 ] && image_exists "${TAG[$name]}"; then
    STATUS[$name]=skipped
    SECONDS_TAKEN[$name]=0
    continue
  fi
  log "building ${TAG[$name]} (log: $tmp/$name.log)"
  (
    t0=$(date +%s)
    rc=0
    build_child "$name" "${TAG[$name]}" "${HASH[$name]}" >"$tmp/$name.log" 2>&1 || rc=$?
    echo $(($(date +%s) - t0)) >"$tmp/$name.secs"
    exit "$rc"
  ) &
  PID[$name]=$!
  pids+=("$!")
done

failed=()
for name in "${CHILDREN[@]}"; do
  [ -n "${PID[$name]:-}" ] || continue
  if wait "${PID[$name]}"; then
    STATUS[$name]=built
  else
    STATUS[$name]=FAILED
    failed+=("$name")
  fi
  SECONDS_TAKEN[$name]=$(cat "$tmp/$name.secs" 2>/dev/null || echo "?")
done
pids=()

for name in "${failed[@]}"; do
  log "building $NS/$name failed; last 150 lines of its log:"
  tail -n 150 "$tmp/$name.log" | sed 's/^/    /' >&2
done
[ ${#failed[@]} -eq 0 ] || die "failed: ${failed[*]}"

for name in "${CHILDREN[@]}"; do
  docker tag "${TAG[$name]}" "$NS/$name:ref"
done
TAG[base]=$base_tag

# ---- Python 3.9 test image (Debian 11): make units39, tests/integration/test_restore_state.py (the Python 3.9 host test) ----
# Not a stack image (its own hash and tags, images/bullseye/build.sh); NER11_IMAGES_PY39=0 skips it.
if [ "${NER11_IMAGES_PY39:-1}" = 1 ]; then
  bash "$IMAGES/bullseye/build.sh" || die "building $NS/py39 (images/bullseye/build.sh) failed"
fi

# ---- summary ------------------------------------------------------------------------
human() {
  awk -v b="$1" 'BEGIN { split("B KB MB GB", u); i = 1; while (b >= 1000 && i < 4) { b /= 1000; i++ }
                         printf (i == 1 ? "%d %s" : "%.1f %s"), b, u[i] }'
}
printf '\n%-24s %-22s %-10s %-9s %s\n' IMAGE TAG SIZE STATUS SECONDS
for name in base "${CHILDREN[@]}"; do
  size=$(docker image inspect -f '{{.Size}}' "${TAG[$name]}")
  printf '%-24s %-22s %-10s %-9s %s\n' "$NS/$name" "${TAG[$name]#*:}" "$(human "$size")" \
    "${STATUS[$name]}" "${SECONDS_TAKEN[$name]}"
done
printf 'total %ss\n' "$(($(date +%s) - start_all))"
