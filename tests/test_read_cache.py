"""The read cache of an API server (``tasks.reads``): repeated polls come from memory, and
what nobody polls any more leaves it, so a server that runs for weeks does not grow."""

import uuid
from types import SimpleNamespace

from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from huabu.settings import Settings
from huabu.tasks import reads


def _reads(tmp_path) -> reads.TaskReads:
    task_reads = reads.TaskReads(Settings(home=tmp_path), sessionmaker(create_engine("sqlite://")))
    task_reads.enable_cache()
    return task_reads


def _finished(owner: uuid.UUID) -> SimpleNamespace:
    return SimpleNamespace(id=uuid.uuid4(), owner_id=owner, finished=True)


def test_the_cache_holds_what_is_polled_and_drops_the_rest(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(reads.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(reads, "CACHE_ENTRIES", 3)
    task_reads, owner = _reads(tmp_path), uuid.uuid4()
    polled, *others = [_finished(owner) for _ in range(4)]
    for record in (polled, *others[:2]):
        task_reads._remember(record)
        clock[0] += 1
    assert task_reads.peek(owner, str(polled.id)) is polled  # polled: the most recent now
    assert task_reads.peek(uuid.uuid4(), str(polled.id)) is None  # nobody else's
    task_reads._remember(others[2])  # a fourth: the least recently polled one goes
    assert task_reads.peek(owner, str(others[0].id)) is None
    assert task_reads.peek(owner, str(polled.id)) is polled
    # Two minutes without a poll: the next task read drops everything left unread.
    clock[0] += reads.CACHE_IDLE_SECONDS - 1
    assert task_reads.peek(owner, str(polled.id)) is polled
    clock[0] += 2
    fresh = _finished(owner)
    task_reads._remember(fresh)
    assert [task_reads.peek(owner, str(r.id)) for r in (*others, fresh)] == [None] * 3 + [fresh]
    assert task_reads.peek(owner, str(polled.id)) is polled  # read two seconds ago: kept
