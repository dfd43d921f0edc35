"""Shared fixtures: one demo model library per test session, one engine over it."""

from __future__ import annotations

from pathlib import Path

import pytest

from huabu.engine import demo
from huabu.engine.engine import Engine
from huabu.native import GenerationRequest
from huabu.settings import Settings


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
