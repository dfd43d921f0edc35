"""Shared fixtures: one demo model library per test session, one engine over it, and one
running `huabu serve` (worker inside) over its own embedded PostgreSQL for HTTP tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from huabu.auth import Accounts
from huabu.db.session import open_database
from huabu.engine import demo
from huabu.engine.engine import Engine
from huabu.native import GenerationRequest
from huabu.settings import Settings
from serving import Server, stop_embedded_postgres


@pytest.fixture(scope="session")
def home(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("huabu-home")
    demo.build(Settings(home=path))
    return path


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
    server = Server(service_home, {"HUABU_FETCH_ALLOW": '["127.0.0.2/32"]'})
    yield server
    server.stop()
