"""README "Session context" per request, as written there (tests/session_context.rs).

Usage: context_web.py CONNINFO TABLE TOKEN_A TOKEN_B
The Django middleware and the SQLAlchemy `after_begin` event of README set
`SET LOCAL pgveil.context` at the start of each request's transaction; each "request" reads
row 1. Requests alternate between the two tokens on the same pooled connection. Prints one
line per request: framework, token index, value.
"""
import os
import re
import sys
from contextvars import ContextVar

conninfo, table, tokens = sys.argv[1], sys.argv[2], sys.argv[3:5]
sys.path.insert(0, os.path.dirname(__file__))

# --- Django: README's middleware, verbatim but for where the token comes from.
os.environ["DJANGO_MATRIX_CONNINFO"] = conninfo
os.environ["DJANGO_SETTINGS_MODULE"] = "django_settings"
import django  # noqa: E402

django.setup()
from django.db import connection, transaction  # noqa: E402


class PgveilContextMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        token = request["token"]
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL pgveil.context = %s", [token])
            return self.get_response(request)


def view(request):
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT ssn FROM {table} WHERE id = %s", [1])
        return cursor.fetchone()[0]


middleware = PgveilContextMiddleware(view)
for n in range(4):
    print("django", n % 2, middleware({"token": tokens[n % 2]}))

# --- SQLAlchemy: README's event, verbatim.
from sqlalchemy import create_engine, event, text  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

current_token: ContextVar[str] = ContextVar("current_token")   # set per request
JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


@event.listens_for(Session, "after_begin")
def declare_context(session, transaction, connection):
    token = current_token.get()
    if not JWS.fullmatch(token):
        raise ValueError("not a context token")
    connection.exec_driver_sql(f"SET LOCAL pgveil.context = '{token}'")


params = dict(part.split("=", 1) for part in conninfo.split())
engine = create_engine(
    "postgresql+psycopg://{user}:{password}@{host}:{port}/{dbname}".format(**params),
    pool_size=1, max_overflow=0)
for n in range(4):
    current_token.set(tokens[n % 2])
    with Session(engine) as session, session.begin():
        value = session.execute(text(f"SELECT ssn FROM {table} WHERE id = :id"), {"id": 1}).scalar_one()
        print("sqlalchemy", n % 2, value)
