"""Schema migrations keep what is already in the database usable: a task queued before an
upgrade still reads (and runs) after it."""

import json
import uuid

from sqlalchemy import create_engine, text
from sqlalchemy.orm import sessionmaker

from huabu.db.server import database_url
from huabu.db.session import migrate
from huabu.settings import Settings
from huabu.tasks.reads import TaskReads
from serving import stop_embedded_postgres


def test_tasks_queued_before_typed_image_refs_read_after_the_upgrade(tmp_path):
    settings = Settings(home=tmp_path)
    engine = create_engine(database_url(settings))
    try:
        migrate(engine, "0003")
        owner, task = uuid.uuid4(), uuid.uuid4()
        old_request = {
            "model": "demo",
            "prompt": "a fox",
            "seed": 7,
            "init_image": "uploads/a.png",
            "inpaint": {"mask": "uploads/m.png", "blur": 4},
            "controlnets": [
                {"model": "c", "image": "uploads/c0.png"},
                {"model": "c", "image": "uploads/c1.png"},
            ],
            "ip_adapter": {"name": "ip", "image": "uploads/ip.png", "scale": 0.5},
        }
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO users (id, email, password_hash, is_admin)"
                    " VALUES (:id, 'a@b.c', 'x', false)"
                ),
                {"id": owner},
            )
            connection.execute(
                text(
                    "INSERT INTO tasks (id, owner_id, kind, origin, queue, state, model, request,"
                    " step, total, work, attempts, cancel_requested) VALUES (:id, :owner,"
                    " 'generate', 'native', 'generate', 'queued', 'demo', CAST(:request AS jsonb),"
                    " 0, 20, 1, 0, false)"
                ),
                {"id": task, "owner": owner, "request": json.dumps(old_request)},
            )
        migrate(engine)
        request = TaskReads(settings, sessionmaker(engine)).get(owner, task).request
        assert request.init_image.key == "uploads/a.png"
        assert request.inpaint.mask.key == "uploads/m.png"
        assert [unit.image.key for unit in request.controlnets] == [
            "uploads/c0.png",
            "uploads/c1.png",
        ]
        assert request.ip_adapter.image.key == "uploads/ip.png"
        assert request.prompt == "a fox" and request.seed == 7
    finally:
        engine.dispose()
        stop_embedded_postgres(tmp_path)
