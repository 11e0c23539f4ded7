"""The ORM batch forms issue 10 names, each on rows whose key the database assigns (so the
batch needs RETURNING): SQLAlchemy 2's insertmanyvalues (`INSERT ... SELECT ... FROM
(VALUES ...) ... RETURNING id`, on the psycopg or the asyncpg engine) and Django 5.2's
bulk_create of a model with plain fields only (`INSERT ... SELECT * FROM UNNEST(...)
RETURNING id`). Each row is read back by the id the batch returned.
Usage: orm_batches.py CONNINFO sqlalchemy-psycopg|sqlalchemy-asyncpg|django-unnest.
Prints "orm-batches ok N"."""
import asyncio
import os
import sys

from matrix_values import Checker

conninfo, mode = sys.argv[1], sys.argv[2]
check = Checker("orm-batches")
params = dict(part.split("=", 1) for part in conninfo.split())
NAMES = [f"batch patient-note-4471 {mode} {i}" for i in range(3)]


def sqlalchemy_batch(engine_name):
    from sqlalchemy import Text, create_engine, select
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

    class Base(DeclarativeBase):
        pass

    class Serial(Base):
        __tablename__ = "drv_orm_serial"
        id: Mapped[int] = mapped_column(primary_key=True)
        name = mapped_column(Text)
        client = mapped_column(Text)

    def scenario(session):
        rows = [Serial(name=name, client=mode) for name in NAMES]
        session.add_all(rows)
        session.commit()
        ids = [row.id for row in rows]
        check.equal("ids returned", len(set(ids)), len(NAMES))
        for row_id, name in zip(ids, NAMES):
            got = session.scalars(select(Serial.name).where(Serial.id == row_id)).one()
            check.equal(f"row {row_id}", got, name)

    user, password = params["user"], params["password"]
    where = f"{params['host']}:{params['port']}/{params['dbname']}"
    if engine_name == "psycopg":
        engine = create_engine(f"postgresql+psycopg://{user}:{password}@{where}?sslmode=disable")
        with Session(engine) as session:
            scenario(session)
        engine.dispose()
    else:
        async def main():
            engine = create_async_engine(
                f"postgresql+asyncpg://{user}:{password}@{where}?ssl=disable")
            async with AsyncSession(engine) as session:
                await session.run_sync(scenario)
            await engine.dispose()

        asyncio.run(main())


def django_unnest():
    os.environ["DJANGO_MATRIX_CONNINFO"] = conninfo
    os.environ["DJANGO_SETTINGS_MODULE"] = "django_settings"
    import django

    django.setup()
    from django.db import connection, models

    class Serial(models.Model):
        name = models.TextField(null=True)
        client = models.TextField(null=True)

        class Meta:
            app_label = "matrix"
            managed = False
            db_table = "drv_orm_serial"

    with connection.execute_wrapper(lambda execute, sql, *rest: (
            check.equal("Django sends UNNEST", "UNNEST" in sql, True), execute(sql, *rest))[1]):
        rows = Serial.objects.bulk_create([Serial(name=name, client=mode) for name in NAMES])
    for row, name in zip(rows, NAMES):
        check.equal(f"row {row.pk}", Serial.objects.get(pk=row.pk).name, name)


if mode.startswith("sqlalchemy-"):
    sqlalchemy_batch(mode.removeprefix("sqlalchemy-"))
else:
    django_unnest()
check.done()
