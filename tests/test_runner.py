"""The task runner against a real database: how a run that cannot finish ends."""

from __future__ import annotations

import threading
import uuid
from functools import partial

import pytest
from sqlalchemy import text

from huabu.auth import Accounts, Principal
from huabu.catalog.shared import Catalog
from huabu.errors import DatabaseUnavailable
from huabu.tasks.reads import TaskReads
from huabu.tasks.submit import TaskSubmitter
from huabu.tasks.uploads import Uploads
from huabu.worker.batcher import Batcher
from huabu.worker.handle_generation import GenerationHandler
from huabu.worker.runner import RunLost, TaskRunner, WorkerId

pytestmark = pytest.mark.slow  # a database of its own


def test_a_run_whose_database_went_away_under_its_handler_is_queued_again(place):
    """A handler's own database read failing (an outage that the heartbeat has not noticed
    yet) stops the run; it goes back to the queue, uncharged, for any worker, instead of
    being taken for another worker's and left running forever."""
    settings, sessions, storage = place
    owner = Accounts(sessions).add_user(f"{uuid.uuid4().hex[:8]}@example.com", "password123")
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
    )

    def handler(task_id, data, progress):
        raise DatabaseUnavailable("connection refused")

    runner = TaskRunner(settings, sessions, {"generate": handler}, WorkerId("w1", "h", "cpu"))
    with pytest.raises(RunLost):
        runner.run(task.id, threading.Event(), threading.Event())
    runner.settle()
    again = reads.get(owner.id, task.id)
    assert again.state == "queued" and again.attempts == 0  # handed back, not charged
    with sessions() as session:
        jobs = (
            session.execute(
                text(
                    "SELECT status FROM procrastinate_jobs j JOIN tasks t ON t.job_id = j.id "
                    "WHERE t.id = :id"
                ),
                {"id": task.id},
            )
            .scalars()
            .all()
        )
    assert jobs == ["todo"]  # a fresh job any worker can take


def test_a_batch_runs_as_one_and_a_failing_task_fails_alone(place, engine, small):
    """Three queued tasks of one shape: the worker's job and the two that join it run in one
    loop. One names an embedding the library lacks, so the shared loop fails: each then runs
    alone, and only that one fails, with its own message; the joined jobs are ended."""
    settings, sessions, storage = place
    settings = settings.model_copy(update={"max_batch": 4})
    owner = Accounts(sessions).add_user(f"{uuid.uuid4().hex[:8]}@example.com", "password123")
    reads = TaskReads(settings, sessions)
    submitter = TaskSubmitter(
        settings,
        sessions,
        storage,
        Catalog(sessions, None, None),
        reads,
        Uploads(settings, sessions, storage),
    )
    requests = [small(seed=1), small(seed=2, embeddings=("no-such-embedding",)), small(seed=3)]
    assert len({request.batch_key() for request in requests}) == 1
    tasks = [
        submitter.enqueue(
            Principal.of(owner),
            kind="generate",
            origin="native",
            model="demo",
            request=r.model_dump(mode="json"),
            total=r.steps,
            work=1.0,
            batch_key=r.batch_key(),
        )
        for r in requests
    ]
    with sessions.begin() as session:
        worker = session.execute(text("SELECT procrastinate_register_worker_v1()")).scalar()
        job = session.execute(  # as procrastinate's fetch hands the worker the first one's
            text(
                "UPDATE procrastinate_jobs SET status = 'doing', worker_id = :w "
                "WHERE id = :job RETURNING id, queue_name"
            ),
            {"w": worker, "job": _rows(sessions, tasks)[0].job_id},
        ).one()
    runner = TaskRunner(
        settings,
        sessions,
        {"generate": GenerationHandler(settings, storage, engine)},
        WorkerId("w1", "h", "cpu"),
    )
    stopping = threading.Event()
    gather = partial(Batcher(settings, sessions).join, job.queue_name, worker, stopping=stopping)
    runner.run(tasks[0].id, stopping, threading.Event(), job.id, gather)
    done = [reads.get(owner.id, task.id) for task in tasks]
    assert [task.state for task in done] == ["succeeded", "failed", "succeeded"]
    assert "no-such-embedding" in done[1].error
    assert {task.batch_size for task in done} == {3}
    assert [image.seed for task in done for image in task.images] == [1, 3]
    with sessions() as session:
        left = session.execute(
            text("SELECT count(*) FROM procrastinate_jobs WHERE id = ANY(:ids)"),
            {"ids": [t.job_id for t in _rows(sessions, tasks)][1:]},
        ).scalar()
    assert left == 0  # the joined jobs were ended with their tasks


def _rows(sessions, tasks):
    with sessions() as session:
        return session.execute(
            text("SELECT job_id FROM tasks WHERE id = ANY(:ids) ORDER BY fair_rank"),
            {"ids": [task.id for task in tasks]},
        ).all()


def test_long_polls_wake_for_a_state_change_and_streams_for_progress_too(place):
    """A worker announces every progress write; a long poll (which re-reads the task each
    time it wakes) sleeps through them and wakes when the task's state changes, while an
    event stream wakes for both."""
    import asyncio

    from huabu.db.server import database_uri
    from huabu.tasks import queue
    from huabu.tasks.events import TaskEvents

    settings, sessions, _ = place
    task_id = str(uuid.uuid4())

    async def scenario() -> list[tuple[bool, bool]]:
        events = TaskEvents(database_uri(settings))
        await events.start()
        poll = events.subscribe(task_id, progress=False)
        stream = events.subscribe(task_id)
        seen = []
        try:
            for progress in (True, False):
                with sessions.begin() as session:
                    queue.announce(session, task_id, progress=progress)
                await asyncio.wait_for(stream.wait(), 10)
                await asyncio.sleep(0.2)  # time for a wrongly woken poll to show
                seen.append((poll.is_set(), stream.is_set()))
                poll.clear(), stream.clear()
        finally:
            events.unsubscribe(task_id, poll), events.unsubscribe(task_id, stream)
            await events.stop()
        return seen

    assert asyncio.run(scenario()) == [(False, True), (True, True)]
