"""Connecting to the database, with the schema migrated to the newest revision first."""

from __future__ import annotations

import logging
import time
from importlib import resources
from pathlib import Path

import psycopg
import sqlalchemy.exc
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.orm import Session, sessionmaker

from huabu.db import checks
from huabu.db.server import database_url
from huabu.errors import DatabaseUnavailable, first_line
from huabu.settings import Settings

log = logging.getLogger("huabu.db")

#: Any fixed number: the advisory lock that serialises migrations across processes.
_MIGRATION_LOCK = 0x68756162  # "huab"


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (the newest by default). Idempotent; a server and its
    workers starting together take turns (a transaction-scoped advisory lock), so no two create
    the same table."""
    config = Config(str(Path(str(resources.files("huabu.db"))) / "alembic.ini"))
    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


class _Outage:
    """Database errors that mean "the database is away", not "this statement is wrong":
    a lost connection, a refused one, a server shutting down or starting up. They are raised
    as DatabaseUnavailable (a 503 to API callers; a worker waits), and logged once per
    ``REPORT_SECONDS``, not once per request."""

    REPORT_SECONDS = 10.0

    def __init__(self) -> None:
        self.last_report = -self.REPORT_SECONDS
        self.unreported = 0

    @staticmethod
    def means_away(context: ExceptionContext) -> bool:
        error = context.original_exception
        if context.is_disconnect:
            return True
        if not isinstance(error, psycopg.OperationalError):
            return False
        state = getattr(error, "sqlstate", None)  # None: no server answered at all
        return state is None or state[:2] in ("08", "57")  # connection, operator intervention

    def __call__(self, context: ExceptionContext) -> BaseException | None:
        if context.is_pre_ping or not self.means_away(context):
            return None  # a failed pre-ping is SQLAlchemy's to handle: it reconnects
        now = time.monotonic()
        if now - self.last_report >= self.REPORT_SECONDS:
            more = f"; {self.unreported} more since the last report" if self.unreported else ""
            log.warning("database unavailable (%s%s)", first_line(context.original_exception), more)
            self.last_report, self.unreported = now, 0
        else:
            self.unreported += 1
        return DatabaseUnavailable()


class DatabaseSetupError(Exception):
    """The database answers but huabu cannot use it as configured; the message says what
    to change."""


def _migrate_or_explain(engine: Engine) -> None:
    try:
        migrate(engine)
    except sqlalchemy.exc.ProgrammingError as exc:
        if not isinstance(exc.orig, psycopg.errors.InsufficientPrivilege):
            raise
        url = engine.url
        raise DatabaseSetupError(
            f"the database role {url.username!r} may not create huabu's tables in database "
            f"{url.database!r}: make it the database's owner (ALTER DATABASE {url.database} "
            f"OWNER TO {url.username};) or GRANT CREATE ON SCHEMA public TO {url.username};"
        ) from None


def open_database(settings: Settings, *, wait: float = 0) -> sessionmaker[Session]:
    """A new engine and session factory for this installation's database, migrated first.
    Call once per process and share the result. While the database is away, waits up to
    ``wait`` seconds for it (saying so once), then raises DatabaseUnavailable."""
    # Pre-ping: each connection taken from the pool is checked first (one short round trip),
    # so after a database restart no request fails on a connection the server dropped.
    engine = create_engine(
        database_url(settings), pool_size=10, max_overflow=30, pool_pre_ping=True
    )
    event.listen(engine, "handle_error", _Outage())
    deadline, said = time.monotonic() + wait, False
    while True:
        try:
            _migrate_or_explain(engine)
            break
        except DatabaseUnavailable:
            if time.monotonic() >= deadline:
                raise
            if not said:
                log.warning("waiting for the database (up to %.0f s)", wait)
                said = True
            time.sleep(1)
    sessions = sessionmaker(engine, expire_on_commit=False)
    checks.install(sessions)
    return sessions
