"""IP-Adapter: a reference image steers generation for one request, then is gone."""

import pytest
from PIL import Image

from helpers import REF, max_difference
from huabu.errors import InvalidRequest
from huabu.native import IpAdapterRef


def adapter(scale: float = 1.0) -> IpAdapterRef:
    return IpAdapterRef(name="demo-ip-adapter", image=REF, scale=scale)


def test_ip_adapter_steers_and_leaves_no_trace(engine, small):
    red, blue = Image.new("RGB", (64, 64), (220, 20, 20)), Image.new("RGB", (64, 64), (20, 20, 220))
    base = engine.generate(small()).images[0]
    with_red = engine.generate(small(ip_adapter=adapter()), ip_image=red).images[0]
    with_blue = engine.generate(small(ip_adapter=adapter()), ip_image=blue).images[0]
    off = engine.generate(small(ip_adapter=adapter(0.0)), ip_image=red).images[0]
    after = engine.generate(small()).images[0]
    assert max_difference(base, with_red) > 0
    assert max_difference(with_red, with_blue) > 0  # the reference image matters
    assert max_difference(base, off) == 0  # scale 0: the base model
    assert max_difference(base, after) == 0  # unloaded after the request


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["DPM fast", "DPM++ 2S a"])
def test_ip_adapter_with_the_k_diffusion_samplers(engine, small, sampler):
    red, blue = Image.new("RGB", (64, 64), (220, 20, 20)), Image.new("RGB", (64, 64), (20, 20, 220))
    base = engine.generate(small(sampler=sampler)).images[0]
    with_red = engine.generate(small(ip_adapter=adapter(), sampler=sampler), ip_image=red)
    with_blue = engine.generate(small(ip_adapter=adapter(), sampler=sampler), ip_image=blue)
    off = engine.generate(small(ip_adapter=adapter(0.0), sampler=sampler), ip_image=red)
    assert max_difference(base, with_red.images[0]) > 0
    assert max_difference(with_red.images[0], with_blue.images[0]) > 0
    assert max_difference(base, off.images[0]) == 0
    assert max_difference(base, engine.generate(small(sampler=sampler)).images[0]) == 0


def test_ip_adapter_errors(engine, small):
    red = Image.new("RGB", (64, 64), (220, 20, 20))
    with pytest.raises(InvalidRequest) as caught:
        engine.generate(small(ip_adapter=IpAdapterRef(name="nope", image=REF)), ip_image=red)
    assert caught.value.param == "ip_adapter.name" and "demo-ip-adapter" in caught.value.message
