"""Shared fixtures: real SQLite and PostgreSQL databases, Redis, a clean data directory."""
import os, uuid
import pytest
import sqlalchemy as sa

PG_ADMIN_URL = os.environ.get("TRADELAB_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_TEST_URL = os.environ.get("TRADELAB_TEST_REDIS", "redis://127.0.0.1:6379/15")


def _pg_admin():
    return sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})


@pytest.fixture(scope="session")
def pg_url():
    """A fresh PostgreSQL database for this test run (created here, dropped at the end)."""
    name = f"tradelab_t_{uuid.uuid4().hex[:10]}"
    admin = _pg_admin()
    try:
        with admin.connect() as c:
            c.exec_driver_sql(f'create database "{name}"')
    except Exception as e:  # tests needing PostgreSQL fail, never skip
        pytest.fail(f"PostgreSQL is needed at {PG_ADMIN_URL} (run `make services`): {e}")
    url = sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as c:
        c.exec_driver_sql(f'drop database if exists "{name}" with (force)')
    admin.dispose()


@pytest.fixture(scope="session")
def _pg_migrated(pg_url):
    from tradelab.db import make_engine
    from tradelab.migrate import upgrade
    eng = make_engine(pg_url)
    upgrade(eng)
    yield eng
    eng.dispose()


def _truncate(eng):
    from tradelab.db import Base
    names = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with eng.begin() as c:
        c.exec_driver_sql(f"truncate {names} restart identity cascade")


@pytest.fixture
def sqlite_engine(tmp_path):
    """A migrated SQLite database in a temporary directory."""
    from tradelab.db import make_engine
    from tradelab.migrate import upgrade
    eng = make_engine(f"sqlite:///{tmp_path}/tradelab.db")
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def pg_engine(_pg_migrated):
    """The run's migrated PostgreSQL database, emptied before the test."""
    _truncate(_pg_migrated)
    yield _pg_migrated


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request):
    """Each storage test runs against both databases."""
    return request.getfixturevalue("sqlite_engine" if request.param == "sqlite" else "pg_engine")


@pytest.fixture
def redis_url():
    """Redis database 15, flushed before and after the test."""
    import redis
    r = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        r.flushdb()
    except Exception as e:
        pytest.fail(f"Redis is needed at {REDIS_TEST_URL} (run `make services`): {e}")
    yield REDIS_TEST_URL
    r.flushdb()


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """An empty TRADELAB_DATA_DIR, and no DATABASE_URL: the embedded default."""
    d = tmp_path / "data"
    monkeypatch.setenv("TRADELAB_DATA_DIR", str(d))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    return d
