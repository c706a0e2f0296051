#!/usr/bin/env bash
# Make `docker compose` v2 work on this machine, idempotently (integration tests of
# adopt.yml create stacks with it; the collection itself never needs compose).
#
# - `docker compose version` (or `docker-compose version`) already reports v2 -> nothing to do.
# - Debian 12 as root: its own docker-compose is v1 (1.29, unusable with current files and
#   with community.docker 4.x). The next Debian release's `docker-compose` 2.x package
#   installs and works on Debian 12. It is fetched with apt inside a throwaway container
#   made from ner11/base (the only place that release is added to the apt sources: the
#   host's sources stay untouched), then installed on the host with `dpkg -i`.
# - anything else -> stop with what the user must do.
#
# Needs: a Docker engine that answers and the ner11/base:ref image (`make images`).
# Env: NER11_COMPOSE_SUITE  the Debian suite to take the package from (default trixie)
#      NER11_BASE_IMAGE     the throwaway container's image (default ner11/base:ref)
set -euo pipefail

SUITE=${NER11_COMPOSE_SUITE:-trixie}
BASE=${NER11_BASE_IMAGE:-ner11/base:ref}

log() { printf 'install-compose: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

compose_v2() {
  local out
  out=$(docker compose version --short 2>/dev/null || docker-compose version --short 2>/dev/null || true)
  case "$out" in
    v2.* | 2.*) printf '%s\n' "$out"; return 0 ;;
  esac
  return 1
}

if v=$(compose_v2); then
  log "docker compose $v is installed; nothing to do"
  exit 0
fi

[ "$(id -u)" = 0 ] || die "docker compose v2 is missing; install it (package docker-compose >= 2 or the docker-compose-plugin) as root"
grep -qE '^ID=debian' /etc/os-release 2>/dev/null ||
  die "docker compose v2 is missing and this is not Debian; install the compose v2 plugin for your distribution"
timeout 20 docker info >/dev/null 2>&1 || die "the Docker engine does not answer; run scripts/bootstrap-docker.sh"
docker image inspect "$BASE" >/dev/null 2>&1 || die "image $BASE is missing; run scripts/build-images.sh (make images)"

work=$(mktemp -d /var/tmp/ner11-compose.XXXXXX)
name=ner11-compose-fetch-$$
cleanup() { docker rm -f "$name" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

log "downloading docker-compose from Debian $SUITE in a throwaway container ($BASE)"
# The container's own apt sources gain the suite (same mirror and keyring as its bookworm
# stanza); only the .deb leaves the container, through the bind-mounted work directory.
docker run --rm --name "$name" --network bridge -v "$work:/out" "$BASE" sh -euc '
  src=/etc/apt/sources.list.d/debian.sources
  uri=$(sed -n "s/^URIs: *//p" "$src" | head -n 1)
  [ -n "$uri" ] || { echo "no mirror in the container apt sources" >&2; exit 1; }
  printf "Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n" \
    "$uri" "$1" > /etc/apt/sources.list.d/compose.sources
  apt-get update -qq >/dev/null
  cd /out
  apt-get download -qq -o APT::Sandbox::User=root "docker-compose/$1" >/dev/null
  chmod 0644 /out/*.deb
' sh "$SUITE"

deb=$(ls "$work"/docker-compose_*.deb 2>/dev/null | head -n 1)
[ -n "$deb" ] || die "the docker-compose package was not downloaded from Debian $SUITE"
log "installing $(basename "$deb")"
dpkg -i "$deb" >/dev/null || die "dpkg -i $(basename "$deb") failed; see the output above"

v=$(compose_v2) || die "docker compose still does not report v2 after installing $(basename "$deb")"
log "docker compose $v installed"
