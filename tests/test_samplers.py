"""Every sampler name runs on the demo model, is deterministic, and samplers really differ."""

import numpy as np
import pytest

from helpers import max_difference, pixels
from huabu.engine.samplers import SAMPLERS
from huabu.native import SAMPLER_NAMES


def test_every_spec_003_sampler_is_implemented():
    spec_003 = {
        "Euler a",
        "Euler",
        "LMS",
        "Heun",
        "DPM2",
        "DPM2 a",
        "DPM++ 2S a",
        "DPM++ 2M",
        "DPM++ SDE",
        "DPM fast",
        "DPM adaptive",
        "LMS Karras",
        "DPM2 Karras",
        "DPM2 a Karras",
        "DPM++ 2S a Karras",
        "DPM++ 2M Karras",
        "DPM++ SDE Karras",
        "DDIM",
        "PLMS",
        "UniPC",
    }
    assert spec_003 | {"DPM++ 2M SDE", "DPM++ 2M SDE Karras"} == set(SAMPLERS) == set(SAMPLER_NAMES)


#: Images made above, by sampler: the alias check below reuses them.
_MADE: dict = {}
#: Samplers that make test-fast: one ancestral, one multistep, one of huabu's k-diffusion ports.
FAST = ("Euler a", "DPM++ 2M Karras", "DPM adaptive")


@pytest.mark.parametrize(
    "name",
    [pytest.param(name, marks=() if name in FAST else pytest.mark.slow) for name in SAMPLER_NAMES],
)
def test_sampler_runs_reports_progress_and_is_deterministic(engine, small, name):
    progress = []
    first = engine.generate(
        small(sampler=name), on_progress=lambda s, t, _p: progress.append((s, t))
    )
    second = engine.generate(small(sampler=name))
    _MADE[name] = first.images[0]
    assert first.images[0].size == (64, 64)
    assert np.array_equal(pixels(first.images[0]), pixels(second.images[0])), "not deterministic"
    assert progress, "no progress reported"
    assert progress[-1][0] == progress[-1][1], f"progress ended at {progress[-1]}"
    assert [s for s, _ in progress] == sorted(s for s, _ in progress)
    assert first.request.sampler == name


@pytest.mark.slow
def test_samplers_are_not_aliases_of_each_other(engine, small):
    images = {
        name: _MADE.get(name) or engine.generate(small(sampler=name)).images[0]
        for name in SAMPLER_NAMES
    }
    # Deterministic samplers of the same family may land close; none may be identical.
    names = list(images)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert max_difference(images[a], images[b]) > 0, f"{a} == {b}"


def test_sampler_names_match_case_insensitively(engine, small):
    assert engine.generate(small(sampler="dpm++ 2m karras")).request.sampler == "DPM++ 2M Karras"


@pytest.mark.parametrize("sampler", ["DPM++ 2S a", "DPM fast"])
def test_huabus_k_samplers_take_any_eta(engine, small, sampler):
    default = engine.generate(small(sampler=sampler)).images[0]
    calm = engine.generate(small(sampler=sampler, eta=0)).images[0]
    again = engine.generate(small(sampler=sampler, eta=0)).images[0]
    assert max_difference(default, calm) > 0
    assert max_difference(calm, again) == 0
    assert "Eta: 0" in engine.generate(small(sampler=sampler, eta=0)).infotexts[0]


def test_an_eta_a_sampler_cannot_take_is_refused_by_name(engine, small):
    from huabu.errors import InvalidRequest

    for sampler, eta in (("DPM++ SDE", 0.5), ("Euler a", 0.3), ("DPM++ 2M SDE", 0)):
        with pytest.raises(InvalidRequest) as refused:
            engine.generate(small(sampler=sampler, eta=eta))
        assert refused.value.param == "eta"
    # Samplers without noise ignore it, as in A1111.
    assert engine.generate(small(sampler="DPM++ 2M", eta=0.3)).images
    # A flow family's ancestral sampler runs at eta 1 (webuiapi's default) only.
    flux = {"model": "demo-flux", "negative_prompt": ""}
    assert engine.generate(small(sampler="Euler a", eta=1, **flux)).images
    with pytest.raises(InvalidRequest) as refused:
        engine.generate(small(sampler="euler a", eta=0, **flux))
    assert refused.value.param == "eta"
