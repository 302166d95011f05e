"""The engine: a LoRA policy on a causal LM, and its training step.

Read ``train_step`` top to bottom: read the batch -> plan micro-batches (packing) -> [proximal /
base logprobs, when the loss needs them] -> for each micro-batch: forward -> logprobs -> loss ->
backward -> optimizer step. Each stage is a method named for what it does.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import resource
import time
from dataclasses import dataclass
from typing import Any

import torch

from . import attention, checkpoint
from .batch import Batch, MicroBatch, build_micro_batch, plan_micro_batches, read_batch, token_weights
from .config import EngineConfig
from .distributed import DistContext
from .errors import NON_FINITE, UNSUPPORTED, EngineError, batch_invalid, out_of_memory
from .logprobs import token_logprobs
from .loss import StepStats, policy_loss
from .model import (LoraSettings, apply_lora, attention_for, is_vision_language, load_base_model, load_processor,
                    resolve_device, resolve_dtype, text_config)
from .vision import VisionInputs

log = logging.getLogger("trajstore_engine")


@dataclass
class StepPlan:
    """The micro-batches of one optimizer step that this rank runs."""

    micro_batches: list[MicroBatch]


class Engine:
    def __init__(self, cfg: EngineConfig, dist: DistContext | None = None, model=None, processor=None):
        """Load the model from ``cfg.model.path`` (or take ``model``, e.g. a random one for the
        benchmark, with its ``processor`` when it is a vision-language model), add a fresh LoRA
        adapter, shard it when distributed, build the optimizer."""
        self.cfg = cfg
        self.dist = dist or DistContext.single()
        self.device = resolve_device(cfg.model.device) if not self.dist.enabled else self.dist.device
        self.dtype = resolve_dtype(cfg.model.dtype, self.device)
        attention.set_backend(cfg.training.attention)
        attention.probe_varlen_gqa(self.device)
        torch.manual_seed(cfg.seed)

        if model is None:
            model = load_base_model(cfg.model.path, self.device, self.dtype, attention.PACKED_ATTENTION)
        else:
            attention.register()
            model.set_attn_implementation(attention_for(model.config, attention.PACKED_ATTENTION))
        for bad in ("final_logit_softcapping", "logit_scale"):
            if getattr(model.config, bad, None):
                raise EngineError(UNSUPPORTED, f"{model.config.model_type} scales its logits ({bad}); the "
                                  "engine's logprobs do not implement that yet", "use a Qwen3/Llama-style model")
        lm_config = text_config(model.config)
        self.vocab_size = lm_config.vocab_size
        self.pad_token_id = lm_config.pad_token_id or 0
        vision_language = is_vision_language(model.config)
        if vision_language and processor is None:
            processor = load_processor(cfg.model.path)
        lora = LoraSettings(r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                            target_modules=cfg.lora.target_modules, init_seed=cfg.seed)
        self.model = apply_lora(model, lora)  # PeftModel
        self.causal_lm = self.model.base_model.model
        self.decoder = self.causal_lm.get_decoder()
        self.lm_head_weight = self.causal_lm.get_output_embeddings().weight
        # Vision-language (Qwen3-VL): the decoder is the language model; images enter as embeddings
        # at their placeholder positions, from the frozen vision tower.
        self.vision = (VisionInputs(self.causal_lm.model, processor, cfg.vision, self.device, self.dtype)
                       if vision_language else None)
        if vision_language:
            _refuse_vision_adapters(self.model)
        self.compile_mode = self.apply_compile(cfg.training.compile)
        self.causal_lm.gradient_checkpointing_enable({"use_reentrant": False})
        self._set_checkpointing(False)
        if self.dist.enabled:
            self.dist.shard(self.decoder, param_dtype=self.dtype)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(self.trainable, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                           weight_decay=o.weight_decay, fused=self.device.type == "cuda")
        self.step = 0
        self.policy_version: int | None = None
        self.metadata: dict[str, Any] = {}

    # ------------------------------------------------------------------ the training step

    def train_step(self, batch_path: str, policy_version: int | None = None) -> dict[str, Any]:
        t0 = time.perf_counter()
        self._reset_peak_memory()
        timer = StageTimer(self.cfg.training.stage_timing, self.device)
        timer.mark("prepare")
        batch = read_batch(batch_path, self.vocab_size, self.cfg.model.max_seq_length)
        stats = StepStats(self.device)
        mask = self.trained_tokens(batch, policy_version, stats)
        steps = self.plan_steps(batch, mask)
        timer.mark("images")
        self.attach_images(batch, steps)
        try:
            proximal = self.proximal_logprobs(batch, steps)
            base = self.base_logprobs(batch, steps)
            grad_norms = []
            for k, plan in enumerate(steps):
                for mb in plan.micro_batches:
                    mb = mb.to(self.device)
                    timer.mark("forward")
                    hidden = self.forward(mb, train=True)
                    timer.mark("logprobs")
                    logprobs, entropy = self.logprobs(mb, hidden)
                    timer.mark("loss")
                    prox = _take(proximal, mb)
                    loss, terms = policy_loss(logprobs, mb.behavior_logprobs, mb.advantages, mb.weights,
                                              self.cfg.loss, prox, _take(base, mb))
                    timer.mark("backward")
                    self.backward(loss)
                    timer.mark("loss")
                    pre_update = prox if prox is not None else (logprobs if k == 0 else None)
                    stats.add_terms(terms, pre_update, mb.behavior_logprobs, entropy, mb.advantages, loss)
                    del hidden, logprobs, loss
                timer.mark("optimizer")
                grad_norms.append(self.optimizer_step())
            timer.mark("end")
        except torch.OutOfMemoryError as exc:
            self._recover_from_oom()
            raise out_of_memory(str(exc), micro_batch_tokens=self.cfg.training.micro_batch_tokens,
                                gradient_checkpointing=self.cfg.training.gradient_checkpointing is True,
                                max_seq_len=max(batch.seq_lens), peak_gib=self._peak_gib()) from exc
        stats.add("tokens", sum(mb.num_tokens for plan in steps for mb in plan.micro_batches if mb.num_sequences))
        stats.add("sequences", sum(mb.num_sequences for plan in steps for mb in plan.micro_batches))
        stats.all_reduce()
        if policy_version is not None:
            self.policy_version = policy_version
        elapsed = self._elapsed(t0)
        metrics = stats.metrics()
        metrics.update(self._memory_metrics())
        metrics.update(
            grad_norm=float(grad_norms[-1]) if grad_norms else 0.0,
            grad_norm_max=float(max(grad_norms)) if grad_norms else 0.0,
            lr=self._lr(),
            step_time_s=elapsed,
            tokens_per_s=metrics["tokens"] / elapsed if elapsed > 0 else 0.0,
            micro_batches=sum(len(p.micro_batches) for p in steps) * self.dist.world_size,
            optimizer_steps=len(steps),
        )
        metrics.update(timer.totals())
        return {"step": self.step, "metrics": metrics}

    def trained_tokens(self, batch: Batch, policy_version: int | None, stats: StepStats) -> torch.Tensor:
        """The loss mask, less tokens from a policy too many versions behind (counted)."""
        mask = batch.loss_mask.clone()
        if policy_version is not None and batch.behavior_versions is not None:
            staleness = (policy_version - batch.behavior_versions).clamp(min=0).double()
            first = self.dist.rank == 0  # batch-wide counts: one rank adds them
            if mask.any() and first:
                stats.add("staleness", float(staleness[mask].sum()))
                stats.add("staleness_tokens", float(mask.sum()))
                stats.max("staleness_max", staleness[mask].max())
            limit = self.cfg.loss.max_staleness
            if limit is not None:
                stale = mask & (staleness > limit)
                if first:
                    stats.add("stale_dropped", float(stale.sum()))
                mask &= ~stale
        return mask

    def plan_steps(self, batch: Batch, mask: torch.Tensor) -> list[StepPlan]:
        """Split the batch into optimizer steps (minibatches, in sequence order), each into packed
        micro-batches; keep this rank's share. Loss weights normalize over each minibatch."""
        n_seq = batch.num_sequences
        k = max(1, min(self.cfg.training.minibatches, n_seq))
        bounds = [round(i * n_seq / k) for i in range(k + 1)]
        plans = []
        seq_lens = batch.seq_lens
        for i in range(k):
            seqs = list(range(bounds[i], bounds[i + 1]))
            part_mask = torch.zeros_like(mask)
            lo, hi = int(batch.cu_seqlens[bounds[i]]), int(batch.cu_seqlens[bounds[i + 1]])
            part_mask[lo:hi] = mask[lo:hi]
            weights = token_weights(batch, part_mask, self.cfg.loss.normalization)
            bins = plan_micro_batches([seq_lens[s] for s in seqs], self.cfg.training.micro_batch_tokens,
                                      self.dist.world_size)
            mine = bins[self.dist.rank::self.dist.world_size]
            plans.append(StepPlan([build_micro_batch(batch, [seqs[j] for j in b], part_mask, weights,
                                                     self.pad_token_id) for b in mine]))
        return plans

    def attach_images(self, batch: Batch, steps: list[StepPlan]) -> None:
        """Vision-language model: process and check the batch's images, give each micro-batch its
        images and multimodal positions. A text model refuses a batch with images."""
        if self.vision is None:
            if batch.has_images:
                raise batch_invalid(f"the batch references images, but {self.cfg.model.path} is a text-only model",
                                    "train vision-language rollouts with the vision-language model that served them")
            return
        prepared = self.vision.prepare(batch)
        for plan in steps:
            for mb in plan.micro_batches:
                mb.images = self.vision.for_micro_batch(mb, prepared)

    def proximal_logprobs(self, batch: Batch, steps: list[StepPlan]) -> torch.Tensor | None:
        """pi_prox for the decoupled loss: this policy's logprobs before the step's first update.

        With one optimizer step per batch and no dropout the training forward itself computes
        exactly these values (the weights have not changed yet), so no extra pass is made."""
        cfg = self.cfg
        if not cfg.loss.decoupled or (len(steps) == 1 and cfg.lora.dropout == 0.0):
            return None
        return self._score_all(batch, steps, use_adapter=True)

    def base_logprobs(self, batch: Batch, steps: list[StepPlan]) -> torch.Tensor | None:
        """pi_base for the KL penalty: the same model with the adapter disabled."""
        if not self.cfg.loss.kl_coef:
            return None
        return self._score_all(batch, steps, use_adapter=False)

    def forward(self, mb: MicroBatch, train: bool) -> torch.Tensor:
        """Hidden states after the final norm, [tokens, hidden], for one packed row."""
        tc = self.cfg.training
        ckpt = tc.gradient_checkpointing is True or (
            tc.gradient_checkpointing == "auto" and mb.num_tokens > tc.checkpoint_above_tokens)
        self._set_checkpointing(train and ckpt)
        self.model.train(train)
        kwargs = attention.packed_kwargs(mb.seq_lens, self.device)
        with self._autocast():
            if mb.images is None:
                out = self.decoder(input_ids=mb.input_ids[None], position_ids=mb.position_ids[None],
                                   use_cache=False, **kwargs)
            else:
                out = self.decoder(**self._vision_inputs(mb), use_cache=False, **kwargs)
        return out.last_hidden_state[0]

    def _vision_inputs(self, mb: MicroBatch) -> dict[str, Any]:
        """The language model's inputs for a row with images: token embeddings with the image
        embeddings scattered into the placeholder positions, the 4-row positions (text, t, h, w),
        and the DeepStack features for the first decoder layers."""
        images = mb.images
        embeds = self.decoder.embed_tokens(mb.input_ids)
        inputs: dict[str, Any] = {"position_ids": images.position_ids}
        if images.keys:
            image_embeds, deepstack = self.vision.encode(images)
            mask = images.image_mask.to(embeds.device)
            embeds = embeds.masked_scatter(mask[:, None], image_embeds.to(embeds.dtype))
            inputs.update(visual_pos_masks=mask[None], deepstack_visual_embeds=deepstack)
        inputs["inputs_embeds"] = embeds[None]
        return inputs

    def logprobs(self, mb: MicroBatch, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logprobs (and entropies) of the trained tokens: hidden state t-1 predicts token t."""
        h = hidden.index_select(0, mb.target_pos - 1)
        targets = mb.input_ids.index_select(0, mb.target_pos)
        return token_logprobs(h, self.lm_head_weight, targets, self.cfg.training.logprob_chunk_tokens,
                              self.cfg.loss.temperature)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def optimizer_step(self) -> float:
        """Clip, check, step; returns the gradient norm before clipping."""
        max_norm = self.cfg.optim.max_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(self.trainable, max_norm if max_norm else float("inf"))
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        norm = float(norm)
        if not math.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise EngineError(NON_FINITE, f"the gradient norm is {norm}; the update was skipped",
                              "check the batch's advantages and behavior logprobs; lower optim.lr")
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr(self.step + 1)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return norm

    # ------------------------------------------------------------------ scoring

    @torch.no_grad()
    def compute_logprobs(self, batch_path: str, out_path: str | None, use_adapter: bool = True) -> dict[str, Any]:
        """Logprobs of every token but each sequence's first (0 there), written to ``out_path``."""
        t0 = time.perf_counter()
        self._reset_peak_memory()
        batch = read_batch(batch_path, self.vocab_size, self.cfg.model.max_seq_length)
        all_tokens = torch.ones_like(batch.loss_mask)
        all_tokens[batch.cu_seqlens[:-1]] = False
        weights = torch.zeros(batch.num_tokens)
        bins = plan_micro_batches(batch.seq_lens, self.cfg.training.micro_batch_tokens, self.dist.world_size)
        plan = StepPlan([build_micro_batch(batch, b, all_tokens, weights, self.pad_token_id)
                         for b in bins[self.dist.rank::self.dist.world_size]])
        self.attach_images(batch, [plan])
        try:
            lp, ent = self._score_all(batch, [plan], use_adapter, with_entropy=True)
        except torch.OutOfMemoryError as exc:
            self._recover_from_oom()
            raise out_of_memory(str(exc), micro_batch_tokens=self.cfg.training.micro_batch_tokens,
                                gradient_checkpointing=False, max_seq_len=max(batch.seq_lens),
                                peak_gib=self._peak_gib()) from exc
        m = batch.loss_mask
        d = (lp - batch.behavior_logprobs).double()[m]
        metrics = {
            "tokens": batch.num_tokens,
            "sequences": batch.num_sequences,
            "mismatch_abs_mean": float(d.abs().mean()) if d.numel() else 0.0,
            "mismatch_abs_max": float(d.abs().max()) if d.numel() else 0.0,
            "mismatch_kl": float((torch.exp(d) - d - 1).mean()) if d.numel() else 0.0,
            "mismatch_kl_k1": float((-d).mean()) if d.numel() else 0.0,
            "entropy": float(ent[all_tokens].double().mean()) if all_tokens.any() else 0.0,
            "step_time_s": self._elapsed(t0),
            **self._memory_metrics(),
        }
        metrics["tokens_per_s"] = batch.num_tokens / metrics["step_time_s"] if metrics["step_time_s"] > 0 else 0.0
        if out_path and self.dist.rank == 0:
            from safetensors.torch import save_file

            tmp = f"{out_path}.tmp-{os.getpid()}"
            save_file({"logprobs": lp.float().contiguous(), "entropy": ent.float().contiguous()}, tmp,
                      metadata={"format": "trajstore-logprobs", "version": "1", "adapter": str(use_adapter).lower()})
            os.replace(tmp, out_path)
        return {"out": out_path, "metrics": metrics, "logprobs": lp}

    @torch.no_grad()
    def _score_all(self, batch: Batch, steps: list[StepPlan], use_adapter: bool, with_entropy: bool = False):
        """No-grad logprobs for every target token of the plans, in batch positions ([T], 0 elsewhere).
        Ranks each score their share; the results are summed across ranks."""
        out = torch.zeros(batch.num_tokens, dtype=torch.float32)
        ent = torch.zeros(batch.num_tokens, dtype=torch.float32)
        ctx = contextlib.nullcontext() if use_adapter else self.model.disable_adapter()
        with ctx:
            for plan in steps:
                for mb in plan.micro_batches:
                    mbd = mb.to(self.device)
                    hidden = self.forward(mbd, train=False)
                    lp, e = self.logprobs(mbd, hidden)
                    out[mb.batch_pos] = lp.float().cpu()
                    ent[mb.batch_pos] = e.float().cpu()
                    del hidden
        out = self.dist.sum_cpu(out)
        if with_entropy:
            return out, self.dist.sum_cpu(ent)
        return out

    # ------------------------------------------------------------------ checkpoints

    def save(self, path: str, metadata: dict[str, Any] | None = None, overwrite: bool = False) -> dict[str, Any]:
        if metadata is not None:
            self.metadata = dict(metadata)
        return checkpoint.save(self, path, overwrite=overwrite)

    def load(self, path: str) -> dict[str, Any]:
        return checkpoint.load(self, path)

    # ------------------------------------------------------------------ helpers

    def apply_compile(self, mode: str) -> str:
        """Switch torch.compile on for the decoder layers or the small kernels (see fused.py)."""
        from . import fused, logprobs

        if mode == "auto":
            mode = "layers" if self.device.type == "cuda" else "none"
        fused.unpatch()
        fused.uncompile_layers(self.decoder)
        if mode == "kernels":
            fused.patch_model(self.causal_lm)
        elif mode == "layers":
            fused.compile_layers(self.decoder)
        logprobs.set_fused(mode != "none")
        self.compile_mode = mode
        return mode

    def describe(self) -> dict[str, Any]:
        # Under FSDP the sharded parameters are DTensors, whose numel() is the whole tensor's:
        # these are already model-wide counts, on every rank.
        total = sum(p.numel() for p in self.model.parameters())
        trainable = sum(p.numel() for p in self.trainable)
        return {
            "model_type": self.causal_lm.config.model_type,
            "vocab_size": self.vocab_size,
            "parameters": int(total),
            "trainable_parameters": int(trainable),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "world_size": self.dist.world_size,
            "attention": "varlen" if (self.cfg.training.attention == "auto" and self.device.type == "cuda"
                                      and attention.varlen_available()) else
                         ("loop" if self.cfg.training.attention == "auto" else self.cfg.training.attention),
            "compile": self.compile_mode,
            "step": self.step,
        }

    def _lr(self, step: int | None = None) -> float:
        step = self.step if step is None else step
        o = self.cfg.optim
        if o.warmup_steps > 0 and step < o.warmup_steps:
            return o.lr * (step + 1) / o.warmup_steps
        return o.lr

    def _autocast(self):
        if self.dtype == torch.float32 or self.dtype == torch.float64:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _set_checkpointing(self, on: bool) -> None:
        if getattr(self, "_ckpt_state", None) == on:
            return
        from transformers.modeling_layers import GradientCheckpointingLayer

        for module in self.causal_lm.modules():
            if isinstance(module, GradientCheckpointingLayer):
                module.gradient_checkpointing = on
        self._ckpt_state = on

    def _elapsed(self, t0: float) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - t0

    def _reset_peak_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _peak_gib(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        return None

    def _memory_metrics(self) -> dict[str, float]:
        if self.device.type == "cuda":
            return {
                "peak_memory_gib": torch.cuda.max_memory_allocated(self.device) / 2**30,
                "peak_reserved_gib": torch.cuda.max_memory_reserved(self.device) / 2**30,
            }
        return {"peak_memory_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}

    def _recover_from_oom(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


class StageTimer:
    """Per-stage GPU time (CUDA events, no sync until the end) and CPU wall time of a step."""

    def __init__(self, enabled: bool, device: torch.device):
        self.enabled = enabled
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, Any, float]] = []

    def mark(self, name: str) -> None:
        if not self.enabled:
            return
        ev = None
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
        self.marks.append((name, ev, time.perf_counter()))

    def totals(self) -> dict[str, float]:
        if not self.enabled or len(self.marks) < 2:
            return {}
        if self.cuda:
            torch.cuda.synchronize()
        out: dict[str, float] = {}
        for (name, ev, t), (_, ev2, t2) in zip(self.marks, self.marks[1:]):
            if ev is not None:
                out[f"time_{name}_s"] = out.get(f"time_{name}_s", 0.0) + ev.elapsed_time(ev2) / 1e3
            out[f"cpu_{name}_s"] = out.get(f"cpu_{name}_s", 0.0) + (t2 - t)
        return out


def _refuse_vision_adapters(model) -> None:
    """LoRA goes on the language model's layers: vLLM's Qwen3-VL LoRA loads adapters for the
    language model only, so an adapter on the vision tower or merger could not be served."""
    on_tower = [n for n, p in model.named_parameters() if p.requires_grad and ".visual." in n]
    if on_tower:
        raise EngineError(UNSUPPORTED, f"lora.target_modules matched vision-tower modules ({on_tower[0]}, ...)",
                          "name only language-model modules, e.g. q_proj, k_proj, v_proj, o_proj, "
                          "gate_proj, up_proj, down_proj")


def _take(values: torch.Tensor | None, mb: MicroBatch) -> torch.Tensor | None:
    if values is None:
        return None
    return values[mb.batch_pos].to(mb.advantages.device, non_blocking=True)
