"""psycopg2 (libpq, client-side binding over the simple protocol) through pgveil: every
logical type written and read back in Python's types. Usage: psycopg2_matrix.py CONNINFO
TABLE. Prints "psycopg2 ok N"."""
import sys
import uuid

import psycopg2
import psycopg2.extras

from matrix_values import COLUMNS, Checker, type_of, value_of

conninfo, table = sys.argv[1], sys.argv[2]
check = Checker("psycopg2")
psycopg2.extras.register_uuid()


def param(column, value):
    if value is None:
        return None
    if type_of(column) == "jsonb":
        return psycopg2.extras.Json(value)
    if type_of(column) == "bytea":
        return psycopg2.Binary(value)
    return value


conn = psycopg2.connect(conninfo)
names = ", ".join(COLUMNS)
marks = ", ".join(["%s"] * len(COLUMNS))
with conn:
    with conn.cursor() as cur:
        cur.execute("SET TimeZone = 'Asia/Tokyo'")
        for row_id, null in ((1, False), (2, True)):
            values = [param(c, None if null else value_of(c)) for c in COLUMNS]
            cur.execute(f"INSERT INTO {table} (id, {names}) VALUES (%s, {marks})", [row_id, *values])
        # executemany: one INSERT per row.
        cur.executemany(f"INSERT INTO {table} (id, d_text, r_int8) VALUES (%s, %s, %s)",
                        [(3, value_of("d_text"), value_of("r_int8")),
                         (4, value_of("d_text"), value_of("r_int8"))])
with conn:
    with conn.cursor() as cur:
        cur.execute(f"SELECT {names} FROM {table} WHERE id = %s", [1])
        row = cur.fetchone()
        check.row(COLUMNS, [bytes(v) if isinstance(v, memoryview) else v for v in row])
        cur.execute(f"SELECT {names} FROM {table} WHERE id = %s", [2])
        check.row(COLUMNS, cur.fetchone(), want_null=True)
        cur.execute(f"SELECT id FROM {table} WHERE d_text = %s AND d_uuid = %s",
                    [value_of("d_text"), value_of("d_uuid")])
        check.equal("search", [r[0] for r in cur.fetchall()], [1])
        cur.execute(f"SELECT id, r_int8 FROM {table} WHERE d_text = %s ORDER BY id",
                    [value_of("d_text")])
        check.equal("executemany", cur.fetchall(),
                    [(1, value_of("r_int8")), (3, value_of("r_int8")), (4, value_of("r_int8"))])
        cur.execute(f"UPDATE {table} SET r_date = %s WHERE id = 2", [value_of("r_date")])
        check.equal("update rowcount", cur.rowcount, 1)
        cur.execute(f"SELECT r_date FROM {table} WHERE id = 2")
        check.value("r_date", cur.fetchone()[0])
# Named (server-side) cursor: DECLARE ... FETCH.
with conn:
    with conn.cursor(name="matrix_cursor") as cur:
        cur.execute(f"SELECT id, d_varchar, r_numeric FROM {table} WHERE id = 1")
        row = cur.fetchone()
        check.value("d_varchar", row[1])
        check.value("r_numeric", row[2])
conn.close()
check.done()
