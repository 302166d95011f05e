"""Batched sampling with a KV cache: the part of vLLM's engine this server reimplements on a CPU.

One call of ``generate_batch`` runs a batch of requests that use the same weights (base model or
one adapter) to completion:

1. prefill: the distinct prompts, left-padded into one [B, P] forward;
2. fan out: each prompt's cache row is repeated ``n`` times (``n`` samples share one prefill, as
   GRPO groups do);
3. decode: one token per live row per step; rows that finish are dropped from the cache.

Logprobs are vLLM's default ``raw_logprobs``: ``log_softmax`` of the model's fp32 logits *before*
temperature, top-k/top-p or any logits processor (vLLM docs, ``--logprobs-mode``). That is what
the trainer recomputes, so behaviour and training logprobs compare like for like.

Sampling follows vLLM's sampler: temperature below 1e-5 is greedy (argmax); otherwise logits are
divided by the temperature, filtered by top-k then top-p, and a token is drawn with the
exponential race ``argmax(p / q), q ~ Exp(1)``. Each sequence has its own ``torch.Generator``
(a request with ``seed`` s gives its i-th sequence seed s + i, as vLLM's parallel sampling does),
so a seeded request samples the same tokens whatever else shares its batch.

Vision-language models (Qwen3-VL): a job may carry images (``multimodal.ImageInputs``, its prompt
already holding one ``<|image_pad|>`` per image token). The prefill then passes the batch's
``pixel_values`` and ``image_grid_thw`` in row order, and position ids of four rows as transformers'
own ``Qwen3VLForConditionalGeneration._prepare_position_ids_for_generation`` builds them: the text
positions, then the three multimodal rotary rows (t, h, w) from the model's ``get_rope_index``.
Each decoded token's multimodal position is its text position plus the row's ``rope_delta``.
Text-only batches take the plain path: with no image, the three rows equal the text positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

_SAMPLING_EPS = 1e-5  # vLLM: temperatures below this mean greedy sampling


@dataclass
class SamplingSettings:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    min_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    num_logprobs: int | None = None  # None: no logprobs; k: sampled token + top k
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    seed: int | None = None


@dataclass
class GenerationJob:
    prompt_ids: list[int]
    n: int
    settings: SamplingSettings
    generators: list[torch.Generator]
    images: Any = None  # multimodal.ImageInputs for a prompt with images, else None


@dataclass
class SequenceOutput:
    token_ids: list[int]
    # per position: the sampled token's raw logprob and (when asked) the vLLM-ordered entries
    # [(sampled id, lp, rank), (top1 id, lp, 1), ...] before de-duplication
    logprobs: list[float]
    top_entries: list[list[tuple[int, float, int]]] | None
    text: str
    finish_reason: str
    stop_reason: int | str | None


@dataclass
class _Row:
    job: int
    settings: SamplingSettings
    generator: torch.Generator
    prompt_len: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float, int]]] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    stop_terminated: bool = False
    stop_text_at: int | None = None  # where a matched stop string starts in the decoded text


def generate_batch(model: Any, tokenizer: Any, jobs: list[GenerationJob], *, pad_token_id: int,
                   eos_token_id: int | None, max_model_len: int,
                   image_token_id: int | None = None) -> list[list[SequenceOutput]]:
    """Run ``jobs`` (same weights) to completion; returns, per job, its ``n`` sequences.

    Jobs with images need ``image_token_id``; a batch must not mix them with image-less prompts that
    hold that token (the model would scatter image features onto them): ``prefill_groups`` splits."""
    device = next(model.parameters()).device
    from transformers import DynamicCache

    with torch.inference_mode():
        # 1. prefill the distinct prompts, left-padded
        width = max(len(j.prompt_ids) for j in jobs)
        input_ids = torch.full((len(jobs), width), pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(jobs), width), dtype=torch.long)
        for i, job in enumerate(jobs):
            input_ids[i, width - len(job.prompt_ids):] = torch.tensor(job.prompt_ids, dtype=torch.long)
            attention[i, width - len(job.prompt_ids):] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        extra: dict[str, Any] = {}
        deltas = None  # per row: multimodal rotary position minus text position (VL prompts)
        if any(j.images is not None for j in jobs):
            positions, deltas, extra = _multimodal_prefill(model, jobs, input_ids, attention, positions,
                                                           image_token_id)
        cache = DynamicCache(config=getattr(model, "config", None))
        out = model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                    position_ids=positions.to(device), past_key_values=cache, use_cache=True,
                    logits_to_keep=1, **{k: v.to(device) for k, v in extra.items()})
        logits = out.logits[:, -1, :].float()

        # 2. fan out: job j's cache row repeated n_j times
        rows: list[_Row] = []
        fan = []
        for j, job in enumerate(jobs):
            for s in range(job.n):
                fan.append(j)
                rows.append(_Row(job=j, settings=job.settings, generator=job.generators[s],
                                 prompt_len=len(job.prompt_ids)))
        index = torch.tensor(fan, dtype=torch.long)
        if fan != list(range(len(jobs))):
            cache.batch_select_indices(index.to(device))
            logits = logits[index.to(logits.device)]
            attention = attention[index]
            deltas = deltas[index] if deltas is not None else None
        live = list(range(len(rows)))  # rows still decoding, in cache-row order

        # 3. decode
        while True:
            tokens = _sample_step(logits, [rows[r] for r in live], eos_token_id)
            still = []
            for k, r in enumerate(live):
                _accept(rows[r], tokens[k], tokenizer, eos_token_id, max_model_len)
                if rows[r].finish_reason is None:
                    still.append(k)
            if not still:
                break
            if len(still) < len(live):
                keep = torch.tensor(still, dtype=torch.long)
                cache.batch_select_indices(keep.to(device))
                attention = attention[keep]
                deltas = deltas[keep] if deltas is not None else None
                live = [live[k] for k in still]
            step_ids = torch.tensor([[rows[r].tokens[-1]] for r in live], dtype=torch.long)
            attention = torch.cat([attention, torch.ones((len(live), 1), dtype=torch.long)], dim=1)
            positions = (attention.sum(-1, keepdim=True) - 1)
            if deltas is not None:  # [text; t; h; w]: after the prompt every row moves as text does
                mrope = (positions + deltas[:, None])[None].expand(3, -1, -1)
                positions = torch.cat([positions[None], mrope], dim=0)
            out = model(input_ids=step_ids.to(device), attention_mask=attention.to(device),
                        position_ids=positions.to(device), past_key_values=cache, use_cache=True)
            logits = out.logits[:, -1, :].float()

    results: list[list[SequenceOutput]] = [[] for _ in jobs]
    for row in rows:
        results[row.job].append(_finish(row, tokenizer))
    return results


def prefill_groups(jobs: list[GenerationJob], image_token_id: int | None) -> list[list[int]]:
    """Job indices in batches ``generate_batch`` can run: an image-less prompt that holds the image
    token (a user typed it; vLLM embeds it as text) cannot share a prefill with image prompts."""
    if image_token_id is None or not any(j.images is not None for j in jobs):
        return [list(range(len(jobs)))]
    main, stray = [], []
    for i, job in enumerate(jobs):
        (stray if job.images is None and image_token_id in job.prompt_ids else main).append(i)
    return [g for g in (main, stray) if g]


def _multimodal_prefill(model: Any, jobs: list[GenerationJob], input_ids: torch.Tensor, attention: torch.Tensor,
                        text_positions: torch.Tensor, image_token_id: int | None):
    """4-row position ids, per-row rope deltas and the image tensors for a prefill holding images."""
    if image_token_id is None:
        raise ValueError("jobs carry images but no image_token_id was given")
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT wrapper
    rope_index = inner.model.get_rope_index
    # 1 marks an image token, row by row; image-less rows are all text (0)
    types = torch.zeros_like(input_ids)
    for i, job in enumerate(jobs):
        if job.images is not None:
            types[i] = (input_ids[i] == image_token_id).to(types.dtype) * attention[i]
    grids = torch.cat([j.images.image_grid_thw for j in jobs if j.images is not None], dim=0)
    pixels = torch.cat([j.images.pixel_values for j in jobs if j.images is not None], dim=0)
    mrope, deltas = rope_index(input_ids, mm_token_type_ids=types, image_grid_thw=grids, attention_mask=attention)
    positions = torch.cat([text_positions[None], mrope.to(text_positions.dtype)], dim=0)
    return positions, deltas.reshape(-1).to(torch.long), {"pixel_values": pixels, "image_grid_thw": grids}


def _sample_step(logits: torch.Tensor, rows: list[_Row],
                 eos_token_id: int | None) -> list[tuple[int, float, list | None]]:
    """One token per row: (token id, its raw logprob, vLLM-ordered top entries or None)."""
    raw = torch.log_softmax(logits, dim=-1)  # fp32: vLLM's default raw_logprobs
    processed = logits.clone()
    vocab = logits.shape[-1]
    for i, row in enumerate(rows):
        s = row.settings
        if len(row.tokens) < s.min_tokens:  # vLLM's min_tokens processor: no stop tokens yet
            banned = list(s.stop_token_ids)
            if not s.ignore_eos and eos_token_id is not None:
                banned.append(eos_token_id)
            banned = [t for t in banned if 0 <= t < vocab]
            if banned:
                processed[i, banned] = -math.inf
    chosen: list[int] = []
    for i, row in enumerate(rows):
        s = row.settings
        if s.temperature < _SAMPLING_EPS:
            chosen.append(int(torch.argmax(processed[i]).item()))
            continue
        scores = processed[i] / s.temperature
        scores = _top_k_top_p(scores, s.top_k, s.top_p)
        probs = torch.softmax(scores, dim=-1)
        q = torch.empty_like(probs).exponential_(generator=row.generator)
        chosen.append(int(torch.argmax(probs / q).item()))
    out = []
    for i, row in enumerate(rows):
        tok = chosen[i]
        lp = float(raw[i, tok].item())
        entries = None
        k = row.settings.num_logprobs
        if k is not None:
            rank = int((raw[i] > raw[i, tok]).sum().item()) + 1
            entries = [(tok, lp, rank)]
            if k > 0:
                top_lp, top_ids = torch.topk(raw[i], k)
                entries += [(int(t), float(v), n + 1) for n, (v, t) in enumerate(zip(top_lp.tolist(), top_ids.tolist()))]
        out.append((tok, lp, entries))
    return out


def _top_k_top_p(scores: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """vLLM's ``apply_top_k_top_p`` for one row: keep the k best, then the smallest nucleus >= p."""
    vocab = scores.shape[-1]
    if top_k and 0 < top_k < vocab:
        kth = torch.topk(scores, top_k).values[-1]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cum = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
        drop = cum <= 1 - top_p
        drop[-1] = False  # always keep the best token
        scores = scores.clone()
        scores[order[drop]] = -math.inf
    return scores


def _accept(row: _Row, sample: tuple[int, float, list | None], tokenizer: Any,
            eos_token_id: int | None, max_model_len: int) -> None:
    """Append the sampled token, then vLLM's stop checks in vLLM's order."""
    tok, lp, entries = sample
    s = row.settings
    row.tokens.append(tok)
    row.logprobs.append(lp)
    if entries is not None:
        row.top.append(entries)
    # vllm/v1/core/sched/utils.py check_stop: the length cap is checked first
    if len(row.tokens) >= s.max_tokens or row.prompt_len + len(row.tokens) >= max_model_len:
        row.finish_reason = "length"
    elif not s.ignore_eos and tok == eos_token_id:
        row.finish_reason, row.stop_terminated = "stop", True
    elif tok in s.stop_token_ids:
        row.finish_reason, row.stop_reason, row.stop_terminated = "stop", tok, True
    # stop strings are found by the detokenizer, after the engine's checks (and override them)
    if s.stop and not row.stop_terminated and len(row.tokens) > s.min_tokens:
        text = tokenizer.decode(row.tokens, skip_special_tokens=s.skip_special_tokens)
        hit = _find_stop(text, s.stop)
        if hit is not None:
            row.stop_text_at, stop_str = hit
            row.finish_reason, row.stop_reason = "stop", stop_str


def _find_stop(text: str, stops: list[str]) -> tuple[int, str] | None:
    best: tuple[int, str] | None = None
    for stop in stops:
        if not stop:
            continue
        at = text.find(stop)
        if at != -1 and (best is None or at < best[0]):
            best = (at, stop)
    return best


def _finish(row: _Row, tokenizer: Any) -> SequenceOutput:
    s = row.settings
    text_ids = row.tokens
    if row.stop_terminated and not s.include_stop_str_in_output:
        text_ids = row.tokens[:-1]  # vLLM's detokenizer leaves the stop token out of the text
    text = tokenizer.decode(text_ids, skip_special_tokens=s.skip_special_tokens)
    if row.stop_text_at is not None and isinstance(row.stop_reason, str):
        end = row.stop_text_at + (len(row.stop_reason) if s.include_stop_str_in_output else 0)
        text = text[:end]
    return SequenceOutput(token_ids=list(row.tokens), logprobs=list(row.logprobs),
                          top_entries=[list(e) for e in row.top] if s.num_logprobs is not None else None,
                          text=text, finish_reason=row.finish_reason or "stop",
                          stop_reason=row.stop_reason)
