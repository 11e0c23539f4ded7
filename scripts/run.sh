#!/usr/bin/env bash
# The main job, on a fresh machine: builds pgveil, starts a throwaway local PostgreSQL
# (from the installed server binaries) with the example tables, creates keys, and runs
# pgveil in front of it with config/pgveil.toml. Prints the connection string to use.
# Stop with Ctrl-C; state lives in ./run/ (delete it to start over).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
run="$root/run"
mkdir -p "$run"

if ! { command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/initdb" ]; } && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-contrib >/dev/null
  else
    echo "install PostgreSQL first (apt-get install postgresql)" >&2; exit 1
  fi
fi

cargo build --release --quiet
bin="$root/target/release/pgveil"

pg_port=${PGVEIL_PG_PORT:-55432}
export PGVEIL_DEV_PASSWORD=${PGVEIL_DEV_PASSWORD:-postgres}
"$root/scripts/local-postgres.sh" start "$run/pg" "$pg_port"
trap '"$root/scripts/local-postgres.sh" stop "$run/pg"' EXIT

export PGPASSWORD=$PGVEIL_DEV_PASSWORD
# Roles (clinician, billing, researcher; logins alice, bob, guest) and the example tables.
psql -X -q -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
  -v password="$PGVEIL_DEV_PASSWORD" -f "$root/scripts/demo.sql"

# The example configuration, pointed at the throwaway cluster; keys live beside it.
sed -e "s/^port = 5432/port = $pg_port/" "$root/config/pgveil.toml" > "$run/pgveil.toml"
[ -f "$run/keys/master.key" ] || "$bin" keys init --dir "$run/keys" >/dev/null 2>&1 || true
listen=$(sed -n 's/^listen = "\(.*\)".*/\1/p' "$run/pgveil.toml" | head -n1)
echo
echo "pgveil is starting in front of PostgreSQL on 127.0.0.1:$pg_port. Connect with:"
echo "  psql \"postgresql://postgres:$PGVEIL_DEV_PASSWORD@${listen}/postgres?sslmode=disable\""
echo "(logins alice: clinician, bob: billing, guest: no access; password $PGVEIL_DEV_PASSWORD; README \"Try it\")"
echo
"$bin" serve --config "$run/pgveil.toml"
