"""psycopg's server-side (named) cursors through pgveil: DECLARE with a bound parameter,
Describe of the cursor's portal, FETCH FORWARD in batches, scroll. Prints one line per row."""
import sys

import psycopg

conninfo, table, ssn = sys.argv[1], sys.argv[2], sys.argv[3]
with psycopg.connect(conninfo, autocommit=False) as conn:
    with conn.cursor(name="psy_cursor", scrollable=True) as cur:
        cur.execute(f"SELECT id, name, ssn FROM {table} WHERE ssn <> %s ORDER BY id", (ssn,))
        print("columns", ",".join(d.name for d in cur.description))
        for row in cur.fetchmany(1):
            print("many", *row)
        cur.scroll(0, mode="absolute")
        for row in cur.fetchall():
            print("all", *row)
    with conn.cursor(name="psy_binary", binary=True) as cur:
        cur.execute(f"SELECT name, ssn FROM {table} ORDER BY id")
        for row in cur:
            print("binary", *row)
