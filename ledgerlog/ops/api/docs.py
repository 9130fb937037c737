"""The API's documentation page and the page assets, served by the node itself so they work with
no network: Swagger UI at /docs loads its script and style from /static (the copies the
fastapi-offline package ships, instead of FastAPI's CDN links) and asks no online validator;
/favicon.ico is ours. (No /redoc: ReDoc's bundle still fetches its logo from the network.)"""
from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

if TYPE_CHECKING:
    from ledgerlog.ops.api.handlers import Edge

__all__ = ["STATIC", "mount_static", "swagger", "favicon"]

STATIC = "/static"  # the page assets: ledgerlog.ops/static, then fastapi_offline/static
_FAVICON = "/favicon.ico"
_OPENAPI = "/openapi.json"


def mount_static(app: FastAPI) -> None:
    """Serve the dashboard's and the documentation pages' files under ``STATIC``."""
    app.mount(STATIC, StaticFiles(packages=[("ledgerlog.ops", "static"), ("fastapi_offline", "static")]),
              name="static")


def swagger(edge: Edge) -> Any:
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=_OPENAPI, title="ledgerlog API",
                                   swagger_js_url=f"{STATIC}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{STATIC}/swagger-ui.css", swagger_favicon_url=_FAVICON,
                                   swagger_ui_parameters={"validatorUrl": None})
    return swagger


def favicon(edge: Edge) -> Any:
    path = resources.files("ledgerlog.ops") / "static" / "favicon.ico"

    async def favicon() -> FileResponse:
        return FileResponse(str(path), media_type="image/x-icon")
    return favicon
