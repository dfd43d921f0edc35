"""The engine: one call turns a native request into images.

``Engine.generate`` validates against the server's limits, resolves the seed, loads (or reuses)
the checkpoint, encodes the A1111-syntax prompts, samples with the requested sampler, decodes,
and returns the images with the seeds and parameters actually used. Progress is reported per
step; a cancellation check runs at every step and stops sampling by raising ``Cancelled``.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from huabu.catalog.families import check_lora, fit
from huabu.catalog.infotext import infotext
from huabu.catalog.library import ModelEntry, ModelLibrary, check_families, check_upscaler
from huabu.catalog.preprocessors import check as check_preprocessor
from huabu.catalog.preprocessors import held_annotators, stem
from huabu.catalog.styles import apply_styles
from huabu.engine import (
    annotators,
    batching,
    flow,
    inpainting,
    ksampling,
    prompt_hooks,
    quiet_libraries,
    sd_upscale,
)
from huabu.engine.annotators import Annotators
from huabu.engine.denoiser import Control, Denoiser, RefinerSwitch, noise_sampler
from huabu.engine.pipelines import LoadedModel, PipelineCache
from huabu.engine.previews import LatentPreview, Preview
from huabu.engine.prompts import Conditioning, condition
from huabu.engine.samplers import SAMPLERS, Sampler
from huabu.engine.upscalers import Upscalers
from huabu.engine.variation import (
    crop_latents,
    tiled,
    upscale_image,
    upscale_latents,
    vae_tiles,
    varied_start,
    vary,
)
from huabu.engine.variation import generators as seeded
from huabu.errors import Cancelled, GenerationFailed, HuabuError, InvalidRequest
from huabu.images import repaint_mask
from huabu.native import GenerationRequest, GenerationResult, Timings
from huabu.native.generation import (
    LATENT_UPSCALERS,
    SECOND_ORDER,
    canonical_sampler,
    hires_steps,
    sampler_run,
)
from huabu.settings import Settings

#: on_progress(step, total, preview) after each sampling step; ``preview()`` makes a PNG of
#: the request's first image as it stands (``previews``), or None.
ProgressCallback = Callable[[int, int, Preview | None], None]
#: A step hook's callback: the whole run's previews (a batch's callback picks its images).
_HookProgress = Callable[[int, int, LatentPreview], None]
#: should_cancel() -> True to stop at the next step.
CancelCheck = Callable[[], bool]


class Engine:
    """Generates images; one instance per worker process (it is not meant to be shared)."""

    def __init__(self, settings: Settings, library: ModelLibrary | None = None) -> None:
        self.settings = settings
        self.library = library or ModelLibrary(settings)
        self.cache = PipelineCache(settings, self.library)
        self.annotators = Annotators(self._annotator_file, self.cache.device)
        self.upscalers = Upscalers(self.library, self.cache.device)
        quiet_libraries()
        if settings.threads:
            torch.set_num_threads(settings.threads)

    def generate(
        self,
        request: GenerationRequest,
        *,
        init_image: Image.Image | None = None,
        control_images: list[Image.Image] | None = None,
        ip_image: Image.Image | None = None,
        mask_image: Image.Image | None = None,
        on_progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> GenerationResult:
        """``control_images`` holds the input image of each of ``request.controlnets``,
        ``ip_image`` the reference image of ``request.ip_adapter``, ``mask_image`` the mask of
        ``request.inpaint``."""
        started = time.perf_counter()
        entry, request = self._fitted(request)
        if request.sd_upscale is not None:  # tile by tile, each a request of its own
            return sd_upscale.run(self, request, init_image, on_progress, should_cancel)
        refiner_entry = None
        if request.refiner is not None:
            refiner_entry = self.library.find(
                "checkpoints", request.refiner.model, param="refiner.model"
            )
        # Before anything loads: refusing must not cost a checkpoint's load.
        check_families(entry, refiner_entry)
        source, plan = _source(request, init_image), None
        if request.inpaint is not None:
            if mask_image is None:
                raise InvalidRequest("inpaint needs its mask", param="inpaint.mask")
            mask = repaint_mask(mask_image, invert=request.inpaint.invert, field="inpaint.mask")
            assert source is not None  # checked(): inpainting needs an init image
            plan = inpainting.plan(source, mask, request.inpaint)
        if entry.architecture is not None and entry.architecture.is_flow:
            return self._generate_flow(request, source, plan, on_progress, should_cancel, started)
        with (
            self.cache.lease(request.model) as model,
            self._refiner(request) as refiner,
            self._vae(request, model) as vae,
        ):
            _check_unet(request, model)
            controls = self._controls(request, model, control_images or [])
            if request.ip_adapter is not None:
                if ip_image is None:
                    raise InvalidRequest("the IP-Adapter needs its image", param="ip_adapter.image")
                reference = ip_image.convert("RGB")
            else:
                reference = None
            loaded = time.perf_counter()
            with model.loras.applied(request.loras), model.ip_adapter.applied(request.ip_adapter):
                inputs = _Inputs(source, plan, controls, reference, control_images or [], refiner)
                step = _StepHook(
                    _first_image(on_progress),
                    should_cancel,
                    LatentPreview(sdxl=model.architecture.is_sdxl),
                )
                return self._generate(request, model, vae, inputs, step, started, loaded)

    def _fitted(self, request: GenerationRequest) -> tuple[ModelEntry, GenerationRequest]:
        """The request's checkpoint, and the request fitted to its family and checked (its
        LoRAs made for that family)."""
        entry = self.library.find("checkpoints", request.model)
        request = fit(apply_styles(request, self.settings), entry.architecture)
        request = request.checked(self.settings)
        if request.hires is not None:
            check_upscaler(self.library, request.hires.upscaler, param="hires.upscaler")
        if request.sd_upscale is not None:
            check_upscaler(self.library, request.sd_upscale.upscaler, param="sd_upscale.upscaler")
        for index, lora in enumerate(request.loras):
            param = f"loras.{index}.name"
            made_for = self.library.find("loras", lora.name, param=param).architecture
            check_lora(entry.architecture, made_for, name=lora.name, param=param)
        return entry, request

    def generate_batch(
        self,
        requests: list[GenerationRequest],
        on_progress: list[ProgressCallback],
        should_cancel: list[CancelCheck],
        init_images: list[Image.Image | None] | None = None,
    ) -> list[GenerationResult]:
        """Requests of one batch key (``GenerationRequest.batch_key``) in one denoising loop;
        each gets the images it would get alone (its seeds, prompts, guidance and, for
        image-to-image, its source in ``init_images``). Progress goes to every request; the
        loop stops (``Cancelled``) only when every request wants to stop. Prompts of
        different lengths (more than 75 tokens) sample in separate loops."""
        started = time.perf_counter()
        entry = self.library.find("checkpoints", requests[0].model)
        if entry.architecture is not None and entry.architecture.is_flow:
            return self._generate_flow_batch(requests, on_progress, should_cancel, init_images)
        requests = [request.checked(self.settings) for request in requests]
        keys = {request.batch_key() for request in requests}
        if len(keys) != 1 or None in keys:
            raise ValueError("generate_batch takes requests of one batch key")
        sources = [
            _source(request, image)
            for request, image in zip(requests, init_images or [None] * len(requests), strict=True)
        ]
        first = requests[0]
        results: dict[int, GenerationResult] = {}
        with self.cache.lease(first.model) as model, self._vae(first, model) as vae:
            _check_unet(first, model)
            loaded = time.perf_counter()
            with model.loras.applied(first.loras):
                conditionings = [_encode_prompts(model, request) for request in requests]
                encoded = time.perf_counter()
                for group in batching.same_shapes(conditionings):
                    sampling = time.perf_counter()
                    members = [requests[i] for i in group]
                    samples = batching.Samples.stacked(members, [conditionings[i] for i in group])
                    merged = first.model_copy(update={"n_images": len(samples.seeds)})
                    hooks = batching.fan_out(
                        [on_progress[i] for i in group],
                        [should_cancel[i] for i in group],
                        [requests[i].n_images for i in group],
                    )
                    step = _StepHook(*hooks, LatentPreview(sdxl=model.architecture.is_sdxl))
                    # Image-to-image: each image's own source (a request's, once per image).
                    source = (
                        None
                        if sources[group[0]] is None
                        else [
                            image
                            for i in group
                            for image in [sources[i]] * requests[i].n_images
                            if image is not None
                        ]
                    )
                    made = self._sample(
                        merged, model, vae, _Inputs(source, None, [], None, []), step, samples
                    )
                    finished = time.perf_counter()
                    timings = Timings(
                        load=loaded - started,
                        prompt=encoded - loaded,
                        sample=made.sampled - sampling,
                        decode=finished - made.sampled,
                        total=finished - started,
                    )
                    results |= self._shared_out(group, members, made.images, model, timings)
        return [results[index] for index in range(len(requests))]

    def _generate_flow_batch(
        self,
        requests: list[GenerationRequest],
        on_progress: list[ProgressCallback],
        should_cancel: list[CancelCheck],
        init_images: list[Image.Image | None] | None,
    ) -> list[GenerationResult]:
        """Flow-family requests of one batch key: text-to-image ones with the same guidance
        share one pipeline call (``flow.generate_many``); the rest run alone, in turn."""
        started = time.perf_counter()
        fitted = [self._fitted(request)[1] for request in requests]
        images = init_images or [None] * len(requests)
        results: dict[int, GenerationResult] = {}
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(fitted):
            if request.init_image is None:
                groups.setdefault((request.guidance, request.distilled_guidance), []).append(index)
            else:
                groups[("alone", index)] = [index]
        for group in groups.values():
            if len(group) == 1:
                index = group[0]
                results[index] = self.generate(
                    requests[index],
                    init_image=images[index],
                    on_progress=on_progress[index],
                    should_cancel=should_cancel[index],
                )
                continue
            members = [fitted[i] for i in group]
            with self.cache.lease(members[0].model) as model:
                loaded = time.perf_counter()
                hooks = batching.fan_out(
                    [on_progress[i] for i in group],
                    [should_cancel[i] for i in group],
                    [request.n_images for request in members],
                )
                merged = members[0].model_copy(
                    update={"n_images": sum(request.n_images for request in members)}
                )
                preview = LatentPreview(sdxl=False, render=flow.previewer(model, merged))
                step = _StepHook(*hooks, preview)
                with model.loras.applied(members[0].loras):
                    made = flow.generate_many(model, members, step.diffusers_callback)
            timings = Timings(
                load=loaded - started,
                prompt=made.prompt,
                sample=made.sample,
                decode=0.0,
                total=time.perf_counter() - started,
            )
            results |= self._shared_out(group, members, made.images, model, timings)
        return [results[index] for index in range(len(requests))]

    def _shared_out(
        self, group: list[int], members: list[GenerationRequest], images, model, timings
    ) -> dict[int, GenerationResult]:
        """A shared run's images, in order, as each member's result (by its index)."""
        produced = iter(images)
        return {
            index: self.result(
                request, model, [next(produced) for _ in range(request.n_images)], timings
            )
            for index, request in zip(group, members, strict=True)
        }

    def _generate_flow(
        self, request, source, plan, on_progress, should_cancel, started
    ) -> GenerationResult:
        """A flow-family request: one call of its diffusers pipeline (``engine.flow``)."""
        with self.cache.lease(request.model) as model:
            loaded = time.perf_counter()
            preview = LatentPreview(sdxl=False, render=flow.previewer(model, request))
            step = _StepHook(_first_image(on_progress), should_cancel, preview)
            with model.loras.applied(request.loras):
                if request.hires is None:
                    made = flow.generate(model, request, source, step.diffusers_callback, plan)
                else:
                    made = self._flow_hires(model, request, step)
        timings = Timings(
            load=loaded - started,
            prompt=made.prompt,
            sample=made.sample,
            decode=0.0,  # inside the pipeline's call, counted in sample
            total=time.perf_counter() - started,
        )
        return self.result(request, model, made.images, timings)

    def _flow_hires(self, model, request: GenerationRequest, step: _StepHook) -> flow.Sampled:
        """A1111's hires fix on a flow family: the first pass's latents upscaled (the latent
        modes) or its decoded images (Lanczos, Nearest), cut to the final size, and each
        refined as image-to-image with its own seed."""
        assert request.hires is not None
        first, second = flow.hires_passes(request)
        later = flow.image_to_image_steps(second)
        hook = step._next(done=0, later=later * request.n_images)
        latent = request.hires.upscaler in LATENT_UPSCALERS
        made = flow.generate(model, first, None, hook.diffusers_callback, latent=latent)
        images, prompt, sample = [], made.prompt, made.sample
        for index, seed in enumerate(request.image_seeds()):
            one = second.model_copy(update={"seed": seed, "n_images": 1})
            source: Image.Image | torch.Tensor
            if made.latents is not None:
                source = flow.hires_latents(made.latents[index : index + 1], request, second)
            else:
                source = flow.hires_source(made.images[index], request, second, self.upscalers)
            preview = LatentPreview(sdxl=False, render=flow.previewer(model, one))
            after = _StepHook(
                step.on_progress,
                step.should_cancel,
                preview,
                done=first.steps + index * later,
                later=(request.n_images - 1 - index) * later,
                reached=step.reached,
            )
            refined = flow.generate(model, one, source, after.diffusers_callback)
            images += refined.images
            prompt, sample = prompt + refined.prompt, sample + refined.sample
        return flow.Sampled(images, prompt, sample)

    def _annotator_file(self, file_name: str) -> Path:
        """Where annotator ``file_name`` is (downloaded first, if the fleet published it)."""
        entry = self.library.find("annotators", stem(file_name), param="preprocessor")
        return entry.path

    @contextmanager
    def _refiner(self, request: GenerationRequest) -> Iterator[LoadedModel | None]:
        """The request's refiner, leased like its model (one request per worker process at a
        time, so two leases cannot wait on each other)."""
        if request.refiner is None:
            yield None
            return
        with self.cache.lease(request.refiner.model, param="refiner.model") as refiner:
            yield refiner

    @contextmanager
    def _vae(self, request: GenerationRequest, model: LoadedModel) -> Iterator[Any]:
        """The VAE to decode with: the model's own, or the request's override, leased."""
        if request.vae is None:
            yield model.components["vae"]
            return
        with self.cache.vae(request.vae) as vae:
            yield vae

    def _controls(self, request, model, images: list[Image.Image]) -> list[tuple[Any, Image.Image]]:
        """(ControlNet, control map) per unit; the map is preprocessed at the output size."""
        if not request.controlnets:
            return []
        if len(images) != len(request.controlnets):
            raise InvalidRequest("every ControlNet unit needs its image", param="controlnets")
        controls, unet = [], model.components["unet"]
        held = held_annotators((u.preprocessor for u in request.controlnets), self.library.names)
        for index, (unit, image) in enumerate(zip(request.controlnets, images, strict=True)):
            check_preprocessor(unit.preprocessor, held, param=f"controlnets.{index}.preprocessor")
            sized = image.convert("RGB").resize((request.width, request.height))
            control_map = annotators.run(
                unit.preprocessor, sized, seed=request.seed, annotators=self.annotators
            )
            controls.append((self.cache.controlnet(unit.model, index, unet), control_map))
        return controls

    def _generate(
        self, request, model, vae, inputs: _Inputs, step: _StepHook, started, loaded
    ) -> GenerationResult:
        conditioning = _encode_prompts(model, request)
        if inputs.refiner is not None:  # the refiner reads the prompt with its own encoder
            inputs = replace(inputs, refiner_conditioning=_encode_prompts(inputs.refiner, request))
        encoded = time.perf_counter()
        sampled = self._sample(
            request, model, vae, inputs, step, batching.Samples.of(request, conditioning)
        )
        finished = time.perf_counter()
        timings = Timings(
            load=loaded - started,
            prompt=encoded - loaded,
            sample=sampled.sampled - encoded,
            decode=finished - sampled.sampled,
            total=finished - started,
        )
        return self.result(request, model, sampled.images, timings)

    def result(self, request, model, images, timings: Timings) -> GenerationResult:
        """The images of ``request`` made with ``model``, with their seeds and infotexts."""
        seeds = request.image_seeds()
        return GenerationResult(
            request=request,
            images=images,
            seeds=seeds,
            timings=timings,
            infotexts=[infotext(request, s, model_hash=model.model_hash) for s in seeds],
        )

    def _sample(
        self, request, model, vae, inputs: _Inputs, step: _StepHook, samples: batching.Samples
    ) -> _Sampled:
        """Sample (with the hires pass, if asked), decode, and paste inpainting back."""
        sampler = SAMPLERS[sampler_run(request)]
        nets = [net for net, _ in inputs.controls]
        try:
            with (
                torch.inference_mode(),
                tiled(request.tiling, model.components["unet"], vae, *nets),
                # Not with seamless tiling: each VAE tile would wrap around on its own.
                vae_tiles(vae, 0 if request.tiling else self.settings.vae_tile_size),
            ):
                sample = self._k_sample if sampler.k_sampler else self._diffusers_sample
                first = step.passes(request)
                # With the hires fix, the refiner joins the pass(es) it is asked for.
                passes = inputs
                if request.hires is not None and not _refines(request, second=False):
                    passes = replace(inputs, refiner=None)
                latents = sample(
                    model, vae, sampler, request, samples, seeded(samples.seeds), passes, first
                )
                if request.hires is not None:
                    latents = self._hires(
                        model, vae, sample, sampler, request, samples, inputs, latents, step.after()
                    )
                sampled = time.perf_counter()
                images = [self._decode(model, vae, latents[i : i + 1]) for i in range(len(latents))]
                if inputs.plan is not None:
                    images = [inputs.plan.paste(image) for image in images]
        except HuabuError:
            raise
        except torch.OutOfMemoryError as exc:
            raise GenerationFailed(
                f"the worker ran out of memory making {request.n_images} image(s) of "
                f"{request.width}x{request.height}; try a smaller size or fewer images"
            ) from exc
        except (RuntimeError, ValueError) as exc:  # torch/diffusers failures on a valid request
            # The library's text names internals (tensor shapes, files): it goes to the log,
            # with the task's id, by the runner; the caller gets a stable message.
            raise GenerationFailed(
                "generation failed on the worker; the server log has the details"
            ) from exc
        return _Sampled(images, sampled)

    def _diffusers_sample(
        self, model, vae, sampler: Sampler, request, samples, generators, inputs, step
    ) -> torch.Tensor:
        scheduler = sampler.make_scheduler(model.txt2img.scheduler.config, samples.seeds)
        calls = prompt_hooks.Calls()
        source, plan, controls = inputs.source, inputs.plan, inputs.controls
        conditioning = samples.conditioning
        pipe = model.img2img if source is not None else model.txt2img
        kwargs = {
            "prompt_embeds": conditioning.embeds,
            "negative_prompt_embeds": conditioning.negative_embeds,
            "num_inference_steps": request.steps,
            "num_images_per_prompt": samples.per_prompt,
            "generator": generators,
            "output_type": "latent",
            "callback_on_step_end": step.diffusers_callback,
        }
        if request.eta is not None:  # DDIM's η (the pipelines pass it to DDIM only)
            kwargs["eta"] = request.eta
        if model.architecture.is_sdxl:
            kwargs["pooled_prompt_embeds"] = conditioning.pooled
            kwargs["negative_pooled_prompt_embeds"] = conditioning.negative_pooled
        if plan is not None:
            kwargs |= {"image": plan.start, "mask_image": plan.mask, "strength": request.strength}
        elif source is not None:
            kwargs |= {"image": source, "strength": request.strength}
        if source is None or plan is not None:
            kwargs |= {"width": request.width, "height": request.height}
        if inputs.ip_image is not None:
            kwargs["ip_adapter_image"] = inputs.ip_image
        # The shared pipeline's components, read now: an IP-Adapter adds its image encoder.
        components = {**model.txt2img.components, "scheduler": scheduler, "vae": vae}
        pipe_class = model.inpaint_class if plan is not None else type(pipe)
        if controls:
            units = request.controlnets
            txt2img, img2img, inpaint = model.controlnet_classes
            if plan is not None:
                pipe_class = inpaint
            else:
                pipe_class = img2img if source is not None else txt2img
            components["controlnet"] = [net for net, _ in controls]
            maps = [control_map for _, control_map in controls]
            if source is not None:
                kwargs["control_image"] = maps
            else:
                kwargs["image"] = maps
            kwargs |= {
                "controlnet_conditioning_scale": [unit.scale for unit in units],
                "control_guidance_start": [unit.start for unit in units],
                "control_guidance_end": [unit.end for unit in units],
            }
        if inputs.refiner is not None:  # the base's part; _refine continues from there
            step, later = step.split(_refiner_steps(scheduler, request))
            kwargs["callback_on_step_end"] = step.diffusers_callback
            if "denoising_end" in inspect.signature(pipe_class.__call__).parameters:
                kwargs["denoising_end"] = request.refiner.switch_at
            else:  # diffusers' SDXL ControlNet image-to-image has none: stop where it would
                kwargs["callback_on_step_end"] = _stopping_at(
                    request.refiner.switch_at, step.diffusers_callback
                )
        # A pipeline object holds per-call state; give it this request's scheduler only.
        call_pipe = pipe_class(**components)
        call_pipe.set_progress_bar_config(disable=True)
        nets = [net for net, _ in controls]
        with (
            prompt_hooks.following(
                components["unet"], conditioning.timeline, calls, len(generators), nets
            ),
            varied_start(call_pipe, request),
            batching.per_image_guidance(components["unet"], samples) as guidance,
        ):
            latents = call_pipe(**kwargs, guidance_scale=guidance).images
        if inputs.refiner is None:
            return latents
        return self._refine(
            sampler, request, latents, generators, inputs, step.after_this(later), calls
        )

    def _refine(self, sampler, request, latents, generators, inputs, step, calls) -> torch.Tensor:
        """The refiner's part of a diffusers sampler's run: the same sampler and generators
        continue, from where the base stopped, on the refiner (diffusers' ensemble of expert
        denoisers: ``denoising_end`` then ``denoising_start`` at the same fraction). ControlNet
        units stay with the base (they fit its UNet only); inpainting keeps its mask."""
        refiner, conditioning = inputs.refiner, inputs.refiner_conditioning
        scheduler = sampler.make_scheduler(refiner.img2img.scheduler.config, request.image_seeds())
        from diffusers import StableDiffusionXLInpaintPipeline

        masked, pipe_class = {}, type(refiner.img2img)
        if inputs.plan is not None:
            masked = {
                "mask_image": inputs.plan.mask,
                "width": request.width,
                "height": request.height,
            }
            pipe_class = StableDiffusionXLInpaintPipeline
        pipe = pipe_class(
            **{**refiner.components, "scheduler": scheduler},
            requires_aesthetics_score=refiner.img2img.config.get(
                "requires_aesthetics_score", False
            ),
        )
        pipe.set_progress_bar_config(disable=True)
        unet = refiner.components["unet"]
        with prompt_hooks.following(unet, conditioning.timeline, calls, len(generators)):
            return pipe(
                **masked,
                image=latents,
                denoising_start=request.refiner.switch_at,
                num_inference_steps=request.steps,
                num_images_per_prompt=request.n_images,
                prompt_embeds=conditioning.embeds,
                negative_prompt_embeds=conditioning.negative_embeds,
                pooled_prompt_embeds=conditioning.pooled,
                negative_pooled_prompt_embeds=conditioning.negative_pooled,
                guidance_scale=request.guidance,
                generator=generators,
                output_type="latent",
                callback_on_step_end=step.diffusers_callback,
            ).images

    def _k_sample(
        self,
        model: LoadedModel,
        vae,
        sampler: Sampler,
        request,
        samples: batching.Samples,
        generators,
        inputs: _Inputs,
        step,
    ) -> torch.Tensor:
        unet = model.components["unet"]
        device, dtype = self.cache.device, unet.dtype
        shape = (unet.config.in_channels, request.height // 8, request.width // 8)
        source, plan, init, keep = inputs.source, inputs.plan, None, None
        if isinstance(source, torch.Tensor):  # the hires pass: latents already
            init = source.to(device, dtype)
        elif source is not None:
            start = plan.start if plan is not None else source
            init = _encode_image(vae, model, start, device, dtype)
        if plan is not None:
            keep = (init, plan.latent_mask(shape, device, dtype))
        controls = tuple(
            Control(net, _control_tensor(control_map), unit.scale, unit.start, unit.end)
            for (net, control_map), unit in zip(inputs.controls, request.controlnets, strict=True)
        )
        denoiser = self._denoiser(
            model,
            request,
            samples.conditioning,
            step,
            guidance=samples.scale,
            keep=keep,
            controls=controls,
            image_embeds=_image_embeds(
                model, inputs.ip_image, len(generators), device, request.guidance > 1
            ),
        )
        noise = noise_sampler(generators, shape, device, dtype)
        sigmas = denoiser.schedule(request.steps, sampler.karras)
        x = noise()
        if request.subseed_strength > 0:
            subnoise = noise_sampler(seeded(request.image_subseeds()), shape, device, dtype)()
            x = vary(x, subnoise, request.subseed_strength)
        if init is not None:  # img2img: start part-way down the schedule, as A1111 does
            kept = int(min(request.strength, 0.999) * request.steps)
            sigmas = sigmas[request.steps - kept - 1 :]
            x = init.expand(len(generators), -1, -1, -1) + x * sigmas[0]
        else:
            x = x * sigmas[0]
        denoiser.span = (float(sigmas[0]), float(sigmas[-2]))  # ControlNet units are gated by it
        model_fn: Denoiser | RefinerSwitch = denoiser
        if inputs.refiner is not None:  # the refiner's part: its UNet and prompt reading
            assert request.refiner is not None
            # (ControlNet units stay with the base; inpainting keeps its mask on the refiner.)
            refiner = self._denoiser(
                inputs.refiner, request, inputs.refiner_conditioning, step, keep=keep
            )
            model_fn = RefinerSwitch(denoiser, refiner, request.refiner.switch_at)
        total = len(sigmas) - 1
        report = step.fraction_reporter(total)
        calls, images = prompt_hooks.Calls(), len(generators)
        with (
            prompt_hooks.following(
                unet, samples.conditioning.timeline, calls, images, [c.net for c in controls]
            ),
            prompt_hooks.following(
                inputs.refiner.components["unet"] if inputs.refiner is not None else None,
                getattr(inputs.refiner_conditioning, "timeline", None),
                calls,
                images,
            ),
        ):
            eta = 1.0 if request.eta is None else request.eta  # A1111's eta for ancestral
            if sampler.k_sampler == "dpmpp_2s_a":
                return ksampling.sample_dpmpp_2s_ancestral(
                    model_fn, x, sigmas, noise, report, eta=eta
                )
            sigma_min = float(sigmas[-2]) if source is not None else denoiser.sigma_min
            sigma_max = float(sigmas[0])
            if sampler.k_sampler == "dpm_fast":
                return ksampling.sample_dpm_fast(
                    model_fn, x, sigma_min, sigma_max, total, noise, report, eta=eta
                )
            return ksampling.sample_dpm_adaptive(
                model_fn, x, sigma_min, sigma_max, noise, report, eta=eta
            )

    def _denoiser(self, model: LoadedModel, request, conditioning, step, **extra) -> Denoiser:
        """``model``'s UNet as a k-diffusion denoiser for ``request`` with ``conditioning``."""
        unet, scheduler = model.components["unet"], model.img2img.scheduler
        device, dtype = self.cache.device, unet.dtype
        return Denoiser(
            unet,
            scheduler.alphas_cumprod.to(torch.float32),
            prediction_type=scheduler.config.prediction_type,
            embeds=conditioning.embeds.to(device, dtype),
            negative_embeds=conditioning.negative_embeds.to(device, dtype),
            added_cond=_sdxl_conditions(model, request, conditioning.pooled, device, dtype),
            negative_added_cond=_sdxl_conditions(
                model, request, conditioning.negative_pooled, device, dtype, negative=True
            ),
            on_call=step.check_cancel,
            on_denoised=step.preview.saw,
            **({"guidance": request.guidance} | extra),
        )

    def _hires(self, model, vae, sample, sampler, request, samples, inputs, latents, step):
        """A1111's hires fix: upscale the first pass (its latents, or its decoded images),
        cut to the final size, and refine that as image-to-image with the same seeds."""
        hires = request.hires
        upscaled, final = hires.sizes(request.width, request.height)
        second = request.model_copy(
            update={
                "width": final[0],
                "height": final[1],
                "steps": hires.steps or request.steps,
                "strength": hires.strength,
                "hires": None,
                "subseed_strength": 0.0,
            }
        )
        unet = model.components["unet"]
        if hires.upscaler in LATENT_UPSCALERS:
            source = upscale_latents(latents, hires.upscaler, upscaled)
        else:
            images = [
                upscale_image(
                    self._decode(model, vae, latents[i : i + 1]),
                    hires.upscaler,
                    upscaled,
                    self.upscalers,
                )
                for i in range(len(latents))
            ]
            source = torch.cat(
                [_encode_image(vae, model, image, unet.device, unet.dtype) for image in images]
            )
        source = crop_latents(source, final)
        if hires.strength == 0:  # the upscaled first pass, not refined
            return source
        controls = self._controls(second, model, inputs.control_images)
        again = _Inputs(source, None, controls, inputs.ip_image, inputs.control_images)
        if _refines(request, second=True):
            again = replace(
                again, refiner=inputs.refiner, refiner_conditioning=inputs.refiner_conditioning
            )
        if samples.conditioning.timeline is not None:  # its texts, as the second pass counts
            samples = replace(samples, conditioning=_encode_prompts(model, request, hires=second))
            if again.refiner is not None:
                again = replace(
                    again,
                    refiner_conditioning=_encode_prompts(again.refiner, request, hires=second),
                )
        return sample(model, vae, sampler, second, samples, seeded(samples.seeds), again, step)

    def _decode(self, model: LoadedModel, vae, latents: torch.Tensor) -> Image.Image:
        # The checkpoint's own scaling applies even with an override VAE (weights only, as A1111).
        config = model.components["vae"].config
        latents = latents / config.scaling_factor
        # SDXL's VAE overflows in fp16 (diffusers upcasts it); SD 1.x/2.x VAEs decode in fp16,
        # and only a decode that overflowed anyway is redone in fp32 (A1111's NaN check).
        half = vae.dtype == torch.float16
        upcast = half and model.architecture.is_sdxl and config.get("force_upcast")
        pixels = None if upcast else vae.decode(latents.to(vae.device, vae.dtype)).sample
        if half and (pixels is None or not pixels.isfinite().all()):
            vae.to(torch.float32)
            try:
                pixels = vae.decode(latents.to(vae.device, torch.float32)).sample
            finally:
                vae.to(torch.float16)
        return model.txt2img.image_processor.postprocess(pixels, output_type="pil")[0]


@dataclass(frozen=True)
class _Sampled:
    images: list[Image.Image]
    sampled: float  # when sampling ended (perf_counter), decoding began


@dataclass(frozen=True)
class _Inputs:
    """One request's decoded inputs, at the output size."""

    #: The img2img source; in a batch, one per image (``Engine.generate_batch``).
    source: Image.Image | list[Image.Image] | None
    plan: inpainting.InpaintPlan | None
    controls: list[tuple[Any, Image.Image]]  # (ControlNet, control map) per unit
    ip_image: Image.Image | None
    control_images: list[Image.Image]  # as sent: the hires pass preprocesses them again
    refiner: LoadedModel | None = None
    refiner_conditioning: Any = None  # the prompts, as the refiner's encoder reads them


class _StepHook:
    """Progress reporting, live previews and cancellation, shared by both sampling paths."""

    def __init__(
        self,
        on_progress: _HookProgress | None,
        should_cancel: CancelCheck | None,
        preview: LatentPreview | None = None,
        *,
        done: int = 0,
        later: int = 0,
        reached: list[int] | None = None,
    ):
        self.on_progress = on_progress
        self.should_cancel = should_cancel
        self.preview = preview or LatentPreview(sdxl=False)
        #: Steps of earlier passes (reported first) and of later ones (counted in the total).
        self.done, self.later = done, later
        #: The last step reported, counted from the start: shared by every hook of a run.
        self.reached = reached if reached is not None else [0]

    def _next(self, *, done: int, later: int) -> _StepHook:
        return _StepHook(
            self.on_progress,
            self.should_cancel,
            self.preview,
            done=done,
            later=later,
            reached=self.reached,
        )

    def split(self, second: int) -> tuple[_StepHook, int]:
        """This pass's hook when a second part of ``second`` steps follows it in the same
        pass (the refiner's), and that count, for ``after_this``."""
        return self._next(done=self.done, later=self.later + second), second

    def after_this(self, later: int) -> _StepHook:
        """The hook of the part that follows this one (``split``'s second)."""
        return self._next(done=self.reached[0], later=self.later - later)

    def passes(self, request: GenerationRequest) -> _StepHook:
        """The hook of the first pass, whose total counts the hires pass's steps too (the
        k-diffusion samplers run one more in an image-to-image pass, as A1111's do)."""
        later = hires_steps(request)
        if later and SAMPLERS[sampler_run(request)].k_sampler:
            later += 1
        return self._next(done=0, later=later)

    def after(self) -> _StepHook:
        """The hook of the hires pass, reported after the first pass's steps."""
        return self._next(done=self.reached[0], later=0)

    def report(self, step: int, total: int) -> None:
        self.reached[0] = self.done + step
        if self.on_progress is not None:
            self.on_progress(self.done + step, self.done + total + self.later, self.preview)

    def check_cancel(self) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise Cancelled()

    def diffusers_callback(self, pipe, index: int, timestep, tensors: dict) -> dict:
        if "latents" in tensors:
            self.preview.saw(tensors["latents"])
        self.report(index + 1, pipe.num_timesteps)
        self.check_cancel()
        return tensors

    def fraction_reporter(self, total: int) -> Callable[[float], None]:
        def report(fraction: float) -> None:
            self.report(min(round(fraction * total), total), total)

        return report


def _refines(request: GenerationRequest, *, second: bool) -> bool:
    """Whether the refiner takes part in the hires fix's first (or ``second``) pass."""
    return request.refiner is not None and request.refiner.in_pass(second)


def _first_image(on_progress: ProgressCallback | None) -> _HookProgress | None:
    """A single request's hook callback: its preview is the run's first image."""
    if on_progress is None:
        return None
    return lambda step, total, preview: on_progress(step, total, preview.at(0))


def _source(request: GenerationRequest, init_image: Image.Image | None) -> Image.Image | None:
    """The image-to-image source at the output size (None for text-to-image)."""
    if request.is_img2img and init_image is None:
        raise InvalidRequest("init_image could not be read", param="init_image")
    if init_image is None:
        return None
    source = init_image.convert("RGB")
    if source.size != (request.width, request.height):
        source = source.resize((request.width, request.height), Image.Resampling.LANCZOS)
    return source


def _encode_image(vae, model: LoadedModel, image, device, dtype) -> torch.Tensor:
    # The distribution's mode, not a sample: it consumes no generator state, so image i of a
    # batch still depends on seed + i alone.
    pixels = model.txt2img.image_processor.preprocess(image).to(device, vae.dtype)
    latent = vae.encode(pixels).latent_dist.mode()
    return (latent * model.components["vae"].config.scaling_factor).to(dtype)


def _control_tensor(control_map: Image.Image) -> torch.Tensor:
    """A control map as ControlNets take it: ``[1, 3, H, W]``, 0–1 (not normalised)."""
    array = torch.from_numpy(np.asarray(control_map.convert("RGB"), dtype=np.float32) / 255.0)
    return array.permute(2, 0, 1)[None]


def _image_embeds(model, image, batch: int, device, cfg: bool) -> list[torch.Tensor] | None:
    """An IP-Adapter's image embeddings for a UNet call of ``batch`` images (doubled, the
    negative first, with CFG), computed as diffusers' pipelines do."""
    if image is None:
        return None
    return model.txt2img.prepare_ip_adapter_image_embeds(image, None, device, batch, cfg)


def _check_unet(request: GenerationRequest, model: LoadedModel) -> None:
    """An inpainting checkpoint (a 9-channel UNet) runs inpainting requests only."""
    if model.components["unet"].config.in_channels != 4 and (
        request.inpaint is None or SAMPLERS[sampler_run(request)].k_sampler
    ):
        raise InvalidRequest(
            f"{request.model} is an inpainting checkpoint: it runs inpainting requests "
            "(with a mask), with a sampler other than DPM++ 2S a, DPM fast, DPM adaptive",
            param="model",
        )


def _encode_prompts(
    model: LoadedModel, request: GenerationRequest, *, hires: GenerationRequest | None = None
) -> Conditioning:
    """The request's prompt and negative prompt as ``model``'s text encoders read them, its
    embeddings' tokens in place, over the first pass's model calls (or, given the ``hires``
    pass's request, over that pass's, as A1111 reads a prompt that edits in a hires pass)."""
    prompt, negative = model.embeddings.prepare(
        [request.prompt, request.negative_prompt], request.embeddings
    )
    return condition(
        model.prompt_encoder,
        prompt,
        negative,
        clip_skip=request.clip_skip,
        steps=_model_calls(request),
        hires_steps=None if hires is None else _model_calls(hires),
    )


def _model_calls(request: GenerationRequest) -> int:
    """The model calls a prompt's schedule spans, as A1111 counts them: a step's worth, two
    for a second-order sampler."""
    return request.steps * (2 if canonical_sampler(request.sampler) in SECOND_ORDER else 1)


def _stopping_at(switch_at: float, callback: Callable) -> Callable:
    """``callback``, then an interrupt once the next timestep is below ``switch_at``'s cutoff:
    diffusers' ``denoising_end``, for a pipeline without it."""

    def stop(pipe, index, timestep, values):
        values = callback(pipe, index, timestep, values)
        train = pipe.scheduler.config.num_train_timesteps
        cutoff = int(round(train - switch_at * train))
        # The loop's timesteps: the schedule's last ones (image-to-image skips the first).
        timesteps = pipe.scheduler.timesteps[-pipe.num_timesteps :]
        if index + 1 >= len(timesteps) or timesteps[index + 1] < cutoff:
            pipe._interrupt = True
        return values

    return stop


def _refiner_steps(scheduler, request: GenerationRequest) -> int:
    """How many of a diffusers sampler's timesteps the refiner runs (for progress): those
    below diffusers' ``denoising_end`` cut-off (of the image-to-image tail, roughly)."""
    assert request.refiner is not None
    scheduler = type(scheduler).from_config(scheduler.config)  # leave the request's alone
    scheduler.set_timesteps(request.steps)
    timesteps = scheduler.timesteps
    if request.is_img2img:
        timesteps = timesteps[len(timesteps) - int(len(timesteps) * request.strength) :]
    train = scheduler.config.num_train_timesteps
    cutoff = int(round(train - request.refiner.switch_at * train))
    return int((timesteps < cutoff).sum())


def _sdxl_conditions(model, request, pooled, device, dtype, *, negative: bool = False):
    """SDXL's extra UNet inputs: the pooled text, and the size and crop numbers (original
    size, crop corner, target size); a refiner takes an aesthetic score instead of the target
    size (6 for the prompt, 2.5 for the negative, diffusers' and A1111's defaults)."""
    if not model.architecture.is_sdxl or pooled is None:
        return None
    size = [request.height, request.width]
    if model.img2img.config.get("requires_aesthetics_score"):
        numbers = [*size, 0, 0, 2.5 if negative else 6.0]
    else:
        numbers = [*size, 0, 0, *size]
    time_ids = torch.tensor([numbers], device=device, dtype=dtype)
    return {"text_embeds": pooled.to(device, dtype), "time_ids": time_ids}
