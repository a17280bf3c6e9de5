"""An application of the client matrix, run as an old version (legacy name
only) or a new one (new name only) through Switchyard, one round per phase.

Usage: matrix.py CLIENT ROLE PORT TABLE
  CLIENT: django-psycopg2, django-psycopg3, sqla-psycopg2, sqla-psycopg3, asyncpg
  ROLE:   old (column `email`) or new (column `email_address`)

Reads phase names from stdin, one per line; for each, runs the workload and
answers one line: `ok` or `error <what failed>`. The process and its
connections live across phases, so that prepared statements and statement
caches see every flip.
"""

import asyncio
import io
import sys
import traceback

CLIENT, ROLE, PORT, TABLE = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
COL = "email" if ROLE == "old" else "email_address"
# From this phase on, the backfill has built the unique index on the new
# column: a case variant of an existing address is the same account.
FOLDED = {"backfilled", "verified", "reads_switched", "reads_verified", "contracted", "completed"}


def value(phase, n, k):
    return f"{ROLE}-{phase}-{n}-{k}@example.com"


class Round:
    """What one round of one client does, named, so errors say which step."""

    def __init__(self, phase, n):
        self.phase, self.n = phase, n
        self.writes = ROLE == "old" or phase not in ("planned", "expanded")

    def email(self, k):
        return value(self.phase, self.n, k)

    def seed_variant(self):
        # A seed row's address: its own spelling before the fold, the
        # folded one after (the upsert must find it either way).
        seed = 1 + self.n % 50
        spelled = f"Seed{seed}@Example.COM"
        return spelled.lower() if self.phase in FOLDED else spelled


# ---------------------------------------------------------------- Django


def django_round(state, r):
    from django.db import connection, transaction

    Account = state["model"]
    field = COL
    if r.writes:
        a = Account.objects.create(**{field: r.email(1), "note": "created"})
        assert a.id, "create returned no id"
        Account.objects.bulk_create(
            [Account(**{field: r.email(k), "note": "bulk"}) for k in (2, 3, 4)]
        )
        Account.objects.filter(**{field: r.email(2)}).update(note="updated")
        got = Account.objects.get(**{field: r.email(2)})
        assert got.note == "updated", f"get by unique field: {got.note}"
        Account.objects.bulk_create(
            [Account(**{field: r.seed_variant(), "note": f"upsert-{r.n}"})],
            update_conflicts=True,
            unique_fields=[field],
            update_fields=["note"],
        )
        with transaction.atomic():
            locked = Account.objects.select_for_update(no_key=True).get(id=a.id)
            locked.note = "in-transaction"
            locked.save(update_fields=["note"])
            Account.objects.filter(id=a.id).update(note="committed")
    first = list(Account.objects.order_by(field)[:5])
    assert len(first) == 5, "order by"
    seen = sum(1 for _ in Account.objects.filter(id__lte=60).iterator(chunk_size=7))
    assert seen >= 50, f"server-side cursor saw {seen}"
    with connection.cursor() as c:
        sql = f"COPY {TABLE} (id, {field}) TO STDOUT"
        raw = c.cursor if hasattr(c, "cursor") else c
        if CLIENT == "django-psycopg2":
            buf = io.StringIO()
            raw.copy_expert(sql, buf)
            lines = buf.getvalue().count("\n")
        else:
            with raw.copy(sql) as copy:
                lines = sum(1 for _ in copy.rows())
        assert lines >= 50, f"copy out: {lines} rows"


def django_setup(psycopg2):
    if psycopg2:
        sys.modules["psycopg"] = None  # Django picks psycopg 3 when it can.
    import django
    from django.conf import settings

    settings.configure(
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "HOST": "127.0.0.1",
                "PORT": PORT,
                "NAME": "postgres",
                "USER": "trust_user",
                "OPTIONS": {"sslmode": "disable"},
            }
        },
        INSTALLED_APPS=[],
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    )
    django.setup()
    from django.db import connection, models

    if psycopg2:
        assert connection.Database.__name__ == "psycopg2", connection.Database
    else:
        assert connection.Database.__name__ == "psycopg", connection.Database
    attrs = {
        "__module__": "matrix",
        COL: models.TextField(unique=True),
        "note": models.TextField(null=True),
        "Meta": type("Meta", (), {"app_label": "matrix", "db_table": TABLE, "managed": False}),
    }
    return {"model": type("Account", (models.Model,), attrs)}


# ------------------------------------------------------------ SQLAlchemy


def sqla_setup(psycopg2):
    from sqlalchemy import BigInteger, Text, create_engine
    from sqlalchemy.orm import DeclarativeBase, mapped_column

    driver = "psycopg2" if psycopg2 else "psycopg"
    engine = create_engine(
        f"postgresql+{driver}://trust_user@127.0.0.1:{PORT}/postgres?sslmode=disable",
        pool_size=2,
    )

    class Base(DeclarativeBase):
        pass

    attrs = {
        "__tablename__": TABLE,
        "id": mapped_column(BigInteger, primary_key=True),
        COL: mapped_column(Text, unique=True),
        "note": mapped_column(Text, nullable=True),
    }
    return {"engine": engine, "model": type("Account", (Base,), attrs)}


def sqla_round(state, r):
    from sqlalchemy import select, update
    from sqlalchemy.dialects.postgresql import insert
    from sqlalchemy.orm import Session

    Account, engine = state["model"], state["engine"]
    column = getattr(Account, COL)
    with Session(engine) as s:
        if r.writes:
            a = Account(**{COL: r.email(1), "note": "created"})
            s.add(a)
            s.flush()
            assert a.id, "generated key"
            s.add_all([Account(**{COL: r.email(k), "note": "bulk"}) for k in (2, 3, 4)])
            s.commit()
            s.execute(update(Account).where(column == r.email(2)).values(note="updated"))
            s.commit()
            got = s.scalars(select(Account).where(column == r.email(2))).one()
            assert got.note == "updated", f"get by unique field: {got.note}"
            stmt = insert(Account).values(**{COL: r.seed_variant(), "note": f"upsert-{r.n}"})
            stmt = stmt.on_conflict_do_update(
                index_elements=[COL], set_={"note": stmt.excluded.note}
            )
            s.execute(stmt)
            s.commit()
            with s.begin():
                s.execute(update(Account).where(Account.id == a.id).values(note="committed"))
        first = s.scalars(select(Account).order_by(column).limit(5)).all()
        assert len(first) == 5, "order by"
        seen = 0
        for _ in s.execute(
            select(Account).where(Account.id <= 60).execution_options(yield_per=7)
        ).scalars():
            seen += 1
        assert seen >= 50, f"server-side cursor saw {seen}"
        s.commit()
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        sql = f"COPY (SELECT id, {COL} FROM {TABLE}) TO STDOUT"
        if CLIENT.endswith("psycopg2"):
            buf = io.StringIO()
            cur.copy_expert(sql, buf)
            lines = buf.getvalue().count("\n")
        else:
            with cur.copy(sql) as copy:
                lines = sum(1 for _ in copy.rows())
        assert lines >= 50, f"copy out: {lines} rows"
        raw.commit()
    finally:
        raw.close()


# --------------------------------------------------------------- asyncpg


async def asyncpg_setup():
    import asyncpg

    conn = await asyncpg.connect(
        host="127.0.0.1", port=PORT, user="trust_user", database="postgres", ssl=False
    )
    return {"conn": conn}


async def asyncpg_round(state, r):
    conn = state["conn"]
    t, c = TABLE, COL
    if r.writes:
        new_id = await conn.fetchval(
            f"INSERT INTO {t} ({c}, note) VALUES ($1, 'created') RETURNING id", r.email(1)
        )
        assert new_id, "generated key"
        await conn.executemany(
            f"INSERT INTO {t} ({c}, note) VALUES ($1, 'bulk')", [(r.email(k),) for k in (2, 3, 4)]
        )
        await conn.execute(f"UPDATE {t} SET note = 'updated' WHERE {c} = $1", r.email(2))
        note = await conn.fetchval(f"SELECT note FROM {t} WHERE {c} = $1", r.email(2))
        assert note == "updated", f"get by unique field: {note}"
        await conn.execute(
            f"INSERT INTO {t} ({c}, note) VALUES ($1, $2) "
            f"ON CONFLICT ({c}) DO UPDATE SET note = EXCLUDED.note",
            r.seed_variant(),
            f"upsert-{r.n}",
        )
        async with conn.transaction():
            await conn.execute(f"UPDATE {t} SET note = 'committed' WHERE id = $1", new_id)
    # The old version reads `*` (its shape must hold); the new one names
    # its columns.
    star = "*" if ROLE == "old" else f"id, {c}, note"
    rows = await conn.fetch(f"SELECT {star} FROM {t} ORDER BY {c} LIMIT 5")
    assert len(rows) == 5 and c in rows[0], "order by / star"
    seen = 0
    async with conn.transaction():
        async for _ in conn.cursor(f"SELECT id, {c} FROM {t} WHERE id <= $1", 60, prefetch=7):
            seen += 1
    assert seen >= 50, f"cursor saw {seen}"
    buf = io.BytesIO()
    await conn.copy_from_query(f"SELECT id, {c} FROM {t} WHERE id <= $1", 60, output=buf)
    buf2 = io.BytesIO()
    await conn.copy_from_table(t, columns=["id", c], output=buf2)
    assert buf.getvalue().count(b"\n") >= 50 and buf2.getvalue().count(b"\n") >= 50, "copy out"


# ------------------------------------------------------------------ main


def main():
    sync = None
    if CLIENT.startswith("django"):
        state = django_setup(CLIENT == "django-psycopg2")
        sync = django_round
    elif CLIENT.startswith("sqla"):
        state = sqla_setup(CLIENT == "sqla-psycopg2")
        sync = sqla_round
    elif CLIENT == "asyncpg":
        loop = asyncio.new_event_loop()
        state = loop.run_until_complete(asyncpg_setup())
    else:
        raise SystemExit(f"unknown client {CLIENT}")
    n = 0
    for line in sys.stdin:
        phase = line.strip()
        if not phase:
            continue
        if phase == "quit":
            break
        n += 1
        r = Round(phase, n)
        try:
            if sync:
                sync(state, r)
            else:
                loop.run_until_complete(asyncpg_round(state, r))
            print("ok", flush=True)
        except Exception as e:  # noqa: BLE001 - every failure is reported
            where = traceback.extract_tb(e.__traceback__)[-1]
            print(f"error {type(e).__name__} at line {where.lineno}: {e}".replace("\n", " "), flush=True)


if __name__ == "__main__":
    main()
