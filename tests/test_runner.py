"""The task runner against a real database: how a run that cannot finish ends."""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import text

from huabu.auth import Accounts
from huabu.catalog.shared import Catalog
from huabu.errors import DatabaseUnavailable
from huabu.tasks.reads import TaskReads
from huabu.tasks.runner import RunLost, TaskRunner, WorkerId
from huabu.tasks.submit import TaskSubmitter
from huabu.tasks.uploads import Uploads

pytestmark = pytest.mark.slow  # a database of its own


def test_a_run_whose_database_went_away_under_its_handler_is_queued_again(place):
    """A handler's own database read failing (an outage that the heartbeat has not noticed
    yet) stops the run; it goes back to the queue, uncharged, for any worker, instead of
    being taken for another worker's and left running forever."""
    settings, sessions, storage = place
    owner = Accounts(sessions).add_user(f"{uuid.uuid4().hex[:8]}@example.com", "password123")
    reads = TaskReads(settings, sessions)
    submitter = TaskSubmitter(settings, sessions, storage, Catalog(sessions, None, None), reads,
                              Uploads(settings, sessions, storage))  # fmt: skip
    task = submitter.enqueue(owner.id, kind="generate", origin="native", model="demo",
                             request={"model": "demo"}, total=1, work=1.0)  # fmt: skip

    def handler(task_id, data, progress):
        raise DatabaseUnavailable("connection refused")

    runner = TaskRunner(settings, sessions, {"generate": handler}, WorkerId("w1", "h", "cpu"))
    with pytest.raises(RunLost):
        runner.run(task.id, threading.Event(), threading.Event())
    runner.settle()
    again = reads.get(owner.id, task.id)
    assert again.state == "queued" and again.attempts == 0  # handed back, not charged
    with sessions() as session:
        jobs = session.execute(
            text("SELECT status FROM procrastinate_jobs j JOIN tasks t ON t.job_id = j.id "
                 "WHERE t.id = :id"), {"id": task.id}).scalars().all()  # fmt: skip
    assert jobs == ["todo"]  # a fresh job any worker can take
