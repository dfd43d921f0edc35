"""Image storage in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, Cloudflare R2): the same
keys as the local folder, under a prefix. Credentials and region come from the standard
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_REGION`` variables (or any other
source boto3 reads); ``HUABU_S3_ENDPOINT_URL`` points at a service that is not AWS.

A put is one ``PutObject``: S3 makes an object visible whole or not at all, so no reader ever
sees half an image."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from huabu.errors import NotFound, StorageUnavailable
from huabu.storage.local import check_key


class S3Storage:
    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(
                retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60
            ),
        )

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def local_path(self, key: str) -> Path | None:
        return None  # served through the API (see web/files)

    def put(self, key: str, data: bytes) -> None:
        with _store_errors():
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get(self, key: str) -> bytes:
        with _store_errors():
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def put_file(self, key: str, source: Path) -> None:
        """Multipart for large files (boto3's transfer manager); visible once complete."""
        with _store_errors():
            self.client.upload_file(str(source), self.bucket, self._key(key))

    def get_file(self, key: str, target: Path) -> None:
        with _store_errors():
            self.client.download_file(self.bucket, self._key(key), str(target))

    def delete(self, key: str) -> None:
        with _store_errors():
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def exists(self, key: str) -> bool:
        try:
            with _store_errors():
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except NotFound:
            return False
        return True


@contextmanager
def _store_errors() -> Iterator[None]:
    """A missing object as NotFound; any other failure of the store (unreachable, refused,
    a bucket that does not exist) as StorageUnavailable, in words that show no endpoint or
    credential (the cause, for the log, keeps the detail)."""
    from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError, ConnectionError

    try:
        yield
    except (S3UploadFailedError, S3TransferFailedError) as exc:
        raise StorageUnavailable("the store refused a transfer") from exc
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", "unknown"))
        if code in ("NoSuchKey", "404", "NotFound"):
            raise NotFound("no such file") from None
        raise StorageUnavailable(f"the image store refused the request ({code})") from exc
    except ConnectionError as exc:
        raise StorageUnavailable("the image store cannot be reached") from exc
    except BotoCoreError as exc:
        raise StorageUnavailable("the image store failed") from exc
