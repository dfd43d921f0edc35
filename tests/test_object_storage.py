"""Images in an S3-compatible bucket, and a fleet with no shared folder.

The bucket is moto's server mode, a stand-in for a real S3 service (see ``s3server``). The
fleet: PostgreSQL as its own server over TCP, an API-only server and a worker, each with its
own HUABU_HOME (only the model files are there; test_fleet goes without those too).
"""

from __future__ import annotations

import base64
import io
import os

import httpx
import pytest
from PIL import Image

from helpers import png_bytes
from huabu.auth import Accounts
from huabu.db.session import open_database
from huabu.errors import NotFound, StorageUnavailable
from huabu.settings import Settings
from huabu.storage import open_storage
from huabu.storage.s3 import S3Storage
from pgserver import ExternalPostgres
from serving import Server, Worker
from test_service import wait_finished

pytestmark = pytest.mark.slow


def test_the_bucket_stores_reads_and_forgets_images(s3, tmp_path):
    settings = Settings(
        home=tmp_path, storage_url=f"s3://{s3.bucket}/one/two", s3_endpoint_url=s3.url
    )
    storage = open_storage(settings)
    assert isinstance(storage, S3Storage)
    storage.put("images/t/0.png", b"an image")
    assert s3.keys("one/two/") == ["one/two/images/t/0.png"]  # under the prefix
    assert storage.get("images/t/0.png") == b"an image"
    assert storage.exists("images/t/0.png") and storage.local_path("images/t/0.png") is None
    storage.delete("images/t/0.png")
    assert not storage.exists("images/t/0.png")
    with pytest.raises(NotFound):
        storage.get("images/t/0.png")
    with pytest.raises(NotFound):
        storage.get("../../escape.png")  # not a key huabu makes


def test_a_store_that_fails_says_so_without_its_address(s3):
    missing = S3Storage("no-such-bucket", endpoint_url=s3.url)
    with pytest.raises(StorageUnavailable, match="refused the request \\(NoSuchBucket\\)"):
        missing.put("images/t/0.png", b"x")
    away = S3Storage("huabu", endpoint_url="http://127.0.0.1:9")
    with pytest.raises(StorageUnavailable) as caught:
        away.get("images/t/0.png")
    assert caught.value.message == "storage unavailable: the image store cannot be reached"


def test_a_malformed_storage_url_stops_startup_naming_the_variable(tmp_path):
    import subprocess

    from serving import HUABU

    result = subprocess.run(
        [*HUABU, "serve"], capture_output=True, text=True, timeout=60,
        env=os.environ | {"HUABU_HOME": str(tmp_path), "HUABU_STORAGE_URL": "s3:/bucket"},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: HUABU_STORAGE_URL: must be file:///absolute/path or s3://bucket[/prefix]"
    )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, home, s3):
    root = tmp_path_factory.mktemp("no-shared-folder")
    postgres = ExternalPostgres(root)
    homes = []
    for name in ("api", "worker"):
        path = root / name
        path.mkdir()
        (path / "models").symlink_to(home / "models")  # (test_fleet: without the models)
        homes.append(path)
    env = {"HUABU_DATABASE_URL": postgres.url, "HUABU_SECRET_KEY": "one-for-the-fleet"}
    env |= s3.env()
    api = Server(homes[0], env | {"HUABU_WORKER": "false"})
    worker = Worker(homes[1], env)
    accounts = Accounts(open_database(Settings(home=homes[0], database_url=postgres.url)))
    user = accounts.add_user("s3@example.com", "password123")
    client = api.client(accounts.create_key(user.id))
    yield api, homes, client
    client.close()
    api.stop()
    worker.stop()
    postgres.stop()


def test_a_fleet_with_no_shared_folder_generates_and_serves_through_the_api(fleet, s3):
    api, homes, client = fleet
    # An upload lands in the bucket, the worker reads it from there for img2img.
    source = png_bytes(Image.new("RGB", (64, 64), "teal"))
    upload = client.post("/huabu/v1/uploads", content=source,
                         headers={"content-type": "image/png"})  # fmt: skip
    assert upload.status_code == 201, upload.text
    body = {"model": "demo", "prompt": "a fox", "width": 64, "height": 64, "steps": 6,
            "init_image": {"upload": upload.json()["id"]}, "strength": 0.5}  # fmt: skip
    submitted = client.post("/huabu/v1/generations", json=body)
    assert submitted.status_code == 202, submitted.text
    task = wait_finished(client, submitted.json()["id"])
    assert task["state"] == "succeeded", task
    # The image is downloaded through the API server's signed URL, from the bucket.
    [image] = task["images"]
    download = httpx.get(image["url"], timeout=30)
    assert download.status_code == 200 and download.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(download.content)).size == (64, 64)
    stored = [key for key in s3.keys("files/images/") if task["id"] in key]
    assert (
        stored
        and s3.client().get_object(Bucket=s3.bucket, Key=stored[0])["Body"].read()
        == download.content
    )
    # A synchronous dialect answers with the bytes from the bucket too.
    a1111 = client.post("/sdapi/v1/txt2img", json={"prompt": "a fox", "width": 64,
                                                   "height": 64, "steps": 4})  # fmt: skip
    assert a1111.status_code == 200, a1111.text
    picture = Image.open(io.BytesIO(base64.b64decode(a1111.json()["images"][0])))
    assert picture.size == (64, 64)
    # Nothing was written to either machine's own folder.
    for path in homes:
        assert not (path / "files").exists() or not any((path / "files").rglob("*.*"))
