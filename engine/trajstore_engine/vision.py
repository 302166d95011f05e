"""The images of vision-language batches: from blob references to what the model's forward needs.

A VL batch names each sequence's prompt images by SHA-256 and records the image settings the
inference server applied (batch.py). For one batch this module

1. reads every image from the local blob directory (``vision.blob_root``, the blob store's layout
   ``sha256/<2 hex>/<hex>``) and checks its hash: a missing or corrupt image is
   ``TRAJ_E_ENGINE_IMAGE_MISSING``, never a silent text-only forward;
2. runs the model directory's own image processor (the class vLLM runs too) with the recorded
   ``min_pixels`` / ``max_pixels``; a batch recorded with another patch, merge or temporal patch
   size than the model's is refused;
3. checks the placeholders: each image's run of ``<|image_pad|>`` ids in the sequence must be exactly
   ``t*h*w / merge^2`` long (what its grid produces), one run per image, in order; anything else
   is ``TRAJ_E_ENGINE_IMAGE_TOKENS`` (the ids were sampled against another context);
4. computes the sequence's multimodal rotary positions (the t/h/w rows) with the model's own
   ``get_rope_index``, so packed rows carry per-sequence positions exactly as an unpacked forward;
5. encodes images with the vision tower, once per image and step (frozen tower, under no_grad),
   returning the merged embeddings and the DeepStack features the decoder adds to its first layers.
"""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .batch import Batch, MicroBatch
from .config import VisionConfig
from .errors import IMAGE_MISSING, IMAGE_TOKENS, EngineError

# Decoded images larger than this are refused before the processor sees them (hostile input).
MAX_IMAGE_PIXELS = 64 * 1024 * 1024


class BlobReader:
    """Reads images from a local directory in the blob store's layout, checking their SHA-256."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path_of(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256

    def read(self, sha256: str) -> bytes:
        path = self.path_of(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise EngineError(IMAGE_MISSING, f"image {sha256} is not in the blob directory ({path})",
                              "the trainer copies every referenced image into vision.blob_root before "
                              "the step; check storage.blobs / the blob cache", details={"sha256": sha256}) from exc
        if hashlib.sha256(data).hexdigest() != sha256:
            raise EngineError(IMAGE_MISSING, f"image {sha256} in {path} does not match its hash (corrupt)",
                              "remove the file; the trainer fetches it again from the blob store",
                              details={"sha256": sha256})
        return data


@dataclass
class SequenceImages:
    """One sequence's images, processed: what its forward needs."""

    keys: list[tuple[str, int, int]]  # (sha256, min_pixels, max_pixels) of each image, in order
    pixel_values: torch.Tensor | None  # [patches, C*T*P*P] of all its images, or None
    grid_thw: torch.Tensor  # [images, 3] long
    rope_positions: torch.Tensor  # [3, L] long: the t/h/w rotary rows


@dataclass
class MicroBatchImages:
    """A packed row's images and positions."""

    keys: list[tuple[str, int, int]]
    pixel_values: torch.Tensor | None
    grid_thw: torch.Tensor
    position_ids: torch.Tensor  # [4, 1, t]: text positions, then the t/h/w rows
    image_mask: torch.Tensor  # [t] bool: the <|image_pad|> positions


class VisionInputs:
    """Prepares the images of batches for one vision-language model (Qwen3-VL)."""

    def __init__(self, vl_model, processor, cfg: VisionConfig, device: torch.device, dtype: torch.dtype):
        self.vl_model = vl_model  # Qwen3VLModel: .visual, .get_rope_index, .config
        self.image_processor = processor.image_processor
        self.cfg = cfg
        self.device = device
        self.dtype = dtype
        config = vl_model.config
        vc = config.vision_config
        self.image_token_id = int(config.image_token_id)
        self.video_token_id = int(config.video_token_id)
        self.geometry = {"patch_size": int(vc.patch_size), "merge_size": int(vc.spatial_merge_size),
                         "temporal_patch_size": int(vc.temporal_patch_size)}
        self.blobs = BlobReader(cfg.blob_root) if cfg.blob_root else None
        self._encoded: dict[tuple[str, int, int], tuple[torch.Tensor, list[torch.Tensor]]] = {}

    # ---------------------------------------------------------------- per batch

    def prepare(self, batch: Batch) -> list[SequenceImages]:
        """Process and check every sequence's images; clears the per-step encoder cache.

        Sequences are prepared in threads (PNG decoding and the processor's tensor work release
        the GIL): on a GPU host this CPU work would otherwise take a tenth of an 8B step."""
        self._encoded.clear()

        def one(i: int) -> SequenceImages:
            lo, hi = int(batch.cu_seqlens[i]), int(batch.cu_seqlens[i + 1])
            shas = batch.images[i] if batch.images is not None else []
            settings = batch.image_processing[i] if batch.image_processing is not None else None
            return self._prepare_sequence(i, batch.input_ids[lo:hi], shas, settings)

        workers = min(8, os.cpu_count() or 1, max(1, batch.num_sequences))
        if workers == 1:
            return [one(i) for i in range(batch.num_sequences)]
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, range(batch.num_sequences)))

    def _prepare_sequence(self, index: int, ids: torch.Tensor, shas: list[str],
                          settings: dict[str, Any] | None) -> SequenceImages:
        if bool((ids == self.video_token_id).any()):
            raise EngineError(IMAGE_TOKENS, f"sequence {index} holds video placeholder tokens; videos are "
                              "not supported", "send screenshots as images", details={"sequence": index})
        if not shas:
            if bool((ids == self.image_token_id).any()):
                raise self._mismatch(index, "holds image placeholder tokens but references no image", [], [])
            return SequenceImages([], None, torch.zeros(0, 3, dtype=torch.long), self._text_positions(len(ids)))
        self._check_settings(index, settings)
        if self.blobs is None:
            raise EngineError(IMAGE_MISSING, "the batch references images but vision.blob_root is not set",
                              "init the engine with vision.blob_root = the local blob directory")
        images = [self._decode(index, sha) for sha in shas]
        lo_px, hi_px = int(settings["min_pixels"]), int(settings["max_pixels"])
        processed = self.image_processor(images=images, min_pixels=lo_px, max_pixels=hi_px, return_tensors="pt")
        grid = processed["image_grid_thw"].long()
        self._check_placeholders(index, ids, grid)
        mm_types = (ids == self.image_token_id).int()[None]
        positions, _ = self.vl_model.get_rope_index(ids[None], mm_token_type_ids=mm_types, image_grid_thw=grid)
        keys = [(sha, lo_px, hi_px) for sha in shas]
        return SequenceImages(keys, processed["pixel_values"], grid, positions[:, 0, :].long())

    def _check_settings(self, index: int, settings: dict[str, Any] | None) -> None:
        wrong = {k: (settings or {}).get(k) for k, v in self.geometry.items() if (settings or {}).get(k) != v}
        if wrong:
            raise EngineError(IMAGE_TOKENS, f"sequence {index} was processed with {wrong}, the model uses "
                              f"{self.geometry}", "train with the model the rollouts were served by",
                              details={"sequence": index})

    def _decode(self, index: int, sha: str):
        from PIL import Image

        data = self.blobs.read(sha)
        try:
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise EngineError(IMAGE_MISSING, f"image {sha} is {img.width}x{img.height}, over the "
                                      f"{MAX_IMAGE_PIXELS}-pixel limit", details={"sha256": sha})
                return img.convert("RGB")  # as vLLM loads images (RGB), and the processor expects
        except EngineError:
            raise
        except Exception as exc:  # noqa: BLE001 - an undecodable blob becomes a typed error
            raise EngineError(IMAGE_MISSING, f"image {sha} of sequence {index} cannot be decoded: {exc}",
                              details={"sha256": sha}) from exc

    def _check_placeholders(self, index: int, ids: torch.Tensor, grid: torch.Tensor) -> None:
        merge = self.geometry["merge_size"]
        expected = (grid.prod(-1) // (merge * merge)).tolist()
        runs = _runs_of(ids, self.image_token_id)
        if runs != expected:
            raise self._mismatch(index, "has image placeholder runs that do not match its images", runs, expected)

    def _mismatch(self, index: int, what: str, runs: list[int], expected: list[int]) -> EngineError:
        return EngineError(
            IMAGE_TOKENS,
            f"sequence {index} {what}: <|image_pad|> runs {runs}, its images produce {expected}",
            "the prompt ids were expanded with other image settings or other images than the ones "
            "recorded; drop the group (training on it would score another context than was sampled)",
            details={"sequence": index, "runs": runs, "expected": expected},
        )

    @staticmethod
    def _text_positions(n: int) -> torch.Tensor:
        return torch.arange(n).view(1, -1).expand(3, -1)

    # ---------------------------------------------------------------- per micro-batch

    def for_micro_batch(self, mb: MicroBatch, prepared: list[SequenceImages]) -> MicroBatchImages:
        seqs = [prepared[i] for i in mb.seq_ids]
        if not seqs:  # an empty slot of a distributed step
            rows = self._text_positions(mb.num_tokens)
            keys, pixels, grid = [], None, torch.zeros(0, 3, dtype=torch.long)
        else:
            rows = torch.cat([s.rope_positions for s in seqs], dim=1)
            keys = [k for s in seqs for k in s.keys]
            with_pixels = [s.pixel_values for s in seqs if s.pixel_values is not None]
            pixels = torch.cat(with_pixels) if with_pixels else None
            grid = torch.cat([s.grid_thw for s in seqs])
        position_ids = torch.cat([mb.position_ids.cpu()[None], rows], dim=0)[:, None, :]
        return MicroBatchImages(keys, pixels, grid, position_ids.to(self.device),
                                (mb.input_ids == self.image_token_id))

    def encode(self, images: MicroBatchImages) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Merged image embeddings [image tokens, hidden] and DeepStack features, in row order.

        The tower is frozen: each image is encoded once per step (cached by hash and settings),
        or once per micro-batch with ``vision.cache_images`` off."""
        if not self.cfg.cache_images:
            self._encoded.clear()
        missing = [k for k in dict.fromkeys(images.keys) if k not in self._encoded]
        if missing:
            self._encode_into_cache(images, missing)
        parts = [self._encoded[k] for k in images.keys]
        embeds = torch.cat([p[0] for p in parts])
        deepstack = [torch.cat([p[1][j] for p in parts]) for j in range(len(parts[0][1]))]
        return embeds, deepstack

    @torch.no_grad()
    def _encode_into_cache(self, images: MicroBatchImages, missing: list[tuple[str, int, int]]) -> None:
        merge = self.geometry["merge_size"]
        patches = (images.grid_thw.prod(-1)).tolist()
        offsets = [0]
        for n in patches:
            offsets.append(offsets[-1] + n)
        want = set(missing)
        rows, grids, order = [], [], []
        for j, key in enumerate(images.keys):
            if key in want and key not in order:
                rows.append(images.pixel_values[offsets[j]:offsets[j + 1]])
                grids.append(images.grid_thw[j])
                order.append(key)
        visual = self.vl_model.visual
        out = visual(torch.cat(rows).to(self.device, visual.dtype), grid_thw=torch.stack(grids).to(self.device),
                     return_dict=True)
        sizes = [int(g.prod()) // (merge * merge) for g in grids]
        embeds = torch.split(out.pooler_output, sizes)
        deep = [torch.split(d, sizes) for d in out.deepstack_features]
        for i, key in enumerate(order):
            self._encoded[key] = (embeds[i], [d[i] for d in deep])


def _runs_of(ids: torch.Tensor, token: int) -> list[int]:
    """Lengths of the maximal runs of ``token`` in ``ids``, in order."""
    hit = (ids == token).to(torch.int8)
    if not bool(hit.any()):
        return []
    edges = torch.diff(torch.cat([torch.zeros(1, dtype=torch.int8), hit, torch.zeros(1, dtype=torch.int8)]))
    starts = torch.nonzero(edges == 1).flatten()
    ends = torch.nonzero(edges == -1).flatten()
    return (ends - starts).tolist()
