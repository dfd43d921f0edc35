"""Deletion and retention (issue 17): a deleted task's files leave storage and it reads as
gone; HUABU_RETENTION_DAYS ages out old tasks with their files; uploads nothing used go after
a day; the counters of /metrics do not go down when rows go; a nearly full disk refuses new
work with a 507. Storage: local files and S3 (moto's server mode, the stand-in)."""

from __future__ import annotations

import uuid

import httpx
import pytest
from sqlalchemy import text

from huabu.auth import Accounts, Principal
from huabu.catalog.shared import Catalog
from huabu.errors import StorageFull
from huabu.settings import Settings
from huabu.storage import open_storage
from huabu.tasks import metrics, retention
from huabu.tasks.reads import TaskReads
from huabu.tasks.submit import TaskSubmitter
from huabu.tasks.uploads import Uploads
from huabu.web.error_renderers import status_for
from test_service import SLOW, SMALL, client_for, submit, wait_finished, wait_state

pytestmark = pytest.mark.slow  # a database of its own


def _png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (32, 32), (20, 120, 30)).save(out, format="PNG")
    return out.getvalue()


def test_a_deleted_task_is_gone_with_its_files(server, accounts, service_home):
    client = client_for(accounts, server, "deleter@example.com")
    other = client_for(accounts, server, "not-the-deleter@example.com")
    done = wait_finished(client, submit(client, SMALL)["id"])
    image = done["images"][0]
    assert httpx.get(image["url"]).status_code == 200
    assert other.delete(f"/huabu/v1/tasks/{done['id']}").status_code == 404  # not theirs
    assert client.delete(f"/huabu/v1/tasks/{done['id']}").status_code == 204
    assert httpx.get(image["url"]).status_code == 404
    assert httpx.get(image["preview_url"]).status_code == 404
    assert client.get(f"/huabu/v1/tasks/{done['id']}").status_code == 404
    listed = [t["id"] for t in client.get("/huabu/v1/tasks").json()["data"]]
    assert done["id"] not in listed
    assert not (service_home / "files" / "images" / done["id"]).exists()
    assert client.delete(f"/huabu/v1/tasks/{done['id']}").status_code == 404  # once

    # A running task is cancelled first, and reads as gone at once.
    running = submit(client, SLOW)
    wait_state(client, running["id"], "running")
    assert client.delete(f"/huabu/v1/tasks/{running['id']}").status_code == 204
    assert client.get(f"/huabu/v1/tasks/{running['id']}").status_code == 404
    settings = Settings(home=service_home)
    from huabu.db.session import open_database

    sessions = open_database(settings)
    with sessions() as session:
        state = session.execute(
            text("SELECT state, cancel_requested FROM tasks WHERE id = :id"), {"id": running["id"]}
        ).one()
    assert state.cancel_requested  # its worker stops it at the next step


@pytest.fixture(params=["local", "s3"])
def place(request, tmp_path, s3, home):
    """A database and storage of their own (local files, or a bucket on moto's S3)."""
    from huabu.db.session import open_database
    from serving import stop_embedded_postgres

    changes = {}
    if request.param == "s3":
        changes = {
            "storage_url": f"s3://{s3.bucket}/retention-{uuid.uuid4().hex[:6]}",
            "s3_endpoint_url": s3.url,
        }
    settings = Settings(home=tmp_path, **changes)
    sessions = open_database(settings)
    yield settings, sessions, open_storage(settings)
    stop_embedded_postgres(tmp_path)


def _finished_task(settings, sessions, storage, owner, *, days_ago: float) -> tuple[str, list]:
    """A generation task that succeeded ``days_ago`` days ago, with an image and preview in
    storage."""
    reads = TaskReads(settings, sessions)
    submitter = TaskSubmitter(
        settings,
        sessions,
        storage,
        Catalog(sessions, None, None),
        reads,
        Uploads(settings, sessions, storage),
    )
    task = submitter.enqueue(
        Principal.of(owner),
        kind="generate",
        origin="native",
        model="demo",
        request={"model": "demo"},
        total=1,
        work=1.0,
        images=1,
    )
    keys = [f"images/{task.id}/0.png", f"previews/{task.id}/0.webp"]
    for key in keys:
        storage.put(key, b"image bytes")
    with sessions.begin() as session:
        session.execute(
            text(
                "UPDATE tasks SET state = 'succeeded', created_at = now() - make_interval("
                "days => :days) - interval '4 seconds', started_at = now() - make_interval("
                "days => :days) - interval '3 seconds', finished_at = now() - make_interval("
                "days => :days) WHERE id = :id"
            ),
            {"id": task.id, "days": days_ago},
        )
        image = {"id": task.id, "key": keys[0], "preview": keys[1]}
        session.execute(
            text(
                "INSERT INTO task_images (id, task_id, index, seed, key, preview_key, format, "
                "width, height, size_bytes, infotext) VALUES (gen_random_uuid(), :id, 0, 1, :key, "
                ":preview, 'png', 64, 64, 11, '')"
            ),
            image,
        )
    return str(task.id), keys


def test_retention_ages_out_tasks_and_unused_uploads_and_counters_stay(place):
    settings, sessions, storage = place
    owner = Accounts(sessions).add_user(f"{uuid.uuid4().hex[:8]}@example.com", "password123")
    old_id, old_keys = _finished_task(settings, sessions, storage, owner, days_ago=40)
    new_id, new_keys = _finished_task(settings, sessions, storage, owner, days_ago=1)
    uploads = Uploads(settings, sessions, storage)
    unused, used = (uploads.upload(owner.id, _png()) for _ in range(2))
    with sessions.begin() as session:
        session.execute(text("UPDATE uploads SET created_at = now() - interval '2 days'"))
        request = f'{{"init_image": {{"key": "{used.key}"}}}}'
        session.execute(
            text("UPDATE tasks SET request = CAST(:request AS jsonb) WHERE id = :id"),
            {"id": new_id, "request": request},
        )
    with sessions() as session:
        before = metrics.snapshot(session, stalled_seconds=10).counts

    retention.housekeeping(settings.model_copy(update={"retention_days": 30}), sessions, storage)

    assert not any(storage.exists(key) for key in old_keys)
    assert all(storage.exists(key) for key in new_keys)
    with sessions() as session:
        ids = set(session.execute(text("SELECT id::text FROM tasks")).scalars())
        after = metrics.snapshot(session, stalled_seconds=10).counts
        upload_keys = set(session.execute(text("SELECT key FROM uploads")).scalars())
    assert ids == {new_id}
    assert after == pytest.approx(before)  # the deleted rows' counts went into the baselines
    assert upload_keys == {used.key} and not storage.exists(unused.key)
    assert storage.exists(used.key)

    # With retention off (the default), nothing that is used goes.
    retention.housekeeping(settings, sessions, storage)
    assert all(storage.exists(key) for key in new_keys)


@pytest.mark.parametrize("place", ["local"], indirect=True)  # (a bucket has no free space)
def test_a_nearly_full_disk_refuses_new_work(place):
    settings, sessions, storage = place
    owner = Accounts(sessions).add_user(f"{uuid.uuid4().hex[:8]}@example.com", "password123")
    full = settings.model_copy(update={"min_free_bytes": 2**62})
    reads = TaskReads(full, sessions)
    submitter = TaskSubmitter(
        full,
        sessions,
        storage,
        Catalog(sessions, None, None),
        reads,
        Uploads(full, sessions, storage),
    )
    with pytest.raises(StorageFull, match="nearly full") as caught:
        submitter.enqueue(
            Principal.of(owner),
            kind="generate",
            origin="native",
            model="demo",
            request={"model": "demo"},
            total=1,
            work=1.0,
        )
    assert status_for(caught.value) == 507
    with sessions() as session:
        assert session.execute(text("SELECT count(*) FROM tasks")).scalar() == 0
