"""The web page at ``/``: static files (``web/ui/``), served by huabu itself — no CDN, no build
step — and working over the native API only."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse

from huabu.errors import NotFound
from huabu.web.routing import GuardedRoute

FOLDER = Path(__file__).parent / "ui"
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
router = APIRouter(route_class=GuardedRoute, include_in_schema=False)


@router.get("/")
def page(request: Request) -> HTMLResponse:
    anonymous = request.app.state.services.settings.anonymous
    html = (FOLDER / "index.html").read_text().replace("{anonymous}", str(anonymous).lower())
    return HTMLResponse(html, headers={"Cache-Control": "no-cache"})


@router.get("/ui/{name}")
def asset(name: str) -> FileResponse:
    path = FOLDER / name
    if "/" in name or path.suffix not in _TYPES or not path.is_file():
        raise NotFound(f"no file {name}")
    return FileResponse(path, media_type=_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})
