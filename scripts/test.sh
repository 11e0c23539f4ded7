#!/usr/bin/env bash
# Runs every test. Installs what the tests need when it is missing (PostgreSQL server
# binaries, psql, a Python virtualenv with psycopg), so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
have_server() {
  { command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/initdb" ]; } || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}
have_server || need_apt+=(postgresql postgresql-contrib)
command -v psql >/dev/null || need_apt+=(postgresql-client)
# tests/generated_sql.rs runs statements written by sqlsmith.
command -v sqlsmith >/dev/null || need_apt+=(sqlsmith)
# tests/alerts.rs starts a real Prometheus Alertmanager.
[ -x /usr/bin/prometheus-alertmanager ] || need_apt+=(prometheus-alertmanager)
# tests/hsm.rs: the master key in a SoftHSM2 token (tokens are made by the test).
[ -f /usr/lib/softhsm/libsofthsm2.so ] || need_apt+=(softhsm2)
# Clients of tests/scram.rs and tests/drivers/: Java + pgJDBC, node + npm. pg_dump and
# pg_restore (tests/dump_restore.rs) come with postgresql-client.
command -v java >/dev/null || need_apt+=(default-jdk-headless)
[ -f /usr/share/java/postgresql.jar ] || need_apt+=(libpostgresql-jdbc-java)
command -v npm >/dev/null || need_apt+=(nodejs npm)
# pgx (tests/drivers/), built in GOPATH mode from Debian's package: no Go module proxy here.
command -v go >/dev/null || need_apt+=(golang-go)
[ -d /usr/share/gocode/src/github.com/jackc/pgx/v4 ] || need_apt+=(golang-github-jackc-pgx-v4-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "missing packages: ${need_apt[*]} (install them, e.g. with sudo apt-get install)" >&2
    exit 1
  fi
fi

# Python clients used by the integration tests.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -c 'import psycopg' 2>/dev/null || .venv/bin/pip install -q 'psycopg[binary]>=3.1'
export PGVEIL_PYTHON="$PWD/.venv/bin/python"
# The client matrix (tests/drivers/): asyncpg, psycopg2, SQLAlchemy 2 (with greenlet for
# its asyncio engine), Django 5.2; node-postgres and postgres.js (tests/clients/node, pinned
# by its package-lock.json).
py_need=()
.venv/bin/python -c 'import asyncpg' 2>/dev/null || py_need+=(asyncpg)
.venv/bin/python -c 'import psycopg_pool' 2>/dev/null || py_need+=(psycopg-pool)
.venv/bin/python -c 'import psycopg2' 2>/dev/null || py_need+=(psycopg2-binary)
.venv/bin/python -c 'import sqlalchemy, greenlet; assert sqlalchemy.__version__ >= "2"' 2>/dev/null \
  || py_need+=('sqlalchemy>=2,<3' greenlet)
.venv/bin/python -c 'import django; assert django.VERSION[:2] == (5, 2)' 2>/dev/null || py_need+=('django>=5.2,<5.3')
[ ${#py_need[@]} -eq 0 ] || .venv/bin/python -m pip install -q "${py_need[@]}"
{ [ -d tests/clients/node/node_modules/pg ] && [ -d tests/clients/node/node_modules/postgres ]; } \
  || npm ci --prefix tests/clients/node --no-audit --no-fund --silent

cargo test --all-targets "$@"
