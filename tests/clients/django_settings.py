"""Minimal Django settings for django_matrix.py: one PostgreSQL database (pgveil), from the
libpq connection string in DJANGO_MATRIX_CONNINFO; no project, no migrations."""
import os

_conn = dict(part.split("=", 1) for part in os.environ["DJANGO_MATRIX_CONNINFO"].split())
SECRET_KEY = "pgveil-test-only"
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = []
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": _conn["host"],
        "PORT": _conn["port"],
        "USER": _conn["user"],
        "PASSWORD": _conn["password"],
        "NAME": _conn["dbname"],
        "OPTIONS": {"sslmode": "disable"},
    }
}
