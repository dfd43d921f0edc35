"""The command line, run as a user runs it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from huabu.catalog.infotext import parse_infotext, read_parameters
from serving import run_huabu

pytestmark = pytest.mark.slow  # each test runs the CLI as a process

HUABU = [sys.executable, "-m", "huabu"]


def run(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HUABU_HOME": str(home), "HUABU_THREADS": "2"}
    return run_huabu(list(args), env)


def test_generate_writes_images_with_parameters(home, tmp_path):
    out = tmp_path / "out"
    result = run(
        home,
        "generate",
        "a red fox",
        "--model",
        "demo",
        "-n",
        "2",
        "--size",
        "64x64",
        "--steps",
        "6",
        "--seed",
        "42",
        "--sampler",
        "DPM++ 2M Karras",
        "-o",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split("\t")[1] for line in lines] == ["seed=42", "seed=43"]
    assert "noise-like images" in result.stderr  # the demo banner
    first = Image.open(lines[0].split("\t")[0])
    assert first.size == (64, 64)
    parameters = parse_infotext(read_parameters(first))
    assert parameters["Sampler"] == "DPM++ 2M Karras" and parameters["Seed"] == "42"
    assert parameters["Prompt"] == "a red fox"


def test_img2img_from_the_command_line(home, tmp_path):
    source = tmp_path / "in.png"
    Image.new("RGB", (80, 80), "green").save(source)
    result = run(
        home,
        "generate",
        "fox",
        "--size",
        "64x64",
        "--steps",
        "4",
        "--init-image",
        str(source),
        "--strength",
        "0.5",
        "--format",
        "webp",
        "-o",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.split("\t")[0])
    assert path.suffix == ".webp" and Image.open(path).size == (64, 64)


def test_inpainting_from_the_command_line(home, tmp_path):
    source, mask = tmp_path / "in.png", tmp_path / "mask.png"
    Image.effect_noise((64, 64), 80).convert("RGB").save(source)
    white_left = Image.new("L", (64, 64), 0)
    white_left.paste(255, (0, 0, 32, 64))
    white_left.save(mask)
    args = ["generate", "fox", "--size", "64x64", "--steps", "4", "--init-image", str(source)]
    result = run(home, *args, "--mask", str(mask), "--mask-blur", "0", "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    written = Image.open(result.stdout.split("\t")[0])
    assert "Mask blur: 0" in read_parameters(written)
    out, original = written.convert("RGB"), Image.open(source)
    assert out.crop((32, 0, 64, 64)).tobytes() == original.crop((32, 0, 64, 64)).tobytes()
    assert out.crop((0, 0, 32, 64)).tobytes() != original.crop((0, 0, 32, 64)).tobytes()


def test_bad_input_is_one_line_and_no_traceback(home, tmp_path):
    for args, message in [
        (["--sampler", "Euler b"], "unknown sampler 'Euler b'; valid names: Euler a"),
        (["--size", "65x64"], "width must be a multiple of 8"),
        (["--model", "nope"], "unknown model 'nope'; available: demo, demo-flux, "),
        (["--init-image", str(tmp_path / "missing.png")], "init_image: cannot read"),
        (["--mask", str(tmp_path / "missing.png")], "inpaint needs an init_image"),
    ]:
        result = run(home, "generate", "fox", "--steps", "2", "--size", "64x64", *args)
        assert result.returncode == 2
        assert message in result.stderr
        assert "Traceback" not in result.stderr


def test_models_list_shows_architecture_and_size(home):
    result = run(home, "models", "list")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    demo_line = next(line for line in lines if " demo " in line)
    assert "diffusers" in demo_line and "SD 1.x" in demo_line and "MiB" in demo_line
    # Every family's label, and an extra's where its files tell.
    flux_lora = next(line for line in lines if " demo-flux-lora " in line)
    assert flux_lora.startswith("loras") and "FLUX.1" in flux_lora
    assert "Qwen-Image" in next(line for line in lines if " demo-qwen-image " in line)


def test_models_pull_offline_fails_clearly(home):
    result = run(home, "models", "pull", "some-org/some-model")
    assert result.returncode == 2
    assert "cannot download some-org/some-model" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_worker_that_would_take_no_job_stops_in_one_line(tmp_path):
    env = {"HUABU_WORKER_GENERATION": "false", "HUABU_WORKER_TRAINING": "false"}
    message = (
        "error: HUABU_WORKER_GENERATION and HUABU_WORKER_TRAINING are both false: a worker "
        "would take no job"
    )
    for command in ("worker", "serve"):
        result = run_huabu([command], os.environ | env | {"HUABU_HOME": str(tmp_path)}, 60)
        assert result.returncode == 2 and result.stderr.strip() == message


@pytest.mark.parametrize(
    "env,message",
    [
        (
            {"HUABU_MAX_BATCH": "0"},
            "error: HUABU_MAX_BATCH: Input should be greater than or equal to 1",
        ),
        (
            {"HUABU_BATCH_WAIT_MS": "60000"},
            "error: HUABU_BATCH_WAIT_MS: Input should be less than or equal to 10000",
        ),
    ],
)
def test_batching_settings_out_of_range_stop_startup_in_one_line(tmp_path, env, message):
    result = run_huabu(["worker"], os.environ | env | {"HUABU_HOME": str(tmp_path)}, 60)
    assert result.returncode == 2 and result.stderr.strip() == message
