"""Connecting: one SQLAlchemy engine per process, schema migrated to head on first use."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from huabu.db.server import database_url
from huabu.settings import Settings


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent; Alembic locks per transaction)."""
    config = Config(str(Path(str(resources.files("huabu.db"))) / "alembic.ini"))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def open_database(settings: Settings) -> sessionmaker[Session]:
    """A session factory for this installation's database, migrated to the current schema."""
    engine = create_engine(database_url(settings), pool_pre_ping=True)
    migrate(engine)
    return sessionmaker(engine, expire_on_commit=False)
