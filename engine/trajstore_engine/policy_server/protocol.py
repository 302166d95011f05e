"""The wire format: request bodies, response bodies and error bodies, shaped like vLLM's.

Every shape here follows vLLM's OpenAI-compatible server (``vllm/entrypoints/openai/``), so a
client written against this server works against vLLM and back:

- errors are ``{"error": {"message", "type", "param", "code"}}`` with ``code`` the HTTP status
  (vLLM's ``ErrorResponse``/``ErrorInfo``);
- request bodies allow unknown fields (vLLM's ``OpenAIBaseModel`` has ``extra="allow"`` and only
  logs them);
- model cards carry vLLM's ``root``/``parent``/``max_model_len``/``permission`` fields.
"""

from __future__ import annotations

import secrets
import time
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class OpenAIBaseModel(BaseModel):
    model_config = ConfigDict(extra="allow")


# ---------------------------------------------------------------- errors


class APIError(Exception):
    """An error that becomes vLLM's error body. ``message`` is what vLLM would say."""

    def __init__(self, message: str, err_type: str = "BadRequestError",
                 status: HTTPStatus = HTTPStatus.BAD_REQUEST, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.err_type = err_type
        self.status = status
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.err_type, "param": self.param,
                          "code": int(self.status)}}


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(message, "BadRequestError", HTTPStatus.BAD_REQUEST, param)


def model_not_found(name: str) -> APIError:
    # vLLM: OpenAIModelRegistry.check_model
    return APIError(f"The model `{name}` does not exist.", "NotFoundError", HTTPStatus.NOT_FOUND, "model")


def internal_error(message: str) -> APIError:
    return APIError(message, "InternalServerError", HTTPStatus.INTERNAL_SERVER_ERROR)


def queue_full(limit: int, wanted: int) -> APIError:
    # vLLM's admission control (--max-num-queued-reqs) answers 503 when waiting + running
    # sequences would pass the cap; a request with n > 1 counts as n.
    return APIError(
        f"The server is at capacity: {limit} sequences are already queued or running "
        f"(this request needs {wanted}). Retry later.",
        "ServiceUnavailableError", HTTPStatus.SERVICE_UNAVAILABLE)


# ---------------------------------------------------------------- models list


class ModelPermission(OpenAIBaseModel):
    id: str = Field(default_factory=lambda: f"modelperm-{secrets.token_hex(8)}")
    object: str = "model_permission"
    created: int = Field(default_factory=lambda: int(time.time()))
    allow_create_engine: bool = False
    allow_sampling: bool = True
    allow_logprobs: bool = True
    allow_search_indices: bool = False
    allow_view: bool = True
    allow_fine_tuning: bool = False
    organization: str = "*"
    group: str | None = None
    is_blocking: bool = False


class ModelCard(OpenAIBaseModel):
    id: str
    object: str = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "vllm"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    permission: list[ModelPermission] = Field(default_factory=list)


class ModelList(OpenAIBaseModel):
    object: str = "list"
    data: list[ModelCard] = Field(default_factory=list)


# ---------------------------------------------------------------- LoRA adapters


class LoadLoRAAdapterRequest(OpenAIBaseModel):
    lora_name: str
    lora_path: str
    load_inplace: bool = False


class UnloadLoRAAdapterRequest(OpenAIBaseModel):
    lora_name: str
    lora_int_id: int | None = None


# ---------------------------------------------------------------- tokenizer endpoints


class DetokenizeRequest(OpenAIBaseModel):
    model: str | None = None
    tokens: list[int]


class TokenizeRequest(OpenAIBaseModel):
    model: str | None = None
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = None
    mm_processor_kwargs: dict[str, Any] | None = None


# ---------------------------------------------------------------- chat completions


class ChatCompletionRequest(OpenAIBaseModel):
    """The subset of vLLM's ``ChatCompletionRequest`` this server acts on (others are ignored)."""

    messages: list[dict[str, Any]]
    model: str | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = 0
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = 1
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    temperature: float | None = None
    top_p: float | None = None
    # vLLM extensions
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    mm_processor_kwargs: dict[str, Any] | None = None  # image settings (Qwen-VL: min_pixels, max_pixels)
    return_token_ids: bool | None = None
    return_tokens_as_token_ids: bool | None = None
    use_beam_search: bool = False
