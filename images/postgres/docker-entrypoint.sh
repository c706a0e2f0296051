#!/usr/bin/env bash
# Entrypoint of ner11/postgres, modelled on the official postgres image.
#
# Env (all optional except the password):
#   POSTGRES_PASSWORD / POSTGRES_PASSWORD_FILE  superuser password (required unless
#                                 POSTGRES_HOST_AUTH_METHOD=trust); read as root, handed
#                                 to initdb through a 0600 pwfile, never on a command line
#   POSTGRES_USER       superuser name                 (default postgres)
#   POSTGRES_DB         database created at init       (default = POSTGRES_USER)
#   POSTGRES_INITDB_ARGS extra initdb arguments        (default none)
#   POSTGRES_HOST_AUTH_METHOD  pg_hba method for host connections (default scram-sha-256)
#   PGDATA              data directory                 (default /var/lib/postgresql/data)
#   (every POSTGRES_* value above also accepts a <NAME>_FILE variant)
# Init scripts: /docker-entrypoint-initdb.d/*.sh|*.sql|*.sql.gz|*.sql.zst, run once on
# an empty PGDATA, in name order.
set -Eeuo pipefail

log() { printf '%s [entrypoint] %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# file_env VAR [default]: VAR from $VAR or from the file named by $VAR_FILE.
file_env() {
  local var=$1 fvar="${1}_FILE" def=${2:-}
  if [ -n "${!var:-}" ] && [ -n "${!fvar:-}" ]; then
    die "both $var and $fvar are set; set only one"
  fi
  local val=$def
  if [ -n "${!var:-}" ]; then
    val=${!var}
  elif [ -n "${!fvar:-}" ]; then
    [ -r "${!fvar}" ] || die "$fvar=${!fvar} is not a readable file"
    val=$(<"${!fvar}")
  fi
  export "$var"="$val"
  unset "$fvar"
}

# Run a command as the postgres user (drop privileges when we are root).
PWFILE=""
trap 'if [ -n "$PWFILE" ]; then rm -f "$PWFILE"; fi' EXIT

as_pg() {
  if [ "$(id -u)" = 0 ]; then
    setpriv --reuid=postgres --regid=postgres --init-groups "$@"
  else
    "$@"
  fi
}

# The first argument may be a postgres option: `docker run ner11/postgres -c x=y`.
if [ "${1:0:1}" = '-' ]; then
  set -- postgres "$@"
fi

if [ "$1" != postgres ]; then
  exec "$@"
fi

PGDATA=${PGDATA:-/var/lib/postgresql/data}
export PGDATA
file_env POSTGRES_USER postgres
file_env POSTGRES_DB "$POSTGRES_USER"
file_env POSTGRES_PASSWORD
file_env POSTGRES_INITDB_ARGS
POSTGRES_HOST_AUTH_METHOD=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}

if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chmod 0700 "$PGDATA" 2>/dev/null || true
  chmod 2775 /var/run/postgresql
  # Only chown what is not ours yet (a large PGDATA is not walked on every start).
  find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' + 2>/dev/null || true
  chown postgres:postgres /var/run/postgresql
fi

init_db() {
  if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
    cat >&2 <<'MSG'
Error: the database is uninitialized and the superuser password is not set.
       Set POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE) to a non-empty value, or
       POSTGRES_HOST_AUTH_METHOD=trust to allow all connections without a password
       (not recommended).
MSG
    exit 1
  fi
  log "initializing database in $PGDATA (initdb)"
  local auth_host=$POSTGRES_HOST_AUTH_METHOD
  if [ -n "$POSTGRES_PASSWORD" ]; then
    PWFILE=$(mktemp /tmp/pgpw.XXXXXX)
    chmod 0600 "$PWFILE"
    printf '%s\n' "$POSTGRES_PASSWORD" >"$PWFILE"
    if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$PWFILE"; fi
  fi
  local initdb_auth_host=$auth_host
  [ "$initdb_auth_host" = trust ] || [ "$initdb_auth_host" = scram-sha-256 ] || [ "$initdb_auth_host" = md5 ] || initdb_auth_host=scram-sha-256
  # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a word list on purpose
  as_pg initdb --username="$POSTGRES_USER" ${PWFILE:+--pwfile="$PWFILE"} \
    --auth-local=trust --auth-host="$initdb_auth_host" --encoding=UTF8 $POSTGRES_INITDB_ARGS
  if [ -n "$PWFILE" ]; then rm -f "$PWFILE"; PWFILE=""; fi

  cat >"$PGDATA/pg_hba.conf" <<HBA
# TYPE  DATABASE  USER  ADDRESS  METHOD
local   all       all            trust
host    all       all   all      $auth_host
HBA
  cat >>"$PGDATA/postgresql.conf" <<'CONF'

# ---- ner11/postgres ------------------------------------------------------------
listen_addresses = '*'
max_connections = 100
password_encryption = scram-sha-256
shared_preload_libraries = 'pg_stat_statements'
log_destination = 'stderr'
logging_collector = off
log_timezone = 'UTC'
timezone = 'UTC'
CONF
  if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$PGDATA/pg_hba.conf" "$PGDATA/postgresql.conf"; fi

  # Temporary server on the unix socket only: nothing outside sees it (and the
  # healthcheck, which uses 127.0.0.1, stays unhealthy until the real start).
  as_pg pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w -t 120 start

  local psql=(psql -v ON_ERROR_STOP=1 --no-password --no-psqlrc --username "$POSTGRES_USER")
  if [ "$POSTGRES_DB" != postgres ]; then
    as_pg "${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" <<'SQL'
CREATE DATABASE :"db";
SQL
  fi
  as_pg "${psql[@]}" --dbname "$POSTGRES_DB" -c 'CREATE EXTENSION IF NOT EXISTS pg_stat_statements;'

  local f
  for f in /docker-entrypoint-initdb.d/*; do
    [ -e "$f" ] || continue
    case "$f" in
      *.sh)
        if [ -x "$f" ]; then
          log "running $f"; as_pg env PGUSER="$POSTGRES_USER" PGDATABASE="$POSTGRES_DB" "$f"
        else
          log "sourcing $f"; # shellcheck disable=SC1090
          . "$f"
        fi ;;
      *.sql) log "running $f"; as_pg "${psql[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
      *.sql.gz) log "running $f"; gzip -dc "$f" | as_pg "${psql[@]}" --dbname "$POSTGRES_DB" ;;
      *.sql.zst) log "running $f"; zstd -dc "$f" | as_pg "${psql[@]}" --dbname "$POSTGRES_DB" ;;
      *) log "ignoring $f" ;;
    esac
  done

  as_pg pg_ctl -D "$PGDATA" -m fast -w -t 120 stop
  log "PostgreSQL init process complete; ready for start up."
}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  init_db
else
  log "PostgreSQL database directory appears to contain a database; skipping initialization"
fi
unset POSTGRES_PASSWORD

shift
if [ "$(id -u)" = 0 ]; then
  exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA" "$@"
fi
exec postgres -D "$PGDATA" "$@"
