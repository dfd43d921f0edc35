"""Shared engine state under concurrency: a cached model serves one request at a time (a
request switches LoRAs and adapters on it), eviction never takes a model in use, and the
trainer's private copy of its base is freed when training ends."""

import gc
import threading
import weakref

import numpy as np
import pytest

from helpers import loaded, pixels
from huabu.engine.engine import Engine
from huabu.native import LoraRef
from huabu.training.trainer import train_lora
from test_training import job


@pytest.mark.slow
def test_concurrent_requests_on_one_model_do_not_see_each_others_loras(settings, small):
    engine = Engine(settings)
    plain = small(steps=4)
    styled = small(steps=4, loras=(LoraRef(name="demo-lora", weight=1.0),))
    expected_plain = pixels(engine.generate(plain).images[0])
    expected_styled = pixels(engine.generate(styled).images[0])
    assert not np.array_equal(expected_plain, expected_styled)  # the LoRA shows
    results: dict[str, list[np.ndarray]] = {"plain": [], "styled": []}
    errors: list[BaseException] = []

    def run(name, request):
        try:
            for _ in range(3):
                results[name].append(pixels(engine.generate(request).images[0]))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=("plain", plain)),
        threading.Thread(target=run, args=("styled", styled)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    assert all(np.array_equal(image, expected_plain) for image in results["plain"])
    assert all(np.array_equal(image, expected_styled) for image in results["styled"])


@pytest.mark.slow
def test_eviction_passes_over_a_model_in_use(settings, small):
    engine = Engine(settings.model_copy(update={"pipeline_cache_size": 1}))
    in_use, release = threading.Event(), threading.Event()

    def hold():
        with engine.cache.lease("demo") as model:
            held.append(model)
            in_use.set()
            release.wait(60)

    held: list = []
    holder = threading.Thread(target=hold)
    holder.start()
    assert in_use.wait(60)
    try:
        engine.generate(small(model="demo-single"))  # needs room: "demo" is leased
        assert "demo" in engine.cache.loaded()
        assert loaded(engine, "demo-single") is not None
    finally:
        release.set()
        holder.join(60)
    assert len(engine.cache.loaded()) == 1  # back to its size once nothing is leased
    assert engine.generate(small(model="demo")).images  # and the leased model still works


@pytest.mark.slow
def test_training_frees_its_copy_of_the_base_model(settings, lora_path, monkeypatch):
    engine = Engine(settings)
    copies = []
    load_private = engine.cache.load_private

    def tracked(name):
        model = load_private(name)
        copies.append(weakref.ref(model.components["unet"]))
        return model

    monkeypatch.setattr(engine.cache, "load_private", tracked)
    lora_path("freed")
    train_lora(settings, job("freed", steps=2), cache=engine.cache)
    gc.collect()
    assert len(copies) == 1 and copies[0]() is None
    assert engine.cache.loaded() == []  # training never put its copy in the serving cache
