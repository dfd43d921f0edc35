"""The catalog in the database: what the fleet can serve, so that an API server needs no model
file at all.

Two sources fill the ``models`` table:
- each worker describes the models on its own disk with its heartbeat, and lists them in its
  ``workers`` row (``models``: ``kind/name``);
- ``huabu models publish`` (and every successful LoRA training) puts a model's files in the
  shared store, content-addressed (``models/<sha256>.blob``), and records their manifest: any
  worker can then fetch it (``catalog.transfer``).

A model is servable while it is published, or while a worker that holds it has not left and
was seen within the last hour (a worker restarting does not make its models vanish). A model's
name means one model across the fleet; the last description written wins.

``Catalog`` is what request handlers read: the servable models, plus the server's own library
if it has one (one machine, or a folder shared with the workers), read live: a file copied in
is listed at once. An API server of a fleet has an empty HUABU_HOME and lists the fleet's.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from huabu.catalog.architectures import Architecture
from huabu.catalog.library import KINDS, ModelInfo, ModelLibrary, unknown_model
from huabu.errors import InvalidRequest

#: How long a worker that stopped answering (without leaving) still vouches for its models.
HOLDER_SEEN_SECONDS = 3600

_COLUMNS = (
    "m.kind, m.name, m.file_name, m.layout, m.architecture, m.native_size, m.size_bytes, "
    "m.sha256, "
    "m.owner_id, m.files, m.updated_at"
)
_SERVABLE = f"""
    SELECT {_COLUMNS} FROM models m
     WHERE m.kind = :kind
       AND (m.published_at IS NOT NULL OR EXISTS (
            SELECT 1 FROM workers w
             WHERE w.stopped_at IS NULL
               AND w.last_seen > now() - make_interval(secs => {HOLDER_SEEN_SECONDS})
               AND jsonb_exists(w.models, m.kind || '/' || m.name)))
"""
_PUBLIC = text(_SERVABLE + " AND m.owner_id IS NULL ORDER BY m.name")
_NAMED = text(_SERVABLE + " AND m.name = :name")
_PUBLISHED = text(
    f"SELECT {_COLUMNS} FROM models m "
    "WHERE m.kind = :kind AND m.name = :name AND m.published_at IS NOT NULL"
)
_PUBLISHED_NAMES = text(
    "SELECT name FROM models WHERE kind = :kind AND published_at IS NOT NULL "
    "AND owner_id IS NULL ORDER BY name"
)
#: A worker's description of a model on its disk; a published model's row is the store's.
_DESCRIBE = text(
    """
    INSERT INTO models (kind, name, file_name, layout, architecture, native_size, size_bytes,
                        sha256)
    VALUES (:kind, :name, :file_name, :layout, :architecture, :native_size, :size_bytes,
            :sha256)
    ON CONFLICT (kind, name) DO UPDATE
       SET file_name = EXCLUDED.file_name, layout = EXCLUDED.layout,
           architecture = EXCLUDED.architecture, native_size = EXCLUDED.native_size,
           size_bytes = EXCLUDED.size_bytes,
           sha256 = EXCLUDED.sha256, updated_at = now()
     WHERE models.published_at IS NULL
    """
)
_PUBLISH = text(
    """
    INSERT INTO models (kind, name, file_name, layout, architecture, native_size, size_bytes,
                        sha256, owner_id, files, published_at)
    VALUES (:kind, :name, :file_name, :layout, :architecture, :native_size, :size_bytes,
            :sha256, :owner, CAST(:files AS jsonb), now())
    ON CONFLICT (kind, name) DO UPDATE
       SET file_name = EXCLUDED.file_name, layout = EXCLUDED.layout,
           architecture = EXCLUDED.architecture, native_size = EXCLUDED.native_size,
           size_bytes = EXCLUDED.size_bytes,
           sha256 = EXCLUDED.sha256, owner_id = EXCLUDED.owner_id, files = EXCLUDED.files,
           published_at = now(), updated_at = now()
    """
)
_HOLDS = text("UPDATE workers SET models = CAST(:models AS jsonb) WHERE name = :worker")


@dataclass(frozen=True)
class CatalogRow(ModelInfo):
    """A model as the database describes it."""

    sha256: str | None
    owner_id: uuid.UUID | None
    #: The manifest of a published model: ``[{"path", "size", "sha256"}]``; None otherwise.
    files: list[dict[str, Any]] | None


def _row(row: Any) -> CatalogRow:
    architecture = Architecture(row.architecture) if row.architecture else None
    return CatalogRow(
        row.name,
        row.kind,
        row.file_name,
        row.layout,
        row.size_bytes,
        architecture,
        row.native_size,
        row.updated_at.timestamp(),
        row.sha256,
        row.owner_id,
        row.files,
    )


def _values(info: ModelInfo, sha256: str | None) -> dict[str, Any]:
    return {
        "kind": info.kind,
        "name": info.name,
        "file_name": info.file_name,
        "layout": info.layout,
        "architecture": info.architecture.value if info.architecture else None,
        "native_size": info.native_size,
        "size_bytes": info.size_bytes,
        "sha256": sha256,
    }


def describe_held(
    session: Session, worker: str, held: Iterable[tuple[ModelInfo, str | None]]
) -> None:
    """Record the models on ``worker``'s disk (each with its sha256 when known)."""
    names = []
    for info, sha256 in held:
        session.execute(_DESCRIBE, _values(info, sha256))
        names.append(f"{info.kind}/{info.name}")
    session.execute(_HOLDS, {"worker": worker, "models": json.dumps(names)})


def record_published(
    session: Session,
    info: ModelInfo,
    *,
    sha256: str,
    files: list[dict[str, Any]],
    owner_id: uuid.UUID | None,
) -> None:
    session.execute(
        _PUBLISH, _values(info, sha256) | {"owner": owner_id, "files": json.dumps(files)}
    )


def published(session: Session, kind: str, name: str) -> CatalogRow | None:
    row = session.execute(_PUBLISHED, {"kind": kind, "name": name}).one_or_none()
    return _row(row) if row is not None else None


def published_names(session: Session, kind: str) -> list[str]:
    return list(session.execute(_PUBLISHED_NAMES, {"kind": kind}).scalars())


class Catalog:
    """The models a request may name: the fleet's (from the database) and those in this
    server's own library. Raises DatabaseUnavailable while the database
    is away. The same interface as ``ModelLibrary`` for what listings and checks need."""

    kinds = KINDS

    def __init__(
        self, sessions: sessionmaker[Session], local: ModelLibrary | None, default: str | None
    ) -> None:
        self.sessions = sessions
        self.local = local
        self.default = default

    def entries(self, kind: str) -> list[ModelInfo]:
        """Every public model of ``kind`` the fleet can serve, sorted by name."""
        with self.sessions() as session:
            found: dict[str, ModelInfo] = {
                row.name: _row(row) for row in session.execute(_PUBLIC, {"kind": kind})
            }
        if self.local is not None:
            found |= {entry.name: entry for entry in self.local.entries(kind)}
        return [found[name] for name in sorted(found)]

    def names(self, kind: str) -> list[str]:
        return [entry.name for entry in self.entries(kind)]

    def find(self, kind: str, name: str, *, param: str = "model") -> ModelInfo:
        """The model called ``name`` (a qualified private name too: never listed), or
        InvalidRequest naming ``param`` and listing what exists."""
        if self.local is not None:
            try:
                return self.local.find(kind, name, param=param)
            except InvalidRequest:
                pass
        with self.sessions() as session:
            row = session.execute(_NAMED, {"kind": kind, "name": name}).one_or_none()
        if row is not None:
            return _row(row)
        raise self.unknown(kind, name, param=param)

    def default_model(self) -> str:
        """The checkpoint used when a request names none (HUABU_DEFAULT_MODEL, else the first)."""
        if self.default:
            return self.default
        names = self.names("checkpoints")
        if not names:
            raise InvalidRequest(
                "no worker can serve a checkpoint right now; start a worker with a model, "
                "or publish one",
                param="model",
            )
        return names[0]

    def unknown(self, kind: str, name: str, *, param: str) -> InvalidRequest:
        """The error for a name the fleet cannot serve, listing what it can."""
        return unknown_model(kind, name, self.names(kind), param=param)
