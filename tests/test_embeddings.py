"""Textual-inversion embeddings: they apply where their name is written, and nowhere else."""

import pytest

from helpers import max_difference
from huabu.errors import InvalidRequest


def test_embedding_changes_only_prompts_that_name_it(engine, small):
    base = engine.generate(small(prompt="a fox")).images[0]
    named = engine.generate(small(prompt="a fox, demo-embedding")).images[0]
    word = engine.generate(small(prompt="a fox, demo embedding")).images[0]  # not its name
    after = engine.generate(small(prompt="a fox")).images[0]
    assert max_difference(base, named) > 0
    assert max_difference(named, word) > 0
    assert max_difference(base, after) == 0  # loaded, yet no trace in other prompts


def test_embedding_in_the_negative_prompt_and_with_weights(engine, small):
    base = engine.generate(small(negative_prompt="blurry")).images[0]
    negative = engine.generate(small(negative_prompt="blurry, demo-embedding")).images[0]
    weighted = engine.generate(small(negative_prompt="blurry, (demo-embedding:1.4)")).images[0]
    assert max_difference(base, negative) > 0 and max_difference(negative, weighted) > 0


def test_listing_an_unknown_embedding_names_it(engine, small):
    with pytest.raises(InvalidRequest) as caught:
        engine.generate(small(embeddings=("nope",)))
    assert caught.value.param == "embeddings" and "demo-embedding" in caught.value.message


def test_diffusers_layout_embedding(engine, small, settings):
    """diffusers' textual-inversion files map the token to its vectors."""
    import torch
    from safetensors.torch import load_file, save_file

    a1111 = load_file(settings.models_dir / "embeddings" / "demo-embedding.safetensors")
    save_file(
        {"<demo-copy>": a1111["emb_params"].clone()},
        str(settings.models_dir / "embeddings" / "demo-copy.safetensors"),
    )
    original = engine.generate(small(prompt="a fox, demo-embedding")).images[0]
    copy = engine.generate(small(prompt="a fox, demo-copy")).images[0]
    assert max_difference(original, copy) == 0  # the same vectors, another file layout
    assert torch.is_tensor(a1111["emb_params"])
