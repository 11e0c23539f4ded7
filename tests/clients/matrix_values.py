"""The values every Python client of tests/drivers/ writes through pgveil and reads back,
in Python's own types, and the checks they share. The same values are spelled out in
tests/drivers/ (registered as secrets), tests/clients/java/Matrix.java and
tests/clients/node/values.js: change them together."""
import datetime as dt
import decimal
import sys
import uuid

UTC = dt.timezone.utc

TYPES = [
    "text", "varchar", "int2", "int4", "int8", "numeric", "float8", "bool",
    "date", "timestamp", "timestamptz", "uuid", "bytea", "jsonb",
]

VALUES = {
    "text": "Zoë O'Brien ✓ 日本 patient-note-4471",
    "varchar": "varchar-Ünïcode-5512",
    "int2": 31337,
    "int4": 1987654321,
    "int8": 8765432109876543,
    "numeric": decimal.Decimal("98765.4321"),
    "float8": 12345.625,
    "bool": True,
    "date": dt.date(1987, 6, 5),
    "timestamp": dt.datetime(2023, 4, 5, 6, 7, 8, 123456),
    "timestamptz": dt.datetime(2023, 4, 5, 6, 7, 8, 500000, tzinfo=UTC),
    "uuid": uuid.UUID("6f1c1a4e-8b1d-4c36-9b9c-2f1e5d7a3b11"),
    "bytea": b"\x00\x01bytea-secret-9\xff",
    "jsonb": {"diagnosis": "hypertension-8812", "codes": [1, 2.5, True, None]},
}

# Every protected column of a matrix table: d_<type> (deterministic), r_<type> (randomized).
COLUMNS = [f"{mode}_{ty}" for ty in TYPES for mode in ("d", "r")]


def type_of(column):
    return column[2:]


def value_of(column):
    return VALUES[type_of(column)]


class Checker:
    """Counts checks; the first mismatch ends the client with exit status 1."""

    def __init__(self, client):
        self.client = client
        self.count = 0

    def equal(self, what, got, want):
        self.count += 1
        if got != want:
            print(f"{self.client}: MISMATCH {what}: got {got!r} want {want!r}", file=sys.stderr)
            sys.exit(1)

    def typed(self, what, got, want_type):
        self.count += 1
        if not isinstance(got, want_type):
            print(f"{self.client}: {what}: got {type(got).__name__}, want {want_type.__name__}",
                  file=sys.stderr)
            sys.exit(1)

    def value(self, column, got, want=None):
        """`got` is what the client returned for `column`: the right Python type and value."""
        ty = type_of(column)
        want = VALUES[ty] if want is None else want
        if ty == "bytea" and isinstance(got, memoryview):
            got = bytes(got)
        if ty == "timestamptz" and isinstance(got, dt.datetime):
            self.equal(f"{column} has a time zone", got.tzinfo is not None, True)
            got = got.astimezone(UTC)
        py_type = {
            "text": str, "varchar": str, "int2": int, "int4": int, "int8": int,
            "numeric": decimal.Decimal, "float8": float, "bool": bool, "date": dt.date,
            "timestamp": dt.datetime, "timestamptz": dt.datetime, "uuid": uuid.UUID,
            "bytea": bytes, "jsonb": dict,
        }[ty]
        self.typed(column, got, py_type)
        self.equal(column, got, want)

    def row(self, columns, row, want_null=False):
        for column, got in zip(columns, row):
            if want_null:
                self.equal(f"{column} is NULL", got, None)
            else:
                self.value(column, got)

    def done(self):
        print(f"{self.client} ok {self.count}")
