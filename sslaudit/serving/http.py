"""The Open Inference Protocol v2 REST endpoints (FastAPI): HTTP details here, logic in the service.

Every error is ``{"error": "..."}`` as ``application/json`` (tritonclient and KServe's client parse
only that), 429 carries ``Retry-After``, and a body over ``max_body`` bytes is refused with 413 before
it is read in full. Inference runs in the worker thread pool, so health checks answer during load.

>>> app = create_app(service)  # doctest: +SKIP
>>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
"""
from __future__ import annotations

import math

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from sslaudit.serving.protocol import HEADER_LENGTH, ProtocolError
from sslaudit.serving.service import InferenceService, RateLimited


def error(status: int, message: str, headers: dict[str, str] | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": message, **({"code": code} if code else {})}, status_code=status, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or a 413 as soon as it grows past ``limit`` bytes (whatever Content-Length says)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ProtocolError(413, f"the body is {declared} bytes; this server takes at most {limit}, split the batch")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ProtocolError(413, f"the body is over {limit} bytes; split the batch")
        chunks.append(chunk)
    return b"".join(chunks)


def _header_length(request: Request) -> int | None:
    value = request.headers.get(HEADER_LENGTH.lower())
    if value is None:
        return None
    if not value.isdigit():
        raise ProtocolError(400, f"{HEADER_LENGTH} must be a non-negative integer; got {value!r}")
    return int(value)


def create_app(service: InferenceService, max_body: int | None = None) -> FastAPI:
    """The OIP v2 app serving ``service`` (``max_body``: default the largest batch as JSON text, at 24 bytes a
    value (a float32's shortest repr and a comma), plus 1 MiB)."""
    spec = service.spec
    limit = max_body or 24 * service.max_batch * spec.channels * spec.size * spec.size + (1 << 20)
    app = FastAPI(title="sslaudit", version=service.server_metadata()["version"], docs_url=None, redoc_url=None)

    @app.exception_handler(ProtocolError)
    async def protocol_error(_: Request, err: ProtocolError) -> JSONResponse:
        if isinstance(err, RateLimited):
            wait = str(math.ceil(err.retry_after)) if math.isfinite(err.retry_after) else "3600"
            return error(429, str(err), {"Retry-After": wait})
        return error(err.status, str(err), code=err.code)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, err: HTTPException) -> JSONResponse:  # unknown routes, wrong methods
        return error(err.status_code, str(err.detail))

    @app.exception_handler(Exception)
    async def server_error(_: Request, err: Exception) -> JSONResponse:
        return error(500, f"internal error ({type(err).__name__}); the request was not charged")

    @app.get("/v2/health/live")
    def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready")
    def ready() -> dict:
        return {"ready": True}

    @app.get("/v2")
    def server_metadata() -> dict:
        return service.server_metadata()

    @app.get("/v2/models/{model}")
    @app.get("/v2/models/{model}/versions/{version}")
    def model_metadata(model: str, version: str = "1") -> dict:
        service.check_model(model)
        return service.model_metadata()

    @app.get("/v2/models/{model}/ready")
    @app.get("/v2/models/{model}/versions/{version}/ready")
    def model_ready(model: str, version: str = "1") -> dict:
        service.check_model(model)
        return {"name": model, "ready": True}

    @app.get("/v2/models/{model}/usage")
    def usage(model: str, request: Request) -> dict:
        service.check_model(model)
        return service.usage(service.authenticate(request.headers.get("authorization")))

    @app.post("/v2/models/{model}/infer")
    @app.post("/v2/models/{model}/versions/{version}/infer")
    async def infer(model: str, request: Request, version: str = "1") -> Response:
        service.check_model(model)
        account = service.authenticate(request.headers.get("authorization"))
        length = _header_length(request)
        body = await read_body(request, limit)
        out, out_length = await run_in_threadpool(service.infer, account, body, length)
        headers = {} if out_length is None else {HEADER_LENGTH: str(out_length)}
        media = "application/json" if out_length is None else "application/octet-stream"
        return Response(out, media_type=media, headers=headers)

    return app
