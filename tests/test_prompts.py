"""A1111 prompt syntax: weights, long prompts, BREAK, clip skip."""

import pytest
import torch

from helpers import loaded
from huabu.engine.prompts import tokenize
from huabu.native.prompt_syntax import parse_weights


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a (red:1.3) fox", [("a ", 1.0), ("red", 1.3), (" fox", 1.0)]),
        ("((fox))", [("fox", pytest.approx(1.21))]),
        ("[fox] run", [("fox", pytest.approx(1 / 1.1)), (" run", 1.0)]),
        (r"a \(literal\) fox", [("a (literal) fox", 1.0)]),
        ("(a [b] c:1.5)", [("a ", 1.5), ("b", pytest.approx(1.5 / 1.1)), (" c", 1.5)]),
        ("unclosed (fox", [("unclosed ", 1.0), ("fox", pytest.approx(1.1))]),
        ("ratio 16:9", [("ratio 16:9", 1.0)]),
        ("cat BREAK dog", [("cat", 1.0), ("BREAK", -1.0), ("dog", 1.0)]),
    ],
)
def test_parse_weights(prompt, expected):
    assert parse_weights(prompt) == expected


@pytest.fixture(scope="module")
def encoder(engine):
    return loaded(engine, "demo").prompt_encoder


def test_weighting_changes_only_the_weighted_tokens(encoder):
    plain = encoder.encode("a red fox", "").embeds
    weighted = encoder.encode("a (red:1.5) fox", "").embeds
    assert plain.shape == weighted.shape == (1, 77, 32)
    assert not torch.allclose(plain, weighted)
    # Position 2 is "red" (0 is the start token); the mean is restored, so other tokens
    # move only by that common factor, "red" by ~1.5 times it.
    ratio = weighted[0, :, 0] / plain[0, :, 0]
    assert ratio[2] / ratio[1] == pytest.approx(1.5, rel=1e-4)


def test_prompts_longer_than_77_tokens_are_chunked_not_truncated(encoder):
    long_prompt = ", ".join(["a red fox in deep snow"] * 20)  # ~120 tokens
    long = encoder.encode(long_prompt, "").embeds
    assert long.shape[1] == 154
    tail_changed = encoder.encode(long_prompt + ", purple moon", "").embeds
    assert not torch.allclose(long[:, 77:], tail_changed[:, 77:])


def test_negative_prompt_is_padded_to_the_prompt_length(encoder):
    conditioning = encoder.encode(" ".join(["fox"] * 100), "blurry")
    assert conditioning.embeds.shape == conditioning.negative_embeds.shape == (1, 154, 32)
    long_negative = encoder.encode("fox", " ".join(["blurry"] * 100))
    assert long_negative.embeds.shape == long_negative.negative_embeds.shape == (1, 154, 32)


def test_break_starts_a_new_chunk(encoder):
    assert encoder.encode("a cat BREAK a dog", "").embeds.shape[1] == 154


def test_clip_skip_uses_an_earlier_layer(encoder):
    assert not torch.allclose(
        encoder.encode("fox", "", 1).embeds, encoder.encode("fox", "", 2).embeds
    )


def test_weighting_changes_the_image(engine, small):
    import numpy as np

    from helpers import pixels

    plain = engine.generate(small(prompt="a red fox"))
    weighted = engine.generate(small(prompt="a (red:1.6) fox"))
    assert not np.array_equal(pixels(plain.images[0]), pixels(weighted.images[0]))


def test_a_full_chunk_ends_at_its_last_comma_as_in_a1111(encoder):
    """A1111 moves the words after a comma that is at most 20 tokens before a chunk's end into
    the next chunk; with no comma near, the cut is at exactly 75 tokens."""
    tokenizer = encoder.tokenizers[0]
    comma = tokenizer.get_vocab()[",</w>"]
    phrase = "a red fox in deep snow"  # 6 tokens, then a comma: 7 a repetition
    assert len(tokenizer(phrase, add_special_tokens=False).input_ids) == 6
    chunks = tokenize(tokenizer, ", ".join([phrase] * 20))
    assert len(chunks.ids[0]) == 70 and chunks.ids[0][-1] == comma  # ten phrases, whole
    assert chunks.ids[1][:6] == tokenizer(phrase, add_special_tokens=False).input_ids
    words = tokenize(tokenizer, " ".join(["fox"] * 100))
    assert [len(ids) for ids in words.ids] == [75, 25]
    far = tokenize(tokenizer, "fox, " + " ".join(["fox"] * 100))  # the comma is 73 back
    assert [len(ids) for ids in far.ids] == [75, 27]
