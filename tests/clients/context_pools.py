"""Pooled connections that switch end users between transactions (tests/session_context.rs).

Usage: context_pools.py CONNINFO TABLE IDS...
Each id is read in its own transaction by end user `user-<id>` (SET LOCAL pgveil.end_user),
through a psycopg_pool pool and an asyncpg pool of two connections each, so connections are
reused by different end users. Prints one line per read: driver, id, value.
"""
import asyncio
import sys

import asyncpg
import psycopg_pool

conninfo, table, ids = sys.argv[1], sys.argv[2], [int(i) for i in sys.argv[3:]]
# asyncpg takes a URL: built from the key=value connection string.
params = dict(part.split("=", 1) for part in conninfo.split())
url = "postgresql://{user}:{password}@{host}:{port}/{dbname}".format(**params)


def psycopg_reads():
    with psycopg_pool.ConnectionPool(conninfo, min_size=2, max_size=2, open=True) as pool:
        for i in ids:
            with pool.connection() as conn:
                with conn.transaction():
                    conn.execute(f"SET LOCAL pgveil.end_user = 'user-{i}'")
                    conn.execute("SET LOCAL pgveil.purpose = 'treatment'")
                    row = conn.execute(f"SELECT ssn FROM {table} WHERE id = %s", (i,)).fetchone()
                    print("psycopg", i, row[0])


async def asyncpg_reads():
    pool = await asyncpg.create_pool(url, min_size=2, max_size=2)
    async def one(i):
        async with pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL pgveil.end_user = 'user-{i}'")
                await conn.execute("SET LOCAL pgveil.purpose = 'treatment'")
                value = await conn.fetchval(f"SELECT ssn FROM {table} WHERE id = $1", i)
                print("asyncpg", i, value)
    await asyncio.gather(*(one(i) for i in ids))
    await pool.close()


psycopg_reads()
asyncio.run(asyncpg_reads())
