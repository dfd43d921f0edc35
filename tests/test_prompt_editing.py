"""A1111's prompt editing ``[from:to:when]``, alternation ``[a|b]`` and composable diffusion
``AND``: scheduled as A1111 schedules them, and run on the demo models through both sampler
families (diffusers' loop and huabu's k-diffusion one)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import loaded, max_difference
from huabu.errors import InvalidRequest
from huabu.native.prompt_syntax import is_scheduled, schedule, split_and


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a cat", [(10, "a cat")]),
        ("a [dog:3]", [(3, "a "), (10, "a dog")]),
        ("a [dog: 3 ]", [(3, "a "), (10, "a dog")]),
        ("a [cat:dog:0.5] b", [(5, "a cat b"), (10, "a dog b")]),
        ("a [cat::0.5] b", [(5, "a cat b"), (10, "a  b")]),
        ("a [cat:dog:4.0]", [(10, "a cat")]),  # 4.0 is a fraction: 4 × the steps
        ("a [cat:dog:0]", [(10, "a dog")]),
        ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
        ("[(cat:1.2):dog:3]", [(3, "(cat:1.2)"), (10, "dog")]),  # emphasis is read later
        ("a [[[cat]]:2]", [(2, "a "), (10, "a [[cat]]")]),
        ("a [cat|dog]", [(s, "a cat" if s % 2 else "a dog") for s in range(1, 11)]),
        ("[fe|||]male", [(s, "female" if s % 4 == 1 else "male") for s in range(1, 11)]),
        # Not editing: brackets that close nothing, a colon without a number, a stray bar.
        ("a [unbalanced", [(10, "a [unbalanced")]),
        ("[cat:dog]", [(10, "[cat:dog]")]),
        ("a | b [cat:dog:3]", [(10, "a | b [cat:dog:3]")]),
        ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ],
)
def test_schedules_are_a1111s(prompt, expected):
    assert schedule(prompt, 10) == expected


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        # In the hires pass, fractions count from 1 and step numbers from the first pass's.
        ("a [cat:dog:0.5]", [(10, "a dog")]),
        ("a [cat:dog:1.5]", [(5, "a cat"), (10, "a dog")]),
        ("a [cat:dog:13]", [(3, "a cat"), (10, "a dog")]),
        ("a [cat|dog]", [(s, "a cat" if s % 2 else "a dog") for s in range(1, 11)]),
    ],
)
def test_the_hires_pass_goes_on_with_the_schedule(prompt, expected):
    assert schedule(prompt, 10, hires_steps=10) == expected


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a cat AND a dog", [("a cat", 1.0), (" a dog", 1.0)]),
        ("a cat :1.2 AND a dog:-0.5", [("a cat", 1.2), (" a dog", -0.5)]),
        ("a cat :1.5", [("a cat", 1.5)]),
        ("(cat:1.2)", [("(cat:1.2)", 1.0)]),
        ("black and white", [("black and white", 1.0)]),
    ],
)
def test_and_splits_weighted_parts(prompt, expected):
    assert split_and(prompt) == expected


words = st.text(st.characters(whitelist_categories=("L", "N")), min_size=1, max_size=12)
whens = st.one_of(
    st.integers(-3, 60).map(str),
    st.floats(0, 2, allow_nan=False).map(lambda f: f"{f:.3f}"),
)


@settings(max_examples=300, deadline=None)
@given(
    word=words,
    before=words,
    after=words,
    when=whens,
    steps=st.integers(1, 60),
    hires=st.one_of(st.none(), st.integers(1, 30)),
)
def test_a_switch_to_itself_is_the_plain_prompt(word, before, after, when, steps, hires):
    """``[w:w:when]``, ``[w|w]`` and their nesting read as the plain prompt at every step."""
    plain = f"{before} {word} {after}"
    for edited in (
        f"{before} [{word}:{word}:{when}] {after}",
        f"{before} [{word}|{word}] {after}",
        f"{before} [[{word}|{word}]:{word}:{when}] {after}",
    ):
        assert is_scheduled(edited)
        texts = {text for _, text in schedule(edited, steps, hires)}
        assert texts == {plain}


# -- on the engine ----------------------------------------------------------------------------

PLAIN, SAMPLERS = "a cat in the snow", ["Euler", "DPM++ 2S a"]  # diffusers' loop; huabu's own


def _cross_attention_inputs(model) -> tuple[list[torch.Tensor], object]:
    """The prompt half of the text conditioning each UNet call reads (at its first
    cross-attention), and the hook's handle."""
    seen: list[torch.Tensor] = []
    unet = model.components["unet"]
    first = next(m for name, m in unet.named_modules() if name.endswith("attn2"))

    def record(module, args, kwargs):
        seen.append(kwargs["encoder_hidden_states"][-1].clone())

    return seen, first.register_forward_pre_hook(record, with_kwargs=True)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_switch_to_itself_gives_the_plain_images_bit_for_bit(engine, small, sampler):
    plain = engine.generate(small(prompt=PLAIN, sampler=sampler)).images[0]
    for edited in ("a [cat:cat:0.5] in the snow", "a [cat|cat] in the snow"):
        image = engine.generate(small(prompt=edited, sampler=sampler)).images[0]
        assert max_difference(plain, image) == 0, edited


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_editing_differs_from_both_sides(engine, small, sampler):
    cat = engine.generate(small(prompt=PLAIN, sampler=sampler)).images[0]
    dog = engine.generate(small(prompt="a dog in the snow", sampler=sampler)).images[0]
    edited = engine.generate(small(prompt="a [cat:dog:0.25] in the snow", sampler=sampler))
    assert max_difference(edited.images[0], cat) > 0
    assert max_difference(edited.images[0], dog) > 0
    assert "Prompt" not in edited.infotexts[0]  # the prompt is written as sent
    assert edited.infotexts[0].startswith("a [cat:dog:0.25] in the snow\n")


@pytest.mark.parametrize(
    ("sampler", "steps", "prompt", "expected"),
    [
        # A1111 switches after the model call whose index reaches the step (0-based calls).
        ("Euler", 8, "a [cat:dog:0.5] in the snow", "cccccddd"),
        ("Euler", 8, "a [cat|dog] in the snow", "ccdcdcdc"),
        # A second-order sampler's schedule counts two calls a step (Heun: 2 × 4 − 1 calls).
        ("Heun", 4, "a [cat:dog:0.5] in the snow", "cccccdd"),
        ("DPM++ 2S a", 4, "a [cat:dog:0.5] in the snow", "cccccdd"),
    ],
)
def test_each_model_call_reads_the_prompt_a1111_gives_it(
    engine, small, sampler, steps, prompt, expected
):
    model = loaded(engine, "demo")
    encoder = model.prompt_encoder
    cat = encoder.encode(PLAIN, "blurry").embeds[0]
    dog = encoder.encode("a dog in the snow", "blurry").embeds[0]
    seen, hook = _cross_attention_inputs(model)
    try:
        engine.generate(small(prompt=prompt, sampler=sampler, steps=steps))
    finally:
        hook.remove()
    read = "".join(
        "c" if torch.equal(row, cat) else "d" if torch.equal(row, dog) else "?" for row in seen
    )
    assert read == expected


def test_the_hires_pass_reads_the_prompt_as_its_second_pass(engine, small):
    model = loaded(engine, "demo")
    encoder = model.prompt_encoder
    cat = encoder.encode(PLAIN, "blurry").embeds[0]
    dog = encoder.encode("a dog in the snow", "blurry").embeds[0]
    hires = {"scale": 1.5, "upscaler": "Latent", "steps": 4, "strength": 0.99}
    reads = {}
    for prompt in ("a [cat:dog:0.5] in the snow", "a [cat:dog:1.5] in the snow"):
        seen, hook = _cross_attention_inputs(model)
        try:
            engine.generate(small(prompt=prompt, steps=4, hires=hires))
        finally:
            hook.remove()
        reads[prompt] = "".join(
            "c" if torch.equal(r, cat) else "d" if torch.equal(r, dog) else "?" for r in seen
        )
    # First pass: 4 calls; hires pass: 4 steps at strength 0.99 (3 calls), counted anew.
    assert reads["a [cat:dog:0.5] in the snow"] == "cccd" + "ddd"
    assert reads["a [cat:dog:1.5] in the snow"] == "cccc" + "ccc"


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_and_composes_the_parts_guidance(engine, small, sampler):
    """``x :2`` guides twice as hard as ``x``; ``x AND y`` differs from either; a part at
    weight 0 adds nothing."""
    plain = engine.generate(small(prompt=PLAIN, sampler=sampler, guidance=3)).images[0]
    harder = engine.generate(small(prompt=PLAIN, sampler=sampler, guidance=6)).images[0]
    doubled = engine.generate(small(prompt=f"{PLAIN} :2", sampler=sampler, guidance=3)).images[0]
    assert max_difference(doubled, harder) <= 1
    assert max_difference(doubled, plain) > 8
    both = engine.generate(
        small(prompt=f"{PLAIN} AND a dog in the snow", sampler=sampler, guidance=3)
    ).images[0]
    dog = engine.generate(small(prompt="a dog in the snow", sampler=sampler, guidance=3)).images[0]
    assert max_difference(both, plain) > 8 and max_difference(both, dog) > 8
    nothing = engine.generate(
        small(prompt=f"{PLAIN} AND a dog in the snow :0", sampler=sampler, guidance=3)
    ).images[0]
    assert max_difference(nothing, plain) <= 1


def test_and_without_cfg_still_composes(engine, small):
    """At guidance 1 (no CFG), ``x AND y`` is ``uncond + (x − uncond) + (y − uncond)``: the
    UNet runs the negative prompt for it; a part at weight 0 adds nothing."""
    plain = engine.generate(small(prompt=PLAIN, guidance=1)).images[0]
    dog = engine.generate(small(prompt="a dog in the snow", guidance=1)).images[0]
    both = engine.generate(small(prompt=f"{PLAIN} AND a dog in the snow", guidance=1)).images[0]
    assert max_difference(both, plain) > 0 and max_difference(both, dog) > 0
    nothing = engine.generate(small(prompt=f"{PLAIN} AND a dog in the snow :0", guidance=1)).images[
        0
    ]
    assert max_difference(nothing, plain) <= 1


def test_sdxl_switches_the_pooled_text_too(engine, small):
    model = loaded(engine, "demo-xl")
    encoder = model.prompt_encoder
    cat, dog = encoder.encode(PLAIN, "blurry"), encoder.encode("a dog in the snow", "blurry")
    seen, hook = _cross_attention_inputs(model)
    pooled: list[torch.Tensor] = []
    # SDXL's UNet embeds the pooled text beside the size numbers: [pooled, sizes].
    added = model.components["unet"].add_embedding.register_forward_pre_hook(
        lambda module, args: pooled.append(args[0][-1, : cat.pooled.shape[-1]].clone())
    )
    try:
        engine.generate(small(model="demo-xl", prompt="a [cat:dog:0.5] in the snow", steps=4))
    finally:
        hook.remove()
        added.remove()

    def read(rows, sides):
        return "".join(
            "c" if torch.equal(r, sides[0]) else "d" if torch.equal(r, sides[1]) else "?"
            for r in rows
        )

    assert read(seen, (cat.embeds[0], dog.embeds[0])) == "cccd"
    assert read(pooled, (cat.pooled[0], dog.pooled[0])) == "cccd"


def test_scheduled_prompts_run_alone(small):
    assert small(prompt=PLAIN).batch_key() is not None
    for prompt in ("a [cat:dog:0.5]", "a [cat|dog]", "a cat AND a dog", "a cat :1.5"):
        assert small(prompt=prompt).batch_key() is None, prompt
    assert small(negative_prompt="[blurry::0.5]").batch_key() is None


@pytest.mark.parametrize(
    ("model", "changes", "field"),
    [
        ("demo-flux", {"prompt": "a [cat:dog:0.5]"}, "prompt"),
        ("demo-flux", {"prompt": "a cat AND a dog"}, "prompt"),
        ("demo-sd3", {"prompt": "a [cat|dog]"}, "prompt"),
        ("demo-sd3", {"negative_prompt": "[blurry::0.5]"}, "negative_prompt"),
    ],
)
def test_flow_families_refuse_what_they_cannot_schedule(engine, small, model, changes, field):
    request = small(**({"model": model, "sampler": "Euler", "negative_prompt": ""} | changes))
    with pytest.raises(InvalidRequest) as refused:
        engine.generate(request)
    assert refused.value.param == field
    assert "SD 1.x, 2.x and SDXL" in str(refused.value)


COMPOSED = "a [cat:dog:0.25] in the snow AND a tree :0.5"


@pytest.mark.parametrize(
    ("sampler", "changes", "inputs"),
    [
        ("Euler", {"controlnets": "unit"}, {"control_images": "REF"}),
        ("DPM++ 2S a", {"controlnets": "unit"}, {"control_images": "REF"}),
        ("DPM++ 2S a", {"ip_adapter": "adapter"}, {"ip_image": "REF"}),
        ("Euler", {"model": "demo-xl", "refiner": "refiner"}, {}),
        ("DPM++ 2S a", {"model": "demo-xl", "refiner": "refiner"}, {}),
        ("Euler", {"init_image": "REF", "strength": 0.7}, {"init_image": "REF"}),
    ],
)
def test_editing_and_and_run_with_every_extra(engine, small, sampler, changes, inputs):
    """ControlNet units, an IP-Adapter, the SDXL refiner and image-to-image each take the
    edited, composed prompt, on both sampler families."""
    from PIL import Image, ImageDraw

    from helpers import REF
    from huabu.native import ControlUnit, IpAdapterRef
    from huabu.native.generation import Refiner

    square = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(square).rectangle((16, 16, 48, 48), fill="white")

    made = {
        "unit": (ControlUnit(model="demo-controlnet", image=REF, preprocessor="none"),),
        "adapter": IpAdapterRef(name="demo-ip-adapter", image=REF, scale=1.0),
        "refiner": Refiner(model="demo-xl-refiner", switch_at=0.5),
        "REF": REF,
    }
    fields = {key: made.get(value, value) for key, value in changes.items()}
    images = {key: [square] if key == "control_images" else square for key in inputs}
    plain = engine.generate(small(sampler=sampler, prompt=PLAIN, **fields), **images)
    composed = engine.generate(small(sampler=sampler, prompt=COMPOSED, **fields), **images)
    assert len(composed.images) == 1
    assert max_difference(composed.images[0], plain.images[0]) > 0
