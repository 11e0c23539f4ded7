#!/usr/bin/env python3
"""Writes the seed corpus of each fuzz target into fuzz/corpus/<target>/ (committed).

frames: real protocol messages, as a client and as the database send them.
statements: SQL from src/sql/tests.rs.
literals: one selector byte (see fuzz_targets/literals.rs) then a value; text values from
src/pgtype/testdata (PostgreSQL 15's recorded outputs), binary ones as PostgreSQL sends them.
Re-run after changing a source: python3 fuzz/seeds.py
"""
import hashlib
import re
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def write(target, items):
    out = CORPUS / target
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        old.unlink()
    for data in dict.fromkeys(items):  # deduplicated, in order
        name = hashlib.sha1(data).hexdigest()[:16]
        (out / name).write_bytes(data)
    print(f"{target}: {len(list(out.iterdir()))} seeds")


def msg(tag, body):
    return tag + struct.pack("!I", len(body) + 4) + body


def cstr(s):
    return (s.encode() if isinstance(s, str) else s) + b"\0"


def startup(params):
    body = struct.pack("!I", 196608) + b"".join(cstr(k) + cstr(v) for k, v in params) + b"\0"
    return struct.pack("!I", len(body) + 4) + body


def bind(portal, stmt, formats, params, results):
    body = cstr(portal) + cstr(stmt) + struct.pack("!h", len(formats))
    body += b"".join(struct.pack("!h", f) for f in formats)
    body += struct.pack("!h", len(params))
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    body += struct.pack("!h", len(results)) + b"".join(struct.pack("!h", f) for f in results)
    return msg(b"B", body)


def parse(name, query, types):
    return msg(b"P", cstr(name) + cstr(query) + struct.pack("!h", len(types))
               + b"".join(struct.pack("!I", t) for t in types))


def field(name, table, col, typ, size, mod, fmt):
    return cstr(name) + struct.pack("!IhIhih", table, col, typ, size, mod, fmt)


def row(values):
    body = struct.pack("!h", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return msg(b"D", body)


def error(tag, fields):
    return msg(tag, b"".join(k + cstr(v) for k, v in fields) + b"\0")


def frames():
    sync, flush = msg(b"S", b""), msg(b"H", b"")
    extended = (parse("", "SELECT ssn FROM patients WHERE id = $1", [23])
                + bind("", "", [1], [b"\0\0\0\x07"], [0])
                + msg(b"D", b"P\0") + msg(b"E", b"\0\0\0\0\0") + sync)
    prepared = (parse("s1", "INSERT INTO patients (ssn, birth_date) VALUES ($1, $2)", [25, 1082])
                + msg(b"D", b"Ss1\0") + sync
                + bind("p1", "s1", [0, 1], [b"123-45-6789", b"\xff\xff\xf0\x00"], [1])
                + msg(b"E", cstr("p1") + struct.pack("!i", 10)) + msg(b"C", b"Pp1\0")
                + msg(b"C", b"Ss1\0") + sync)
    sasl = msg(b"R", struct.pack("!I", 10) + cstr("SCRAM-SHA-256-PLUS") + cstr("SCRAM-SHA-256") + b"\0")
    fields = field("id", 16384, 1, 23, 4, -1, 0) + field("ssn", 16384, 2, 17, -1, -1, 0)
    rows = (msg(b"T", struct.pack("!h", 2) + fields) + row([b"1", b"\\x0102"])
            + row([b"2", None]) + msg(b"C", cstr("SELECT 2")) + msg(b"Z", b"I"))
    login = (msg(b"R", struct.pack("!I", 0)) + msg(b"S", cstr("client_encoding") + cstr("UTF8"))
             + msg(b"S", cstr("TimeZone") + cstr("Europe/Berlin"))
             + msg(b"K", struct.pack("!I", 4242) + b"\x01\x02\x03\x04") + msg(b"Z", b"I"))
    err = error(b"E", [(b"S", "ERROR"), (b"V", "ERROR"), (b"C", "0A000"),
                       (b"M", "pgveil: not supported"), (b"P", "8")])
    fatal = error(b"E", [(b"S", "FATAL"), (b"V", "FATAL"), (b"C", "57P01"), (b"M", "terminating")])
    notice = error(b"N", [(b"S", "NOTICE"), (b"C", "00000"), (b"M", "hello")])
    described = (msg(b"1", b"") + msg(b"t", struct.pack("!hII", 2, 25, 1082)) + msg(b"n", b"")
                 + msg(b"2", b"") + msg(b"s", b"") + msg(b"3", b"") + msg(b"I", b""))
    sasl_initial = cstr("SCRAM-SHA-256") + struct.pack("!i", 32) + b"n,,n=,r=rOprNGfwEbeRWgbNEkqO%hvY"
    copy = (msg(b"Q", cstr("COPY visits FROM STDIN")) + msg(b"d", b"1\t2\tnote\n") + msg(b"c", b"")
            + msg(b"f", cstr("abort")))
    return [
        msg(b"Q", cstr("SELECT 1")),
        msg(b"Q", cstr("SELECT * FROM patients WHERE ssn = '123-45-6789'; SELECT 2")),
        msg(b"Q", cstr("BEGIN")) + msg(b"Q", cstr("COMMIT")) + msg(b"X", b""),
        extended,
        prepared,
        bind("", "", [], [], []) + flush,
        msg(b"F", struct.pack("!I", 1598) + b"\0\0\0\0\0\0") + sync,
        msg(b"p", cstr("md5" + "0" * 32)),
        msg(b"p", sasl_initial),
        sasl_initial,
        cstr("secret"),
        copy,
        startup([("user", "alice"), ("database", "clinic"), ("client_encoding", "UTF8")]),
        startup([("user", "bob")]) + msg(b"Q", cstr("SELECT 1")),
        struct.pack("!II", 8, 80877103),
        struct.pack("!II", 8, 80877104),
        struct.pack("!IIII", 16, 80877102, 4242, 0x01020304),
        struct.pack("!II", 8, 131072),
        sasl,
        msg(b"R", struct.pack("!I", 11) + b"r=abc,s=c2FsdA==,i=4096"),
        msg(b"R", struct.pack("!I", 5) + b"\x01\x02\x03\x04"),
        login,
        rows,
        err + msg(b"Z", b"E"),
        fatal,
        notice,
        described,
        msg(b"A", struct.pack("!I", 1) + cstr("chan") + cstr("payload")),
        msg(b"G", b"\0\0\x01\0\0") + msg(b"H", b"\0\0\0\0") + msg(b"v", struct.pack("!ii", 196608, 0)),
        msg(b"Q", cstr("SELECT 1"))[:7],               # incomplete
        b"Q\0\0\0\x02",                                 # length below its own size
        b"D\x7f\xff\xff\xff",                           # oversized
        msg(b"Q", b"SELECT 1\0trailing"),
        msg(b"B", b"p\0s\0\0\x01\0\x01\0\x01\0\0\0\x09"),  # value longer than the frame
    ]


def rust_strings(text):
    """String arguments of the analysis helpers in src/sql/tests.rs."""
    pattern = re.compile(r'\b(?:ok|plan|plans|refused|err)\(\s*(?:r#"(.*?)"#|"((?:[^"\\]|\\.)*)")', re.S)
    for raw, plain in pattern.findall(text):
        if raw:
            yield raw
        else:
            yield re.sub(r'\\(.)', lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), plain)


def statements():
    found = list(rust_strings((ROOT / "src/sql/tests.rs").read_text()))
    extra = [
        "SELECT 1; SELECT ssn FROM patients WHERE id = $1; UPDATE visits SET note = E'a\\nb' WHERE mrn = 'M1'",
        "WITH p AS (SELECT * FROM patients) SELECT ssn, birth_date FROM p WHERE age > 40",
        "INSERT INTO ehr.records (id, ssn) VALUES (1, '111-22-3333') RETURNING id",
        "SELECT U&\"\\0073sn\" FROM patients",
        "DO $$ BEGIN PERFORM ssn FROM patients; END $$",
        "SELECT \"Weird\" FROM \"Patients\" JOIN patients USING (id) -- é comment",
    ]
    return [s.encode() for s in found[:40] + extra]


def literals():
    seeds = []
    zones = {"UTC": 0, "Europe/Berlin": 1, "<-05:30>+05:30": 7}
    per_group = {}
    for line in (ROOT / "src/pgtype/testdata/pg15_text_output.tsv").read_text().splitlines():
        zone, ty, value, _expected = line.split("\t")
        # A few per type and zone: the fuzzer mutates from there.
        per_group[(zone, ty)] = per_group.get((zone, ty), 0) + 1
        if per_group[(zone, ty)] <= 3:
            seeds.append(bytes([zones.get(zone, 0)]) + value.encode())
    # Binary input (selector 8: UTC, the type's own binary form; 16: every declared type).
    binary = [
        struct.pack("!h", -7), struct.pack("!i", 123456), struct.pack("!q", -(2 ** 40)),
        struct.pack("!d", 1.5), struct.pack("!d", float("nan")), struct.pack("!f", 2.25),
        b"\x01", struct.pack("!i", -8766), struct.pack("!q", 757_382_400_000_000),
        bytes(range(16)), b"\x01{\"a\": [1, 2.50, null]}",
        struct.pack("!hhhh", 2, 0, 0, 2) + struct.pack("!hh", 12, 3400),  # numeric 12.34
        struct.pack("!hhHh", 0, 0, 0xC000, 0),                            # numeric NaN
    ]
    seeds += [b"\x08" + b for b in binary] + [b"\x10" + b for b in binary[:6]]
    # Settings (selector 24: the value as canonical bytes and as TimeZone / DateStyle).
    for s in ["Europe/Berlin", "<+02>-02", "-05:30", "EST5EDT", "+5.5", "SQL, DMY", "UTC+3"]:
        seeds.append(b"\x18" + s.encode())
    return seeds


write("frames", frames())
write("statements", statements())
write("literals", literals())
