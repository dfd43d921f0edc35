"""Requests that share one denoising loop get the images they get alone (the engine's half of
cross-request batching; the worker's half is in test_service)."""

import pytest

from helpers import max_difference
from huabu.errors import Cancelled

_LONG = ", ".join(["a very long prompt about a lighthouse on a cliff at dusk"] * 8)


def _members(small, **shared):
    return [
        small(prompt="a red fox in the snow", seed=11, guidance=7.0, **shared),
        small(
            prompt="a lighthouse at night",
            negative_prompt="",
            seed=500,
            guidance=3.5,
            n_images=2,
            **shared,
        ),
        small(prompt="a bowl of ramen", seed=11, guidance=12.0, **shared),
    ]


@pytest.mark.parametrize(
    "sampler,model",
    [
        ("Euler a", "demo"),  # a diffusers scheduler, with per-step noise
        ("DPM++ 2S a", "demo"),  # huabu's own k-diffusion loop
        pytest.param("DPM++ 2M", "demo-xl", marks=pytest.mark.slow),  # SDXL's pooled text
    ],
)
def test_each_request_of_a_batch_gets_the_images_it_gets_alone(engine, small, sampler, model):
    requests = _members(small, sampler=sampler, model=model, steps=6)
    seen: list[list[tuple[int, int]]] = [[] for _ in requests]
    batched = engine.generate_batch(
        requests,
        [lambda s, t, _p, mine=mine: mine.append((s, t)) for mine in seen],
        [lambda: False] * len(requests),
    )
    for request, result, progress in zip(requests, batched, seen, strict=True):
        alone = engine.generate(request)
        assert result.seeds == alone.seeds
        assert len(result.images) == request.n_images
        for mine, single in zip(result.images, alone.images, strict=True):
            assert max_difference(mine, single) <= 2
        assert result.infotexts == alone.infotexts  # its own prompt, seed and CFG scale
        assert progress[-1] == (6, 6)
    # Different seeds and prompts did make different images (the test could fail).
    assert max_difference(batched[0].images[0], batched[2].images[0]) > 20


def test_prompts_of_different_lengths_sample_apart_and_keep_their_order(engine, small):
    requests = [small(prompt="a fox", seed=3), small(prompt=_LONG, seed=4), small(seed=5)]
    batched = engine.generate_batch(requests, [lambda s, t, _p: None] * 3, [lambda: False] * 3)
    assert [r.seeds for r in batched] == [[3], [4], [5]]
    alone = engine.generate(requests[1])
    assert max_difference(batched[1].images[0], alone.images[0]) <= 2


def test_the_loop_stops_only_when_every_request_wants_to(engine, small):
    requests = _members(small)
    cancelled = [True, False, True]
    results = engine.generate_batch(
        requests, [lambda s, t, _p: None] * 3, [lambda c=c: c for c in cancelled]
    )
    assert len(results) == 3  # one went on, so all did (the runner drops the cancelled ones)
    with pytest.raises(Cancelled):
        engine.generate_batch(requests, [lambda s, t, _p: None] * 3, [lambda: True] * 3)


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2S a"])
def test_image_to_image_requests_share_a_loop_each_with_its_own_source(engine, small, sampler):
    """Sources differ per request (the strength is shared: it is in the batch key); each
    request's images are the ones it gets alone from its own source."""
    from PIL import Image

    from huabu.native import ImageRef

    white = Image.new("RGB", (64, 64), (255, 255, 255))
    black = Image.new("RGB", (64, 64), (0, 0, 0))
    shared = {
        "sampler": sampler,
        "steps": 6,
        "strength": 0.35,
        "init_image": ImageRef.stored("uploads/source.png"),
    }
    requests = [
        small(seed=3, **shared),
        small(seed=3, n_images=2, **shared),
        small(seed=9, prompt="a bowl of ramen", **shared),
    ]
    assert len({request.batch_key() for request in requests}) == 1
    assert small(**shared | {"strength": 0.5}).batch_key() != requests[0].batch_key()
    sources = [white, black, white]
    batched = engine.generate_batch(
        requests, [lambda s, t, _p: None] * 3, [lambda: False] * 3, sources
    )
    for request, source, result in zip(requests, sources, batched, strict=True):
        alone = engine.generate(request, init_image=source)
        assert len(result.images) == request.n_images
        for mine, single in zip(result.images, alone.images, strict=True):
            assert max_difference(mine, single) <= 2
    # The sources were used (text-to-image makes another picture), each request's own: the
    # first two share seed and prompt, and differ as their sources do (alone: compared above).
    plain = engine.generate(requests[0].model_copy(update={"init_image": None})).images[0]
    assert max_difference(batched[0].images[0], plain) > 20
    assert max_difference(batched[0].images[0], batched[1].images[0]) > 2
