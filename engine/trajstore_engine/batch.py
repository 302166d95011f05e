"""Batch files (safetensors) and packing them into micro-batches.

A batch file holds N sequences concatenated into flat tensors of T tokens (no padding anywhere):

    input_ids          int32|int64 [T]    the exact token ids the inference server saw / sampled
    cu_seqlens         int32|int64 [N+1]  sequence i is tokens cu_seqlens[i]:cu_seqlens[i+1]
    loss_mask          uint8|bool  [T]    1 = train on this token (a sampled completion token)
    advantages         float32     [T] or [N]  per token, or per sequence (broadcast)
    behavior_logprobs  float32     [T]    logprob of the token under the policy that sampled it
    behavior_versions  int32|int64 [T]    (optional) policy version that sampled the token

Token t of a sequence is predicted from tokens before it, so the first token of every sequence
cannot carry loss_mask = 1. Values at positions with loss_mask = 0 are ignored.

Vision-language batches add two metadata strings (both absent in text batches):

    images             JSON [N] of [sha256 hex, ...]: each sequence's prompt images, in prompt order
    image_processing   JSON [N] of null | {processor, processor_version, min_pixels, max_pixels,
                       patch_size, merge_size, temporal_patch_size}: the settings the server applied
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import batch_invalid

FORMAT = "trajstore-batch"
FORMAT_VERSION = "1"


@dataclass
class Batch:
    input_ids: torch.Tensor  # int64 [T]
    cu_seqlens: torch.Tensor  # int64 [N+1]
    loss_mask: torch.Tensor  # bool [T]
    advantages: torch.Tensor  # float32 [T]
    behavior_logprobs: torch.Tensor  # float32 [T]
    behavior_versions: torch.Tensor | None = None  # int64 [T]
    metadata: dict[str, str] = field(default_factory=dict)
    # Vision-language batches: per sequence, its images (sha256) and the image settings applied.
    images: list[list[str]] | None = None
    image_processing: list[dict[str, Any] | None] | None = None

    @property
    def has_images(self) -> bool:
        return self.images is not None and any(self.images)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    @property
    def num_sequences(self) -> int:
        return int(self.cu_seqlens.numel() - 1)

    @property
    def seq_lens(self) -> list[int]:
        return (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).tolist()


def read_batch(path: str | os.PathLike, vocab_size: int | None = None,
               max_seq_length: int | None = None) -> Batch:
    from safetensors import SafetensorError, safe_open

    if not os.path.isfile(path):
        raise batch_invalid(f"batch file {path} does not exist",
                            "write the batch file before sending the command, and pass its absolute path")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise batch_invalid(f"{path} is not a readable safetensors file: {exc}") from exc
    batch = batch_from_tensors(tensors, metadata, source=str(path))
    validate_batch(batch, vocab_size=vocab_size, max_seq_length=max_seq_length, source=str(path))
    return batch


def batch_from_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                       source: str = "batch") -> Batch:
    required = ["input_ids", "cu_seqlens", "loss_mask", "advantages", "behavior_logprobs"]
    missing = [k for k in required if k not in tensors]
    if missing:
        raise batch_invalid(f"{source} lacks tensor(s) {', '.join(missing)}")
    known = set(required) | {"behavior_versions"}
    unknown = sorted(set(tensors) - known)
    if unknown:
        raise batch_invalid(f"{source} has unknown tensor(s) {', '.join(unknown)}")

    def expect(name, kinds, ndim=1):
        t = tensors[name]
        if t.ndim != ndim:
            raise batch_invalid(f"{source}: {name} must be 1-D, got shape {list(t.shape)}")
        if t.dtype not in kinds:
            raise batch_invalid(f"{source}: {name} has dtype {t.dtype}, expected one of "
                                f"{[str(k).removeprefix('torch.') for k in kinds]}")
        return t

    ints = (torch.int32, torch.int64)
    floats = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
    input_ids = expect("input_ids", ints).long()
    cu = expect("cu_seqlens", ints).long()
    mask = expect("loss_mask", (torch.uint8, torch.bool, torch.int8)).bool()
    adv = expect("advantages", floats).float()
    behav = expect("behavior_logprobs", floats).float()
    versions = expect("behavior_versions", ints).long() if "behavior_versions" in tensors else None

    T = input_ids.numel()
    if cu.numel() < 2 or cu[0].item() != 0 or cu[-1].item() != T:
        raise batch_invalid(f"{source}: cu_seqlens must start at 0 and end at len(input_ids) = {T}, "
                            f"got {cu.tolist()[:4]}...{cu.tolist()[-2:]}")
    if bool((cu[1:] <= cu[:-1]).any()):
        raise batch_invalid(f"{source}: cu_seqlens must be strictly increasing (no empty sequences)")
    N = cu.numel() - 1
    if adv.numel() == N and N != T:
        adv = torch.repeat_interleave(adv, cu[1:] - cu[:-1])
    for name, t in (("loss_mask", mask), ("advantages", adv), ("behavior_logprobs", behav),
                    ("behavior_versions", versions)):
        if t is not None and t.numel() != T:
            raise batch_invalid(f"{source}: {name} has {t.numel()} entries, input_ids has {T}"
                                + (f" (advantages may also have one per sequence: {N})" if name == "advantages" else ""))
    images, processing = _image_metadata(metadata or {}, N, source)
    return Batch(input_ids, cu, mask, adv, behav, versions, dict(metadata or {}), images, processing)


_SHA256 = re.compile(r"^[0-9a-f]{64}$")
IMAGE_SETTING_KEYS = ("processor", "processor_version", "min_pixels", "max_pixels", "patch_size",
                      "merge_size", "temporal_patch_size")


def _image_metadata(metadata: dict[str, str], n_seq: int, source: str):
    """The ``images`` / ``image_processing`` metadata, checked: one entry per sequence."""
    if "images" not in metadata and "image_processing" not in metadata:
        return None, None
    try:
        images = json.loads(metadata.get("images", "null"))
        processing = json.loads(metadata.get("image_processing", "null"))
    except json.JSONDecodeError as exc:
        raise batch_invalid(f"{source}: images / image_processing metadata is not JSON: {exc}") from exc
    if not isinstance(images, list) or len(images) != n_seq:
        raise batch_invalid(f"{source}: metadata 'images' must be a JSON array with one entry per "
                            f"sequence ({n_seq})")
    if not isinstance(processing, list) or len(processing) != n_seq:
        raise batch_invalid(f"{source}: metadata 'image_processing' must be a JSON array with one entry "
                            f"per sequence ({n_seq})")
    for i, (shas, settings) in enumerate(zip(images, processing)):
        if not isinstance(shas, list) or not all(isinstance(h, str) and _SHA256.match(h) for h in shas):
            raise batch_invalid(f"{source}: images[{i}] must be a list of lower-case sha256 hex digests")
        if shas and not isinstance(settings, dict):
            raise batch_invalid(f"{source}: sequence {i} has images but image_processing[{i}] is not an object",
                                "record the image settings the server applied with every turn that has images")
        if isinstance(settings, dict):
            missing = [k for k in IMAGE_SETTING_KEYS if k not in settings]
            if missing:
                raise batch_invalid(f"{source}: image_processing[{i}] lacks {', '.join(missing)}")
    return images, processing


def validate_batch(batch: Batch, vocab_size: int | None = None, max_seq_length: int | None = None,
                   source: str = "batch") -> None:
    starts = batch.cu_seqlens[:-1]
    if bool(batch.loss_mask[starts].any()):
        bad = int(torch.nonzero(batch.loss_mask[starts])[0, 0])
        raise batch_invalid(f"{source}: sequence {bad} has loss_mask = 1 on its first token, which no "
                            "earlier token predicts", "set loss_mask = 0 on the first token of every sequence")
    m = batch.loss_mask
    if not bool(torch.isfinite(batch.advantages[m]).all()):
        raise batch_invalid(f"{source}: advantages hold NaN or inf on trained tokens")
    if not bool(torch.isfinite(batch.behavior_logprobs[m]).all()) or bool((batch.behavior_logprobs[m] > 1e-3).any()):
        raise batch_invalid(f"{source}: behavior_logprobs must be finite and <= 0 on trained tokens")
    if batch.input_ids.numel() and int(batch.input_ids.min()) < 0:
        raise batch_invalid(f"{source}: negative token id")
    if vocab_size is not None and batch.input_ids.numel() and int(batch.input_ids.max()) >= vocab_size:
        raise batch_invalid(f"{source}: token id {int(batch.input_ids.max())} is outside the model's "
                            f"vocabulary ({vocab_size})", "the batch was tokenized for another model")
    if max_seq_length is not None:
        longest = max(batch.seq_lens)
        if longest > max_seq_length:
            raise batch_invalid(f"{source}: a sequence has {longest} tokens, more than model.max_seq_length "
                                f"= {max_seq_length}", "raise model.max_seq_length or drop/truncate the trajectory")


def write_batch(path: str | os.PathLike, batch: Batch) -> None:
    """Write a batch file (used by tests and the benchmark; the TypeScript side has its own writer)."""
    from safetensors.torch import save_file

    tensors = {
        "input_ids": batch.input_ids.to(torch.int32).contiguous(),
        "cu_seqlens": batch.cu_seqlens.to(torch.int32).contiguous(),
        "loss_mask": batch.loss_mask.to(torch.uint8).contiguous(),
        "advantages": batch.advantages.float().contiguous(),
        "behavior_logprobs": batch.behavior_logprobs.float().contiguous(),
    }
    if batch.behavior_versions is not None:
        tensors["behavior_versions"] = batch.behavior_versions.to(torch.int64).contiguous()
    meta = {"format": FORMAT, "version": FORMAT_VERSION, **batch.metadata}
    if batch.images is not None:
        meta["images"] = json.dumps(batch.images)
        meta["image_processing"] = json.dumps(batch.image_processing)
    tmp = f"{path}.tmp-{os.getpid()}"
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Normalization weights and packing


def token_weights(batch: Batch, mask: torch.Tensor, normalization: str, global_tokens: float | None = None,
                  global_sequences: float | None = None) -> torch.Tensor:
    """Per-token loss weights whose sum over the whole batch is 1 (0 on tokens not trained).

    token: 1 / (number of trained tokens). sequence: 1 / (trained tokens of that sequence x number of
    sequences with any trained token). ``global_*`` override the counts (several ranks: the counts
    of the whole distributed batch).
    """
    w = torch.zeros(batch.num_tokens, dtype=torch.float64)
    if normalization == "token":
        n = float(mask.sum()) if global_tokens is None else global_tokens
        w[mask] = 1.0 / max(n, 1.0)
    else:
        seq_id = torch.repeat_interleave(torch.arange(batch.num_sequences), batch.cu_seqlens[1:] - batch.cu_seqlens[:-1])
        per_seq = torch.zeros(batch.num_sequences, dtype=torch.float64).index_add_(0, seq_id, mask.double())
        n_seq = float((per_seq > 0).sum()) if global_sequences is None else global_sequences
        denom = per_seq[seq_id] * max(n_seq, 1.0)
        w[mask] = 1.0 / denom[mask]
    return w.float()


def plan_micro_batches(seq_lens: list[int], token_budget: int, world_size: int = 1) -> list[list[int]]:
    """Group sequence indices into micro-batches of at most ``token_budget`` tokens.

    A sequence longer than the budget gets a micro-batch of its own. The number of micro-batches is
    a multiple of ``world_size`` (every rank must run the same number of forward/backward passes),
    and tokens are spread evenly (longest-first into the least-filled micro-batch). Deterministic;
    inside a micro-batch sequences keep their batch order. Some micro-batches may be empty when
    there are fewer sequences than ranks.
    """
    total = sum(seq_lens)
    n = max(1, math.ceil(total / max(token_budget, 1)))
    n = math.ceil(n / world_size) * world_size
    order = sorted(range(len(seq_lens)), key=lambda i: (-seq_lens[i], i))
    while True:
        bins: list[list[int]] = [[] for _ in range(n)]
        load = [0] * n
        for i in order:
            j = min(range(n), key=lambda b: (load[b], b))
            bins[j].append(i)
            load[j] += seq_lens[i]
        if all(load[b] <= token_budget or len(bins[b]) == 1 for b in range(n)) or n >= len(seq_lens):
            break
        n += world_size
    for b in bins:
        b.sort()
    # Largest first: the first pass sees the peak memory, so an OOM shows up at once.
    bins.sort(key=lambda b: (-sum(seq_lens[i] for i in b), b[0] if b else 1 << 60))
    return bins


@dataclass
class MicroBatch:
    """One packed row: the model input plus, for the trained tokens, everything the loss needs."""

    input_ids: torch.Tensor  # [t] long
    position_ids: torch.Tensor  # [t] long, restarting at 0 per sequence
    seq_lens: list[int]
    # For each trained token k: its position in the packed row, and what the loss needs.
    target_pos: torch.Tensor  # [m] long, position of the trained token in this row
    batch_pos: torch.Tensor  # [m] long, position of the trained token in the batch
    advantages: torch.Tensor  # [m]
    behavior_logprobs: torch.Tensor  # [m]
    weights: torch.Tensor  # [m]
    versions: torch.Tensor | None  # [m]
    seq_index: torch.Tensor  # [m] long, index of the token's sequence in the batch
    num_sequences: int
    seq_ids: list[int] = field(default_factory=list)  # the batch's sequences in this row, in order
    images: Any = None  # vision.MicroBatchImages for a vision-language model, else None

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    @property
    def num_targets(self) -> int:
        return int(self.target_pos.numel())

    def to(self, device: torch.device) -> "MicroBatch":
        def mv(t):
            return None if t is None else t.to(device, non_blocking=True)

        return MicroBatch(mv(self.input_ids), mv(self.position_ids), self.seq_lens, mv(self.target_pos),
                          self.batch_pos, mv(self.advantages), mv(self.behavior_logprobs), mv(self.weights),
                          mv(self.versions), self.seq_index, self.num_sequences, self.seq_ids, self.images)


def build_micro_batch(batch: Batch, seq_ids: list[int], mask: torch.Tensor, weights: torch.Tensor,
                      pad_token_id: int = 0) -> MicroBatch:
    """Pack the sequences ``seq_ids`` of ``batch`` into one row. ``mask`` selects trained tokens."""
    if not seq_ids:  # an empty slot (fewer sequences than ranks): one token, nothing trained
        z = torch.zeros(0, dtype=torch.long)
        return MicroBatch(torch.tensor([pad_token_id]), torch.zeros(1, dtype=torch.long), [1], z, z,
                          torch.zeros(0), torch.zeros(0), torch.zeros(0), None, z, 0)
    cu = batch.cu_seqlens
    spans = [(int(cu[i]), int(cu[i + 1])) for i in seq_ids]
    index = torch.cat([torch.arange(s, e) for s, e in spans])
    positions = torch.cat([torch.arange(e - s) for s, e in spans])
    seq_of = torch.cat([torch.full((e - s,), i, dtype=torch.long) for i, (s, e) in zip(seq_ids, spans)])
    sel = mask[index]
    target_pos = torch.nonzero(sel).flatten()
    batch_pos = index[target_pos]
    return MicroBatch(
        input_ids=batch.input_ids[index],
        position_ids=positions,
        seq_lens=[e - s for s, e in spans],
        target_pos=target_pos,
        batch_pos=batch_pos,
        advantages=batch.advantages[batch_pos],
        behavior_logprobs=batch.behavior_logprobs[batch_pos],
        weights=weights[batch_pos],
        versions=None if batch.behavior_versions is None else batch.behavior_versions[batch_pos],
        seq_index=seq_of[target_pos],
        num_sequences=len(seq_ids),
        seq_ids=list(seq_ids),
    )
