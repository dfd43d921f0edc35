"""Images callers send: checked (size, format, pixel cap) before anything is stored, then
stored together with the rows that use them, all or nothing.

``NewUploads`` holds the images that arrive with one request (base64 in a JSON body, a
multipart file, a fetched URL). They are checked when added and stored only when the task that
uses them is queued, in the same unit (``storing`` + the task's transaction): a request refused
at validation or by a queue limit leaves no file and no row behind.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from huabu.db.tables import Upload
from huabu.errors import TooLarge
from huabu.images import decode_image, open_image
from huabu.settings import Settings
from huabu.storage import Storage
from huabu.tasks.records import UploadRecord

_KEPT_FORMATS = {
    "PNG": ("png", "image/png"),
    "JPEG": ("jpg", "image/jpeg"),
    "WEBP": ("webp", "image/webp"),
}


@dataclass(frozen=True)
class CheckedImage:
    """An image that passed the input checks, with the bytes to store for it."""

    id: uuid.UUID
    field: str
    data: bytes
    content_type: str
    extension: str
    image: Image.Image

    @property
    def key(self) -> str:
        return f"uploads/{self.id}.{self.extension}"

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height

    def record(self) -> UploadRecord:
        return UploadRecord(
            self.id, self.key, self.content_type, self.width, self.height, len(self.data)
        )

    def row(self, owner_id: uuid.UUID) -> Upload:
        return Upload(
            id=self.id,
            owner_id=owner_id,
            key=self.key,
            content_type=self.content_type,
            width=self.width,
            height=self.height,
            size_bytes=len(self.data),
        )


def check_image(data: bytes, *, field: str, settings: Settings) -> CheckedImage:
    """``data`` as an image huabu accepts, or InvalidRequest/TooLarge naming ``field``."""
    limit = settings.max_image_bytes
    if len(data) > limit:
        raise TooLarge(
            f"{field}: the image is {len(data) / 2**20:.1f} MiB, the limit is "
            f"{limit / 2**20:.0f} MiB",
            param=field,
        )
    source_format = open_image(data, field=field, max_pixels=settings.max_input_pixels).format
    image = decode_image(data, field=field, max_pixels=settings.max_input_pixels)
    if source_format in _KEPT_FORMATS:
        extension, content_type = _KEPT_FORMATS[source_format]
    else:  # BMP, GIF, TIFF: stored as PNG, which every client can display
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data, extension, content_type = buffer.getvalue(), "png", "image/png"
    return CheckedImage(uuid.uuid4(), field, data, content_type, extension, image)


class NewUploads:
    """The images that came with one request, checked and not yet stored. Each gets an upload
    id at once, which the request's image fields use like any upload's."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._images: dict[uuid.UUID, CheckedImage] = {}

    def add(self, data: bytes, *, field: str) -> CheckedImage:
        """Check ``data`` (CPU work: call it off the event loop) and keep it for the submit."""
        checked = check_image(data, field=field, settings=self.settings)
        self._images[checked.id] = checked
        return checked

    def get(self, upload_id: uuid.UUID) -> CheckedImage | None:
        return self._images.get(upload_id)

    def used(self, upload_ids: Iterable[uuid.UUID]) -> list[CheckedImage]:
        """Those of ``upload_ids`` that are new here, each once."""
        wanted = dict.fromkeys(upload_ids)
        return [self._images[i] for i in wanted if i in self._images]


@contextmanager
def storing(storage: Storage, images: Iterable[CheckedImage]) -> Iterator[Callable[[], None]]:
    """For a block that ends in the commit of the rows of ``images``: yields the function that
    writes their files (call it once the request is admitted, inside the transaction). If the
    block fails, its transaction included, the files written are removed again."""
    written: list[str] = []

    def write() -> None:
        for image in images:
            storage.put(image.key, image.data)
            written.append(image.key)

    try:
        yield write
    except BaseException:
        for key in written:
            storage.delete(key)
        raise


class Uploads:
    """The caller's stored uploads: add some, find one."""

    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], storage: Storage
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.storage = storage

    def upload(self, owner_id: uuid.UUID, data: bytes, *, field: str = "file") -> UploadRecord:
        """Store an image the caller sends, after checking it is one (and not a bomb)."""
        return self.upload_many(owner_id, [data], field=field)[0]

    def upload_many(
        self, owner_id: uuid.UUID, files: list[bytes], *, field: str = "file"
    ) -> list[UploadRecord]:
        """Store several images, all or none: every one is checked before any is stored, and
        the files are removed again if their rows cannot be written. Errors name the file as
        ``field.<index>`` when there are several."""
        checked = [
            check_image(
                data, field=field if len(files) == 1 else f"{field}.{index}", settings=self.settings
            )
            for index, data in enumerate(files)
        ]
        with storing(self.storage, checked) as write, self.sessions.begin() as session:
            session.add_all([image.row(owner_id) for image in checked])
            session.flush()
            write()
        return [image.record() for image in checked]

    def find(self, owner_id: uuid.UUID, upload_id: uuid.UUID) -> UploadRecord | None:
        """The caller's upload ``upload_id``, if there is one."""
        with self.sessions() as session:
            row = session.scalar(
                select(Upload).where(Upload.id == upload_id, Upload.owner_id == owner_id)
            )
            return None if row is None else _record(row)

    def with_key(self, owner_id: uuid.UUID, key: str) -> UploadRecord | None:
        """The caller's upload stored at ``key``, if it is one (``uploads/<id>.<ext>``)."""
        stem = key.removeprefix("uploads/").partition(".")[0]
        try:
            upload_id = uuid.UUID(stem)
        except ValueError:
            return None
        record = self.find(owner_id, upload_id)
        return record if record is not None and record.key == key else None


def _record(row: Upload) -> UploadRecord:
    return UploadRecord(row.id, row.key, row.content_type, row.width, row.height, row.size_bytes)
