"""The last-resort handler: a bug in a route is the dialect's 500 with an error id, logged
once, and the client's connection stays usable."""

import logging

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from huabu.dialects import a1111, novita
from huabu.web.error_renderers import ErrorRenderers, LastResort, install


@pytest.fixture
def app() -> FastAPI:
    renderers = ErrorRenderers()
    renderers.register(novita.PREFIX, novita.render_error, novita.ErrorOut)
    renderers.register(a1111.PREFIX, a1111.render_error, a1111.ErrorOut)
    app = FastAPI()
    install(app, renderers)
    app.add_middleware(LastResort, renderers=renderers)

    @app.get("/v3/broken")
    async def broken():
        raise RuntimeError("a bug, with /srv/internal/path.py in its text")

    @app.get("/sdapi/v1/fine")
    async def fine():
        return {"ok": True}

    return app


def test_a_bug_is_the_dialects_500_with_an_error_id(app, caplog):
    with (
        caplog.at_level(logging.ERROR, logger="huabu.web"),
        TestClient(app, raise_server_exceptions=True) as client,  # nothing may escape
    ):
        response = client.get("/v3/broken")
        assert response.status_code == 500
        body = response.json()
        assert body["reason"] == "INTERNAL_ERROR" and body["code"] == 500  # novita's shape
        assert "error id" in body["message"] and "/srv/" not in response.text
        assert "RuntimeError" not in response.text
        assert client.get("/sdapi/v1/fine").json() == {"ok": True}
    error_id = body["message"].split("error id ")[1].split(")")[0]
    logged = [record for record in caplog.records if error_id in record.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
