"""psycopg 3 logs in with the libpq connection string given as the first argument and prints
`<current_user> <upstream ssl>`: whether the database sees its own leg encrypted."""
import sys

import psycopg

with psycopg.connect(sys.argv[1]) as conn:
    user, ssl = conn.execute(
        "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
    ).fetchone()
    print(user, "t" if ssl else "f")
