"""psycopg 3 pipeline mode through pgveil: a refused statement in a pipeline aborts the rest up
to the sync point. Usage: pipeline.py CONNINFO TABLE. Prints "pipeline ok"."""
import sys

import psycopg

conninfo, table = sys.argv[1], sys.argv[2]
with psycopg.connect(conninfo, autocommit=True) as conn:
    conn.execute(f"DELETE FROM {table}")
    errors = []
    try:
        with conn.pipeline() as p:
            conn.execute(f"INSERT INTO {table} (id, ssn) VALUES (%s, %s)", (101, "p1"))
            conn.execute(f"SELECT id FROM {table} WHERE ssn LIKE %s", ("p%",))
            conn.execute(f"INSERT INTO {table} (id, ssn) VALUES (%s, %s)", (102, "p2"))
    except psycopg.Error as e:
        errors.append(e)
    assert errors, "the pipeline did not raise"
    assert errors[0].sqlstate == "0A000", (errors[0].sqlstate, str(errors[0]))
    assert "ssn" in str(errors[0]), str(errors[0])
    rows = conn.execute(f"SELECT id FROM {table} ORDER BY id").fetchall()
    assert rows == [], rows
    # a pipeline without errors works, values round-trip
    with conn.pipeline() as p:
        for i in range(5):
            conn.execute(f"INSERT INTO {table} (id, ssn) VALUES (%s, %s)", (200 + i, f"v{i}"))
        cur = conn.execute(f"SELECT ssn FROM {table} WHERE ssn = %s", ("v3",))
        p.sync()
        assert cur.fetchall() == [("v3",)]
    # prepared statements (psycopg prepares after repeated use)
    for i in range(8):
        row = conn.execute(f"SELECT id FROM {table} WHERE ssn = %s", (f"v{i % 5}",), prepare=True).fetchone()
        assert row == (200 + i % 5,), row
print("pipeline ok")
