"""psycopg 3 writing arrays into a protected column through pgveil: server-side binding
(list parameters, text and binary), client-side binding (lists quoted into the text) and
executemany. Usage: unnest.py CONNINFO TABLE. Prints "unnest ok"."""
import sys

import psycopg

conninfo, table = sys.argv[1], sys.argv[2]
names = ["Ann", "Bob", "Cy"]
ssns = ["141-22-3331", None, "141-22-3332"]
sql = f"INSERT INTO {table} (name, ssn) SELECT * FROM UNNEST(%s::text[], %s::text[]) RETURNING ssn"
with psycopg.connect(conninfo, autocommit=True) as conn:
    # Server-side binding, text then binary parameters.
    for binary in (False, True):
        with conn.cursor(binary=binary) as cur:
            cur.execute(sql, (names, ssns))
            assert [r[0] for r in cur.fetchall()] == ssns, binary
    # Client-side binding: the lists are quoted into the statement text.
    with psycopg.ClientCursor(conn) as cur:
        cur.execute(sql, (names, ssns))
        assert [r[0] for r in cur.fetchall()] == ssns
    rows = conn.execute(f"SELECT ssn FROM {table} ORDER BY id").fetchall()
    assert [r[0] for r in rows] == ssns * 3, rows
print("unnest ok")
