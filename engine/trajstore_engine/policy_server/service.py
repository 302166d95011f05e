"""What the HTTP routes do: validate like vLLM, render prompts, run batches, shape responses.

``PolicyService`` owns the model (through ``AdapterRegistry``) and the ``Scheduler``. Its async
methods are called by the routes in ``app.py``; they never compute on the event loop: prompt
rendering runs in a thread, generation and adapter changes on the scheduler's worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import torch

from ..model import load_base_model, load_tokenizer
from .adapters import AdapterRegistry
from .generation import GenerationJob, SamplingSettings, SequenceOutput, generate_batch
from .protocol import (APIError, ChatCompletionRequest, LoadLoRAAdapterRequest, ModelCard, ModelList,
                       ModelPermission, UnloadLoRAAdapterRequest, bad_request, model_not_found, queue_full)
from .scheduler import Scheduler

MAX_LOGPROBS = 20  # vLLM's --max-logprobs default


@dataclass
class ServerConfig:
    model: str  # the --model argument, as given (vLLM reports it as the base card's root)
    served_model_name: str | None = None
    max_loras: int = 4
    max_lora_rank: int = 16
    max_queue: int = 256
    max_batch_seqs: int = 32
    max_model_len: int | None = None
    seed: int = 0


@dataclass
class _Payload:
    prompt_ids: list[int]
    job: GenerationJob


class PolicyService:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.served_model_name = config.served_model_name or config.model
        self.tokenizer = load_tokenizer(config.model)
        model = load_base_model(config.model, device="cpu", dtype="float32")
        hf_config = model.config
        self.max_model_len = config.max_model_len or int(getattr(hf_config, "max_position_embeddings", 2048))
        self.pad_token_id = _first_int(self.tokenizer.pad_token_id, hf_config.pad_token_id,
                                       self.tokenizer.eos_token_id, 0)
        # vLLM stops on the tokenizer's EOS (stop_reason null) and adds generation_config's other EOS
        # ids as stop token ids (stop_reason = the id).
        self.eos_token_id = self.tokenizer.eos_token_id
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        gen_eos = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
        self.extra_stop_ids = [t for t in gen_eos if t != self.eos_token_id]
        # vLLM (--generation-config auto) takes the model's generation_config.json sampling values as
        # the defaults of requests that do not set them (ModelConfig.get_diff_sampling_param).
        diff = model.generation_config.to_diff_dict() if getattr(model, "generation_config", None) else {}
        self.default_sampling = {k: diff[k] for k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
                                 if diff.get(k) is not None}
        self.registry = AdapterRegistry(model, max_loras=config.max_loras, max_lora_rank=config.max_lora_rank)
        self._global_gen = torch.Generator().manual_seed(config.seed)
        self.scheduler = Scheduler(self._run_batch, max_queue=config.max_queue,
                                   max_batch_seqs=config.max_batch_seqs)

    def close(self) -> None:
        self.scheduler.stop()

    # ------------------------------------------------------------ /v1/models

    def models(self) -> dict[str, Any]:
        cards = [ModelCard(id=self.served_model_name, root=self.config.model, max_model_len=self.max_model_len,
                           permission=[ModelPermission()])]
        for name, path in self.registry.names():
            cards.append(ModelCard(id=name, root=path, parent=self.served_model_name,
                                   permission=[ModelPermission()]))
        return ModelList(data=cards).model_dump()

    def _resolve_model(self, name: str | None) -> str | None:
        """The adapter a request's ``model`` names, None for the base model; 404 otherwise."""
        if not name or name == self.served_model_name:
            return None
        if self.registry.has(name):
            return name
        raise model_not_found(name)

    # ------------------------------------------------------------ adapters

    async def load_adapter(self, req: LoadLoRAAdapterRequest) -> str:
        # vLLM: OpenAIServingModels._check_load_lora_adapter_request, then engine add_lora
        if not req.lora_name or not req.lora_path:
            raise APIError("Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
        if not req.load_inplace and self.registry.has(req.lora_name):
            raise APIError(f"The lora adapter '{req.lora_name}' has already been loaded. If you want to load "
                           "the adapter in place, set 'load_inplace' to True.", "InvalidUserInput")
        prepared = await asyncio.to_thread(self.registry.prepare, req.lora_name, req.lora_path)
        await self.scheduler.control(lambda: self.registry.install(prepared))
        return f"Success: LoRA adapter '{req.lora_name}' added successfully."

    async def unload_adapter(self, req: UnloadLoRAAdapterRequest) -> str:
        if not req.lora_name:
            raise APIError("'lora_name' needs to be provided to unload a LoRA adapter.", "InvalidUserInput")

        def remove() -> None:
            if not self.registry.has(req.lora_name):
                raise APIError(f"The lora adapter '{req.lora_name}' cannot be found.", "NotFoundError",
                               HTTPStatus.NOT_FOUND)
            self.registry.remove(req.lora_name)

        await self.scheduler.control(remove)
        return f"Success: LoRA adapter '{req.lora_name}' removed successfully."

    # ------------------------------------------------------------ tokenizer endpoints

    def detokenize(self, tokens: list[int]) -> dict[str, Any]:
        return {"prompt": self.tokenizer.decode(tokens)}

    def tokenize(self, prompt: str | None, messages: list[dict[str, Any]] | None, add_special_tokens: bool,
                 add_generation_prompt: bool, chat_template_kwargs: dict[str, Any] | None) -> dict[str, Any]:
        if messages is not None:
            text = self._render(messages, add_generation_prompt, False, chat_template_kwargs)
            ids = self.tokenizer(text, add_special_tokens=False).input_ids
        else:
            ids = self.tokenizer(prompt or "", add_special_tokens=add_special_tokens).input_ids
        return {"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids, "token_strs": None}

    # ------------------------------------------------------------ chat completions

    async def chat(self, req: ChatCompletionRequest) -> dict[str, Any]:
        adapter = self._resolve_model(req.model)
        if req.stream:
            raise bad_request("Streaming is not supported by the trajstore CPU policy server; send "
                              "stream=false.", "stream")
        if req.use_beam_search:
            raise bad_request("Beam search is not supported by the trajstore CPU policy server.", "use_beam_search")
        settings, n = self._settings(req)
        prompt_ids = await asyncio.to_thread(self._prompt_ids, req)
        settings.max_tokens = self._max_tokens(req, len(prompt_ids))
        if settings.seed is not None:
            gens = [torch.Generator().manual_seed((settings.seed + i) % (2 ** 63)) for i in range(n)]
        else:  # unseeded: fresh seeds from the server's generator (--seed), so a restart repeats
            gens = [torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, (1,), generator=self._global_gen)))
                    for _ in range(n)]
        job = GenerationJob(prompt_ids=prompt_ids, n=n, settings=settings, generators=gens)
        if not self.scheduler.admit(n):
            raise queue_full(self.scheduler.max_queue, n)
        created = int(time.time())
        outputs: list[SequenceOutput] = await self.scheduler.generate(adapter, n, _Payload(prompt_ids, job))
        return await asyncio.to_thread(self._response, req, adapter, prompt_ids, outputs, created)

    def _settings(self, req: ChatCompletionRequest) -> tuple[SamplingSettings, int]:
        """vLLM's request and SamplingParams validation (the parts this server supports)."""
        n = 1 if req.n is None else req.n
        if n < 1:
            raise bad_request(f"n must be at least 1, got {n}.", "n")
        # priority: the request, then the model's generation_config, then OpenAI's defaults (as vLLM)
        pick = lambda name, default: (getattr(req, name) if getattr(req, name) is not None  # noqa: E731
                                      else self.default_sampling.get(name, default))
        temperature = float(pick("temperature", 1.0))
        if temperature < 0.0:
            raise bad_request(f"temperature must be non-negative, got {temperature}.", "temperature")
        top_p = float(pick("top_p", 1.0))
        if not 0.0 < top_p <= 1.0:
            raise bad_request(f"top_p must be in (0, 1], got {top_p}.", "top_p")
        top_k = int(pick("top_k", 0))
        for name, neutral in (("min_p", 0.0), ("repetition_penalty", 1.0), ("presence_penalty", 0.0),
                              ("frequency_penalty", 0.0)):
            value = getattr(req, name, None)
            value = self.default_sampling.get(name, neutral) if value is None else value
            if float(value) != neutral:
                raise bad_request(f"{name}={value} is not supported by the trajstore CPU policy server "
                                  f"(leave it unset or {neutral}).", name)
        if top_k < -1:
            raise bad_request(f"top_k must be 0 (disable), or at least 1, got {top_k}.", "top_k")
        num_logprobs = None
        top = req.top_logprobs or 0
        if top < 0 and top != -1:
            raise bad_request("`top_logprobs` must be a positive value or -1.", "top_logprobs")
        if (top == -1 or top > 0) and not req.logprobs:
            raise bad_request("when using `top_logprobs`, `logprobs` must be set to true.", "top_logprobs")
        if req.logprobs:
            num_logprobs = len(self.tokenizer) if top == -1 else top
            if num_logprobs > MAX_LOGPROBS:
                raise bad_request(f"Requested sample logprobs of {num_logprobs}, which is greater than max "
                                  f"allowed: {MAX_LOGPROBS}", "top_logprobs")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        stop_ids = list(req.stop_token_ids or [])
        if not req.ignore_eos:
            stop_ids += [t for t in self.extra_stop_ids if t not in stop_ids]
        if req.min_tokens < 0:
            raise bad_request(f"min_tokens must be greater than or equal to 0, got {req.min_tokens}.", "min_tokens")
        settings = SamplingSettings(max_tokens=1, temperature=temperature, top_p=top_p, top_k=top_k,
                                    min_tokens=req.min_tokens, stop=stop, stop_token_ids=stop_ids,
                                    ignore_eos=req.ignore_eos, num_logprobs=num_logprobs,
                                    include_stop_str_in_output=req.include_stop_str_in_output,
                                    skip_special_tokens=req.skip_special_tokens, seed=req.seed)
        return settings, n

    def _max_tokens(self, req: ChatCompletionRequest, prompt_len: int) -> int:
        asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        room = self.max_model_len - prompt_len
        if room <= 0:
            raise bad_request(f"This model's maximum context length is {self.max_model_len} tokens. However, "
                              f"your request has {prompt_len} input tokens. Please reduce the length of the "
                              "input messages.", "messages")
        if asked is None:
            return room  # vLLM's default: whatever the context leaves
        if asked < 1:
            raise bad_request(f"max_tokens must be at least 1, got {asked}.", "max_tokens")
        if asked > room:
            raise bad_request(f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                              f"requested {asked + prompt_len} tokens ({prompt_len} in the messages, {asked} in the "
                              "completion). Please reduce the length of the messages or completion.", "max_tokens")
        return asked

    def _prompt_ids(self, req: ChatCompletionRequest) -> list[int]:
        if not req.messages:
            raise bad_request("messages must not be empty.", "messages")
        if req.continue_final_message and req.add_generation_prompt:
            raise bad_request("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
        text = self._render(req.messages, req.add_generation_prompt, req.continue_final_message,
                            req.chat_template_kwargs)
        # vLLM's chat path tokenizes the rendered template without adding special tokens again
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool, continue_final: bool,
                template_kwargs: dict[str, Any] | None) -> str:
        conversation = [_text_message(m) for m in messages]
        try:
            return self.tokenizer.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final, **(template_kwargs or {}))
        except Exception as exc:  # noqa: BLE001 - jinja errors are the request's fault (vLLM: 400)
            raise bad_request(f"{type(exc).__name__}: {exc}", "messages") from exc

    # ------------------------------------------------------------ worker thread

    def _run_batch(self, adapter: str | None, payloads: list[_Payload]) -> list[Any]:
        try:
            model = self.registry.activate(adapter)
        except KeyError:  # unloaded while the request waited
            return [model_not_found(adapter or "") for _ in payloads]
        except APIError as exc:
            return [exc for _ in payloads]
        context = self.registry.base_context() if adapter is None else contextlib.nullcontext()
        with context:
            return generate_batch(model, self.tokenizer, [p.job for p in payloads], pad_token_id=self.pad_token_id,
                                  eos_token_id=self.eos_token_id, max_model_len=self.max_model_len)

    # ------------------------------------------------------------ response

    def _response(self, req: ChatCompletionRequest, adapter: str | None, prompt_ids: list[int],
                  outputs: list[SequenceOutput], created: int) -> dict[str, Any]:
        as_ids = bool(req.return_tokens_as_token_ids)
        choices = []
        for index, out in enumerate(outputs):
            choices.append({
                "index": index,
                "message": {"role": "assistant", "content": out.text, "refusal": None, "annotations": None,
                            "audio": None, "function_call": None, "tool_calls": [], "reasoning": None},
                "logprobs": self._logprobs(out, req.top_logprobs or 0, as_ids) if req.logprobs else None,
                "finish_reason": out.finish_reason,
                "stop_reason": out.stop_reason,
                "token_ids": list(out.token_ids) if req.return_token_ids else None,
            })
        completion_tokens = sum(len(o.token_ids) for o in outputs)
        return {
            "id": f"chatcmpl-{secrets.token_hex(16)}",
            "object": "chat.completion",
            "created": created,
            "model": adapter or self.served_model_name,
            "choices": choices,
            "service_tier": None,
            "system_fingerprint": None,
            "usage": {"prompt_tokens": len(prompt_ids), "total_tokens": len(prompt_ids) + completion_tokens,
                      "completion_tokens": completion_tokens, "prompt_tokens_details": None},
            "prompt_logprobs": None,
            "prompt_token_ids": list(prompt_ids) if req.return_token_ids else None,
            "kv_transfer_params": None,
        }

    def _logprobs(self, out: SequenceOutput, top_logprobs: int, as_ids: bool) -> dict[str, Any]:
        """vLLM's ``_create_chat_logprobs``: per position the sampled token, then ``top_logprobs`` entries
        taken in vLLM's order (the sampled token first, then the top-k by rank, duplicates once)."""
        content = []
        for tok, lp, entries in zip(out.token_ids, out.logprobs, out.top_entries or []):
            ordered: dict[int, float] = {}
            for t, v, _rank in entries:
                ordered.setdefault(t, v)
            top = []
            for i, (t, v) in enumerate(ordered.items()):
                if top_logprobs == -1 or i < top_logprobs:
                    text = self._token_text(t, as_ids)
                    top.append({"token": text, "logprob": max(v, -9999.0),
                                "bytes": list(text.encode("utf-8", errors="replace"))})
            text = self._token_text(tok, as_ids)
            content.append({"token": text, "logprob": max(lp, -9999.0),
                            "bytes": list(text.encode("utf-8", errors="replace")), "top_logprobs": top})
        return {"content": content}

    def _token_text(self, token_id: int, as_ids: bool) -> str:
        if as_ids:
            return f"token_id:{token_id}"
        return self.tokenizer.decode([token_id]) or ""


def _text_message(message: dict[str, Any]) -> dict[str, Any]:
    """vLLM's "string" content format: a list of text parts becomes one string, parts joined by newlines."""
    content = message.get("content")
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type", "text") == "text":
                parts.append(str(part.get("text", "")))
            elif isinstance(part, str):
                parts.append(part)
            else:
                raise bad_request("The trajstore CPU policy server accepts text content only.", "messages")
        message = {**message, "content": "\n".join(parts)}
    elif content is None:
        message = {**message, "content": ""}
    return message


def _first_int(*values: Any) -> int:
    for v in values:
        if isinstance(v, int):
            return v
        if isinstance(v, (list, tuple)) and v and isinstance(v[0], int):
            return v[0]
    return 0

