"""An S3 stand-in for the tests: moto's server mode (``moto_server``), started as its own
process on a free port. It is not a real S3 service (none installs here: MinIO is not
packaged, Ceph RGW needs a cluster); it speaks the same HTTP API, which is what huabu uses."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from serving import free_port

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "huabu-test",
    "AWS_SECRET_ACCESS_KEY": "huabu-test-secret",
    "AWS_REGION": "us-east-1",
}


class MotoS3:
    def __init__(self, log: Path, bucket: str = "huabu") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.bucket = bucket
        self.handle = open(log, "ab")  # noqa: SIM115 - closed in stop()
        server = Path(sys.executable).parent / "moto_server"
        self.process = subprocess.Popen(
            [str(server), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.handle,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(self.url, timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        self.client().create_bucket(Bucket=bucket)

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_REGION"],
        )

    def env(self, prefix: str = "files") -> dict[str, str]:
        """What a huabu process needs to keep its files in this bucket."""
        return CREDENTIALS | {
            "HUABU_STORAGE_URL": f"s3://{self.bucket}/{prefix}",
            "HUABU_S3_ENDPOINT_URL": self.url,
        }

    def keys(self, prefix: str = "") -> list[str]:
        listed = self.client().list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for item in listed.get("Contents", ()))

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.handle.close()
