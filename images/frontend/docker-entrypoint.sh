#!/bin/sh
# Render /etc/nginx/nginx.conf from its template, then run the command (nginx).
#   NER11_API_UPSTREAM  host:port of the API (default api:8000), or several separated by
#                       commas or spaces: then nginx balances over them, takes a server out
#                       for NER11_UPSTREAM_FAIL_TIMEOUT (default 10s) after a failed attempt
#                       (passive health check) and retries idempotent requests on the next one.
#   NER11_RESOLVER      DNS server for a single upstream name (default auto: the first
#                       nameserver in /etc/resolv.conf, 127.0.0.11 on Docker networks)
set -eu

upstreams=$(printf '%s' "${NER11_API_UPSTREAM:-api:8000}" | tr ',' ' ')
fail_timeout=${NER11_UPSTREAM_FAIL_TIMEOUT:-10s}
resolver=${NER11_RESOLVER:-auto}
if [ "$resolver" = auto ]; then
  resolver=$(awk '$1 == "nameserver" { print $2; exit }' /etc/resolv.conf 2>/dev/null || true)
  resolver=${resolver:-127.0.0.11}
fi
case "$resolver" in *:*:*) resolver="[$resolver]" ;; esac   # bare IPv6 address
case "$fail_timeout" in *[!0-9smh]*|'') echo "NER11_UPSTREAM_FAIL_TIMEOUT must be a duration like 10s, got '$fail_timeout'" >&2; exit 1 ;; esac

count=0
servers=""
for upstream in $upstreams; do
  upstream=${upstream#http://}
  upstream=${upstream%/}
  case "$upstream" in
    *[!A-Za-z0-9.:_\[\]-]*|'') echo "NER11_API_UPSTREAM must be host:port (or a list of them), got '$upstream'" >&2; exit 1 ;;
  esac
  count=$((count + 1))
  servers="$servers $upstream"
done
[ "$count" -gt 0 ] || { echo "NER11_API_UPSTREAM is empty: set host:port of the API" >&2; exit 1; }

block=/tmp/ner11-upstream.conf
proxy=/tmp/ner11-proxy.conf
if [ "$count" = 1 ]; then
  : >"$block"
  printf '            set $upstream http://%s;\n            proxy_pass $upstream;\n' "${servers# }" >"$proxy"
else
  {
    echo "    upstream ner11_api {"
    for upstream in $servers; do
      echo "        server $upstream max_fails=1 fail_timeout=$fail_timeout;"
    done
    echo "        keepalive 16;"
    echo "    }"
  } >"$block"
  cat >"$proxy" <<CONF
            proxy_pass http://ner11_api;
            proxy_next_upstream error timeout http_502 http_503 http_504;
            proxy_next_upstream_tries $count;
CONF
fi

awk -v block="$block" -v proxy="$proxy" -v resolver="$resolver" '
  /@NER11_UPSTREAM_BLOCK@/ { while ((getline line < block) > 0) print line; next }
  /@NER11_PROXY_PASS@/ { while ((getline line < proxy) > 0) print line; next }
  { gsub(/@NER11_RESOLVER@/, resolver); print }
' /etc/nginx/ner11/nginx.conf.template >/etc/nginx/nginx.conf
rm -f "$block" "$proxy"

if [ "${1:-}" = nginx ]; then
  echo "frontend: serving /app/build on :3000, /api/ ->$servers (resolver $resolver)" >&2
fi
exec "$@"
