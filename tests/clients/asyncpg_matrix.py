"""asyncpg (binary results, statements prepared and described on first use) through
pgveil: every logical type written and read back in Python's types, on fresh connections
(the first execution of a new statement is the one issue 10 saw return wrong values).
Usage: asyncpg_matrix.py CONNINFO TABLE. Prints "asyncpg ok N"."""
import asyncio
import json
import sys

import asyncpg

from matrix_values import COLUMNS, Checker, type_of, value_of

conninfo, table = sys.argv[1], sys.argv[2]
check = Checker("asyncpg")
params = dict(part.split("=", 1) for part in conninfo.split())


async def connect():
    conn = await asyncpg.connect(
        host=params["host"], port=int(params["port"]), user=params["user"],
        password=params["password"], database=params["dbname"], ssl=False, timeout=10,
    )
    # jsonb as Python objects, as applications configure it.
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads,
                              schema="pg_catalog")
    return conn


async def main():
    names = ", ".join(COLUMNS)
    marks = ", ".join(f"${i + 2}" for i in range(len(COLUMNS)))
    conn = await connect()
    try:
        await conn.execute("SET TimeZone = 'Europe/Berlin'")
        await conn.execute(f"INSERT INTO {table} (id, {names}) VALUES ($1, {marks})",
                           1, *(value_of(c) for c in COLUMNS))
        await conn.execute(f"INSERT INTO {table} (id, {names}) VALUES ($1, {marks})",
                           2, *(None for _ in COLUMNS))
        await conn.executemany(f"INSERT INTO {table} (id, d_text, r_bool) VALUES ($1, $2, $3)",
                               [(3, value_of("d_text"), True), (4, value_of("d_text"), False)])
    finally:
        await conn.close()
    # Fresh connections: every statement below is new to the connection, so its first
    # execution is Parse + Describe + Flush, then Bind (binary results) + Execute + Sync.
    for column in COLUMNS:
        conn = await connect()
        try:
            for _ in range(2):
                got = await conn.fetchval(f"SELECT {column} FROM {table} WHERE id = $1", 1)
                check.value(column, got)
        finally:
            await conn.close()
    conn = await connect()
    try:
        row = await conn.fetchrow(f"SELECT {names} FROM {table} WHERE id = $1", 1)
        check.row(COLUMNS, list(row))
        row = await conn.fetchrow(f"SELECT {names} FROM {table} WHERE id = $1", 2)
        check.row(COLUMNS, list(row), want_null=True)
        ids = await conn.fetch(f"SELECT id FROM {table} WHERE d_text = $1 AND d_date = $2 "
                               "AND d_jsonb = $3 AND d_numeric = $4 ORDER BY id",
                               value_of("d_text"), value_of("d_date"), value_of("d_jsonb"),
                               value_of("d_numeric"))
        check.equal("search", [r["id"] for r in ids], [1])
        flags = await conn.fetch(f"SELECT id, r_bool FROM {table} WHERE d_text = $1 AND id > 2 "
                                 "ORDER BY id", value_of("d_text"))
        check.equal("executemany", [tuple(r) for r in flags], [(3, True), (4, False)])
        # An explicitly prepared statement and a cursor in a transaction.
        stmt = await conn.prepare(f"SELECT r_date, r_timestamptz, d_float8 FROM {table} "
                                  "WHERE id = $1")
        for _ in range(2):
            row = await stmt.fetchrow(1)
            check.value("r_date", row[0])
            check.value("r_timestamptz", row[1])
            check.value("d_float8", row[2])
        async with conn.transaction():
            seen = [r["r_int8"] async for r in conn.cursor(
                f"SELECT r_int8 FROM {table} WHERE id = ANY($1::int[]) ORDER BY id", [1, 2],
                prefetch=1)]
            check.equal("cursor", seen, [value_of("r_int8"), None])
        status = await conn.execute(f"UPDATE {table} SET r_uuid = $1 WHERE id = $2",
                                    value_of("r_uuid"), 2)
        check.equal("update", status, "UPDATE 1")
        check.value("r_uuid", await conn.fetchval(f"SELECT r_uuid FROM {table} WHERE id = 2"))
    finally:
        await conn.close()
    check.done()


asyncio.run(main())
