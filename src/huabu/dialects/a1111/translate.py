"""Translation between AUTOMATIC1111's sdapi/v1 (and sd-webui-controlnet's listings) and huabu's
native requests and task records: pure functions, unit-tested without a server
(tests/test_translations.py)."""

from __future__ import annotations

import base64
import re
import uuid
from typing import Any

from pydantic import ValidationError

from huabu.catalog.styles import style_prompts
from huabu.dialects.a1111.wire import ControlNetArg, Img2ImgIn, Txt2ImgIn
from huabu.errors import InvalidRequest, invalid_field
from huabu.native import GenerationRequest, LoraRef, canonical_sampler, printable
from huabu.settings import Settings
from huabu.tasks.records import TaskRecord

#: A1111's schedulers that huabu runs; the sampler's own schedule is "automatic".
SCHEDULERS = {"automatic": "Automatic", "uniform": "Uniform", "karras": "Karras"}


_TITLE_HASH = re.compile(r"\[[0-9a-fA-F]{8,64}\]$")


_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


#: sd-webui-controlnet module names → huabu's preprocessors.
_MODULES = {"none": "none", "canny": "canny", "shuffle": "shuffle",
            "lineart_standard": "lineart_standard",
            "lineart_standard (from white bg & black line)": "lineart_standard",
            # sd-webui-controlnet spells PiDiNet's safe variant "pidisafe"
            "softedge_pidisafe": "softedge_pidsafe",
            "scribble_pidisafe": "scribble_pidsafe",
            # and DWPose's whole body "dw_openpose_full"
            "dw_openpose_full": "dwpose"}  # fmt: skip


def model_name(title: str) -> str:
    """A checkpoint name from an A1111 title: ``v1-5.safetensors [6ce0161689]`` → ``v1-5``."""
    name = title.strip()
    tagged = _TITLE_HASH.search(name)
    if tagged is not None:
        name = name[: tagged.start()].rstrip()
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def sampler(body: Txt2ImgIn) -> str:
    """sampler_name (or the old sampler_index) combined with A1111 1.9's separate scheduler."""
    name = canonical_sampler(body.sampler_name or body.sampler_index or "Euler a")
    scheduler = (body.scheduler or "automatic").strip().lower()
    if scheduler not in SCHEDULERS:
        raise InvalidRequest(
            f"scheduler must be one of {', '.join(SCHEDULERS)}, got {body.scheduler!r}",
            param="scheduler",
        )
    if scheduler == "karras" and not name.endswith("Karras"):
        try:
            return canonical_sampler(f"{name} Karras")
        except InvalidRequest:
            raise InvalidRequest(
                f"scheduler: {name} has no Karras variant", param="scheduler"
            ) from None
    return name


class _Finder:
    """``str.find`` of single characters over one text, remembering each answer so that a
    scan moving forward never reads a stretch twice (linear however often it asks)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._found: dict[str, int] = {}

    def find(self, char: str, start: int) -> int:
        """The first index from ``start`` holding ``char``, ``len(text)`` if none."""
        known = self._found.get(char, -1)
        if known < start:
            known = self.text.find(char, start)
            known = len(self.text) if known < 0 else known
            self._found[char] = known
        return known

    def first(self, start: int, chars: str) -> int:
        return min(self.find(char, start) for char in chars)


def lora_tags(prompt: str) -> list[tuple[int, int, str, str | None]]:
    """Each ``<lora:name>``, ``<lora:name:weight>`` or ``<lora:name:weight:…>`` tag as
    (start, end, name, weight text or None), found as A1111's extra-networks regex
    ``<lora:([^:>]+)(?::([^:>]*))?(?::[^>]*)?>`` (any case) finds them, in linear time: that
    regex retried at every ``<lora:`` without a closing ``>`` is quadratic."""
    tags: list[tuple[int, int, str, str | None]] = []
    finder = _Finder(prompt)
    position, end = 0, len(prompt)
    while True:
        start = finder.find("<", position)
        if start + 6 > end:
            return tags
        if prompt[start + 1 : start + 6].lower() != "lora:":
            position = start + 1
            continue
        name_start = start + 6
        name_end = finder.first(name_start, ":>")
        if name_end in (name_start, end):
            position = start + 1
            continue
        name = prompt[name_start:name_end]
        if prompt[name_end] == ">":
            tags.append((start, name_end + 1, name, None))
            position = name_end + 1
            continue
        weight_end = finder.first(name_end + 1, ":>")
        if weight_end == end:
            return tags  # no ">" after this tag's name: no later tag can close either
        close = weight_end if prompt[weight_end] == ">" else finder.find(">", weight_end + 1)
        if close == end:
            return tags  # no ">" after this tag's name: no later tag can close either
        tags.append((start, close + 1, name, prompt[name_end + 1 : weight_end]))
        position = close + 1


def split_loras(prompt: str) -> tuple[str, tuple[LoraRef, ...]]:
    """The prompt without its ``<lora:name:weight>`` tags, and the LoRAs they name."""
    loras = []
    kept, position = [], 0
    for start, end, name, weight in lora_tags(prompt):
        try:
            loras.append(LoraRef(name=name.strip(), weight=float(weight or "1")))
        except ValueError:
            raise InvalidRequest(
                f"prompt: {prompt[start:end]} has no valid weight", param="prompt"
            ) from None
        kept.append(prompt[position:start])
        position = end
    kept.append(prompt[position:])
    return "".join(kept).strip().strip(","), tuple(loras)


def control_units(body: Txt2ImgIn) -> list[tuple[int, ControlNetArg]]:
    """The enabled sd-webui-controlnet units of ``alwayson_scripts``, with their indexes."""
    scripts = {key.lower(): value for key, value in body.alwayson_scripts.items()}
    script = scripts.get("controlnet") or {}
    if not isinstance(script, dict) or not isinstance(script.get("args") or [], list):
        param = "alwayson_scripts.controlnet"
        raise InvalidRequest(f'{param} must look like {{"args": [unit, …]}}', param=param)
    units = []
    for index, raw in enumerate(script.get("args") or []):
        if not isinstance(raw, dict):
            continue  # the extension's legacy positional form: nothing to apply
        try:
            unit = ControlNetArg.model_validate(raw)
        except ValidationError as exc:
            prefix = ("alwayson_scripts", "controlnet", "args", str(index))
            raise invalid_field(exc.errors()[0], prefix=prefix) from None
        if unit.enabled and model_name(unit.model).lower() not in ("", "none"):
            units.append((index, unit))
    return units


def to_native(
    body: Txt2ImgIn,
    *,
    model: str,
    init_image: uuid.UUID | None,
    mask: uuid.UUID | None = None,
    controlnets: list[tuple[int, ControlNetArg, uuid.UUID]],
    options: dict[str, Any],
    settings: Settings,
    upscalers: list[str] | None = None,
) -> GenerationRequest:
    """Pure translation. ``init_image``, ``mask`` and each unit's third item are upload ids;
    ``options`` are the caller's saved options (``override_settings`` win over them);
    ``upscalers`` is A1111's list of them, which scripts index."""
    check_fields(body)
    script = sd_upscale(body, upscalers or [])
    images = body.n_iter if script else body.batch_size * body.n_iter
    if images > settings.max_images:
        raise InvalidRequest(
            f"batch_size × n_iter must be at most {settings.max_images}, got {images}",
            param="batch_size",
        )
    # Styles first, as A1111 applies them: a style's LoRA tags count.
    styled, negative = style_prompts(body.prompt, body.negative_prompt, body.styles, settings)
    prompt, loras = split_loras(styled)
    if body.disable_extra_networks:  # the tags are taken out, and nothing applied
        loras = ()
    check_overrides(body.override_settings, param="override_settings")
    overrides = options | body.override_settings
    vae = overrides.get("sd_vae") or None
    if vae in ("Automatic", "None"):
        vae = None
    fields = {
        "model": model,
        "prompt": prompt,
        "negative_prompt": negative,
        "width": body.width,
        "height": body.height,
        "steps": body.steps,
        "guidance": body.cfg_scale,
        "distilled_guidance": body.distilled_cfg_scale,
        "sampler": sampler(body),
        "eta": body.eta,
        "seed": body.seed,
        "n_images": images,
        "init_image": init_image,
        "inpaint": body.inpaint(mask) if isinstance(body, Img2ImgIn) and mask else None,
        "strength": body.denoising_strength if init_image else 0.75,
        "subseed": body.subseed,
        "subseed_strength": body.subseed_strength,
        "tiling": body.tiling,
        "hires": hires(body, sampler(body)) if init_image is None else None,
        "refiner": refiner(body, overrides),
        "sd_upscale": script,
        "clip_skip": overrides.get("CLIP_stop_at_last_layers") or 1,
        "vae": model_name(str(vae)) if vae else None,
        "loras": loras,
        "controlnets": [
            {
                "model": model_name(unit.model),
                "image": upload_id,
                "preprocessor": _MODULES.get(unit.module.strip().lower(), unit.module),
                "scale": unit.weight,
                "start": unit.guidance_start,
                "end": unit.guidance_end,
            }
            for _, unit, upload_id in controlnets
        ],
    }
    if not (body.sampler_name or body.sampler_index or body.scheduler):
        del fields["sampler"]  # unnamed: the model's family chooses (SD: Euler a)
    return GenerationRequest.parse(fields)


#: A1111's values of its fields that mean "nothing asked" (None: any value has no effect
#: here, as in A1111 on the models huabu serves).
_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "s_churn": (0, None),
    "s_noise": (1, None),
    "s_min_uncond": (0, None),
    "firstphase_width": (0, None),
    "firstphase_height": (0, None),
    "override_settings_restore_afterwards": (True, None),
    "comments": (None, {}),
    "firstpass_image": (None, ""),
    "force_task_id": (None, ""),
    "infotext": (None, ""),
    "resize_mode": (0,),
    "initial_noise_multiplier": (None, 1),
    "latent_mask": (None, ""),
    "include_init_images": (False,),
}
_REASONS = {
    "s_churn": "the samplers run without churn (s_churn 0)",
    "s_noise": "the samplers add noise at s_noise 1",
    "s_min_uncond": "every step runs the negative prompt (s_min_uncond 0)",
    "firstphase_width": "the old hires fix's first-phase size is gone; use hr_resize_x",
    "firstphase_height": "the old hires fix's first-phase size is gone; use hr_resize_y",
    "override_settings_restore_afterwards": (
        "override_settings apply to this request only; set options through /sdapi/v1/options"
    ),
    "comments": "comments are not written into the infotext",
    "firstpass_image": "a given first-pass image is not supported",
    "force_task_id": "task ids are the server's (see the response's task_id)",
    "infotext": "reading the request from an infotext is not supported; send the fields",
    "resize_mode": "only resize mode 0 (just resize) is supported",
    "initial_noise_multiplier": "the initial noise is not scaled (1)",
    "latent_mask": "a separate latent mask is not supported",
    "include_init_images": "the response holds the generated images only",
}


def check_fields(body: Txt2ImgIn) -> None:
    """InvalidRequest naming the first field that asks for what huabu does not do (A1111's
    fields left at their defaults ask for nothing)."""
    if body.restore_faces:
        raise InvalidRequest(
            "restore_faces: face restoration is not available on this server", param="restore_faces"
        )
    script = (body.script_name or "").strip().lower()
    if script not in ("", "none", "sd upscale") or (
        script == "sd upscale" and not isinstance(body, Img2ImgIn)
    ):
        raise InvalidRequest(
            f'script_name: unknown script {body.script_name!r}; this server runs "SD upscale" '
            "(img2img) and no other (ControlNet is built in: alwayson_scripts.controlnet)",
            param="script_name",
        )
    if body.seed_resize_from_h > 0 and body.seed_resize_from_w > 0:
        raise InvalidRequest(
            "seed_resize_from_w: resizing the seed from another size is not supported",
            param="seed_resize_from_w",
        )
    for field, allowed in _DEFAULTS.items():
        if field in type(body).model_fields and getattr(body, field) not in allowed:
            raise InvalidRequest(f"{field}: {_REASONS[field]}", param=field)
    x, y = (body.mask_blur_x, body.mask_blur_y) if isinstance(body, Img2ImgIn) else (None, None)
    if x is not None and y is not None and x != y:
        raise InvalidRequest(
            "mask_blur_x: the mask is blurred alike in both directions (mask_blur)",
            param="mask_blur_x",
        )


def sd_upscale(body: Txt2ImgIn, upscalers: list[str]) -> dict[str, Any] | None:
    """The native ``sd_upscale`` of an img2img body running A1111's "SD upscale" script:
    ``script_args`` are ``[info, overlap, upscaler index, scale factor]`` as A1111 takes them
    (missing ones at its defaults: 64, 0, 2), the index into A1111's upscaler list."""
    if (body.script_name or "").strip().lower() != "sd upscale":
        return None
    args = list(body.script_args) + [None] * (4 - len(body.script_args))
    _, overlap, index, scale = args[:4]
    overlap = 64 if overlap is None else overlap
    index = 0 if index is None else index
    scale = 2 if scale is None else scale
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(upscalers):
        raise InvalidRequest(
            f"script_args[2]: the upscaler's index in /sdapi/v1/upscalers (0 to "
            f"{len(upscalers) - 1}), got {index!r}",
            param="script_args",
        )
    return {
        "upscaler": upscalers[index],
        "overlap": overlap,
        "scale": scale,
        "batch_size": body.batch_size,
    }


def refiner(body: Txt2ImgIn, overrides: dict[str, Any]) -> dict[str, Any] | None:
    """The native refiner of a body: A1111 runs one when ``refiner_checkpoint`` names a
    checkpoint, switching at ``refiner_switch_at`` (0.8, its UI's default, when unset); at 1
    the switch never comes. With the hires fix, the option ``hires_fix_refiner_pass`` says
    which pass it joins."""
    name = model_name(body.refiner_checkpoint or "")
    if name.lower() in ("", "none") or body.refiner_switch_at == 1:
        return None
    switch_at = 0.8 if body.refiner_switch_at is None else body.refiner_switch_at
    passes = overrides.get("hires_fix_refiner_pass")
    return {"model": name, "switch_at": switch_at} | ({"hires_pass": passes} if passes else {})


def hires(body: Txt2ImgIn, sampler_name: str) -> dict[str, Any] | None:
    """The native hires fix of a txt2img body (``enable_hr``)."""
    if not body.enable_hr:
        return None
    same = {
        "hr_checkpoint_name": (body.hr_checkpoint_name, ("", "Use same checkpoint")),
        "hr_sampler_name": (body.hr_sampler_name, ("", "Use same sampler", sampler_name)),
        "hr_scheduler": (body.hr_scheduler, ("", "Use same scheduler", body.scheduler)),
        "hr_prompt": (body.hr_prompt, ("", body.prompt)),
        "hr_negative_prompt": (body.hr_negative_prompt, ("", body.negative_prompt)),
    }
    for field, (value, allowed) in same.items():
        if value is not None and value not in allowed:
            raise InvalidRequest(
                f"{field}: the hires pass runs with the first pass's checkpoint, sampler and "
                "prompts here",
                param=field,
            )
    return {
        "scale": body.hr_scale,
        "resize_width": body.hr_resize_x,
        "resize_height": body.hr_resize_y,
        "upscaler": body.hr_upscaler or "Latent",
        "steps": body.hr_second_pass_steps,
        "strength": body.denoising_strength,
    }


_NATIVE_NAMES = {"model": "override_settings.sd_model_checkpoint", "guidance": "cfg_scale",
                 "distilled_guidance": "distilled_cfg_scale",
                 "sampler": "sampler_name", "n_images": "batch_size", "strength":
                 "denoising_strength", "vae": "override_settings.sd_vae",
                 "clip_skip": "override_settings.CLIP_stop_at_last_layers",
                 "hires": "enable_hr", "hires.scale": "hr_scale",
                 "hires.resize_width": "hr_resize_x", "hires.resize_height": "hr_resize_y",
                 "hires.upscaler": "hr_upscaler", "hires.steps": "hr_second_pass_steps",
                 "hires.strength": "denoising_strength", "refiner": "refiner_checkpoint",
                 "refiner.model": "refiner_checkpoint",
                 "refiner.switch_at": "refiner_switch_at",
                 "refiner.hires_pass": "override_settings.hires_fix_refiner_pass",
                 "sd_upscale": "script_args", "sd_upscale.scale": "script_args",
                 "sd_upscale.overlap": "script_args",
                 "sd_upscale.upscaler": "script_args"}  # fmt: skip


_INPAINT_NAMES = {"blur": "mask_blur", "padding": "inpaint_full_res_padding"}


def renamed(error: InvalidRequest) -> InvalidRequest:
    """A native validation error, naming this dialect's field instead."""
    param = error.param or ""
    if param.startswith("loras"):
        return InvalidRequest(f"prompt: {error.message}", param="prompt")
    if param.startswith("controlnets."):
        index, _, field = param.removeprefix("controlnets.").partition(".")
        field = {
            "preprocessor": "module",
            "scale": "weight",
            "start": "guidance_start",
            "end": "guidance_end",
        }.get(field, field)
        return InvalidRequest(
            error.message, param=f"alwayson_scripts.controlnet.args.{index}.{field}"
        )
    if param == "inpaint" or param.startswith("inpaint."):
        field = param.partition(".")[2]
        return InvalidRequest(error.message, param=_INPAINT_NAMES.get(field, "mask"))
    if param in _NATIVE_NAMES:
        return InvalidRequest(error.message, param=_NATIVE_NAMES[param])
    return error


def info(record: TaskRecord, request: GenerationRequest, body: Txt2ImgIn) -> dict[str, Any]:
    """A1111's ``info`` object (sent as a JSON string)."""
    seeds = [image.seed for image in record.images] or request.image_seeds()
    return {
        "prompt": body.prompt,
        "all_prompts": [body.prompt] * len(seeds),
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": [request.negative_prompt] * len(seeds),
        "seed": request.seed,
        "all_seeds": seeds,
        "subseed": request.subseed,
        "all_subseeds": request.image_subseeds()[: len(seeds)],
        "subseed_strength": request.subseed_strength,
        "width": request.width,
        "height": request.height,
        "sampler_name": request.sampler,
        "cfg_scale": request.guidance,
        "steps": request.steps,
        "batch_size": body.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": request.model,
        "sd_model_hash": None,
        "sd_vae_name": request.vae,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": (
            request.strength
            if request.is_img2img
            else request.hires.strength
            if request.hires
            else None
        ),
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": [image.infotext for image in record.images],
        "styles": body.styles,
        "job_timestamp": record.created_at.strftime("%Y%m%d%H%M%S"),
        "clip_skip": request.clip_skip,
        "is_using_inpainting_conditioning": request.inpaint is not None,
        "version": "huabu",
        "interrupted": record.state == "cancelled",
        "task_id": str(record.id),
    }


def progress_out(record: TaskRecord | None, *, with_image: bool = True) -> dict[str, Any]:
    """A1111's ``/progress`` for the caller's current task (or none); ``current_image`` is
    its live preview (base64 PNG) unless ``skip_current_image`` was asked."""
    if record is None:
        return {
            "progress": 0.0,
            "eta_relative": 0.0,
            "state": {
                "skipped": False,
                "interrupted": False,
                "job": "",
                "job_count": 0,
                "job_timestamp": "0",
                "job_no": 0,
                "sampling_step": 0,
                "sampling_steps": 0,
            },
            "current_image": None,
            "textinfo": None,
        }
    running = record.state == "running"
    return {
        "progress": round(record.step / max(record.total, 1), 4) if running else 0.0,
        "eta_relative": record.eta_seconds or 0.0,
        "state": {
            "skipped": False,
            "interrupted": False,
            "job": f"task({record.id})",
            "job_count": 1,
            "job_timestamp": record.created_at.strftime("%Y%m%d%H%M%S"),
            "job_no": 0,
            "sampling_step": record.step if running else 0,
            "sampling_steps": record.total,
        },
        "current_image": (
            base64.b64encode(record.preview).decode()
            if with_image and running and record.preview is not None
            else None
        ),
        "textinfo": None,
    }


def options_in(body: dict[str, Any]) -> dict[str, Any]:
    """The options huabu keeps per user, from a POST /options body (the fixed ones may come
    back unchanged; any other is a 400 naming it)."""
    check_overrides(body, param="options")
    changes: dict[str, Any] = {}
    if "hires_fix_refiner_pass" in body:
        changes["hires_fix_refiner_pass"] = body["hires_fix_refiner_pass"]
    for name in ("sd_model_checkpoint", "sd_vae"):
        if not isinstance(body.get(name, ""), str | None):
            raise InvalidRequest(f"{name} must be a name (a string)", param=name)
        try:
            printable(str(body.get(name) or ""))
        except ValueError as exc:
            raise InvalidRequest(f"{name}: {exc}", param=name) from None
    if "sd_model_checkpoint" in body:
        changes["sd_model_checkpoint"] = model_name(str(body["sd_model_checkpoint"]))
    if "sd_vae" in body:
        vae = str(body["sd_vae"] or "")
        changes["sd_vae"] = "" if vae in ("", "Automatic", "None") else model_name(vae)
    if "CLIP_stop_at_last_layers" in body:
        value = body["CLIP_stop_at_last_layers"]
        try:
            clip_skip = 0 if isinstance(value, bool) else int(value)
        except (TypeError, ValueError):
            clip_skip = 0
        if not 1 <= clip_skip <= 12:
            raise InvalidRequest(
                "CLIP_stop_at_last_layers must be between 1 and 12",
                param="CLIP_stop_at_last_layers",
            )
        changes["CLIP_stop_at_last_layers"] = clip_skip
    return changes


#: A1111's options that clients read, at the values huabu runs with: a client may send them
#: back unchanged (POST /options, override_settings); another value is a 400 naming it.
FIXED_OPTIONS: dict[str, Any] = {
    "sd_checkpoint_hash": None,
    "samples_format": "png",
    "sd_lora": "None",
    "send_seed": True,
    "send_size": True,
    "eta_ancestral": 1.0,
    "eta_ddim": 0.0,
    "eta_noise_seed_delta": 0,
    "s_churn": 0.0,
    "s_min_uncond": 0.0,
    "s_noise": 1.0,
    "s_tmin": 0.0,
    "s_tmax": 0.0,
    "randn_source": "CPU",
    "comma_padding_backtrack": 20,
    "emphasis": "Original",
    "use_old_emphasis_implementation": False,
    "use_old_scheduling": False,
    "img2img_fix_steps": False,
    "face_restoration": False,
    "face_restoration_model": None,
    "upscaler_for_img2img": None,
    "live_previews_enable": True,
    "show_progress_every_n_steps": 1,
    "samples_save": True,
    "grid_save": False,
    "return_grid": False,
    "enable_pnginfo": True,
}
#: The options each user keeps (POST /options), and those a request may also override.
SETTABLE_OPTIONS = ("sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers")
REFINER_PASSES = ("first pass", "second pass", "both passes")


def check_overrides(overrides: dict[str, Any], *, param: str) -> None:
    """InvalidRequest naming ``param.key`` for an option huabu does not have or runs at
    another value (``FIXED_OPTIONS``)."""
    for key, value in overrides.items():
        if key in SETTABLE_OPTIONS:
            continue
        if key == "hires_fix_refiner_pass":
            if value not in REFINER_PASSES:
                raise InvalidRequest(
                    f"{param}.{key} must be one of {', '.join(REFINER_PASSES)}",
                    param=f"{param}.{key}",
                )
            continue
        if key not in FIXED_OPTIONS:
            raise InvalidRequest(
                f"{param}.{key}: not an option this server has (it has "
                f"{', '.join(SETTABLE_OPTIONS)}, hires_fix_refiner_pass, and fixed ones)",
                param=f"{param}.{key}",
            )
        if value != FIXED_OPTIONS[key]:
            raise InvalidRequest(
                f"{param}.{key}: fixed at {FIXED_OPTIONS[key]!r} on this server",
                param=f"{param}.{key}",
            )


def options_out(options: dict[str, Any]) -> dict[str, Any]:
    return FIXED_OPTIONS | {
        "sd_model_checkpoint": options["sd_model_checkpoint"],
        "sd_vae": options.get("sd_vae") or "Automatic",
        "CLIP_stop_at_last_layers": options.get("CLIP_stop_at_last_layers", 1),
        "hires_fix_refiner_pass": options.get("hires_fix_refiner_pass", "second pass"),
    }
