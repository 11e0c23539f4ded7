"""Equality across key versions through pgveil with psycopg 3 (server-side parameters):
text-format (%s) and binary (%b) parameters, IN lists and = ANY(list). Prints JSON."""
import json
import sys

import psycopg

conn = psycopg.connect(sys.argv[1], autocommit=True)
table = sys.argv[2]
out = {}
with conn.cursor() as cur:
    def ids(name, sql, params):
        cur.execute(sql, params)
        out[name] = [row[0] for row in cur.fetchall()]

    ids("eq_text", f"SELECT id FROM {table} WHERE ssn = %s ORDER BY id", ["rq-a-0"])
    ids("eq_binary", f"SELECT id FROM {table} WHERE ssn = %b ORDER BY id", ["rq-b-0"])
    ids("in_text", f"SELECT id FROM {table} WHERE ssn IN (%s, %s) ORDER BY id", ["rq-a-1", "rq-b-1"])
    ids("any_list", f"SELECT id FROM {table} WHERE ssn = ANY(%s) ORDER BY id", [["rq-a-2", "rq-b-2"]])
    ids("not_in_binary", f"SELECT id FROM {table} WHERE ssn NOT IN (%b) ORDER BY id", ["rq-a-0"])
print(json.dumps(out, sort_keys=True))
