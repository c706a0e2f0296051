#!/usr/bin/env bash
# A test fleet of separate Docker engines on this one machine (docs/multi-host.md).
#
# Each fleet host is its own dockerd: its own data root, exec root, pid file, socket
# (/run/ner11-fleet/<name>.sock), bridge (br-nf<N>, 10.231.<N>.1/24) and address pool for
# the networks it creates (10.232.<N*16>.0/20), so two hosts never share containers,
# networks or published addresses. A host publishes its ports on its bridge address, as a
# separate machine publishes on its own address; hosts reach each other there.
#
#   fleet.sh up NAME:N [IMAGE...]   start engine NAME (N in 1..15) and load IMAGEs into it
#   fleet.sh down NAME:N...         remove its containers and networks, stop it, remove its
#                                   iptables rules, bridge and data (the machine as found); with
#                                   several hosts, every host's containers go before any engine
#   fleet.sh renew NAME:N [IMAGE...]  the host is lost and replaced: its engine stops and its data
#                                   (containers, volumes, networks, images) is removed, then a fresh
#                                   engine starts on the SAME bridge address and gets the IMAGEs. The
#                                   bridge stays meanwhile, so peers' connections are refused at once
#                                   (never routed anywhere else)
#   fleet.sh address N              the host address of engine N (its bridge address)
#   fleet.sh prune PREFIX AGE_S     `down` every engine whose name starts with PREFIX and whose
#                                   owner process (NER11_FLEET_OWNER at `up`, else the caller)
#                                   is gone or that is older than AGE_S seconds: the leftovers of
#                                   runs that were killed before their teardown
#
# Images move the way a fleet without a registry gets them: docker save | docker load.
# Needs root and a running default engine (scripts/bootstrap-docker.sh).
set -euo pipefail

BASE=/var/lib/ner11-fleet
RUN=/run/ner11-fleet
log() { printf 'fleet: %s\n' "$*" >&2; }

split() { # NAME:N -> name, n
  name=${1%%:*}
  n=${1##*:}
  [[ "$name" =~ ^[a-z][a-z0-9-]{0,20}$ ]] || { log "bad host name '$name' (lowercase letters, digits, -)"; exit 2; }
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 15 ] || { log "bad engine number '$n' (1..15)"; exit 2; }
  bridge=br-nf$n
  address=10.231.$n.1
  sock=$RUN/$name.sock
}

engine() { docker -H "unix://$sock" "$@"; }

up() {
  split "$1"
  shift
  mkdir -p "$BASE/$name" "$RUN"
  # What prune needs to tear it down later: its number and the process that owns it.
  echo "$n" >"$BASE/$name/n"
  echo "${NER11_FLEET_OWNER:-$PPID}" >"$BASE/$name/owner"
  if ! ip link show "$bridge" >/dev/null 2>&1; then
    ip link add "$bridge" type bridge
    ip addr add "$address/24" dev "$bridge"
  fi
  ip link set "$bridge" up
  # Engines start one at a time (an engine's start sets up the machine's networking); image loads
  # run in parallel.
  exec 9>"$RUN/.start.lock"
  flock -w 300 9 || { log "another engine has been starting for 300 s; try again"; exit 1; }
  if ! engine info >/dev/null 2>&1; then
    rm -f "$RUN/$name.pid"
    # --iptables=false: an engine that programs iptables removes and re-creates the kernel's shared
    # DOCKER chains when it starts, and the default engine's `docker network create` fails in that
    # window ("Chain 'DOCKER' does not exist"; it broke a CI run while other test modules deployed).
    # The fleet needs no rule: published ports are served by the userland proxy on the engine's
    # bridge address, which the controller and every other host's containers reach as a local
    # address of this machine (no DNAT, no forwarding between bridges).
    nohup dockerd --data-root "$BASE/$name/data" --exec-root "$RUN/$name" --pidfile "$RUN/$name.pid" \
      -H "unix://$sock" --bridge "$bridge" --ip "$address" --iptables=false \
      --default-address-pool "base=10.232.$((n * 16)).0/20,size=24" >"$BASE/$name/dockerd.log" 2>&1 &
    # Keep the default userland proxy: with --userland-proxy=false an engine adds a nat OUTPUT
    # rule for 127.0.0.0/8 that breaks every 127.0.0.1 port the default engine publishes.
    for _ in $(seq 1 60); do
      engine info >/dev/null 2>&1 && break
      sleep 0.5
    done
    engine info >/dev/null 2>&1 || { log "engine $name did not start; see $BASE/$name/dockerd.log"; tail -n 20 "$BASE/$name/dockerd.log" >&2; exit 1; }
  fi
  flock -u 9
  for image in "$@"; do
    id=$(docker image inspect -f '{{.Id}}' "$image")
    if [ "$(engine image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)" != "$id" ]; then
      docker save "$image" | engine load -q >/dev/null
    fi
  done
  log "$name: unix://$sock, publishes on $address"
}

remove_containers() { # of the engine of split's host, if it answers
  if [ -S "$sock" ] && engine info >/dev/null 2>&1; then
    ids=$(engine ps -aq)
    [ -z "$ids" ] || engine rm -f -v $ids >/dev/null
    nets=$(engine network ls -q --filter type=custom)
    [ -z "$nets" ] || engine network rm $nets >/dev/null
  fi
}

stop_engine() { # stop the engine of split's host, remove its rules, mounts and data; keep_bridge=1 keeps the bridge
  remove_containers
  if [ -f "$RUN/$name.pid" ]; then
    pid=$(cat "$RUN/$name.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
      done
    fi
  fi
  # The engine's rules that name its bridge (nat MASQUERADE, FORWARD, DOCKER-ISOLATION):
  # delete each by its own spec, in the table it lives in.
  for table in filter nat; do
    { iptables -t "$table" -S 2>/dev/null || true; } | { grep -- "$bridge\b\|10\.231\.$n\.0/24" || true; } | { grep '^-A' || true; } |
      while read -r rule; do
        iptables -t "$table" ${rule/-A/-D} 2>/dev/null || true
      done
  done
  if [ "${keep_bridge:-0}" != 1 ] && ip link show "$bridge" >/dev/null 2>&1; then
    ip link set "$bridge" down
    ip link del "$bridge"
  fi
  # An engine killed with -9 (the end of a session) leaves its mounts behind: unmount them first.
  for root in "$BASE/$name" "$RUN/$name"; do
    { awk -v r="$root/" 'index($2, r) == 1 { print $2 }' /proc/mounts || true; } | sort -r |
      while read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done
  done
  rm -rf --one-file-system "${BASE:?}/$name" "${RUN:?}/$name" "$RUN/$name.pid" "$sock"
}

down() {
  split "$1"
  keep_bridge=0 stop_engine
  if ! ls "$RUN"/*.sock >/dev/null 2>&1; then # the last engine: no trace of the fleet left
    rm -f "$RUN/.start.lock"
    rmdir "$RUN" "$BASE" 2>/dev/null || true
  fi
  log "$name: removed"
}

renew() {
  split "$1"
  local spec=$1
  shift
  keep_bridge=1 stop_engine
  log "$name: engine and data removed; starting a fresh one on $address"
  up "$spec" "$@"
}

prune() {
  local prefix=$1 age=$2 dir host num owner born
  [[ "$prefix" =~ ^[a-z][a-z0-9-]{0,20}$ ]] || { log "bad prefix '$prefix'"; exit 2; }
  [[ "$age" =~ ^[0-9]+$ ]] || { log "bad age '$age' (seconds)"; exit 2; }
  [ -d "$BASE" ] || return 0
  for dir in "$BASE/$prefix"*/; do
    [ -d "$dir" ] || continue
    host=$(basename "$dir")
    num=$(cat "$dir/n" 2>/dev/null || true)
    owner=$(cat "$dir/owner" 2>/dev/null || true)
    born=$(stat -c %Y "$dir" 2>/dev/null || echo 0)
    [[ "$num" =~ ^[0-9]+$ ]] || { log "$host: no engine number recorded; remove $dir by hand"; continue; }
    if [[ "$owner" =~ ^[0-9]+$ ]] && kill -0 "$owner" 2>/dev/null && [ $(($(date +%s) - born)) -lt "$age" ]; then
      continue # its run is still going
    fi
    log "$host: leftover of an earlier run (owner ${owner:-unknown} gone or older than $age s)"
    down "$host:$num"
  done
}

[ "$(id -u)" = 0 ] || { log "the fleet needs root (it creates bridges and engines)"; exit 1; }
cmd=${1:-}
shift || true
case "$cmd" in
  up) [ $# -ge 1 ] || { log "usage: fleet.sh up NAME:N [IMAGE...]"; exit 2; }; up "$@" ;;
  down)
    [ $# -ge 1 ] || { log "usage: fleet.sh down NAME:N..."; exit 2; }
    # Every host's containers first: no container keeps calling an address whose bridge is gone
    # (it would be routed off the machine).
    for h in "$@"; do split "$h"; remove_containers; done
    for h in "$@"; do down "$h"; done
    ;;
  renew) [ $# -ge 1 ] || { log "usage: fleet.sh renew NAME:N [IMAGE...]"; exit 2; }; renew "$@" ;;
  address) split "x:${1:-}"; echo "$address" ;;
  prune) [ $# -eq 2 ] || { log "usage: fleet.sh prune PREFIX AGE_S"; exit 2; }; prune "$@" ;;
  *) log "usage: fleet.sh up NAME:N [IMAGE...] | down NAME:N... | renew NAME:N [IMAGE...] | address N | prune PREFIX AGE_S"; exit 2 ;;
esac
