"""Image storage in a local folder: ``images/<task>/<index>.<ext>``, ``previews/…``,
``uploads/<id>.<ext>``. Keys are derived from ids, so re-running a task overwrites, never
duplicates."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from huabu.errors import NotFound

_KEY = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*\.[a-z0-9]{2,5}$")
_CONTENT_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
}


#: The process's umask, read once (reading it means setting it): stored files get the mode a
#: plain open() would give them (0644 under the usual 022), not tempfile's 0600, so an API
#: server and workers running as different users can read each other's files.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def content_type(key: str) -> str:
    return _CONTENT_TYPES.get(key.rsplit(".", 1)[-1], "application/octet-stream")


def check_key(key: str) -> str:
    """``key`` if it is one huabu makes; a key that could escape its folder is not found."""
    if not _KEY.match(key):
        raise NotFound("no such file")
    return key


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        """The file behind ``key``; a key that could escape the root is simply not found."""
        return self.root / check_key(key)

    def local_path(self, key: str) -> Path | None:
        """The file to serve for ``key`` (the file server sends it without reading it)."""
        return self.path(key)

    def put(self, key: str, data: bytes) -> None:
        """Write atomically: a reader never sees half a file, a crash leaves none."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as handle:
            handle.write(data)
        os.chmod(handle.name, 0o666 & ~_UMASK)
        os.replace(handle.name, target)

    def put_file(self, key: str, source: Path) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with (
            source.open("rb") as data,
            tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as handle,
        ):
            shutil.copyfileobj(data, handle, 1 << 20)
        os.chmod(handle.name, 0o666 & ~_UMASK)
        os.replace(handle.name, target)

    def get_file(self, key: str, target: Path) -> None:
        try:
            shutil.copyfile(self.path(key), target)
        except FileNotFoundError:
            if not self.path(key).is_file():
                raise NotFound("no such file") from None
            raise

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound("no such file") from None

    def delete(self, key: str) -> None:
        """Remove the file at ``key``, and its folder once empty (a task's images have one);
        a file that is already gone is not an error."""
        path = self.path(key)
        path.unlink(missing_ok=True)
        if path.parent != self.root:
            with contextlib.suppress(OSError):  # not empty (or gone): it stays
                path.parent.rmdir()

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()
