#!/usr/bin/env bash
# Starts or stops a throwaway PostgreSQL cluster from the installed server binaries.
#   local-postgres.sh start DIR PORT [AUTH]   (AUTH: scram-sha-256 (default) or trust)
#   local-postgres.sh stop DIR
# PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres` OS user.
# The superuser is `postgres` with password $PGVEIL_DEV_PASSWORD (default: postgres).
set -euo pipefail

bindir() {
  local d
  if command -v pg_config >/dev/null && d=$(pg_config --bindir) && [ -x "$d/initdb" ]; then echo "$d"; return; fi
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
  [ -n "$d" ] || { echo "no PostgreSQL server binaries found: install postgresql" >&2; exit 1; }
  echo "$d"
}

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

cmd=${1:?usage: local-postgres.sh start DIR PORT [AUTH] | stop DIR}
dir=$(realpath -m "${2:?directory}")
bin=$(bindir)
case "$cmd" in
  start)
    port=${3:?port}
    auth=${4:-scram-sha-256}
    mkdir -p "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      printf '%s' "${PGVEIL_DEV_PASSWORD:-postgres}" > "$dir/pwfile"
      [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$dir"
      as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth="$auth" --pwfile="$dir/pwfile" \
        --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log"
      rm -f "$dir/pwfile"
    fi
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
    as_pg "$bin/pg_ctl" start -w -t 60 -D "$dir/data" -l "$dir/server.log" \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200" >/dev/null
    ;;
  stop)
    [ -f "$dir/data/postmaster.pid" ] && as_pg "$bin/pg_ctl" stop -w -m fast -D "$dir/data" >/dev/null || true
    ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
