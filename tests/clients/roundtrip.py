"""psycopg 3 round trips through pgveil: every logical type, deterministic and randomized,
text and binary parameters and results. Usage: roundtrip.py CONNINFO TABLE.
Prints "checks N" and "roundtrip ok"; exits non-zero on the first mismatch."""
import datetime as dt
import decimal
import sys
import uuid

import psycopg
from psycopg.types.json import Jsonb

conninfo, table = sys.argv[1], sys.argv[2]
BIG = ("Ünïcödé text of a patient record 0123456789 " * 30000)[: 1 << 20]
BIG_BYTES = bytes((i * 7) % 256 for i in range(1 << 20))
UTC = dt.timezone.utc

VALUES = {
    "text": ["123-45-6789", "", "héllo wörld ✓ 日本 🙂 O'Brien", BIG],
    "varchar": ["Zoë", ""],
    "int2": [-32768, 0, 32767],
    "int4": [2147483647, -5],
    "int8": [-9223372036854775808, 42, 5],
    "numeric": [decimal.Decimal("1.50"), decimal.Decimal("-0.000123"), decimal.Decimal("0")],
    "float8": [3.25, -1.5e-300, 0.0],
    "bool": [True, False],
    "date": [dt.date(2024, 1, 5), dt.date(2024, 2, 29)],
    "timestamp": [dt.datetime(2024, 1, 5, 10, 11, 12, 123456)],
    "timestamptz": [dt.datetime(2024, 1, 5, 8, 11, 12, 500000, tzinfo=UTC)],
    "uuid": [uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")],
    "bytea": [b"\xde\xad\x00\xff", b"", BIG_BYTES],
    "jsonb": [{"b": 1, "a": [True, None, "ü 日本"]}, {}, {"note": BIG}],
}

checks = 0


def same(ty, got, want):
    if ty == "numeric":
        return got == want and str(got) == str(want.normalize() if want != 0 else decimal.Decimal(0))
    if ty == "timestamptz":
        return got is not None and got.astimezone(UTC) == want
    if ty == "bytea":
        return bytes(got) == want
    return got == want


def check(cond, what):
    global checks
    checks += 1
    if not cond:
        print("MISMATCH:", what[:300], flush=True)
        sys.exit(1)


with psycopg.connect(conninfo, autocommit=True) as conn:
    conn.execute("SET TimeZone = 'UTC'")
    next_id = 1
    for ty, values in VALUES.items():
        for value in values + [None]:
            param = Jsonb(value) if ty == "jsonb" and value is not None else value
            for binary_params in (False, True):
                rid = next_id
                next_id += 1
                cur = conn.cursor()
                if binary_params:
                    cur.execute(
                        f"INSERT INTO {table} (id, d_{ty}, r_{ty}) VALUES (%b, %b, %b)",
                        (rid, param, param),
                    )
                else:
                    cur.execute(
                        f"INSERT INTO {table} (id, d_{ty}, r_{ty}) VALUES (%s, %s, %s)",
                        (rid, param, param),
                    )
                for binary in (False, True):
                    cur = conn.cursor(binary=binary)
                    cur.execute(f"SELECT d_{ty}, r_{ty} FROM {table} WHERE id = %s", (rid,))
                    d, r = cur.fetchone()
                    what = f"{ty} {binary_params=} {binary=} got {d!r:.80} want {value!r:.80}"
                    if value is None:
                        check(d is None and r is None, what)
                    else:
                        check(same(ty, d, value), "det " + what)
                        check(same(ty, r, value), "rand " + what)
                if value is not None:
                    cur = conn.cursor()
                    cur.execute(f"SELECT id FROM {table} WHERE d_{ty} = %s AND id = %s", (param, rid))
                    check(cur.fetchall() == [(rid,)], f"search {ty} {value!r:.80}")
                    # simple protocol (client-side binding): literal in the query text
                    cur = psycopg.ClientCursor(conn)
                    cur.execute(f"SELECT count(*) FROM {table} WHERE d_{ty} = %s AND id = %s", (param, rid))
                    check(cur.fetchone()[0] == 1, f"client-side search {ty} {value!r:.80}")

    # the result columns show the logical types
    cur = conn.cursor()
    cur.execute(f"SELECT d_text, r_int8, d_numeric, d_date, d_jsonb, d_uuid FROM {table} LIMIT 0")
    names = [c.type_display for c in cur.description]
    check(names == ["text", "int8", "numeric", "date", "jsonb", "uuid"], f"description {names}")

print("checks", checks)
print("roundtrip ok")
