"""Models that travel: publishing a model into the shared store, and the download cache through
which a worker gets a published model it does not hold.

The store keeps each file of a model once, by content: ``models/<sha256>.blob``; the catalog row
keeps the manifest (``[{"path", "size", "sha256"}]``, paths relative to ``models/<kind>/``). A
model's sha256 is its file's, or, for a folder, that of its manifest.

A worker's cache is ``$HUABU_HOME/cache/models/<sha256>/<file or folder>``. A download goes into
a ``.partial-…`` folder, every file checked against its sha256, and is renamed into place
whole, so a reader never sees half a model and a crash leaves only a partial folder that the
next download of the same model removes. Worker processes on one host share the cache; a lock
file per model makes the second wait for the first's download. The cache is bounded by
``HUABU_MODEL_CACHE_BYTES``: before a download, the least recently used models go.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from huabu.catalog import shared
from huabu.catalog.library import ModelEntry, ModelLibrary, disk_size, file_sha256, singular
from huabu.errors import ModelUnavailable, NotFound
from huabu.settings import Settings
from huabu.storage import Storage


def blob_key(sha256: str) -> str:
    return f"models/{sha256}.blob"


def _files(entry: ModelEntry) -> list[tuple[str, Path]]:
    """Each file of ``entry`` with its path relative to its kind's folder."""
    if entry.path.is_file():
        return [(entry.file_name, entry.path)]
    return [
        (f"{entry.file_name}/{path.relative_to(entry.path).as_posix()}", path)
        for path in sorted(entry.path.rglob("*"))
        if path.is_file() and not path.name.startswith(".")
    ]


def publish(
    sessions: sessionmaker[Session],
    storage: Storage,
    library: ModelLibrary,
    entry: ModelEntry,
    *,
    owner_id: uuid.UUID | None = None,
) -> str:
    """Upload ``entry``'s files (those the store lacks) and record it as published; returns
    its sha256. Raises StorageUnavailable if the store fails (nothing is recorded then)."""
    manifest = []
    for relative, path in _files(entry):
        digest = library.sha256(entry) if path == entry.path else file_sha256(path)
        assert digest is not None
        if not storage.exists(blob_key(digest)):
            storage.put_file(blob_key(digest), path)
        manifest.append({"path": relative, "size": path.stat().st_size, "sha256": digest})
    if entry.path.is_file():
        sha256 = str(manifest[0]["sha256"])
    else:
        sha256 = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    with sessions.begin() as session:
        shared.record_published(session, entry, sha256=sha256, files=manifest, owner_id=owner_id)
    return sha256


class ModelCache:
    """Published models fetched on demand into this host's cache (see the module's text)."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], storage: Storage):
        self.settings = settings
        self.sessions = sessions
        self.storage = storage
        self.root = settings.cache_dir / "models"

    def published_names(self, kind: str) -> list[str]:
        with self.sessions() as session:
            return shared.published_names(session, kind)

    def find(self, kind: str, name: str) -> ModelEntry | None:
        """The published model ``name`` on this host's disk, downloaded first if need be;
        None if nothing of that name is published. ModelUnavailable says why a download
        failed (the store failing: StorageUnavailable)."""
        with self.sessions() as session:
            row = shared.published(session, kind, name)
        if row is None or not row.files or not row.sha256:
            return None
        folder = self.root / row.sha256
        if not folder.is_dir():
            self.root.mkdir(parents=True, exist_ok=True)
            with self._locked(row.sha256):
                if not folder.is_dir():
                    self._download(row, folder)
        os.utime(folder)  # used now: the last to be evicted
        path = folder / row.file_name
        return ModelEntry(
            row.name,
            row.kind,
            row.file_name,
            row.layout,
            row.size_bytes,
            row.architecture,
            row.native_size,
            row.modified,
            path,
        )

    @contextlib.contextmanager
    def _locked(self, sha256: str) -> Iterator[None]:
        with (self.root / f".lock-{sha256}").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _download(self, row: shared.CatalogRow, folder: Path) -> None:
        assert row.files is not None and row.sha256 is not None
        for stale in self.root.glob(f".partial-{row.sha256}-*"):  # an interrupted download
            shutil.rmtree(stale, ignore_errors=True)
        self._make_room(row)
        partial = self.root / f".partial-{row.sha256}-{uuid.uuid4().hex[:8]}"
        try:
            for item in row.files:
                self._fetch_file(row, item, partial)
            os.replace(partial, folder)
        except OSError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            reason = "no space left on device" if exc.errno == errno.ENOSPC else exc.strerror
            raise ModelUnavailable(
                f"{singular(row.kind)} {row.name!r} could not be downloaded to this worker: "
                f"{reason}"
            ) from exc
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise

    def _fetch_file(self, row: shared.CatalogRow, item: dict[str, Any], partial: Path) -> None:
        relative = Path(item["path"])
        if relative.is_absolute() or ".." in relative.parts:
            raise ModelUnavailable(f"the published {row.name!r} has a bad manifest")
        target = partial / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.storage.get_file(blob_key(item["sha256"]), target)
        except NotFound:
            raise ModelUnavailable(
                f"{singular(row.kind)} {row.name!r}: the shared store has lost its file "
                f"{item['path']}; publish it again"
            ) from None
        if file_sha256(target) != item["sha256"]:
            raise ModelUnavailable(
                f"{singular(row.kind)} {row.name!r}: the downloaded {item['path']} does not "
                "match its checksum; publish it again"
            )

    def _make_room(self, row: shared.CatalogRow) -> None:
        """Evict least recently used models until ``row`` fits under the bound."""
        bound = self.settings.model_cache_bytes
        if row.size_bytes > bound:
            raise ModelUnavailable(
                f"{singular(row.kind)} {row.name!r} is {row.size_bytes} bytes, more than this "
                f"worker's model cache holds (HUABU_MODEL_CACHE_BYTES={bound})"
            )
        cached = [
            (path.stat().st_mtime, path)
            for path in self.root.iterdir()
            if path.is_dir() and not path.name.startswith(".")
        ]
        used = sum(disk_size(path) for _, path in cached)
        for _, path in sorted(cached):
            if used + row.size_bytes <= bound:
                break
            used -= disk_size(path)
            shutil.rmtree(path, ignore_errors=True)


def describe_for_publish(library: ModelLibrary, kind: str | None, name: str) -> ModelEntry:
    """The library entry ``huabu models publish`` sends: a name in the library (of ``kind``,
    or of the only kind that has it), or a path to a model file or folder."""
    path = Path(name)
    if path.exists():
        described = library.describe(kind or "checkpoints", path)
        if described is None:
            raise ModelUnavailable(
                f"{name} is not a model: expected a .safetensors file (or, with "
                "HUABU_ALLOW_PICKLE, .ckpt/.pt), or a diffusers folder with model_index.json"
            )
        return described
    kinds = [kind] if kind else list(library.kinds)
    found = [entry for k in kinds for entry in library.entries(k) if entry.name == name]
    if not found:
        raise ModelUnavailable(f"no model {name!r} in {library.root}; give its name or its path")
    if len(found) > 1:
        raise ModelUnavailable(
            f"{name!r} is a name in {', '.join(e.kind for e in found)}; say which with --kind"
        )
    return found[0]


__all__ = ["ModelCache", "blob_key", "describe_for_publish", "publish"]
