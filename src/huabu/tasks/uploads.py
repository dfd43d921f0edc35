"""Images callers send: checked (size, format, pixel cap) before anything is stored, then
stored together with the rows that use them, all or nothing.

``NewUploads`` holds the images that arrive with one request (base64 in a JSON body, a
multipart file, a fetched URL). They are checked when added and stored only when the task that
uses them is queued, in the same unit (``storing`` + the task's transaction): a request refused
at validation or by a queue limit leaves no file and no row behind.

Memory stays bounded: every image's pixels are counted from its header against the request's
budget (HUABU_MAX_REQUEST_PIXELS) before any is decoded; images are decoded one at a time, at
most ``decode_slots`` of them at once in the process, and their pixels are let go as soon as
they are checked (only the encoded bytes are kept).
"""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from huabu.db.tables import Upload
from huabu.errors import InvalidRequest, TooLarge
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
    width: int
    height: int

    @property
    def key(self) -> str:
        return f"uploads/{self.id}.{self.extension}"

    def decoded(self, settings: Settings) -> Image.Image:
        """Its pixels, decoded again (they are not kept in memory between uses)."""
        return decode_image(self.data, field=self.field, max_pixels=settings.max_input_pixels)

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


def decode_slots(slots: int) -> threading.BoundedSemaphore:
    """How many images a process decodes at once (each may be HUABU_MAX_INPUT_PIXELS): a
    thread waits for a slot rather than adding another decoded image to memory."""
    return threading.BoundedSemaphore(slots)


class PixelBudget:
    """The pixels one request's images may hold together, counted from their headers."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.spent = 0

    def spend(self, pixels: int, *, field: str) -> None:
        if self.spent + pixels > self.limit:
            raise TooLarge(
                f"{field}: the images of this request hold {self.spent + pixels} pixels "
                f"together; the limit is {self.limit}",
                param=field,
            )
        self.spent += pixels


def _checked_size(data: bytes, *, field: str, settings: Settings) -> tuple[str | None, int, int]:
    """Format, width and height from the header of ``data``: nothing decoded yet."""
    limit = settings.max_image_bytes
    if len(data) > limit:
        raise TooLarge(
            f"{field}: the image is {len(data) / 2**20:.1f} MiB, the limit is "
            f"{limit / 2**20:.0f} MiB",
            param=field,
        )
    header = open_image(data, field=field, max_pixels=settings.max_input_pixels)
    return header.format, header.width, header.height


def check_image(
    data: bytes,
    *,
    field: str,
    settings: Settings,
    budget: PixelBudget | None = None,
    slots: threading.BoundedSemaphore | None = None,
) -> CheckedImage:
    """``data`` as an image huabu accepts, or InvalidRequest/TooLarge naming ``field``. Its
    pixels count against ``budget`` before they are decoded (in one of ``slots``)."""
    source_format, width, height = _checked_size(data, field=field, settings=settings)
    if budget is not None:
        budget.spend(width * height, field=field)
    with slots if slots is not None else nullcontext():
        image = decode_image(data, field=field, max_pixels=settings.max_input_pixels)
        if source_format in _KEPT_FORMATS:
            extension, content_type = _KEPT_FORMATS[source_format]
        else:  # BMP, GIF, TIFF: stored as PNG, which every client can display
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            data, extension, content_type = buffer.getvalue(), "png", "image/png"
        width, height = image.size  # after EXIF orientation
        del image
    return CheckedImage(uuid.uuid4(), field, data, content_type, extension, width, height)


class NewUploads:
    """The images that came with one request, checked and not yet stored. Each gets an upload
    id at once, which the request's image fields use like any upload's."""

    def __init__(self, settings: Settings, slots: threading.BoundedSemaphore | None = None) -> None:
        self.settings = settings
        self.slots = slots
        self.budget = PixelBudget(settings.max_request_pixels)
        self._images: dict[uuid.UUID, CheckedImage] = {}

    def add(self, data: bytes, *, field: str) -> CheckedImage:
        """Check ``data`` (CPU work: call it off the event loop) and keep it for the submit."""
        checked = check_image(
            data, field=field, settings=self.settings, budget=self.budget, slots=self.slots
        )
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
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        storage: Storage,
        slots: threading.BoundedSemaphore | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.storage = storage
        self.slots = slots

    def upload(self, owner_id: uuid.UUID, data: bytes, *, field: str = "file") -> UploadRecord:
        """Store an image the caller sends, after checking it is one (and not a bomb)."""
        return self.upload_many(owner_id, [data], field=field)[0]

    def upload_many(
        self, owner_id: uuid.UUID, files: list[bytes], *, field: str = "file"
    ) -> list[UploadRecord]:
        """Store several images, all or none: every one is checked before any is stored, and
        the files are removed again if their rows cannot be written. Errors name the file as
        ``field.<index>`` when there are several. Every header is read and counted against
        the request's pixel budget before the first image is decoded."""
        if len(files) > self.settings.max_dataset_images:
            raise InvalidRequest(
                f"{field}: {len(files)} images in one request; the limit is "
                f"{self.settings.max_dataset_images}",
                param=field,
            )
        names = [field if len(files) == 1 else f"{field}.{index}" for index in range(len(files))]
        budget = PixelBudget(self.settings.max_request_pixels)
        for name, data in zip(names, files, strict=True):
            _, width, height = _checked_size(data, field=name, settings=self.settings)
            budget.spend(width * height, field=name)
        checked = [
            check_image(data, field=name, settings=self.settings, slots=self.slots)
            for name, data in zip(names, files, strict=True)
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
