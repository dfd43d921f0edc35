"""Shared fixtures: one demo model library per test session, one engine over it, and one
running `huabu serve` (worker inside) over its own embedded PostgreSQL for HTTP tests."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from helpers import publish_library
from huabu import demos
from huabu.auth import Accounts
from huabu.db.session import open_database
from huabu.engine.engine import Engine
from huabu.native import GenerationRequest
from huabu.settings import Settings
from huabu.storage import open_storage
from internals import WATCH, install
from s3server import CREDENTIALS, MotoS3
from serving import LOGS, TRACEBACK, Server, close_zygote, stop_embedded_postgres


def pytest_configure(config):
    install(WATCH)


def pytest_collection_modifyitems(config, items):
    """Tests that talk to a shared ``huabu serve`` (with a worker, or API-only) are ``server``
    tests (make test-fast leaves them out)."""
    for item in items:
        if {"server", "api_server"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if any response showed the server's insides (see ``internals``), or any
    huabu process logged a traceback: a traceback is a bug that nothing expected."""
    close_zygote()
    for log in dict.fromkeys(LOGS):
        count = log.read_text(errors="replace").count(TRACEBACK) if log.exists() else 0
        if count:
            WATCH.findings.append(f"{count} traceback(s) in {log}")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and WATCH.seen:
        reporter.write_line(f"\n{WATCH.seen} responses from huabu checked for server internals")
    if WATCH.findings:
        reporter.write_line(f"{len(WATCH.findings)} finding(s) of server internals:")
        for finding in WATCH.findings[:20]:
            reporter.write_line(f"  {finding}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def home(tmp_path_factory, request) -> Path:
    """A home with the demo models, built once per version of the code that builds them and
    kept in pytest's cache (the edit-test loop skips the 10 s build); each run gets a copy."""
    path = tmp_path_factory.mktemp("huabu-home")
    package = Path(demos.__file__).parent
    sources = [*sorted(package.glob("*.py")), package.parent / "catalog" / "architectures.py"]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]
    cached = Path(str(request.config.cache.mkdir("huabu-demo"))) / digest
    if not (cached / "models").is_dir():
        staging = cached.with_name(f".{digest}-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        demos.build(Settings(home=staging))
        shutil.rmtree(cached, ignore_errors=True)
        for old in cached.parent.iterdir():  # earlier versions' builds
            if not old.name.startswith("."):
                shutil.rmtree(old, ignore_errors=True)
        staging.rename(cached)
    shutil.copytree(cached / "models", path / "models")
    return path


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """A home with an embedded database and local storage of its own, per test module:
    (settings, sessions, storage)."""
    home = tmp_path_factory.mktemp("place")
    settings = Settings(home=home)
    sessions = open_database(settings)
    yield settings, sessions, open_storage(settings)
    stop_embedded_postgres(home)


@pytest.fixture(scope="session")
def settings(home: Path) -> Settings:
    return Settings(home=home, threads=2)


@pytest.fixture(scope="session")
def engine(settings: Settings) -> Engine:
    return Engine(settings)


@pytest.fixture
def small():
    """A fast request on the demo model: 64×64, 8 steps, fixed seed."""

    def make(**changes) -> GenerationRequest:
        base = dict(
            model="demo",
            prompt="a red fox in the snow",
            negative_prompt="blurry",
            width=64,
            height=64,
            steps=8,
            seed=1234,
            sampler="Euler",
        )
        return GenerationRequest(**(base | changes))

    return make


@pytest.fixture
def lora_path(settings):
    """Registers LoRA names a test trains into the shared library; removes them after it."""
    paths = []
    yield lambda name: paths.append(settings.models_dir / "loras" / f"{name}.safetensors")
    for path in paths:
        path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """moto's S3 server as its own process: a stand-in for a real S3 service."""
    root = tmp_path_factory.mktemp("s3")
    server = MotoS3(root / "moto.log")
    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(CREDENTIALS)  # for the S3Storage this process makes
    yield server
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    server.stop()


@pytest.fixture(scope="session")
def service_home(tmp_path_factory, home):
    path = tmp_path_factory.mktemp("service")
    (path / "models").symlink_to(home / "models")
    yield path
    stop_embedded_postgres(path)


@pytest.fixture(scope="session")
def accounts(service_home):
    return Accounts(open_database(Settings(home=service_home)))


@pytest.fixture(scope="session")
def server(service_home, accounts):
    # 127.0.0.2 stands in for "a public image host" in the URL-fetching tests.
    server = Server(
        service_home,
        {
            "HUABU_FETCH_ALLOW": '["127.0.0.2/32"]',
            # Every test sends from 127.0.0.1: wrong passwords are throttled per account only.
            "HUABU_LOGIN_ADDRESS_ATTEMPTS": "1000000",
            "HUABU_WEBHOOK_BACKOFF_SECONDS": "0.2",
            "HUABU_WEBHOOK_ATTEMPTS": "3",
        },
    )
    yield server
    server.stop()


STYLES_CSV = """name,prompt,negative_prompt
oil painting,"oil painting of {prompt}, thick brush strokes",blurry
tagged,"<lora:demo-lora:0.5>",
"moody, dark","dark, moody light","bright, {prompt}"
"""


@pytest.fixture
def styles(service_home):
    """The shared server's styles.csv, in A1111's format, for one test."""
    path = service_home / "styles.csv"
    path.write_text(STYLES_CSV, encoding="utf-8")
    yield path
    path.unlink()


@pytest.fixture(scope="session")
def api_server(tmp_path_factory, home):
    """An API-only `huabu serve` (no worker, no torch) with its own database, the demo library
    published to its store (its models folder is only where they are published from), and an
    API key for it as ``.key``: what it queues never runs, and a synchronous route answers 504 after
    0.1 s; a request head must arrive within 2 s, and at most 64 connections are open. For
    fuzzing, abuse, and measuring the API process's memory."""
    path = tmp_path_factory.mktemp("api")
    (path / "models").symlink_to(home / "models")
    server = Server(
        path,
        {
            "HUABU_WORKER": "false",
            "HUABU_SYNC_TIMEOUT": "0.1",
            "HUABU_MAX_QUEUED_PER_USER": "1000000",
            "HUABU_MAX_QUEUED": "1000000",
            "HUABU_FETCH_ALLOW": '["127.0.0.2/32"]',
            # Every test (and the fuzzer) sends from 127.0.0.1: throttled per account only.
            "HUABU_LOGIN_ADDRESS_ATTEMPTS": "1000000",
            "HUABU_HEADER_TIMEOUT": "2",
            "HUABU_MAX_CONNECTIONS": "64",
        },
    )
    sessions = open_database(Settings(home=path))
    # The fleet this server fronts has no worker; what it can serve is what is published.
    publish_library(Settings(home=path), sessions)
    accounts = Accounts(sessions)
    user = accounts.add_user("api@example.com", "password123")
    server.key = accounts.create_key(user.id)  # type: ignore[attr-defined]
    server.accounts = accounts  # type: ignore[attr-defined]
    yield server
    server.stop()
    stop_embedded_postgres(path)
