"""Each dialect's pure translation, without a server: the specs' own examples to the native
request, and tasks back to each wire shape. (End-to-end behaviour is in test_dialect_*.)"""

import uuid
from datetime import UTC, datetime

import pytest

from huabu.dialects import a1111, kamiya, novita, openai, sdserver, v1b
from huabu.errors import InvalidRequest
from huabu.native import GenerationRequest, ImageRef
from huabu.settings import Settings
from huabu.tasks.records import ImageRecord, TaskRecord

SETTINGS = Settings(home="/nonexistent")
UPLOAD = uuid.uuid4()


def sign(key: str) -> str:
    return f"https://huabu.test/files/{key}?sig=x"


def task(request: GenerationRequest, state="succeeded", **changes) -> TaskRecord:
    moment = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
    images = tuple(
        ImageRecord(
            index=i,
            seed=request.seed + i,
            key=f"images/t/{i}.png",
            preview_key=f"previews/t/{i}.jpg",
            format="png",
            width=request.width,
            height=request.height,
            size_bytes=100,
            infotext="x",
        )
        for i in range(request.n_images if state == "succeeded" else 0)
    )
    fields = dict(
        id=uuid.UUID(int=123456789),
        owner_id=uuid.UUID(int=1),
        kind="generate",
        origin="test",
        state=state,
        model=request.model,
        request=request,
        step=0,
        total=request.steps,
        attempts=1,
        error=None,
        created_at=moment,
        started_at=moment,
        finished_at=moment,
        images=images,
    )
    return TaskRecord(**(fields | changes))


# -- v1b (spec 000) ---------------------------------------------------------------------------


def test_v1b_spec_example():
    body = v1b.SubmitIn.model_validate(
        {
            "model_name": "Artist_V0.1.3",
            "prompt": "one girl, beautiful",
            "neg_prompt": "unsafe",
            "n_images": 2,
            "scale": 7,
            "output_size": "640x640",
            "select_seed": 0,
            "token": "",
        }
    )
    native = v1b.to_native(body, init_image=None, settings=SETTINGS)
    assert (native.model, native.prompt, native.negative_prompt) == (
        "Artist_V0.1.3",
        "one girl, beautiful",
        "unsafe",
    )
    assert (native.width, native.height, native.n_images, native.guidance, native.seed) == (
        640,
        640,
        2,
        7,
        0,
    )
    assert not native.is_img2img
    with_image = v1b.to_native(body, init_image=UPLOAD, settings=SETTINGS)
    assert with_image.init_image == ImageRef(upload=UPLOAD)


def test_v1b_result_and_errors():
    native = GenerationRequest(model="m", seed=5, n_images=2)
    out = v1b.from_native(task(native), sign)
    assert out["state"] == "done" and out["select_seed"] == 5
    assert [image["large"] for image in out["images"]] == [
        sign("images/t/0.png"),
        sign("images/t/1.png"),
    ]
    assert out["images"][0]["middle"] == sign("previews/t/0.jpg")
    failed = v1b.from_native(task(native, "failed", error="out of luck"), sign)
    assert failed["state"] == "failed" and failed["error_msg"] == "out of luck"
    assert v1b.from_native(task(native, "queued", queue_position=3), sign)["wait_time"] == 3
    with pytest.raises(InvalidRequest) as caught:
        v1b.parse_size("640 by 640")
    assert caught.value.param == "output_size"
    renamed = v1b.renamed(InvalidRequest("width must be a multiple of 8", param="width"))
    assert renamed.param == "output_size"


# -- kamiya (spec 002) ------------------------------------------------------------------------


KAMIYA_EXAMPLE = {
    "type": "text2image", "prompts": "礼花，气球，红色瞳孔",
    "negativePrompts": "lowres, bad anatomy",
    "step": 28, "cfg": 12, "seed": 218506577, "sampling": "DPM++ 2M Karras", "width": 768,
    "height": 512, "model": "original",
    "LoRAs": [{"id": "bocchiEdStyleLora_bocchiEdStyle", "weight": 60}],
}  # fmt: skip


def test_kamiya_spec_example():
    body = kamiya.GenerateIn.model_validate(KAMIYA_EXAMPLE)
    native = kamiya.to_native(body, model="original", init_image=None)
    assert native.prompt == "礼花，气球，红色瞳孔"
    assert native.negative_prompt == "lowres, bad anatomy"
    assert (native.steps, native.guidance, native.seed, native.sampler) == (
        28,
        12,
        218506577,
        "DPM++ 2M Karras",
    )
    assert (native.width, native.height, native.n_images) == (768, 512, 1)
    assert native.loras[0].name == "bocchiEdStyleLora_bocchiEdStyle"
    assert native.loras[0].weight == pytest.approx(0.6)  # kamiya's weight is a percentage
    assert native.output_format == "jpeg"


def test_kamiya_record_and_ids():
    native = kamiya.to_native(
        kamiya.GenerateIn.model_validate(KAMIYA_EXAMPLE), model="original", init_image=None
    )
    record = task(native)
    data = kamiya.from_native(record, sign)
    assert data["status"] == "generated" and data["metaid"] == record.id.hex
    assert kamiya.task_id_of(data["hashid"]) == record.id and data["id"] == data["hashid"][:7]
    metadata = data["metadata"]
    assert metadata["LoRAs"] == [{"id": "bocchiEdStyleLora_bocchiEdStyle", "weight": 60}]
    assert metadata["jpg"] == sign("images/t/0.png") and metadata["artboard"] == "768x512"
    assert metadata["type"] == "text2image"
    queued = kamiya.from_native(task(native, "queued", finished_at=None), sign)
    assert queued["status"] == "created" and "jpg" not in queued["metadata"]
    too_many = kamiya.GenerateIn.model_validate(
        KAMIYA_EXAMPLE | {"LoRAs": [{"id": f"l{i}", "weight": 50} for i in range(6)]}
    )
    with pytest.raises(InvalidRequest) as caught:
        kamiya.to_native(too_many, model="original", init_image=None)
    assert caught.value.param == "LoRAs"
    assert kamiya.renamed(InvalidRequest("x", param="loras.0.name")).param == "LoRAs.0.id"


# -- novita (spec 003) ------------------------------------------------------------------------

NOVITA_EXAMPLE = {
    "model_name": "dreamshaper_8.safetensors", "image_base64": "<string>", "prompt": "a cat",
    "width": 512, "height": 512, "image_num": 1, "steps": 20, "guidance_scale": 7.5,
    "sampler_name": "Euler a", "negative_prompt": "ugly", "sd_vae": "vae-ft-mse.safetensors",
    "controlnet": {"units": [{"model_name": "control_v11p_sd15_canny", "image_base64": "<string>",
                              "strength": 1.0, "preprocessor": "canny", "guidance_start": 0.0,
                              "guidance_end": 1.0}]},
    "seed": -1, "loras": [{"model_name": "add_detail.safetensors", "strength": 0.8}],
    "embeddings": [{"model_name": "easynegative.pt"}], "clip_skip": None, "strength": 0.75,
    "ip_adapters": [{"model_name": "ip-adapter_sd15.bin", "image_base64": "<string>",
                     "strength": 0.5}],
}  # fmt: skip


def test_novita_spec_example():
    body = novita.Img2ImgIn.model_validate(NOVITA_EXAMPLE)
    control, reference = uuid.uuid4(), uuid.uuid4()
    native = novita.to_native(
        body,
        novita.ExtraIn(response_image_type="webp"),
        init_image=UPLOAD,
        control_images=(control,),
        ip_image=reference,
    )
    assert native.model == "dreamshaper_8" and native.vae == "vae-ft-mse"  # suffixes dropped
    assert native.init_image == ImageRef(upload=UPLOAD) and native.strength == 0.75
    assert native.loras[0].name == "add_detail" and native.loras[0].weight == 0.8
    assert native.embeddings == ("easynegative",) and native.clip_skip == 1
    unit = native.controlnets[0]
    assert (unit.model, unit.preprocessor, unit.scale) == ("control_v11p_sd15_canny", "canny", 1)
    assert unit.image == ImageRef(upload=control)
    assert native.ip_adapter.name == "ip-adapter_sd15" and native.ip_adapter.scale == 0.5
    assert native.ip_adapter.image == ImageRef(upload=reference)
    assert native.output_format == "webp" and native.guidance == 7.5


def test_novita_refusals_and_result():
    body = novita.Txt2ImgIn.model_validate(
        {"model_name": "m", "prompt": "p", "refiner": {"switch_at": 0.6}}
    )
    with pytest.raises(InvalidRequest) as caught:
        novita.to_native(body, novita.ExtraIn())
    assert caught.value.param == "request.refiner"  # this server has no refiner
    native = novita.to_native(body, novita.ExtraIn(), refiner_model="sdxl-refiner")
    assert native.refiner is not None
    assert (native.refiner.model, native.refiner.switch_at) == ("sdxl-refiner", 0.6)
    fixed = novita.Txt2ImgIn.model_validate(
        {
            "model_name": "m",
            "prompt": "p",
            "hires_fix": {"target_width": 1024, "target_height": 768},
        }
    )
    hires = novita.to_native(fixed, novita.ExtraIn()).hires
    assert (hires.resize_width, hires.resize_height, hires.strength) == (1024, 768, 0.5)
    assert hires.upscaler == "Latent"
    renamed = novita.renamed(InvalidRequest("bad", param="controlnets.0.scale"))
    assert renamed.param == "request.controlnet.units.0.strength"
    native = GenerationRequest(model="m", seed=9, init_image=ImageRef(key="uploads/a.png"))
    result = novita.from_native(task(native), sign, 3600)
    assert result["task"]["status"] == "TASK_STATUS_SUCCEED"
    assert result["task"]["task_type"] == "IMG_TO_IMG" and result["extra"]["seed"] == 9
    assert result["images"][0]["image_url"] == sign("images/t/0.png")
    assert result["images"][0]["image_url_ttl"] == 3600
    failed = novita.from_native(task(native, "cancelled", error="cancelled"), sign, 1)
    assert failed["task"]["status"] == "TASK_STATUS_FAILED" and failed["task"]["reason"]


# -- the plain SD API server (spec 004) -------------------------------------------------------


def test_sdserver_spec_example():
    form = sdserver.Txt2ImgForm.model_validate(
        {
            "prompt": "Anime girl putting her hair up",
            "seed": "10086",
            "num_outputs": "1",
            "width": "512",
            "height": "512",
            "num_inference_steps": "30",
            "guidance_scale": "7",
        }
    )  # urlencoded forms arrive as strings
    native = sdserver.to_native(form, model="demo", size=(form.width, form.height))
    assert (native.prompt, native.seed, native.n_images, native.steps, native.guidance) == (
        "Anime girl putting her hair up",
        10086,
        1,
        30,
        7,
    )
    out = sdserver.from_native(task(native), sign)
    assert out.status == "success"
    assert [(i.image_url, i.mime_type, i.seed) for i in out.images] == [
        (sign("images/t/0.png"), "image/png", 10086)
    ]


# -- A1111 ------------------------------------------------------------------------------------


def test_a1111_prompt_loras_scheduler_and_units():
    body = a1111.Txt2ImgIn.model_validate(
        {
            "prompt": "a fox <lora:demo-lora:0.5>, snow",
            "sampler_name": "DPM++ 2M",
            "scheduler": "Karras",
            "batch_size": 2,
            "n_iter": 2,
            "cfg_scale": 5,
            "override_settings": {"sd_vae": "my-vae.safetensors", "CLIP_stop_at_last_layers": 2},
            "alwayson_scripts": {
                "ControlNet": {
                    "args": [
                        {
                            "enabled": True,
                            "module": "canny",
                            "model": "control_canny [abcd1234]",
                            "weight": 0.7,
                            "image": "x",
                        },
                        {"enabled": False, "model": "other"},
                    ]
                }
            },
        }
    )
    units = [(index, unit, UPLOAD) for index, unit in a1111.control_units(body)]
    assert [index for index, _, _ in units] == [0]  # the disabled unit is dropped
    native = a1111.to_native(
        body,
        model="demo",
        init_image=None,
        controlnets=units,
        options={"sd_vae": "ignored"},
        settings=SETTINGS,
    )
    assert native.prompt == "a fox , snow" and native.loras[0].name == "demo-lora"
    assert native.loras[0].weight == 0.5 and native.sampler == "DPM++ 2M Karras"
    assert native.n_images == 4 and native.guidance == 5 and native.clip_skip == 2
    assert native.vae == "my-vae"  # override_settings win over the saved options
    assert native.controlnets[0].model == "control_canny" and native.controlnets[0].scale == 0.7


@pytest.mark.parametrize(
    "change, param",
    [
        ({"enable_hr": True, "hr_sampler_name": "DDIM"}, "hr_sampler_name"),
        ({"enable_hr": True, "hr_checkpoint_name": "other"}, "hr_checkpoint_name"),
        ({"restore_faces": True}, "restore_faces"),
        ({"batch_size": 9}, "batch_size"),
        ({"scheduler": "exponential"}, "scheduler"),
        ({"alwayson_scripts": {"controlnet": "x"}}, "alwayson_scripts.controlnet"),
        (
            {"alwayson_scripts": {"controlnet": {"args": [{"weight": 5}]}}},
            "alwayson_scripts.controlnet.args.0.weight",
        ),
        (
            {"override_settings": {"CLIP_stop_at_last_layers": "many"}},
            "override_settings.CLIP_stop_at_last_layers",
        ),
    ],
)
def test_a1111_refusals_name_the_field(change, param):
    body = a1111.Txt2ImgIn.model_validate({"prompt": "p"} | change)
    with pytest.raises(InvalidRequest) as caught:
        units = [(i, unit, UPLOAD) for i, unit in a1111.control_units(body)]
        a1111.to_native(
            body, model="demo", init_image=None, controlnets=units, options={}, settings=SETTINGS
        )
    assert a1111.renamed(caught.value).param == param


def test_a1111_inpainting_fields():
    body = a1111.Img2ImgIn.model_validate(
        {
            "init_images": ["x"],
            "mask": "y",
            "mask_blur": 8,
            "inpainting_fill": 0,
            "inpaint_full_res": False,
            "inpainting_mask_invert": 1,
            "denoising_strength": 0.6,
        }
    )
    mask = uuid.uuid4()
    native = a1111.to_native(
        body,
        model="demo",
        init_image=UPLOAD,
        mask=mask,
        controlnets=[],
        options={},
        settings=SETTINGS,
    )
    assert native.init_image == ImageRef(upload=UPLOAD) and native.strength == 0.6
    assert native.inpaint.mask == ImageRef(upload=mask)
    assert (native.inpaint.blur, native.inpaint.invert, native.inpaint.fill) == (8, True, "fill")
    assert not native.inpaint.only_masked


# -- OpenAI images ----------------------------------------------------------------------------


def test_openai_sizes_quality_and_limits():
    body = openai.GenerationIn.model_validate({"prompt": "a fox", "quality": "high"})
    native = openai.to_native(body, model="demo", auto_size=(512, 512), settings=SETTINGS)
    assert (native.width, native.height, native.steps) == (512, 512, 40)
    sized = openai.GenerationIn.model_validate({"prompt": "a fox", "size": "256x384"})
    native = openai.to_native(sized, model="demo", auto_size=(1024, 1024), settings=SETTINGS)
    assert (native.width, native.height) == (256, 384)
    # size "auto": the model's trained square; SDXL's 1024 unless the model says otherwise
    # (the tiny SDXL demo is trained at 512, as its own default says).
    from huabu.catalog.architectures import Architecture
    from huabu.catalog.library import ModelInfo

    def info(architecture, side):
        return ModelInfo(
            "m", "checkpoints", "m.safetensors", "single-file", 1, architecture, side, 0.0
        )

    assert openai.native_square(None) == (512, 512)
    assert openai.native_square(info(Architecture.SDXL, None)) == (1024, 1024)
    assert openai.native_square(info(Architecture.SD2, None)) == (768, 768)
    assert openai.native_square(info(Architecture.SDXL, 512)) == (512, 512)
    refused = (
        ({"n": 99}, "n"),
        ({"partial_images": 2}, "partial_images"),  # without stream
        ({"size": "big"}, "size"),
    )
    for change, param in refused:
        body = openai.GenerationIn.model_validate({"prompt": "p"} | change)
        with pytest.raises(InvalidRequest) as caught:
            openai.to_native(body, model="demo", auto_size=(512, 512), settings=SETTINGS)
        assert caught.value.param == param
    edit = openai.EditIn.model_validate({"prompt": "p"})
    native = openai.to_native(
        edit,
        model="demo",
        auto_size=(320, 240),
        settings=SETTINGS,
        init_image=UPLOAD,
        strength=1.0,
        mask=uuid.uuid4(),
    )
    assert (native.width, native.height) == (320, 240) and native.inpaint is not None


# -- the synchronous dialects' answers for a task that failed or is still running -------------


def test_failed_and_unfinished_tasks_in_each_synchronous_shape():
    import json

    from huabu.errors import Cancelled, TaskFailed, TaskTimedOut
    from huabu.web.error_renderers import render_native, status_for

    timed_out = TaskTimedOut("the task is still running after 300 s", task_id="t-1")
    failed = TaskFailed("LoRA 'x' does not fit this checkpoint", task_id="t-2")
    cancelled = Cancelled("cancelled while running", task_id="t-3")
    assert (status_for(timed_out), status_for(failed), status_for(cancelled)) == (504, 500, 409)

    def body(render, error):
        return json.loads(render(error, status_for(error)).body)

    assert body(sdserver.render_error, timed_out) == {
        "status": "timeout",
        "message": timed_out.message,
        "task_id": "t-1",
    }
    assert body(sdserver.render_error, failed)["status"] == "failed"
    assert body(sdserver.render_error, cancelled)["status"] == "failed"
    a1111_body = body(a1111.render_error, failed)
    assert a1111_body["error"] == "TaskFailed" and a1111_body["task_id"] == "t-2"
    assert a1111_body["detail"] == failed.message
    openai_error = body(openai.render_error, timed_out)["error"]
    assert openai_error["type"] == "server_error" and "(task t-1)" in openai_error["message"]
    assert body(render_native, failed)["error"]["task_id"] == "t-2"


@pytest.mark.parametrize(
    "build, renamed, param",
    [
        # Values a dialect's own schema allows but the native model does not: a 400 naming
        # the dialect's field, never a 500 from the translation.
        (
            lambda: a1111.to_native(
                a1111.Txt2ImgIn.model_validate(
                    {"prompt": "".join(f"<lora:l{i}:1>" for i in range(6))}
                ),
                model="demo",
                init_image=None,
                controlnets=[],
                options={},
                settings=SETTINGS,
            ),
            a1111.renamed,
            "prompt",
        ),
        (
            lambda: a1111.to_native(
                a1111.Img2ImgIn.model_validate({"init_images": ["x"], "denoising_strength": 0}),
                model="demo",
                init_image=UPLOAD,
                controlnets=[],
                options={},
                settings=SETTINGS,
            ),
            a1111.renamed,
            "denoising_strength",
        ),
        (
            lambda: openai.to_native(
                openai.GenerationIn.model_validate({"prompt": "x" * 20_000}),
                model="demo",
                auto_size=(512, 512),
                settings=SETTINGS,
            ),
            openai.renamed,
            "prompt",
        ),
    ],
)
def test_looser_dialect_limits_become_field_errors(build, renamed, param):
    with pytest.raises(InvalidRequest) as caught:
        build()
    assert renamed(caught.value).param == param
