"""``GET /files/<key>?expires=…&sig=…``: stored images, for anyone holding a signed URL."""

from __future__ import annotations

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, Response

from huabu.errors import NotFound
from huabu.storage import content_type
from huabu.web.deps import ServicesDep
from huabu.web.routing import GuardedRoute

router = APIRouter(route_class=GuardedRoute, tags=["files"])


@router.get(
    "/files/{key:path}",
    summary="Download a stored image",
    responses={
        200: {
            "description": "The image",
            "content": {
                media: {"schema": {"type": "string", "format": "binary"}}
                for media in ("image/png", "image/jpeg", "image/webp")
            },
        }
    },
)
def download(
    key: str, services: ServicesDep, expires: int = Query(0), sig: str = Query("")
) -> Response:
    services.signer.verify(key, expires, sig)
    path = services.storage.local_path(key)
    if path is None:  # an object store: proxied, so clients never need its credentials
        return Response(services.storage.get(key), media_type=content_type(key), headers=_CACHE)
    if not path.is_file():
        raise NotFound("no such file")
    return FileResponse(path, media_type=content_type(key), headers=_CACHE)


_CACHE = {"Cache-Control": "private, max-age=86400, immutable"}
