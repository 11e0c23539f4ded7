"""psycopg 3 through pgveil with server reuse (tests/server_reuse.rs). The first argument is the
libpq connection string; the second the mode:
- `dirty`: leaves settings, a prepared statement and a temp table behind; prints the backend pid.
- `report`: prints the backend pid, the TimeZone and application_name the login reported
  (ParameterStatus), and how many prepared statements and temp tables the session sees."""
import sys

import psycopg

with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    if sys.argv[2] == "dirty":
        conn.execute("SET TimeZone = 'Asia/Tokyo'")
        conn.execute("SET application_name = 'changed'")
        conn.execute("SELECT %s::int", [1], prepare=True)
        conn.execute("CREATE TEMP TABLE reuse_tmp (x int)")
        print(pid)
    else:
        prepared = conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0]
        temp = conn.execute("SELECT to_regclass('pg_temp.reuse_tmp') IS NOT NULL").fetchone()[0]
        print(
            pid,
            conn.info.parameter_status("TimeZone"),
            conn.info.parameter_status("application_name") or "-",
            prepared,
            temp,
        )
