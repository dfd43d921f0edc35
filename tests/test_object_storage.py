"""Images in an S3-compatible bucket: moto's server mode, a stand-in for a real S3 service
(see ``s3server``). A fleet that keeps everything there: test_fleet."""

from __future__ import annotations

import os

import pytest

from huabu.auth import Accounts
from huabu.db.session import open_database
from huabu.errors import NotFound, StorageUnavailable
from huabu.settings import Settings
from huabu.storage import open_storage
from huabu.storage.s3 import S3Storage
from s3server import CREDENTIALS
from serving import Server, stop_embedded_postgres
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
        [*HUABU, "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"HUABU_HOME": str(tmp_path), "HUABU_STORAGE_URL": "s3:/bucket"},
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: HUABU_STORAGE_URL: must be file:///absolute/path or s3://bucket[/prefix]"
    )


def test_a_store_that_fails_mid_task_is_retried_then_the_task_fails_saying_so(tmp_path, home):
    """The worker cannot store its images: the task goes back to the queue, and once its
    attempts are spent it fails with the reason; no image of it is ever served."""
    (tmp_path / "models").symlink_to(home / "models")
    server = Server(
        tmp_path,
        # Credentials of its own: without any, boto fails before it tries to connect.
        CREDENTIALS
        | {
            "HUABU_STORAGE_URL": "s3://huabu/files",
            "HUABU_S3_ENDPOINT_URL": "http://127.0.0.1:9",
            "HUABU_MAX_ATTEMPTS": "2",
        },
    )
    try:
        accounts = Accounts(open_database(Settings(home=tmp_path)))
        user = accounts.add_user("store@example.com", "password123")
        with server.client(accounts.create_key(user.id)) as client:
            body = {"model": "demo", "prompt": "a fox", "width": 64, "height": 64, "steps": 4}
            submitted = client.post("/huabu/v1/generations", json=body)
            assert submitted.status_code == 202, submitted.text
            task = wait_finished(client, submitted.json()["id"])
    finally:
        server.stop()
        stop_embedded_postgres(tmp_path)
    assert task["state"] == "failed" and task["attempts"] == 2, task
    assert task["error"] == "storage unavailable: the image store cannot be reached"
    assert task["images"] == []
