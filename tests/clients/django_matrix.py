"""Django 5.2 ORM through pgveil (psycopg 3, client-side binding, Django's default): every
logical type through unmanaged models: create, get, filter, update (instance and
queryset), atomic blocks (rolled back and committed) and bulk_create (multi-row VALUES).
Usage: django_matrix.py CONNINFO TABLE. Prints "django ok N"."""
import os
import sys

conninfo, table = sys.argv[1], sys.argv[2]
os.environ["DJANGO_MATRIX_CONNINFO"] = conninfo
os.environ["DJANGO_SETTINGS_MODULE"] = "django_settings"

import django  # noqa: E402

django.setup()

from django.db import models, transaction  # noqa: E402

from matrix_values import COLUMNS, VALUES, Checker, type_of, value_of  # noqa: E402

check = Checker("django")
DJ_FIELDS = {
    "text": models.TextField, "varchar": lambda **k: models.CharField(max_length=100, **k),
    "int2": models.SmallIntegerField, "int4": models.IntegerField,
    "int8": models.BigIntegerField,
    "numeric": lambda **k: models.DecimalField(max_digits=20, decimal_places=4, **k),
    "float8": models.FloatField, "bool": models.BooleanField, "date": models.DateField,
    "timestamp": models.DateTimeField, "timestamptz": models.DateTimeField,
    "uuid": models.UUIDField, "bytea": models.BinaryField, "jsonb": models.JSONField,
}
# With USE_TZ, Django writes every DateTimeField as an aware datetime; a `timestamp`
# column (no time zone) keeps the UTC wall time and reads back naive, as without pgveil.
UTC = VALUES["timestamptz"].tzinfo
DJ_VALUES = {c: VALUES[type_of(c)] for c in COLUMNS}
for c in ("d_timestamp", "r_timestamp"):
    DJ_VALUES[c] = VALUES["timestamp"].replace(tzinfo=UTC)


class Meta:
    app_label = "matrix"
    managed = False
    db_table = table


Row = type("Row", (models.Model,), {
    "__module__": __name__,
    "Meta": Meta,
    "id": models.IntegerField(primary_key=True),
    "note": models.TextField(null=True),
    **{c: DJ_FIELDS[type_of(c)](null=True) for c in COLUMNS},
})


def check_row(row):
    for column in COLUMNS:
        got = getattr(row, column)
        if type_of(column) == "bytea":
            got = bytes(got)
        check.value(column, got)


Row.objects.create(id=1, **DJ_VALUES)
Row.objects.create(id=2)
check_row(Row.objects.get(id=1))
empty = Row.objects.get(id=2)
check.row(COLUMNS, [getattr(empty, c) for c in COLUMNS], want_null=True)
check.equal("filter", list(Row.objects.filter(d_text=VALUES["text"], d_date=VALUES["date"],
                                              d_uuid=VALUES["uuid"], d_int8=VALUES["int8"])
                           .values_list("id", flat=True)), [1])
# filter(d_bool=True) is rendered as a bare `WHERE "d_bool"`, False as `WHERE NOT "d_bool"`,
# exclude(d_bool=True) as `WHERE NOT ("d_bool" AND "d_bool" IS NOT NULL)`: pgveil compares
# the deterministic column with the ciphertext of true.
check.equal("filter bool true", list(Row.objects.filter(d_bool=True).values_list("id", flat=True)), [1])
check.equal("filter bool false", Row.objects.filter(d_bool=False).count(), 0)
check.equal("exclude bool true", list(Row.objects.exclude(d_bool=True).values_list("id", flat=True)), [2])
check.equal("filter decimal and float", list(Row.objects.filter(
    d_numeric=VALUES["numeric"], d_float8=VALUES["float8"]).values_list("id", flat=True)), [1])
check.equal("exclude NULL", Row.objects.filter(d_varchar__isnull=False).count(), 1)

# Update an instance, and a queryset.
empty.r_text = "updated patient-note-4471"
empty.save(update_fields=["r_text"])
check.equal("queryset update", Row.objects.filter(id=2).update(d_jsonb=VALUES["jsonb"]), 1)
again = Row.objects.get(id=2)
check.equal("instance update", again.r_text, "updated patient-note-4471")
check.value("d_jsonb", again.d_jsonb)

# atomic: a rolled-back block leaves nothing, a nested savepoint rolls back alone.
try:
    with transaction.atomic():
        Row.objects.create(id=3, d_text=VALUES["text"])
        raise RuntimeError("roll back")
except RuntimeError:
    pass
with transaction.atomic():
    Row.objects.create(id=4, d_text=VALUES["text"])
    try:
        with transaction.atomic():
            Row.objects.create(id=5, d_text=VALUES["text"])
            raise RuntimeError("roll back the savepoint")
    except RuntimeError:
        pass
check.equal("atomic", list(Row.objects.filter(d_text=VALUES["text"]).order_by("id")
                           .values_list("id", flat=True)), [1, 4])

# bulk_create of the full model: a BinaryField (its own placeholder) keeps Django on
# INSERT ... VALUES (...), (...).
Row.objects.bulk_create([Row(id=10 + i, **DJ_VALUES) for i in range(3)])
for row in Row.objects.filter(id__gte=10, id__lt=20).order_by("id"):
    check_row(row)


# Not tested: bulk_create of a model with plain fields only, which Django 5.2 sends as
# INSERT ... SELECT * FROM UNNEST(('{...}')::text[], ...). pgveil forwards it unencrypted
# today (issue 9, fail closed; issue 10, UNNEST encrypted per element): the plaintext
# reaches the database and its log before the database rejects text for bytea.
check.done()
