"""COPY through pgveil with psycopg 3 (and asyncpg): every logical type in text, csv and
binary, in and out. Usage: copy_client.py CONNINFO MODE TABLE [ARGS].

Modes:
  roundtrip  write rows with COPY FROM (text, binary, csv) and read them back with COPY TO
             (text, binary, csv, COPY (SELECT)); prints JSON {"checks": N, "ids": [...]}
  bad        a COPY whose third row holds a bad date; prints JSON with the error, the rows
             left in the table, and whether a good COPY on the same connection then works
  large N    COPY FROM of N rows (text), then COPY TO of them; prints JSON counts
  read SQL   runs COPY SQL TO STDOUT (text) and prints JSON {"data": ...} or {"error": ...}
  asyncpg    copy_records_to_table and copy_from_query with asyncpg; prints JSON
Exits non-zero on the first mismatch."""
import asyncio
import datetime as dt
import decimal
import json
import sys
import uuid

import psycopg
from psycopg.types.json import Jsonb

conninfo, mode, table = sys.argv[1], sys.argv[2], sys.argv[3]
UTC = dt.timezone.utc

# (column, type); id and name are plain, the rest protected.
COLUMNS = [
    ("id", "int4"),
    ("name", "text"),
    ("ssn", "text"),
    ("note", "varchar"),
    ("small", "int2"),
    ("age", "int4"),
    ("big", "int8"),
    ("amount", "numeric"),
    ("score", "float8"),
    ("active", "bool"),
    ("birth", "date"),
    ("seen", "timestamp"),
    ("seen_tz", "timestamptz"),
    ("uid", "uuid"),
    ("blob", "bytea"),
    ("doc", "jsonb"),
]
NAMES = ", ".join(c for c, _ in COLUMNS)
TYPES = [t for _, t in COLUMNS]


def row(i, ssn):
    return [
        i,
        f"name {i}",
        ssn,
        "tab\there, newline\nthere; back\\slash, comma \"quote\" |pipe| ü 日本",
        -32768 + i,
        2147483647 - i,
        -9223372036854775808 + i,
        decimal.Decimal("12345.6789") + i,
        3.25 + i,
        i % 2 == 0,
        dt.date(1970 + i, 3, 4),
        dt.datetime(2024, 1, 5, 10, 11, 12, 123456),
        dt.datetime(2024, 1, 5, 8, 11, 12, 500000, tzinfo=UTC),
        uuid.UUID(int=i),
        bytes([0, 1, 92, 9, 10, 255, i % 256]),
        {"i": i, "s": "ü\t\"x\"", "l": [True, None]},
    ]


NULL_ROW = lambda i: [i, None] + [None] * (len(COLUMNS) - 2)  # noqa: E731

checks = 0


def check(cond, what):
    global checks
    checks += 1
    if not cond:
        print(f"MISMATCH: {what}", file=sys.stderr)
        sys.exit(1)


def same(want, got):
    for (name, ty), w, g in zip(COLUMNS, want, got):
        if ty == "timestamptz" and w is not None:
            ok = g is not None and g.astimezone(UTC) == w
        elif ty == "bytea" and w is not None:
            ok = bytes(g) == w
        else:
            ok = g == w
        check(ok, f"{name}: {g!r} != {w!r}")


def adapt(values):
    return [Jsonb(v) if isinstance(v, dict) else v for v in values]


def roundtrip(conn):
    ssns = {i: f"SSN-COPY-{i:04d}" for i in range(1, 40)}
    cur = conn.cursor()
    text_ids, bin_ids = [1, 2, 3], [11, 12, 13]
    with cur.copy(f"COPY {table} ({NAMES}) FROM STDIN") as copy:
        for i in text_ids:
            copy.write_row(adapt(row(i, ssns[i])))
        copy.write_row(NULL_ROW(4))
    with cur.copy(f"COPY {table} ({NAMES}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(TYPES)
        for i in bin_ids:
            copy.write_row(adapt(row(i, ssns[i])))
        copy.write_row(NULL_ROW(14))
    csv_in = (
        "id;ssn;note;birth\n"
        "21;|a;b!|c|;NULL;2001-02-03\n"
        "22;|NULL|;|multi\nline|;NULL\n"
    )
    with cur.copy(
        f"COPY {table} (id, ssn, note, birth) FROM STDIN "
        "(FORMAT csv, HEADER, DELIMITER ';', QUOTE '|', ESCAPE '!', NULL 'NULL')"
    ) as copy:
        # In small pieces: rows span CopyData messages.
        data = csv_in.encode()
        for k in range(0, len(data), 7):
            copy.write(data[k : k + 7])
    conn.commit()

    # Text out, parsed by psycopg's text loaders.
    with cur.copy(f"COPY {table} ({NAMES}) TO STDOUT") as copy:
        copy.set_types(TYPES)
        got = {r[0]: list(r) for r in copy.rows()}
    for i in text_ids + bin_ids:
        same(row(i, ssns[i]), got[i])
    same(NULL_ROW(4), got[4])
    same(NULL_ROW(14), got[14])
    # Binary out.
    with cur.copy(f"COPY {table} ({NAMES}) TO STDOUT (FORMAT BINARY)") as copy:
        copy.set_types(TYPES)
        got = {r[0]: list(r) for r in copy.rows()}
    for i in text_ids + bin_ids:
        same(row(i, ssns[i]), got[i])
    check(len(got) == 10, f"binary rows: {len(got)}")
    # The same values through a SELECT (what COPY FROM stored is what INSERT would have).
    cur.execute(f"SELECT ssn, birth, doc FROM {table} WHERE id = 12")
    check(cur.fetchone() == (ssns[12], dt.date(1982, 3, 4), row(12, "")[15]), "select after copy")
    # Csv out with the same options, the subject column selected.
    buf = b""
    with cur.copy(
        f"COPY (SELECT id, ssn, note, birth FROM {table} WHERE id > 20 ORDER BY id) TO STDOUT "
        "(FORMAT csv, HEADER, DELIMITER ';', QUOTE '|', ESCAPE '!', NULL 'NULL')"
    ) as copy:
        for data in copy:
            buf += bytes(data)
    check(buf.decode() == csv_in, f"csv out: {buf!r}")
    # A table COPY TO whose subject column is not copied, with a header.
    buf = b""
    with cur.copy(f"COPY {table} (ssn) TO STDOUT (FORMAT csv, HEADER)") as copy:
        for data in copy:
            buf += bytes(data)
    lines = buf.decode().splitlines()
    check(lines[0] == "ssn", f"header {lines[0]!r}")
    check(sorted(l for l in lines[1:] if l.startswith("SSN")) == sorted(ssns[i] for i in text_ids + bin_ids), f"ssn column: {lines}")
    check(len(lines) == 11, f"csv lines {len(lines)}")
    conn.commit()
    print(json.dumps({"checks": checks, "ids": sorted(got)}))


def bad(conn):
    cur = conn.cursor()
    error = None
    try:
        with cur.copy(f"COPY {table} (id, ssn, birth) FROM STDIN") as copy:
            # Raw writes: psycopg sends them at once, in order (write_row is buffered).
            copy.write(b"101\tSSN-BAD-0101\t2000-01-01\n")
            copy.write(b"102\tSSN-BAD-0102\t2000-01-02\n")
            copy.write(b"103\tSSN-BAD-0103\tnot-a-date\n")
            copy.write(b"104\tSSN-BAD-0104\t2000-01-04\n")
    except psycopg.Error as e:
        error = {"sqlstate": e.sqlstate, "message": str(e.diag.message_primary)}
    conn.rollback()
    cur.execute(f"SELECT count(*) FROM {table} WHERE id > 100")
    left = cur.fetchone()[0]
    with cur.copy(f"COPY {table} (id, ssn) FROM STDIN") as copy:
        copy.write_row([105, "SSN-BAD-0105"])
    conn.commit()
    cur.execute(f"SELECT ssn FROM {table} WHERE id = 105")
    after = cur.fetchone()[0]
    # A row with more fields than copied: its extra field must not go up unencrypted.
    extra = None
    try:
        with cur.copy(f"COPY {table} (id, ssn, birth) FROM STDIN") as copy:
            copy.write(b"106\tSSN-BAD-0106\t2000-01-01\tEXTRA-SECRET-0107\n")
    except psycopg.Error as e:
        extra = e.sqlstate
    conn.rollback()
    print(json.dumps({"error": error, "left": left, "after": after, "extra": extra}))


def large(conn, n):
    cur = conn.cursor()
    pad = "x" * 600
    with cur.copy(f"COPY {table} (id, name, ssn, birth) FROM STDIN") as copy:
        for i in range(n):
            copy.write(f"{1000 + i}\t{pad}\tSSN-L{i:07d}\t2001-02-03\n".encode())
    conn.commit()
    count, size, last = 0, 0, None
    with cur.copy(f"COPY {table} (id, name, ssn, birth) TO STDOUT") as copy:
        for r in copy.rows():
            count += 1
            last = r
    print(json.dumps({"count": count, "last_ssn": last[2], "last_birth": last[3]}))


def read(conn, sql):
    cur = conn.cursor()
    buf = b""
    try:
        with cur.copy(sql) as copy:
            for data in copy:
                buf += bytes(data)
    except psycopg.Error as e:
        print(json.dumps({"error": e.sqlstate, "message": str(e.diag.message_primary), "data": buf.decode("latin-1")}))
        return
    print(json.dumps({"data": buf.decode("latin-1")}))


async def with_asyncpg():
    import asyncpg

    dsn = dict(p.split("=", 1) for p in conninfo.split())
    conn = await asyncpg.connect(
        host=dsn["host"], port=int(dsn["port"]), user=dsn["user"],
        password=dsn["password"], database=dsn["dbname"], ssl=False,
    )
    records = [(201 + k, f"SSN-APG-{k:04d}", dt.date(1990, 1, 1 + k), 30 + k) for k in range(3)]
    await conn.copy_records_to_table(table, records=records, columns=["id", "ssn", "birth", "age"])
    # (Read back with COPY: asyncpg's first-execution reads are issue 10's other part.)
    out = []

    class Sink:
        async def write(self, data):
            out.append(bytes(data))

    await conn.copy_from_query(f"SELECT id, ssn, birth, age FROM {table} WHERE id > 200 ORDER BY id", output=Sink().write, format="csv")
    text = b"".join(out).decode()
    check(text == "".join(f"{r[0]},{r[1]},{r[2].isoformat()},{r[3]}\n" for r in records), f"asyncpg csv {text!r}")
    await conn.close()
    print(json.dumps({"checks": checks}))


if mode == "asyncpg":
    asyncio.run(with_asyncpg())
    sys.exit(0)

with psycopg.connect(conninfo) as conn:
    if mode == "roundtrip":
        roundtrip(conn)
    elif mode == "bad":
        bad(conn)
    elif mode == "large":
        large(conn, int(sys.argv[4]))
    elif mode == "read":
        read(conn, sys.argv[4])
