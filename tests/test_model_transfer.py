"""Models that travel: what `huabu models publish` puts in the store and the catalog, and the
worker's download cache (checksums, atomic and restartable downloads, a least-recently-used
bound, a full disk), against the embedded PostgreSQL and a local store."""

from __future__ import annotations

import errno
import os
import shutil

import pytest

from huabu.catalog.library import ModelLibrary
from huabu.catalog.shared import Catalog
from huabu.catalog.transfer import ModelCache, blob_key, describe_for_publish, publish
from huabu.errors import ModelUnavailable
from huabu.settings import Settings

pytestmark = pytest.mark.slow  # a database of its own

SIZE = 600_000  # bytes per test model; the smallest cache bound (1 MiB) holds one


def lora(settings, name: str) -> ModelLibrary:
    folder = settings.models_dir / "loras"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.safetensors").write_bytes(os.urandom(SIZE))
    return ModelLibrary(settings)


def published(place, name: str) -> bytes:
    settings, sessions, storage = place
    library = lora(settings, name)
    publish(sessions, storage, library, library.find("loras", name))
    return (settings.models_dir / "loras" / f"{name}.safetensors").read_bytes()


def cache(place, bound: int = 2**30) -> ModelCache:
    settings, sessions, storage = place
    return ModelCache(settings.model_copy(update={"model_cache_bytes": bound}), sessions, storage)


def cached_names(place) -> list[str]:
    root = place[0].cache_dir / "models"
    return sorted(p.name for p in root.glob("*/*") if not p.parent.name.startswith("."))


def test_a_published_model_is_listed_and_downloaded_once_as_it_was(place):
    settings, sessions, storage = place
    original = published(place, "travel")
    catalog = Catalog(sessions, None, None)  # an API server with no model files
    [info] = [e for e in catalog.entries("loras") if e.name == "travel"]
    assert info.size_bytes == SIZE and info.layout == "single-file"
    entry = cache(place).find("loras", "travel")
    assert entry is not None and entry.path.read_bytes() == original
    assert entry.path.parent.name == info.sha256  # type: ignore[attr-defined]
    storage.delete(blob_key(info.sha256))  # type: ignore[attr-defined]
    assert cache(place).find("loras", "travel").path.read_bytes() == original  # not again
    assert cache(place).find("loras", "never-published") is None


def test_a_folder_model_travels_whole(place, home):
    settings, sessions, storage = place
    source = ModelLibrary(Settings(home=home))
    [adapter] = [e for e in source.entries("ipadapter") if e.name == "demo-ip-adapter"]
    publish(sessions, storage, source, adapter)
    entry = cache(place).find("ipadapter", adapter.name)
    assert entry is not None and entry.path.is_dir()
    files = sorted(p.relative_to(adapter.path) for p in adapter.path.rglob("*") if p.is_file())
    assert files and files == sorted(
        p.relative_to(entry.path) for p in entry.path.rglob("*") if p.is_file()
    )
    for relative in files:
        assert (entry.path / relative).read_bytes() == (adapter.path / relative).read_bytes()


def test_a_corrupt_download_is_refused_and_leaves_nothing(place):
    settings, sessions, storage = place
    published(place, "corrupt")
    row = Catalog(sessions, None, None).find("loras", "corrupt")
    storage.put(blob_key(row.sha256), b"not what was published")  # type: ignore[attr-defined]
    with pytest.raises(ModelUnavailable, match="does not match its checksum; publish it again"):
        cache(place).find("loras", "corrupt")
    root = settings.cache_dir / "models"
    assert not (root / row.sha256).exists()  # type: ignore[attr-defined]
    assert not list(root.glob(".partial-*"))


def test_an_interrupted_download_starts_again_cleanly(place):
    settings, _, _ = place
    original = published(place, "interrupted")
    row = Catalog(place[1], None, None).find("loras", "interrupted")
    stale = settings.cache_dir / "models" / f".partial-{row.sha256}-deadbeef"  # type: ignore[attr-defined]
    stale.mkdir(parents=True)
    (stale / "interrupted.safetensors").write_bytes(original[:1000])  # a crash mid-file
    assert cache(place).find("loras", "interrupted").path.read_bytes() == original
    assert not stale.exists()


def test_the_cache_keeps_the_most_recently_used_models_within_its_bound(place):
    for name in ("lru-a", "lru-b", "lru-c"):
        published(place, name)
    bound = 2 * SIZE + 100_000  # two fit, not three
    shutil.rmtree(place[0].cache_dir / "models", ignore_errors=True)
    small = cache(place, bound)
    small.find("loras", "lru-a")
    small.find("loras", "lru-b")
    os.utime(small.find("loras", "lru-a").path.parent, (1, 1))  # a used long ago...
    small.find("loras", "lru-a")  # ...and used again now: b is the least recent
    small.find("loras", "lru-c")
    assert cached_names(place) == ["lru-a.safetensors", "lru-c.safetensors"]


def test_a_model_larger_than_the_cache_or_a_full_disk_is_reported_and_leaves_nothing(place):
    settings, sessions, storage = place
    big = settings.models_dir / "loras" / "too-big.safetensors"
    big.write_bytes(os.urandom(2**20 + 1))  # over the smallest bound there is
    library = ModelLibrary(settings)
    publish(sessions, storage, library, library.find("loras", "too-big"))
    with pytest.raises(ModelUnavailable) as too_big:
        cache(place, 2**20).find("loras", "too-big")
    assert too_big.value.message == (
        "lora 'too-big' is 1048577 bytes, more than this worker's model cache holds "
        "(HUABU_MODEL_CACHE_BYTES=1048576)"
    )

    class FullDisk:
        def __getattr__(self, name):
            return getattr(place[2], name)

        def get_file(self, key, target):
            target.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")

    published(place, "no-room")
    full = ModelCache(place[0], place[1], FullDisk())  # type: ignore[arg-type]
    with pytest.raises(ModelUnavailable) as caught:
        full.find("loras", "no-room")
    assert caught.value.message == (
        "lora 'no-room' could not be downloaded to this worker: no space left on device"
    )
    assert not list((place[0].cache_dir / "models").glob(".partial-*"))


def test_publishing_what_is_not_a_model_says_what_was_expected(place, tmp_path):
    settings, _, _ = place
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(ModelUnavailable, match="is not a model: expected a .safetensors file"):
        describe_for_publish(ModelLibrary(settings), None, str(notes))
    with pytest.raises(ModelUnavailable, match="no model 'nothing' in "):
        describe_for_publish(ModelLibrary(settings), None, "nothing")


def test_a_worker_prefers_its_loaded_checkpoint_until_a_job_has_waited_too_long(place, tmp_path):
    """Routing (worker.router): a worker asks only for the queues of checkpoints it can serve,
    its loaded ones first; once a job it can serve is older than the pass-over bound, it asks
    for all of them (procrastinate then hands out the oldest)."""
    import asyncio
    import uuid

    from sqlalchemy import text

    from huabu.auth import Accounts
    from huabu.worker.router import Router

    settings, sessions, _ = place
    home = Settings(home=tmp_path, max_pass_over_seconds=30)
    (home.models_dir / "checkpoints").mkdir(parents=True)
    for name in ("sd-a", "sd-b"):  # on this worker's disk (contents do not matter here)
        (home.models_dir / "checkpoints" / f"{name}.safetensors").write_bytes(b"x")
    asked: list[list[str]] = []

    async def fetch(queues, worker_id):
        asked.append(sorted(queues))
        return "a job" if len(asked) == 1 and queues == ["generate/sd-a"] else None

    loaded: list[str] = ["sd-a"]
    router = Router(home, sessions, ModelLibrary(home), ["generate"], lambda: loaded)
    assert asyncio.run(router.next_job(fetch, 1)) == "a job"
    assert asked == [["generate/sd-a"]]  # the loaded checkpoint first, nothing else asked

    owner = Accounts(sessions).add_user(f"{uuid.uuid4().hex}@example.com", "password123").id
    with sessions.begin() as session:  # a job for sd-b, waiting for a minute already
        session.execute(
            text(
                "INSERT INTO tasks (id, owner_id, kind, origin, queue, state, model, request, "
                "work, step, total, attempts, cancel_requested, created_at) VALUES (:id, "
                ":owner, 'generate', 'test', 'generate', 'queued', 'sd-b', '{}', 1, 0, 1, 0, "
                "false, now() - interval '60 seconds')"
            ),
            {"id": uuid.uuid4(), "owner": owner},
        )
    asked.clear()
    asyncio.run(router.next_job(fetch, 1))
    assert asked == [["generate/sd-a", "generate/sd-b"]]  # the overdue job may go first
    loaded.clear()
    asked.clear()
    asyncio.run(router.next_job(fetch, 1))
    assert asked == [["generate/sd-a", "generate/sd-b"]]  # nothing loaded: any it can serve
    with sessions.begin() as session:
        session.execute(text("DELETE FROM tasks WHERE model = 'sd-b'"))
