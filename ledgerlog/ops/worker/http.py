"""The stream worker's HTTP endpoint on FastAPI and uvicorn, as the node's API: ``GET /status``
(owned projections: state, digest, positions, lag, catch-up time) and ``GET /projections/<name>``,
answered by the worker serving it and redirected (307) elsewhere to its owner."""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import quote

from fastapi import FastAPI
from fastapi.responses import JSONResponse, RedirectResponse, Response

from ledgerlog import projections
from ledgerlog.ops.api.guard import error_body, install_error_handlers
from ledgerlog.ops.api.server import bind, listen, uvicorn_server
from ledgerlog.ops.api.transport import EdgeSettings
from ledgerlog.ops.query.queries import I64_MAX, BadRequest, check_account

__all__ = ["WorkerHttp"]


class Engine(Protocol):
    """What the endpoint reads of the fold engine (streams/faust_worker.py FoldEngine)."""

    def status(self) -> dict[str, Any]: ...

    def answer(self, name: str) -> dict[str, Any] | None: ...


class WorkerHttp:
    """The endpoint's app and its uvicorn server, run on a thread beside faust's event loop.
    ``route(name)`` is the owner's URL as the group's assignor shares it (set once faust runs)."""

    def __init__(self, engine: Engine, info: dict[str, Any]) -> None:
        self.engine, self.info = engine, info
        self.route: Callable[[str], str | None] = lambda name: None
        #: a sharded worker's: the URL of the worker owning an address's shard
        self.account_route: Callable[[str], str | None] = lambda address: None
        self.app = self._app()
        self.port = 0
        self._server: Any = None
        self._sock: Any = None
        self._thread: threading.Thread | None = None

    def _app(self) -> FastAPI:
        app = FastAPI(title="ledgerlog stream worker", version="1", docs_url=None, redoc_url=None)
        app.router.redirect_slashes = False
        install_error_handlers(app)  # every error is JSON {"code","message"}, as the node's

        @app.get("/status")
        async def status() -> Any:
            return {**self.info, **self.engine.status()}

        @app.get("/projections/{name}")
        async def projection(name: str) -> Response:
            if name not in self.info.get("projections", projections.ALL):
                return JSONResponse(error_body("NOT_FOUND", f"unknown projection {name[:64]!r}"), 404)
            got = self.engine.answer(name)
            if got is not None:
                return JSONResponse({"projection": name, "worker": self.info["id"], **got})
            owner = self.route(name)
            if owner and owner.rstrip("/") != self.info["url"]:
                return RedirectResponse(f"{owner.rstrip('/')}/projections/{name}", status_code=307)
            return JSONResponse({**error_body("NOT_SERVING", f"{name} is not served here yet"), "owner": owner}, 503)

        @app.get("/accounts/{address}")
        def account(address: str, height: str | None = None) -> Response:  # a thread: may wait for a batch
            answer = getattr(self.engine, "account", None)
            if answer is None:
                return JSONResponse(error_body("NOT_FOUND", "accounts are answered by sharded workers "
                                               "(`stream-worker --shard balances`)"), 404)
            if height is not None and not (height.isascii() and height.isdigit() and len(height) <= 19):
                return JSONResponse(error_body("BAD_REQUEST", f"height must be an integer from 0 to {I64_MAX}, "
                                               "in plain digits"), 400)
            at = None if height is None else int(height)
            try:
                check_account(address, at)
            except BadRequest as exc:  # as the node answers it
                return JSONResponse(error_body(exc.code, str(exc)), 400)
            got = answer(address, at)
            if got is not None:
                return JSONResponse({**got, "worker": self.info["id"]})
            owner = self.account_route(address)
            if owner and owner.rstrip("/") != self.info["url"]:
                query = "" if height is None else f"?height={height}"
                return RedirectResponse(f"{owner.rstrip('/')}/accounts/{quote(address, safe='')}{query}",
                                        status_code=307)
            return JSONResponse({**error_body("NOT_SERVING", f"the shard of {address[:64]} is not served here yet"),
                                 "owner": owner}, 503)

        return app

    def listen(self, host: str, port: int) -> None:
        """Bind and listen now (``port`` 0 picks one: ``self.port``), before faust needs the URL."""
        self._sock = bind(host, port)
        listen(self._sock, host, port)
        self.port = self._sock.getsockname()[1]

    def start(self) -> None:
        self._server = uvicorn_server(self.app, EdgeSettings(), graceful=2)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="ledgerlog-http", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()
