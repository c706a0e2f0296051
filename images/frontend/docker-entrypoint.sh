#!/bin/sh
# Render /etc/nginx/nginx.conf from its template, then run the command (nginx).
#   NER11_API_UPSTREAM  host:port of the API            (default api:8000)
#   NER11_RESOLVER      DNS server for the upstream name (default auto: the first
#                       nameserver in /etc/resolv.conf, 127.0.0.11 on Docker networks)
set -eu

upstream=${NER11_API_UPSTREAM:-api:8000}
upstream=${upstream#http://}
upstream=${upstream%/}
resolver=${NER11_RESOLVER:-auto}
if [ "$resolver" = auto ]; then
  resolver=$(awk '$1 == "nameserver" { print $2; exit }' /etc/resolv.conf 2>/dev/null || true)
  resolver=${resolver:-127.0.0.11}
fi
case "$resolver" in *:*:*) resolver="[$resolver]" ;; esac   # bare IPv6 address

case "$upstream" in
  *[!A-Za-z0-9.:_\[\]-]*|'') echo "NER11_API_UPSTREAM must be host:port, got '$upstream'" >&2; exit 1 ;;
esac

sed -e "s|@NER11_API_UPSTREAM@|$upstream|g" -e "s|@NER11_RESOLVER@|$resolver|g" \
  /etc/nginx/ner11/nginx.conf.template >/etc/nginx/nginx.conf

if [ "${1:-}" = nginx ]; then
  echo "frontend: serving /app/build on :3000, /api/ -> http://$upstream (resolver $resolver)" >&2
fi
exec "$@"
