"""Where images live: a local folder (``file://``, the default) or an S3-compatible bucket
(``s3://``), behind huabu's signed URLs either way."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from huabu.settings import Settings
from huabu.storage.local import LocalStorage, content_type
from huabu.storage.signing import UrlSigner


class Storage(Protocol):
    """Keys like ``images/<task>/<i>.png``; ``get`` of a missing key raises NotFound, any
    failure of the store StorageUnavailable."""

    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def delete(self, key: str) -> None: ...
    def exists(self, key: str) -> bool: ...
    def local_path(self, key: str) -> Path | None: ...
    #: Large objects (models) stream from and to files, never whole in memory.
    def put_file(self, key: str, source: Path) -> None: ...
    def get_file(self, key: str, target: Path) -> None: ...


def open_storage(settings: Settings) -> Storage:
    """The store ``HUABU_STORAGE_URL`` names (checked when the settings were read)."""
    url = settings.storage_url
    if url is None:
        return LocalStorage(settings.files_dir)
    scheme, _, rest = url.partition("://")
    if scheme == "file":
        return LocalStorage(Path(rest))
    from huabu.storage.s3 import S3Storage

    bucket, _, prefix = rest.partition("/")
    return S3Storage(bucket, prefix, endpoint_url=settings.s3_endpoint_url)


__all__ = ["LocalStorage", "Storage", "UrlSigner", "content_type", "open_storage"]
