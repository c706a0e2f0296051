#!/usr/bin/env bash
# Remove what the tests and molecule left on the engine: containers labelled
# io.ner11.test=1, and the volumes/networks/config dirs of their projects.
# Never prunes, never touches anything else (the demo stack `ner11` stays).
set -euo pipefail
command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 || { echo "clean: no docker engine; nothing to do"; exit 0; }
projects=$(docker ps -a --filter label=io.ner11.test=1 --format '{{.Label "io.ner11.project"}}' | sort -u)
projects="$projects molstack"
for p in $projects; do
  [ -n "$p" ] && [ "$p" != ner11 ] || continue
  ids=$(docker ps -aq --filter "label=io.ner11.project=$p")
  [ -z "$ids" ] || docker rm -f -v $ids >/dev/null
  vols=$(docker volume ls -q --filter "label=io.ner11.project=$p")
  [ -z "$vols" ] || docker volume rm -f $vols >/dev/null
  nets=$(docker network ls -q --filter "label=io.ner11.project=$p")
  [ -z "$nets" ] || docker network rm $nets >/dev/null
  rm -rf "/var/lib/ner11/$p"
  echo "clean: removed project $p"
done
