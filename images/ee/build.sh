#!/usr/bin/env bash
# Build the NER11 execution environment ner11/ee:<hash12> and ner11/ee:ref (images/ee/Dockerfile).
#
#   bash images/ee/build.sh            # skipped when ner11/ee:<hash12> exists
#   NER11_EE_FORCE=1 bash images/ee/build.sh
#   NER11_EE_NO_CACHE=1 NER11_EE_FORCE=1 NER11_IMAGES_NAMESPACE=tmp-ee bash images/ee/build.sh
#                                      # a cold build (no Docker layer cache) under a throwaway tag
#
# <hash12> covers this directory, meta/ee-*.txt, the collection's shipped content (galaxy.yml,
# meta/, plugins/, roles/, playbooks/), the pinned versions of requirements-dev.txt and the base
# image's id. Python packages are downloaded on this machine with its own pip configuration
# (whatever index, mirror or certificate settings it has) into the build context and installed in
# the image without any index; the community collections are copied from the controller's
# ansible package (the same versions the tests use). Needs the venv (make setup) and ner11/base.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${VENV:-$ROOT/.venv}
NS=${NER11_IMAGES_NAMESPACE:-ner11}
BASE=${NER11_EE_BASE:-$NS/base:ref}
export DOCKER_BUILDKIT=0 # legacy builder: no buildx plugin, never pulls

log() { printf 'build-ee: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ -x "$VENV/bin/ansible-galaxy" ] || die "no venv at $VENV: run make setup"
docker image inspect "$BASE" >/dev/null 2>&1 || die "base image $BASE is missing: run make images"

pin() { grep -E "^$1==" "$ROOT/requirements-dev.txt" | head -n1; }
core=$(pin ansible-core); runner=$(pin ansible-runner)
[ -n "$core" ] && [ -n "$runner" ] || die "requirements-dev.txt pins no ansible-core or ansible-runner"

hash=$(
  {
    cd "$ROOT"
    find images/ee meta galaxy.yml plugins roles playbooks -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 |
      LC_ALL=C sort -z | xargs -0 sha256sum
    printf '%s\n%s\n' "$core" "$runner"
    docker image inspect -f '{{.Id}}' "$BASE"
  } | sha256sum | cut -c1-12
)
tag=$NS/ee:$hash
if [ "${NER11_EE_FORCE:-0}" != 1 ] && docker image inspect "$tag" >/dev/null 2>&1; then
  docker tag "$tag" "$NS/ee:ref"
  log "$tag exists (sources unchanged); $NS/ee:ref points to it"
  exit 0
fi

ctx=$(mktemp -d /var/tmp/ner11-ee.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
start=$(date +%s)

cp "$ROOT/images/ee/Dockerfile" "$ctx/"
{ echo "$core"; echo "$runner"; grep -vE '^\s*(#|$)' "$ROOT/meta/ee-requirements.txt"; } >"$ctx/requirements.txt"

# Wheels for the image's Python (Debian 12: CPython 3.11, x86_64/aarch64 glibc), fetched with this
# machine's pip configuration; the build installs them with --no-index.
pyver=$(docker run --rm --network none "$BASE" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
"$VENV/bin/python" -m pip download --quiet --dest "$ctx/wheels" --only-binary=:all: \
  --python-version "$pyver" --implementation cp --platform "manylinux2014_$(uname -m)" \
  --platform "manylinux_2_17_$(uname -m)" --platform "manylinux_2_28_$(uname -m)" --platform any \
  -r "$ctx/requirements.txt"

# The collection as Galaxy would ship it (build_ignore applies) + its community dependencies.
mkdir -p "$ctx/collections/ansible_collections/community"
"$VENV/bin/ansible-galaxy" collection build --force --output-path "$ctx/collections" "$ROOT" >/dev/null
site=$("$VENV/bin/python" -c 'import ansible_collections, os; print(os.path.dirname(ansible_collections.__path__[0]) + "/ansible_collections")')
for c in docker postgresql; do
  cp -a "$site/community/$c" "$ctx/collections/ansible_collections/community/"
done
find "$ctx/collections" -name __pycache__ -type d -prune -exec rm -rf {} +

log "building $tag from $BASE"
nocache=()
[ "${NER11_EE_NO_CACHE:-0}" = 1 ] && nocache=(--no-cache)
docker build --quiet "${nocache[@]}" --build-arg "BASE=$BASE" --label "io.ner11.ee.hash=$hash" -t "$tag" "$ctx" >/dev/null
docker tag "$tag" "$NS/ee:ref"
log "built $tag ($NS/ee:ref) in $(($(date +%s) - start)) s"
