"""What the HTTP routes do: validate like vLLM, render prompts, run batches, shape responses.

``PolicyService`` owns the model (through ``AdapterRegistry``) and the ``Scheduler``. Its async
methods are called by the routes in ``app.py``; they never compute on the event loop: prompt
rendering (and image decoding) runs in a thread, generation and adapter changes on the scheduler's
worker thread.

A vision-language model (a config with ``vision_config``: Qwen3-VL) is served with its processor:
messages are parsed in vLLM's "openai" content format (text parts and ``{"type": "image"}`` parts
handed to the chat template, as vLLM does for templates that loop over ``message.content``;
``_detect_content_format``, ``vllm/renderers/hf.py``), rendered with the processor's chat template
(vLLM prefers it over the tokenizer's: ``resolve_chat_template``), and each image's pad is expanded
as ``multimodal.py`` describes. Text models keep the "string" format (text parts joined by newlines).
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

from ..model import is_vision_language, load_base_model, load_processor, load_tokenizer, text_config
from .adapters import AdapterRegistry
from .generation import GenerationJob, SamplingSettings, SequenceOutput, generate_batch, prefill_groups
from .multimodal import (DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_IMAGES_PER_PROMPT,
                         DEFAULT_MAX_REQUEST_DECODE_BYTES, DecodeBudget, ImageInputs, ImageLimits, ImageSettings,
                         check_mm_processor_kwargs, expand_image_pads, load_image_url, preprocess_images,
                         resolve_image_settings, vision_info)
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
    # vision-language models only
    mm_processor_kwargs: dict[str, Any] | None = None  # vLLM's --mm-processor-kwargs (image settings)
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_images_per_prompt: int = DEFAULT_MAX_IMAGES_PER_PROMPT
    max_request_decode_bytes: int = DEFAULT_MAX_REQUEST_DECODE_BYTES


@dataclass
class _Payload:
    prompt_ids: list[int]
    job: GenerationJob


@dataclass
class _Prompt:
    ids: list[int]
    images: ImageInputs | None = None
    image_settings: ImageSettings | None = None


# the extension key of a chat response (see the README): nothing vLLM returns is named like it
EXTENSION_KEY = "trajstore"


class PolicyService:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.served_model_name = config.served_model_name or config.model
        self.tokenizer = load_tokenizer(config.model)
        model = load_base_model(config.model, device="cpu", dtype="float32")
        hf_config = model.config
        lm_config = text_config(hf_config)
        self.max_model_len = config.max_model_len or int(getattr(lm_config, "max_position_embeddings", 2048))
        self.pad_token_id = _first_int(self.tokenizer.pad_token_id, getattr(lm_config, "pad_token_id", None),
                                       self.tokenizer.eos_token_id, 0)
        # vision-language: the processor, its chat template, vLLM's "openai" content format
        self.processor = load_processor(config.model) if is_vision_language(hf_config) else None
        self.image_token_id: int | None = None
        self.chat_template: str | None = None  # None: the tokenizer's own
        self.image_limits = ImageLimits(max_image_bytes=config.max_image_bytes,
                                        max_image_pixels=config.max_image_pixels,
                                        max_images_per_prompt=config.max_images_per_prompt,
                                        max_request_decode_bytes=config.max_request_decode_bytes)
        self.mm_processor_kwargs = check_mm_processor_kwargs(config.mm_processor_kwargs, "--mm-processor-kwargs")
        if self.processor is not None:
            self.image_token_id = int(hf_config.image_token_id)
            template = getattr(self.processor, "chat_template", None)
            if isinstance(template, dict):
                template = template.get("default")
            self.chat_template = template if isinstance(template, str) else None
            resolve_image_settings(self.processor.image_processor, self.mm_processor_kwargs, None)  # fail early
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
                 add_generation_prompt: bool, chat_template_kwargs: dict[str, Any] | None,
                 mm_processor_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        """vLLM's /tokenize; messages with images give the expanded ids (blocking: call it in a thread)."""
        if messages is not None:
            ids = self._build_prompt(messages, add_generation_prompt, False, chat_template_kwargs,
                                     mm_processor_kwargs, with_pixels=False).ids
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
        prompt = await asyncio.to_thread(self._prompt, req)
        prompt_ids = prompt.ids
        settings.max_tokens = self._max_tokens(req, len(prompt_ids))
        if settings.seed is not None:
            gens = [torch.Generator().manual_seed((settings.seed + i) % (2 ** 63)) for i in range(n)]
        else:  # unseeded: fresh seeds from the server's generator (--seed), so a restart repeats
            gens = [torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, (1,), generator=self._global_gen)))
                    for _ in range(n)]
        job = GenerationJob(prompt_ids=prompt_ids, n=n, settings=settings, generators=gens, images=prompt.images)
        if not self.scheduler.admit(n):
            raise queue_full(self.scheduler.max_queue, n)
        created = int(time.time())
        outputs: list[SequenceOutput] = await self.scheduler.generate(adapter, n, _Payload(prompt_ids, job))
        return await asyncio.to_thread(self._response, req, adapter, prompt, outputs, created)

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

    def _check_prompt_len(self, prompt_len: int) -> int:
        room = self.max_model_len - prompt_len
        if room <= 0:
            raise bad_request(f"This model's maximum context length is {self.max_model_len} tokens. However, "
                              f"your request has {prompt_len} input tokens. Please reduce the length of the "
                              "input messages.", "messages")
        return room

    def _max_tokens(self, req: ChatCompletionRequest, prompt_len: int) -> int:
        asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        room = self._check_prompt_len(prompt_len)
        if asked is None:
            return room  # vLLM's default: whatever the context leaves
        if asked < 1:
            raise bad_request(f"max_tokens must be at least 1, got {asked}.", "max_tokens")
        if asked > room:
            raise bad_request(f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                              f"requested {asked + prompt_len} tokens ({prompt_len} in the messages, {asked} in the "
                              "completion). Please reduce the length of the messages or completion.", "max_tokens")
        return asked

    def _prompt(self, req: ChatCompletionRequest) -> _Prompt:
        if not req.messages:
            raise bad_request("messages must not be empty.", "messages")
        if req.continue_final_message and req.add_generation_prompt:
            raise bad_request("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
        return self._build_prompt(req.messages, req.add_generation_prompt, req.continue_final_message,
                                  req.chat_template_kwargs, getattr(req, "mm_processor_kwargs", None))

    def _build_prompt(self, messages: list[dict[str, Any]], add_generation_prompt: bool, continue_final: bool,
                      template_kwargs: dict[str, Any] | None, mm_processor_kwargs: Any,
                      with_pixels: bool = True) -> _Prompt:
        """Rendered, tokenized and (with images) expanded prompt ids, plus the model's image inputs."""
        if self.processor is None:
            conversation, urls = [_text_message(m) for m in messages], []
        else:
            conversation, urls = _openai_messages(messages, self.image_limits.max_images_per_prompt)
        text = self._render(conversation, add_generation_prompt, continue_final, template_kwargs)
        # vLLM's chat path tokenizes the rendered template without adding special tokens again
        ids = list(self.tokenizer(text, add_special_tokens=False).input_ids)
        if self.processor is None:
            return _Prompt(ids)
        request_kwargs = check_mm_processor_kwargs(mm_processor_kwargs)
        if not urls:
            return _Prompt(ids)
        image_processor = self.processor.image_processor
        settings = resolve_image_settings(image_processor, self.mm_processor_kwargs, request_kwargs)
        budget = DecodeBudget(self.image_limits.max_request_decode_bytes)
        images = [load_image_url(url, self.image_limits, budget) for url in urls]
        infos = [vision_info(im.image.width, im.image.height, settings) for im in images]
        for i, info in enumerate(infos):
            if info.resized_width * info.resized_height > self.image_limits.max_image_pixels:
                raise bad_request(f"Image {i} would be resized to {info.resized_width}x{info.resized_height}, "
                                  f"more than this server's --max-image-pixels {self.image_limits.max_image_pixels}: "
                                  "lower min_pixels.", "mm_processor_kwargs")
        ids = expand_image_pads(ids, self.image_token_id, [info.num_tokens for info in infos])
        self._check_prompt_len(len(ids))  # before the pixels are computed
        if not with_pixels:
            return _Prompt(ids, None, settings)
        return _Prompt(ids, preprocess_images(image_processor, images, settings, infos), settings)

    def _render(self, conversation: list[dict[str, Any]], add_generation_prompt: bool, continue_final: bool,
                template_kwargs: dict[str, Any] | None) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                conversation, chat_template=self.chat_template, tokenize=False,
                add_generation_prompt=add_generation_prompt, continue_final_message=continue_final,
                **(template_kwargs or {}))
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
        jobs = [p.job for p in payloads]
        results: list[Any] = [None] * len(jobs)
        with context:
            for group in prefill_groups(jobs, self.image_token_id):
                outs = generate_batch(model, self.tokenizer, [jobs[i] for i in group], pad_token_id=self.pad_token_id,
                                      eos_token_id=self.eos_token_id, max_model_len=self.max_model_len,
                                      image_token_id=self.image_token_id)
                for i, out in zip(group, outs):
                    results[i] = out
        return results

    # ------------------------------------------------------------ response

    def _response(self, req: ChatCompletionRequest, adapter: str | None, prompt: _Prompt,
                  outputs: list[SequenceOutput], created: int) -> dict[str, Any]:
        prompt_ids = prompt.ids
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
        body = {
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
        if prompt.images is not None:  # trajstore's extension: what vLLM applied but does not report
            body[EXTENSION_KEY] = _image_report(prompt.images, prompt.image_settings)
        return body

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
                raise bad_request("This model accepts text content only: the trajstore CPU policy server takes "
                                  "images for vision-language models (Qwen3-VL).", "messages")
        message = {**message, "content": "\n".join(parts)}
    elif content is None:
        message = {**message, "content": ""}
    return message


def _openai_messages(messages: list[dict[str, Any]], max_images: int) -> tuple[list[dict[str, Any]], list[Any]]:
    """vLLM's "openai" content format (``parse_chat_message_content``, ``vllm/renderers/chat_utils/
    chat_message.py``): content becomes a list of ``{"type": "text", "text"}`` and ``{"type": "image"}``
    parts, a string content one text part, None no part; a tool message of text parts one string. Returns
    the conversation and the image URLs in order."""
    conversation: list[dict[str, Any]] = []
    urls: list[Any] = []
    for message in messages:
        if not isinstance(message, dict):
            raise bad_request("Each message must be an object.", "messages")
        content = message.get("content")
        if content is None:
            content = []
        elif isinstance(content, str):
            content = [{"type": "text", "text": content}]
        elif not isinstance(content, list):
            raise bad_request("Message content must be a string or a list of content parts.", "messages")
        parts: list[dict[str, Any]] = []
        for part in content:
            if isinstance(part, str):
                parts.append({"type": "text", "text": part})
                continue
            if not isinstance(part, dict):
                raise bad_request("A content part must be an object or a string.", "messages")
            kind = part.get("type")
            bare = kind is None  # vLLM: a part without type is an image when it has image_url
            if bare:
                if "image_url" not in part:
                    raise bad_request("Missing 'type' field in multimodal part.", "type")
                kind = "image_url"
            if kind in ("text", "input_text", "output_text"):
                if part.get("text") is None:  # vLLM skips a text part without content
                    continue
                parts.append({"type": "text", "text": str(part["text"])})
            elif kind == "image_url":
                image_url = part.get("image_url")
                url = image_url.get("url") if isinstance(image_url, dict) else (image_url if bare else None)
                if not isinstance(url, str):
                    raise bad_request("An image_url part needs image_url.url, a data URL string.", "messages")
                urls.append(url)
                if len(urls) > max_images:  # vLLM's validate_num_items (--limit-mm-per-prompt)
                    raise bad_request(f"At most {max_images} image(s) may be provided in one prompt.", "image")
                parts.append({"type": "image"})
            else:
                raise bad_request(f"Unsupported chat content part type: {kind!r}. The trajstore CPU policy "
                                  "server supports: image_url, text.", "type")
        if message.get("role") == "tool" and all(p["type"] == "text" for p in parts):
            conversation.append({**message, "content": "\n".join(p["text"] for p in parts)})
        else:
            conversation.append({**message, "content": parts})
    return conversation, urls


def _image_report(images: ImageInputs, settings: ImageSettings | None) -> dict[str, Any]:
    """The response's ``trajstore`` extension: the image settings applied and each image's geometry."""
    return {
        "image_processor": settings.as_dict() if settings is not None else None,
        "images": [{"index": i, "sha256": images.sha256[i], "width": info.width, "height": info.height,
                    "resized_width": info.resized_width, "resized_height": info.resized_height,
                    "image_grid_thw": list(info.grid_thw), "num_image_tokens": info.num_tokens}
                   for i, info in enumerate(images.infos)],
    }


def _first_int(*values: Any) -> int:
    for v in values:
        if isinstance(v, int):
            return v
        if isinstance(v, (list, tuple)) and v and isinstance(v[0], int):
            return v[0]
    return 0

