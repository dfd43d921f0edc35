"""The routes of AUTOMATIC1111's sdapi/v1 (and sd-webui-controlnet's listings): thin; read the
body, translate, submit or read through the task service, answer."""

from __future__ import annotations

import base64
import json
import os
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from huabu.catalog.infotext import parse_infotext, read_parameters
from huabu.catalog.preprocessors import available as available_preprocessors
from huabu.catalog.styles import read_styles
from huabu.dialects.a1111.translate import (
    SCHEDULERS,
    control_units,
    info,
    model_name,
    options_in,
    options_out,
    progress_out,
    renamed,
    to_native,
)
from huabu.dialects.a1111.wire import (
    CONTROLNET_PREFIX,
    ORIGIN,
    PREFIX,
    ControlNetArg,
    ControlNetModelsOut,
    ControlNetModulesOut,
    ErrorOut,
    ImagesOut,
    Img2ImgIn,
    OptionsIn,
    PngInfoIn,
    PngInfoOut,
    ProgressOut,
    Txt2ImgIn,
    render_error,
)
from huabu.dialects.common import read_body, validate
from huabu.errors import InvalidRequest, NotFound
from huabu.images import decode_base64, open_image
from huabu.native import (
    MAX_CONTROLNETS,
    SAMPLER_NAMES,
    GenerationRequest,
)
from huabu.native.generation import A1111_UPSCALERS, IMAGE_UPSCALERS, LATENT_UPSCALERS
from huabu.tasks.uploads import NewUploads
from huabu.web.bodies import SMALL_BODY
from huabu.web.deps import CurrentUser, ServicesDep
from huabu.web.openapi import SYNC, ok, request_body
from huabu.web.routing import GuardedRoute, Mount
from huabu.web.services import Services
from huabu.web.waiting import submit_and_wait

router = APIRouter(route_class=GuardedRoute, prefix=PREFIX, tags=["A1111: sdapi/v1"])


controlnet_router = APIRouter(
    route_class=GuardedRoute, prefix=CONTROLNET_PREFIX, tags=["A1111: sd-webui-controlnet"]
)


_LIST = {"type": "array", "items": {"type": "object"}}


_OBJECT = {"type": "object"}


_NULL = {"type": "null"}


async def _model(services: Services, options: dict[str, Any], body: Txt2ImgIn) -> str:
    """override_settings, else the caller's options, else the server's default checkpoint."""
    wanted = body.override_settings.get("sd_model_checkpoint")
    if wanted:
        return model_name(str(wanted))
    if options.get("sd_model_checkpoint"):
        return options["sd_model_checkpoint"]
    return await run_in_threadpool(services.catalog.default_model)


async def _controlnets(
    uploads: NewUploads, body: Txt2ImgIn, init: uuid.UUID | None
) -> list[tuple[int, ControlNetArg, uuid.UUID]]:
    """The enabled units with the upload id of each one's image (the init image when a unit
    of img2img has none, as sd-webui-controlnet does)."""
    enabled = control_units(body)
    if len(enabled) > MAX_CONTROLNETS:  # refused before any unit's image is decoded
        param = "alwayson_scripts.controlnet.args"
        raise InvalidRequest(
            f"{param}: {len(enabled)} enabled units; at most {MAX_CONTROLNETS} at once",
            param=param,
        )
    units = []
    for index, unit in enabled:
        field = f"alwayson_scripts.controlnet.args.{index}.image"
        image = unit.image_data()
        if image is None and init is None:
            raise InvalidRequest(f"{field}: a ControlNet unit needs an image", param=field)
        upload_id = init
        if image is not None:
            data = decode_base64(image, field=field)
            upload_id = (await run_in_threadpool(uploads.add, data, field=field)).id
        assert upload_id is not None
        units.append((index, unit, upload_id))
    return units


async def _generate(
    services: Services,
    user,
    body: Txt2ImgIn,
    uploads: NewUploads,
    init: uuid.UUID | None = None,
    mask: uuid.UUID | None = None,
) -> Response:
    options = await run_in_threadpool(services.accounts.options, user.id)
    model = await _model(services, options, body)
    units = await _controlnets(uploads, body, init)
    try:
        native = to_native(
            body,
            model=model,
            init_image=init,
            mask=mask,
            controlnets=units,
            options=options,
            settings=services.settings,
            upscalers=await run_in_threadpool(_upscaler_names, services),
        )
        # A1111 answers an interrupted call with what it has: here, no images.
        record = await submit_and_wait(
            services, user, native, origin=ORIGIN, uploads=uploads, cancelled_ok=True
        )
    except InvalidRequest as exc:
        raise renamed(exc) from None
    images = []
    if body.send_images:
        images = await run_in_threadpool(
            lambda: [base64.b64encode(services.storage.get(i.key)).decode() for i in record.images]
        )
    assert isinstance(record.request, GenerationRequest)
    return JSONResponse(
        {
            "images": images,
            "parameters": body.model_dump(exclude={"init_images", "mask"}),
            "info": json.dumps(info(record, record.request, body)),
        }
    )


@router.post(
    "/txt2img",
    summary="Text to image (synchronous, base64 images)",
    openapi_extra=request_body(Txt2ImgIn) | SYNC,
    responses=ok(ImagesOut),
)
async def txt2img(request: Request, user: CurrentUser, services: ServicesDep) -> Response:
    body = validate(Txt2ImgIn, await read_body(request))
    return await _generate(services, user, body, services.new_uploads())


@router.post(
    "/img2img",
    summary="Image to image (synchronous, base64 images)",
    openapi_extra=request_body(Img2ImgIn) | SYNC,
    responses=ok(ImagesOut),
)
async def img2img(request: Request, user: CurrentUser, services: ServicesDep) -> Response:
    body = validate(Img2ImgIn, await read_body(request))
    if len(body.init_images) > 1:
        raise InvalidRequest("init_images: send one image", param="init_images")
    uploads = services.new_uploads()
    data = decode_base64(body.init_images[0], field="init_images.0")
    init = await run_in_threadpool(uploads.add, data, field="init_images.0")
    mask = None
    if body.mask:
        data = decode_base64(body.mask, field="mask")
        mask = (await run_in_threadpool(uploads.add, data, field="mask")).id
    return await _generate(services, user, body, uploads, init.id, mask)


@router.get(
    "/progress", summary="Your running task: progress, ETA, steps", responses=ok(ProgressOut)
)
def progress(
    user: CurrentUser, services: ServicesDep, skip_current_image: bool = False
) -> Response:
    record = services.tasks.current(user.id)
    return JSONResponse(progress_out(record, with_image=not skip_current_image))


def _stop_current(user, services: Services) -> Response:
    record = services.tasks.current(user.id)
    if record is not None and record.state == "running":
        services.cancel(user.id, record.id)
    return JSONResponse({})


@router.post("/interrupt", summary="Stop your running task (nobody else's)", responses=ok(_OBJECT))
def interrupt(user: CurrentUser, services: ServicesDep) -> Response:
    return _stop_current(user, services)


@router.post(
    "/skip",
    summary="Like interrupt: huabu cannot skip one image of a batch",
    responses=ok(_OBJECT),
)
def skip(user: CurrentUser, services: ServicesDep) -> Response:
    return _stop_current(user, services)


@router.get("/sd-models", summary="Checkpoints", responses=ok(_LIST))
def sd_models(user: CurrentUser, services: ServicesDep) -> Response:
    entries = services.catalog.entries("checkpoints")
    return JSONResponse(
        [
            {
                "title": e.name,
                "model_name": e.name,
                "hash": None,
                "sha256": None,
                "filename": e.location,
                "config": None,
            }
            for e in entries
        ]
    )


@controlnet_router.get("/version", summary="sd-webui-controlnet's API version")
def controlnet_version(user: CurrentUser) -> Response:
    return JSONResponse({"version": 2})


@controlnet_router.get(
    "/model_list", summary="ControlNet models", responses=ok(ControlNetModelsOut)
)
def controlnet_models(user: CurrentUser, services: ServicesDep) -> Response:
    names = services.catalog.names("controlnet")
    return JSONResponse({"model_list": ["None", *names]})


@controlnet_router.get(
    "/module_list",
    summary="Preprocessors that run here (the others need annotator weights)",
    responses=ok(ControlNetModulesOut),
)
def controlnet_modules(user: CurrentUser, services: ServicesDep) -> Response:
    held = set(services.catalog.names("annotators"))
    names = available_preprocessors(held)
    return JSONResponse(
        {"module_list": names, "module_detail": {name: {"sliders": []} for name in names}}
    )


@router.post(
    "/refresh-checkpoints",
    summary="No-op: the library is always read live",
    responses=ok(_NULL),
)
def refresh_checkpoints(user: CurrentUser) -> Response:
    return JSONResponse(None)


@router.get("/samplers", summary="The A1111 sampler names huabu runs", responses=ok(_LIST))
def samplers(user: CurrentUser) -> Response:
    return JSONResponse([{"name": name, "aliases": [], "options": {}} for name in SAMPLER_NAMES])


@router.get(
    "/schedulers",
    summary="Noise schedules (combined with sampler_name)",
    responses=ok(_LIST),
)
def schedulers(user: CurrentUser) -> Response:
    return JSONResponse(
        [
            {
                "name": name,
                "label": label,
                "aliases": None,
                "default_rho": -1,
                "need_inner_model": False,
            }
            for name, label in SCHEDULERS.items()
        ]
    )


@router.get("/loras", summary="LoRAs (the server's, and your trained ones)", responses=ok(_LIST))
def loras(user: CurrentUser, services: ServicesDep) -> Response:
    entries = services.catalog.entries("loras")
    trained = services.training.trained_names(user.id)
    listed = [
        {"name": e.name, "alias": e.name, "path": e.location, "metadata": {}} for e in entries
    ]
    listed += [{"name": name, "alias": name, "path": "", "metadata": {}} for name in trained]
    return JSONResponse(listed)


@router.get("/embeddings", summary="Textual-inversion embeddings", responses=ok(_OBJECT))
def embeddings(user: CurrentUser, services: ServicesDep) -> Response:
    names = services.catalog.names("embeddings")
    loaded = {
        name: {
            "step": None,
            "sd_checkpoint": None,
            "sd_checkpoint_name": None,
            "shape": None,
            "vectors": None,
        }
        for name in names
    }
    return JSONResponse({"loaded": loaded, "skipped": {}})


@router.get("/sd-vae", summary="VAEs", responses=ok(_LIST))
def sd_vae(user: CurrentUser, services: ServicesDep) -> Response:
    entries = services.catalog.entries("vae")
    return JSONResponse([{"model_name": e.name, "filename": e.location} for e in entries])


def _model_upscalers(services: Services) -> list[str]:
    """The fleet's model upscalers, by the names A1111 gives them (its own names for the
    files it ships: ``RealESRGAN_x4plus`` is "R-ESRGAN 4x+")."""
    held = services.catalog.names("upscalers")
    by_file = {file: name for name, file in A1111_UPSCALERS.items()}
    return [by_file.get(name, name) for name in held]


def _upscaler_names(services: Services) -> list[str]:
    """A1111's list of upscalers (``sd_upscalers``), in order: scripts pick them by index."""
    return [*IMAGE_UPSCALERS, *_model_upscalers(services)]


@router.get("/upscalers", summary="Upscalers: built-in, and models/upscalers/", responses=ok(_LIST))
def upscalers(user: CurrentUser, services: ServicesDep) -> Response:
    names = _upscaler_names(services)
    return JSONResponse(
        [
            {"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
            for name in names
        ]
    )


@router.get("/latent-upscale-modes", summary="The hires fix's latent modes", responses=ok(_LIST))
def latent_upscale_modes(user: CurrentUser) -> Response:
    return JSONResponse([{"name": name} for name in LATENT_UPSCALERS])


@router.get("/face-restorers", summary="Face restorers (none installed)", responses=ok(_LIST))
def face_restorers(user: CurrentUser) -> Response:
    return JSONResponse([])


@router.get("/realesrgan-models", summary="Real-ESRGAN models held", responses=ok(_LIST))
def realesrgan_models(user: CurrentUser, services: ServicesDep) -> Response:
    return JSONResponse(
        [
            {"name": name, "path": None, "scale": 4}
            for name in _model_upscalers(services)
            if name.startswith("R-ESRGAN")
        ]
    )


@router.get("/hypernetworks", summary="Hypernetworks (none: not supported)", responses=ok(_LIST))
def hypernetworks(user: CurrentUser) -> Response:
    return JSONResponse([])


@router.get("/extensions", summary="Extensions (none: ControlNet is built in)", responses=ok(_LIST))
def extensions(user: CurrentUser) -> Response:
    return JSONResponse([])


@router.get("/script-info", summary="Scripts: ControlNet, always on", responses=ok(_LIST))
def script_info(user: CurrentUser) -> Response:
    return JSONResponse(
        [
            {"name": "controlnet", "is_alwayson": True, "is_img2img": img2img, "args": []}
            for img2img in (False, True)
        ]
    )


@router.get("/cmd-flags", summary="How this server runs, in A1111's flags", responses=ok(_OBJECT))
def cmd_flags(user: CurrentUser) -> Response:
    return JSONResponse(
        {
            "api": True,
            "nowebui": True,
            "medvram": False,
            "lowvram": False,
            "no_half": False,
            "no_half_vae": False,
            "xformers": False,
            "disable_safe_unpickle": False,
            "hide_ui_dir_config": True,
            "lora_dir": None,
            "ckpt_dir": None,
            "embeddings_dir": None,
            "hypernetwork_dir": None,
        }
    )


@router.post(
    "/interrogate",
    summary="Caption an image (no interrogator installed: 404)",
    responses=ok(_OBJECT),
)
def interrogate(user: CurrentUser) -> Response:
    raise NotFound(
        "no interrogator is installed on this server: it runs neither CLIP nor DeepBooru "
        "interrogation"
    )


@router.get(
    "/prompt-styles", summary="Prompt styles (the server's styles.csv)", responses=ok(_LIST)
)
def prompt_styles(user: CurrentUser, services: ServicesDep) -> Response:
    return JSONResponse(
        [
            {"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
            for s in read_styles(services.settings).values()
        ]
    )


@router.get("/scripts", summary="Scripts (none: ControlNet is built in)", responses=ok(_OBJECT))
def scripts(user: CurrentUser) -> Response:
    return JSONResponse({"txt2img": [], "img2img": []})


@router.get("/options", summary="Your options", responses=ok(_OBJECT))
def get_options(user: CurrentUser, services: ServicesDep) -> Response:
    options = services.accounts.options(user.id)
    if not options.get("sd_model_checkpoint"):
        options["sd_model_checkpoint"] = services.catalog.default_model()
    return JSONResponse(options_out(options))


@router.post(
    "/options",
    summary="Change your options (sd_model_checkpoint, sd_vae, clip skip)",
    openapi_extra=request_body(OptionsIn),
    responses=ok(_NULL),
)
async def set_options(request: Request, user: CurrentUser, services: ServicesDep) -> Response:
    changes = options_in(await read_body(request, limit=SMALL_BODY))
    if "sd_model_checkpoint" in changes:
        name = changes["sd_model_checkpoint"]
        known = await run_in_threadpool(services.catalog.names, "checkpoints")
        if name not in known and not await run_in_threadpool(
            services.submitter.trained_model, user.id, name
        ):
            raise services.catalog.unknown("checkpoints", name, param="sd_model_checkpoint")
    if changes.get("sd_vae"):
        await run_in_threadpool(services.catalog.find, "vae", changes["sd_vae"], param="sd_vae")
    await run_in_threadpool(services.accounts.update_options, user.id, changes)
    return JSONResponse(None)


@router.post(
    "/png-info",
    summary="The generation parameters stored in an image",
    openapi_extra=request_body(PngInfoIn),
    responses=ok(PngInfoOut),
)
async def png_info(request: Request, user: CurrentUser, services: ServicesDep) -> Response:
    body = await read_body(request)
    max_pixels = services.settings.max_input_pixels
    return await run_in_threadpool(_png_info, body.get("image", ""), max_pixels)


@router.get("/memory", summary="Memory of this API process's machine", responses=ok(_OBJECT))
def memory(user: CurrentUser) -> Response:
    page, pages = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_PHYS_PAGES")
    free = os.sysconf("SC_AVPHYS_PAGES") * page
    total = pages * page
    return JSONResponse(
        {
            "ram": {"free": free, "used": total - free, "total": total},
            "cuda": {"error": "GPUs belong to the workers; the API process does not use one"},
        }
    )


def _png_info(image_text: Any, max_pixels: int) -> JSONResponse:
    """The parameters in a base64 image, as the response (CPU work in proportion to the input,
    rendering the answer's JSON included: off the loop)."""
    data = decode_base64(image_text, field="image")
    # The header only, under the input pixel cap: no pixel is decoded to read the text.
    image = open_image(data, field="image", max_pixels=max_pixels)
    try:
        text = read_parameters(image) or ""
    except (OSError, ValueError, SyntaxError):
        raise InvalidRequest("image is a truncated or corrupt image", param="image") from None
    return JSONResponse(
        {
            "info": text,
            "items": {"parameters": text} if text else {},
            "parameters": parse_infotext(text) if text.strip() else {},
        }
    )


#: What this API adds to the app (mounted by ``app``).
MOUNT = Mount(
    routers=(router, controlnet_router),
    errors=tuple((p, render_error, ErrorOut) for p in (PREFIX, CONTROLNET_PREFIX)),
)
