"""psycopg 3 through pgveil: every logical type written and read back in Python's types,
with client-side binding (ClientCursor, simple protocol), server-side binding (extended
protocol, text), binary parameters and results, and prepared statements.
Usage: psycopg_matrix.py CONNINFO TABLE. Prints "psycopg ok N"."""
import sys

import psycopg
from psycopg.types.json import Jsonb

from matrix_values import COLUMNS, Checker, type_of, value_of

conninfo, table = sys.argv[1], sys.argv[2]
check = Checker("psycopg")


def param(column, value):
    return Jsonb(value) if type_of(column) == "jsonb" and value is not None else value


def round_trip(conn, mode, base, cursor_args, prepare=None):
    names = ", ".join(COLUMNS)
    marks = ", ".join(["%s"] * len(COLUMNS))
    with conn.cursor(**cursor_args) as cur:
        for row_id, null in ((base + 1, False), (base + 2, True)):
            values = [param(c, None if null else value_of(c)) for c in COLUMNS]
            cur.execute(f"INSERT INTO {table} (id, {names}) VALUES (%s, {marks})",
                        [row_id, *values], prepare=prepare)
            check.equal(f"{mode} insert rowcount", cur.rowcount, 1)
        for _ in range(2 if prepare else 1):
            cur.execute(f"SELECT {names} FROM {table} WHERE id = %s", [base + 1], prepare=prepare)
            check.row(COLUMNS, cur.fetchone())
        cur.execute(f"SELECT {names} FROM {table} WHERE id = %s", [base + 2], prepare=prepare)
        check.row(COLUMNS, cur.fetchone(), want_null=True)
        # Equality search on deterministic columns, by parameter.
        wanted = ["d_text", "d_int8", "d_date", "d_uuid", "d_bytea", "d_timestamptz"]
        where = " AND ".join(f"{c} = %s" for c in wanted)
        cur.execute(f"SELECT id FROM {table} WHERE {where} AND id > %s AND id <= %s ORDER BY id",
                    [*(param(c, value_of(c)) for c in wanted), base, base + 9], prepare=prepare)
        check.equal(f"{mode} search", [r[0] for r in cur.fetchall()], [base + 1])
        cur.execute(f"UPDATE {table} SET r_text = %s, d_int4 = %s WHERE id = %s",
                    ["updated patient-note-4471", 1987654321, base + 2], prepare=prepare)
        cur.execute(f"SELECT r_text, d_int4 FROM {table} WHERE id = %s", [base + 2])
        check.equal(f"{mode} update", cur.fetchone(), ("updated patient-note-4471", 1987654321))


with psycopg.connect(conninfo, autocommit=True) as conn:
    conn.execute("SET TimeZone = 'America/New_York'")
    round_trip(conn, "server-side binding", 0, {})
    round_trip(conn, "binary", 10, {"binary": True})
    round_trip(conn, "prepared", 20, {}, prepare=True)
    round_trip(conn, "prepared binary", 30, {"binary": True}, prepare=True)
with psycopg.connect(conninfo, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
    round_trip(conn, "client-side binding", 40, {})
# A transaction: rolled back rows are gone, committed ones read back.
with psycopg.connect(conninfo) as conn:
    with conn.transaction():
        conn.execute(f"INSERT INTO {table} (id, d_text) VALUES (51, %s)", [value_of("d_text")])
        conn.execute("SAVEPOINT s")
        conn.execute(f"INSERT INTO {table} (id, d_text) VALUES (52, %s)", [value_of("d_text")])
        conn.execute("ROLLBACK TO SAVEPOINT s")
    rows = conn.execute(f"SELECT id, d_text FROM {table} WHERE id IN (51, 52)").fetchall()
    check.equal("transaction", rows, [(51, value_of("d_text"))])
check.done()
