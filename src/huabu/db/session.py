"""Connecting to the database, with the schema migrated to the newest revision first."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from huabu.db.server import database_url
from huabu.settings import Settings

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


def open_database(settings: Settings) -> sessionmaker[Session]:
    """A new engine and session factory for this installation's database, migrated first.
    Call once per process and share the result."""
    # No pre-ping (a round trip per request): a connection the server dropped fails one
    # request, and SQLAlchemy then replaces the pool's connections.
    engine = create_engine(database_url(settings), pool_size=10, max_overflow=30)
    migrate(engine)
    return sessionmaker(engine, expire_on_commit=False)
