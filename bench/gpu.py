"""GPU check and benchmark, for a machine with an accelerator (CUDA or MPS).

    .venv/bin/python bench/gpu.py [--size 512] [--steps 20] [--runs 5] [--train-steps 30]

(0) Every engine path runs on the device in its dtype (fp16) on the demo model: each sampler
    family, img2img, inpainting (both sampling paths, only-masked), ControlNet with inpainting,
    IP-Adapter, a LoRA, and a short LoRA training; a NaN or an error is reported, not raised.
On a full-size SD 1.5 architecture with random weights (no download: the shapes are what cost):
(1) huabu's ``Engine.generate`` ÷ a bare diffusers pipeline call, same request (target ≤ 1.03);
(2) inpainting ÷ image-to-image at the same strength (the mask's extra work);
(3) LoRA training: seconds per step at the model's 512² (batch 4, rank 16), and images/s.
On a full-size SDXL architecture with random weights, in fp16:
(4) huabu ÷ bare diffusers at 1024², 20 steps, Euler a (it/s and peak GPU memory), and the VAE:
    huabu's decode (SDXL's VAE is upcast to fp32, as diffusers does) ÷ a plain fp16 decode.
On the full-size SD 1.5 again (``bench/speed.py``'s measurements; issue 16's goals in brackets):
(5) images/s of 8 requests batched ÷ one at a time (≥ 1.8); it/s with HUABU_COMPILE ÷ eager
    (≥ 1.4), with the compile time and a restarted process's time from the disk cache; the
    cost of a LoRA hot-swap (< 5 % of a generation, and no graph compiled).
Prints; asserts nothing. ``--parts`` picks the sections (default: all of
checks,sd15,sdxl,speed).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import speed  # noqa: E402 — bench/speed.py, beside this script
import torch
from diffusers import (
    AutoencoderKL,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from PIL import Image, ImageDraw
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from huabu import demos
from huabu.catalog.architectures import Architecture, reference_config
from huabu.engine import quiet_libraries
from huabu.engine.engine import Engine
from huabu.engine.single_file import tokenizer_files
from huabu.native import (
    ControlUnit,
    GenerationRequest,
    HiresFix,
    ImageRef,
    InpaintRef,
    IpAdapterRef,
    LoraRef,
)
from huabu.native.generation import Refiner
from huabu.settings import Settings
from huabu.training.trainer import TrainingJob, train_lora

#: The input images are passed to the engine directly; requests name them by a stored key.
REF = ImageRef(key="uploads/bench.png")


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(*fns, runs: int) -> list[float]:
    """Median times of the callables, interleaved so drift (clocks, heat) hits all alike."""
    for fn in fns:
        fn()  # warm-up
    samples = [[] for _ in fns]
    for _ in range(runs):
        for fn, times in zip(fns, samples, strict=True):
            synchronize()
            start = time.perf_counter()
            fn()
            synchronize()
            times.append(time.perf_counter() - start)
    return [statistics.median(times) for times in samples]


def noise_image(size: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def left_half(size: int) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, size // 2 - 1, size - 1), fill=255)
    return mask


def check_paths(settings: Settings) -> None:
    engine = Engine(settings)
    print(f"device {engine.cache.device}, dtype {engine.cache.dtype}")
    base = {
        "model": "demo",
        "prompt": "a red fox",
        "width": 64,
        "height": 64,
        "steps": 8,
        "seed": 7,
    }
    source, mask = noise_image(64), left_half(64)
    img2img = {"init_image": REF, "strength": 0.8}
    inpaint = img2img | {"inpaint": InpaintRef(mask=REF, blur=0)}
    cases = {
        "txt2img Euler a": ({}, {}),
        "txt2img DPM++ 2M Karras": ({"sampler": "DPM++ 2M Karras"}, {}),
        "txt2img DPM++ 2S a (k-diffusion)": ({"sampler": "DPM++ 2S a"}, {}),
        "txt2img DPM adaptive (k-diffusion)": ({"sampler": "DPM adaptive"}, {}),
        "img2img Euler a": (img2img, {"init_image": source}),
        "img2img DPM fast": (img2img | {"sampler": "DPM fast"}, {"init_image": source}),
        "inpaint Euler a": (inpaint, {"init_image": source, "mask_image": mask}),
        "inpaint DPM fast": (
            inpaint | {"sampler": "DPM fast"},
            {"init_image": source, "mask_image": mask},
        ),
        "inpaint only masked, fill": (
            img2img | {"inpaint": InpaintRef(mask=REF, only_masked=True, fill="fill")},
            {"init_image": source, "mask_image": mask},
        ),
        "ControlNet + inpaint": (
            inpaint
            | {
                "controlnets": (
                    ControlUnit(model=demos.sd.DEMO_CONTROLNET, image=REF, preprocessor="canny"),
                )
            },
            {"init_image": source, "mask_image": mask, "control_images": [source]},
        ),
        "IP-Adapter": (
            {"ip_adapter": IpAdapterRef(name=demos.sd.DEMO_IP_ADAPTER, image=REF)},
            {"ip_image": source},
        ),
        "LoRA": ({"loras": (LoraRef(name=demos.sd.DEMO_LORA, weight=0.8),)}, {}),
        "hires fix (Latent, ×2)": ({"hires": HiresFix(scale=2, steps=4)}, {}),
        "variation seed": ({"subseed": 3, "subseed_strength": 0.5}, {}),
        "tiling": ({"tiling": True}, {}),
        "SDXL Euler a": ({"model": demos.xl.DEMO_XL}, {}),
        "SDXL single file, DPM++ 2M Karras": (
            {"model": demos.xl.DEMO_XL_SINGLE, "sampler": "DPM++ 2M Karras"},
            {},
        ),
        "SDXL DPM++ 2S a (k-diffusion)": ({"model": demos.xl.DEMO_XL, "sampler": "DPM++ 2S a"}, {}),
        "SDXL LoRA + embedding": (
            {
                "model": demos.xl.DEMO_XL,
                "loras": (LoraRef(name=demos.xl.DEMO_XL_LORA),),
                "embeddings": (demos.xl.DEMO_XL_EMBEDDING,),
            },
            {},
        ),
        "SDXL ControlNet, DPM fast": (
            {
                "model": demos.xl.DEMO_XL,
                "sampler": "DPM fast",
                "controlnets": (
                    ControlUnit(model=demos.xl.DEMO_XL_CONTROLNET, image=REF, preprocessor="canny"),
                ),
            },
            {"control_images": [source]},
        ),
        "SDXL IP-Adapter": (
            {
                "model": demos.xl.DEMO_XL,
                "ip_adapter": IpAdapterRef(name=demos.xl.DEMO_XL_IP_ADAPTER, image=REF),
            },
            {"ip_image": source},
        ),
        "SDXL refiner (Euler a)": (
            {"model": demos.xl.DEMO_XL, "refiner": Refiner(model=demos.xl.DEMO_XL_REFINER)},
            {},
        ),
        "SDXL refiner (DPM++ 2M, k-diffusion)": (
            {
                "model": demos.xl.DEMO_XL,
                "sampler": "DPM++ 2M",
                "refiner": Refiner(model=demos.xl.DEMO_XL_REFINER, switch_at=0.5),
            },
            {},
        ),
        "SDXL hires fix": ({"model": demos.xl.DEMO_XL, "hires": HiresFix(scale=1.5)}, {}),
    }
    for name, (changes, images) in cases.items():
        try:
            result = engine.generate(GenerationRequest(**(base | changes)), **images)
            out = np.asarray(result.images[0])
            kept = ""
            if "mask_image" in images and not changes["inpaint"].only_masked:
                same = np.array_equal(out[:, 32:], np.asarray(source)[:, 32:])
                kept = f", unmasked half kept: {same}"
            flat = "  FLAT (NaN decoded?)" if out.std() < 1 else ""
            size = "×".join(map(str, result.images[0].size))
            print(f"  ok    {name}: {size}, pixel std {out.std():.1f}{kept}{flat}", flush=True)
        except Exception:  # noqa: BLE001 — a report, not a test
            print(f"  FAIL  {name}:\n{traceback.format_exc(limit=3)}", flush=True)
    try:
        result = train_lora(
            settings,
            TrainingJob(
                name="gpu-check",
                base_model="demo",
                images=(source, mask.convert("RGB")),
                captions=("sks fox", "sks fox"),
                steps=20,
                resolution=64,
            ),
        )
        losses = result.losses
        print(
            f"  ok    LoRA training: loss {losses[0]:.3f} → {losses[-1]:.3f}, "
            f"finite: {all(np.isfinite(losses))}"
        )
    except Exception:  # noqa: BLE001
        print(f"  FAIL  LoRA training:\n{traceback.format_exc(limit=3)}")


def build_full_size(folder: Path) -> None:
    """SD 1.5's architecture (860M-parameter UNet) with random weights, as a diffusers folder."""
    configs = reference_config(Architecture.SD1)
    torch.manual_seed(0)
    files = tokenizer_files()
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_config(configs["vae"]),
        text_encoder=CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
        tokenizer=CLIPTokenizer(
            vocab=str(files / "vocab.json"), merges=str(files / "merges.txt"), model_max_length=77
        ),
        unet=UNet2DConditionModel.from_config(configs["unet"]),
        scheduler=PNDMScheduler.from_config(configs["scheduler"]),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.to(torch.float16).save_pretrained(folder)


def against_bare(
    settings: Settings, model: str, size: int, steps: int, pipeline: type, runs: int
) -> tuple:
    """huabu's ``Engine.generate`` and a bare diffusers ``pipeline`` on the same weights and
    request (Euler a), timed side by side: (engine, request, components, ours, theirs)."""
    engine = Engine(settings)
    request = GenerationRequest(
        model=model, prompt="a red fox", width=size, height=size, steps=steps, seed=1
    )
    with engine.cache.lease(model) as loaded:  # the same weights, for bare diffusers
        components = loaded.components
    bare = pipeline(**components)
    bare.scheduler = EulerAncestralDiscreteScheduler.from_config(bare.scheduler.config)
    bare.set_progress_bar_config(disable=True)

    def bare_call():
        bare(
            "a red fox",
            width=size,
            height=size,
            num_inference_steps=steps,
            generator=torch.Generator("cpu").manual_seed(1),
        )

    ours, theirs = timed(lambda: engine.generate(request), bare_call, runs=runs)
    return engine, request, components, ours, theirs


def full_size(settings: Settings, args) -> None:
    folder = settings.models_dir / "checkpoints" / "sd15-random"
    started = time.perf_counter()
    build_full_size(folder)
    print(f"built a random full-size SD 1.5 in {time.perf_counter() - started:.0f} s")
    size, steps = args.size, args.steps
    engine, request, _, ours, theirs = against_bare(
        settings, "sd15-random", size, steps, StableDiffusionPipeline, args.runs
    )
    print(
        f"(1) {size}², {steps} steps, Euler a: huabu {ours:.3f} s, bare diffusers "
        f"{theirs:.3f} s, ratio {ours / theirs:.3f}  ({steps / ours:.1f} it/s)"
    )
    source, mask = noise_image(size), left_half(size)
    image_to_image = request.model_copy(update={"init_image": REF, "strength": 0.75})
    inpainting = image_to_image.model_copy(update={"inpaint": InpaintRef(mask=REF)})
    plain, masked = timed(
        lambda: engine.generate(image_to_image, init_image=source),
        lambda: engine.generate(inpainting, init_image=source, mask_image=mask),
        runs=args.runs,
    )
    print(f"(2) inpainting {masked:.3f} s ÷ img2img {plain:.3f} s = {masked / plain:.3f}")
    images = tuple(noise_image(size, seed) for seed in range(8))
    times = []

    def progress(step, total, loss):
        times.append(time.perf_counter())

    result = train_lora(
        settings,
        TrainingJob(
            name="gpu-bench",
            base_model="sd15-random",
            images=images,
            captions=("sks fox",) * len(images),
            steps=args.train_steps,
            rank=16,
            batch_size=4,
            resolution=size,
        ),
        on_progress=progress,
    )
    per_step = (times[-1] - times[4]) / (len(times) - 5) if len(times) > 6 else float("nan")
    print(
        f"(3) LoRA training at {size}², batch 4, rank 16: {per_step:.3f} s/step, "
        f"{4 / per_step:.1f} images/s; loss {result.losses[0]:.3f} → {result.losses[-1]:.3f}"
    )


def speed_figures(settings: Settings, args) -> None:
    folder = settings.models_dir / "checkpoints" / "sd15-random"
    if not folder.is_dir():
        build_full_size(folder)
    speed.batching(settings, "sd15-random", args.size, args.steps, args.runs)
    speed.compiled(settings, "sd15-random", args.size, args.steps, args.runs, "inductor")


def build_full_size_xl(folder: Path) -> None:
    """SDXL base's architecture (2.6B-parameter UNet, CLIP-L and OpenCLIP bigG) with random
    weights, as a diffusers folder. Built on the GPU when there is one: initialising 3.5B
    parameters on the CPU takes minutes."""
    configs = reference_config(Architecture.SDXL)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        pipe = StableDiffusionXLPipeline(
            vae=AutoencoderKL.from_config(configs["vae"]),
            text_encoder=CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"])),
            tokenizer=demos.sd.tokenizer(),
            tokenizer_2=demos.sd.tokenizer("!"),
            unet=UNet2DConditionModel.from_config(configs["unet"]),
            scheduler=EulerDiscreteScheduler.from_config(configs["scheduler"]),
            add_watermarker=False,
        )
    pipe.to(torch.float16).save_pretrained(folder)


def full_size_xl(settings: Settings, args) -> None:
    folder = settings.models_dir / "checkpoints" / "sdxl-random"
    started = time.perf_counter()
    build_full_size_xl(folder)
    print(f"built a random full-size SDXL in {time.perf_counter() - started:.0f} s", flush=True)
    size, steps = args.xl_size, args.steps
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    engine, request, components, ours, theirs = against_bare(
        settings, "sdxl-random", size, steps, StableDiffusionXLPipeline, args.runs
    )
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0
    image = np.asarray(engine.generate(request).images[0])
    print(
        f"(4) SDXL {size}², {steps} steps, Euler a, {engine.cache.dtype}: huabu {ours:.3f} s, "
        f"bare diffusers {theirs:.3f} s, ratio {ours / theirs:.3f}  ({steps / ours:.2f} it/s); "
        f"peak GPU memory {peak:.1f} GiB; pixel std {image.std():.1f}",
        flush=True,
    )
    vae = components["vae"]
    latents = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(2))
    latents = latents.to(vae.device)
    with engine.cache.lease("sdxl-random") as loaded, torch.inference_mode():

        def plain_decode():  # what huabu's decode does, without the upcast
            pixels = vae.decode(latents.to(vae.dtype)).sample
            return loaded.txt2img.image_processor.postprocess(pixels, output_type="pil"), pixels

        scaled = latents * vae.config.scaling_factor  # huabu's decode divides by it
        upcast, half = timed(
            lambda: engine._decode(loaded, vae, scaled), plain_decode, runs=args.runs
        )
        plain = plain_decode()[1]
    finite = bool(plain.isfinite().all())
    print(
        f"    VAE decode at {size}²: huabu (upcast to fp32) {upcast * 1000:.1f} ms, plain "
        f"{vae.dtype} {half * 1000:.1f} ms, ratio {upcast / half:.2f}; the plain decode of "
        f"these random weights is finite: {finite}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--xl-size", type=int, default=1024)
    parser.add_argument("--parts", default="checks,sdxl,sd15,speed")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    home = args.home or Path(tempfile.mkdtemp(prefix="huabu-gpu-"))
    settings = Settings(home=home, device="auto")
    demos.build(settings)
    quiet_libraries()
    sections = {
        "checks": lambda: check_paths(settings),
        "sdxl": lambda: full_size_xl(settings, args),
        "sd15": lambda: full_size(settings, args),
        "speed": lambda: speed_figures(settings, args),
    }
    for name, run in sections.items():
        if name in parts:
            try:
                run()
            except Exception:  # noqa: BLE001 — one section's failure leaves the others to run
                print(f"FAIL  {name}:\n{traceback.format_exc()}", flush=True)


if __name__ == "__main__":
    main()
