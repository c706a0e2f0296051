#!/usr/bin/env bash
# Make a Docker engine answer on this machine, idempotently.
#
# - `docker info` already works            -> nothing to do.
# - Debian/Ubuntu as root, engine missing  -> apt-get install docker.io (+ debootstrap
#                                             for the base image) and start dockerd.
#   Also iproute2 and iptables when `ip` / `iptables` are missing: the multi-host test fleet
#   (scripts/fleet.sh) creates bridges and removes its firewall rules with them.
# - anything else                          -> stop with what the user must do.
set -euo pipefail

log() { printf 'bootstrap-docker: %s\n' "$*" >&2; }

need_pkgs=()
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
# sbin is not on every root PATH (su without -); look there too.
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
have ip || need_pkgs+=(iproute2)
have iptables || need_pkgs+=(iptables)

engine_ok() { timeout 20 docker info >/dev/null 2>&1; }

if engine_ok && [ ${#need_pkgs[@]} -eq 0 ]; then
  log "docker engine answers; nothing to do"
  exit 0
fi

if [ "$(id -u)" != 0 ] || [ ! -r /etc/os-release ] || ! grep -qiE '^(ID|ID_LIKE)=.*(debian|ubuntu)' /etc/os-release; then
  if ! engine_ok; then
    log "no Docker engine answers (docker info failed) and this is not Debian/Ubuntu as root."
    log "Install and start Docker yourself (https://docs.docker.com/engine/install/), make"
    log "'docker info' work for this user, then re-run 'make images'."
    exit 1
  fi
  log "docker answers but ${need_pkgs[*]} is missing: install it (apt-get install ${need_pkgs[*]})"
  exit 1
fi

command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

if ! engine_ok; then
  # A session that ended leaves a stale pid file behind; dockerd refuses to start then.
  if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    rm -f /var/run/docker.pid
  fi
  if ! pgrep -x dockerd >/dev/null 2>&1; then
    log "starting dockerd (log: /var/log/dockerd.log)"
    nohup dockerd >/var/log/dockerd.log 2>&1 &
  fi
  for _ in $(seq 1 60); do
    engine_ok && break
    sleep 1
  done
fi

if ! engine_ok; then
  log "dockerd did not answer within 60 s; see /var/log/dockerd.log"
  tail -n 20 /var/log/dockerd.log >&2 || true
  exit 1
fi
log "docker engine answers: $(docker version --format '{{.Server.Version}}' 2>/dev/null)"
