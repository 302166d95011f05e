"""The HTTP routes (FastAPI, as vLLM's own server): thin wrappers over ``PolicyService``.

| Route | Answers like vLLM's |
| --- | --- |
| ``GET /health`` | 200, empty body |
| ``GET /v1/models`` | base model card + one card per adapter (``root`` = path, ``parent`` = base) |
| ``POST /v1/chat/completions`` | non-streaming chat completion, logprobs, token ids |
| ``POST /v1/load_lora_adapter`` | 200 text ``Success: LoRA adapter 'X' added successfully.`` |
| ``POST /v1/unload_lora_adapter`` | 200 text ``Success: LoRA adapter 'X' removed successfully.`` |
| ``POST /tokenize``, ``POST /detokenize`` | vLLM's tokenizer endpoints |
| ``GET /version`` | ``{"version": ...}`` |

Every error is vLLM's ``{"error": {"message", "type", "param", "code"}}``; a body that does not
validate is a 400 ``BadRequestError`` (vLLM maps FastAPI's 422 to 400 too).
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .protocol import (APIError, ChatCompletionRequest, DetokenizeRequest, LoadLoRAAdapterRequest, TokenizeRequest,
                       UnloadLoRAAdapterRequest, bad_request, internal_error)
from .service import PolicyService

VERSION = "trajstore-cpu-policy-server 0.1.0"


def create_app(service: PolicyService) -> FastAPI:
    app = FastAPI(title="trajstore CPU policy server", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=int(exc.status),
                            headers={"Retry-After": "1"} if int(exc.status) == 503 else None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(bad_request(_describe(exc.errors())).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # unknown routes and methods: vLLM's error body, the HTTP phrase as its type
        status = HTTPStatus(exc.status_code)
        return JSONResponse(APIError(str(exc.detail), status.phrase, status).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(internal_error(f"{type(exc).__name__}: {exc}").body(), status_code=500)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": VERSION}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return service.models()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body = await _parse(request, ChatCompletionRequest)
        return JSONResponse(await service.chat(body))

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(request: Request) -> Response:
        body = await _parse(request, LoadLoRAAdapterRequest)
        return Response(status_code=200, content=await service.load_adapter(body))

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(request: Request) -> Response:
        body = await _parse(request, UnloadLoRAAdapterRequest)
        return Response(status_code=200, content=await service.unload_adapter(body))

    @app.post("/tokenize")
    async def tokenize(request: Request) -> JSONResponse:
        body = await _parse(request, TokenizeRequest)
        service._resolve_model(body.model)
        return JSONResponse(await asyncio.to_thread(
            service.tokenize, body.prompt, body.messages, body.add_special_tokens, body.add_generation_prompt,
            body.chat_template_kwargs, body.mm_processor_kwargs))

    @app.post("/detokenize")
    async def detokenize(request: Request) -> JSONResponse:
        body = await _parse(request, DetokenizeRequest)
        service._resolve_model(body.model)
        return JSONResponse(service.detokenize(body.tokens))

    return app


async def _parse(request: Request, model: type[BaseModel]) -> Any:
    raw = await request.body()
    try:
        data = json.loads(raw or b"null")
    except ValueError as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise bad_request(_describe(exc.errors())) from exc


def _describe(errors: Any) -> str:
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"
