"""asyncpg over TLS, verifying pgveil's certificate: argv = host port user password ca_file.
Prints `<current_user> <upstream ssl>`."""
import asyncio
import ssl
import sys

import asyncpg


async def main() -> None:
    host, port, user, password, ca_file = sys.argv[1:6]
    context = ssl.create_default_context(cafile=ca_file)
    conn = await asyncpg.connect(
        host=host, port=int(port), user=user, password=password,
        database="postgres", ssl=context, timeout=10,
    )
    try:
        row = await conn.fetchrow(
            "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        )
        print(row[0], "t" if row[1] else "f")
    finally:
        await conn.close()


asyncio.run(main())
