"""Shared test helpers: random batches, engines on the tiny model, a float64 reference."""

from __future__ import annotations

import torch

from trajstore_engine.batch import Batch, write_batch
from trajstore_engine.config import EngineConfig
from trajstore_engine.trainer import Engine


def random_batch(n_seq: int = 5, vocab: int = 500, min_len: int = 6, max_len: int = 40, seed: int = 0,
                 behavior: torch.Tensor | None = None, adv_per_token: bool = False,
                 versions: bool = True) -> Batch:
    """Sequences of random tokens; each has a prompt (mask 0) then a completion (mask 1), with a few
    completion tokens masked out too (tool output inside an agent turn)."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(min_len, max_len + 1, (n_seq,), generator=g)
    T = int(lens.sum())
    cu = torch.zeros(n_seq + 1, dtype=torch.long)
    cu[1:] = lens.cumsum(0)
    ids = torch.randint(0, vocab, (T,), generator=g)
    mask = torch.zeros(T, dtype=torch.bool)
    for i in range(n_seq):
        s, e = int(cu[i]), int(cu[i + 1])
        prompt = 1 + int(torch.randint(0, max(1, (e - s) // 2), (1,), generator=g))
        mask[s + prompt:e] = True
        holes = torch.rand(e - s, generator=g) < 0.15
        mask[s:e] &= ~holes
    if adv_per_token:
        adv = torch.randn(T, generator=g)
    else:
        adv = torch.repeat_interleave(torch.randn(n_seq, generator=g), lens)
    behav = -torch.rand(T, generator=g) * 2 - 5.5 if behavior is None else behavior
    ver = torch.randint(0, 3, (T,), generator=g) if versions else None
    return Batch(ids, cu, mask, adv, behav, ver)


def make_engine(model_dir, **overrides) -> Engine:
    cfg = {"model": {"path": str(model_dir), "device": "cpu"}, "optim": {"lr": 1e-3, "max_grad_norm": None}}
    for section, values in overrides.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    return Engine(EngineConfig.from_dict(cfg))


def randomize_lora(engine: Engine, seed: int = 1, scale: float = 0.05) -> None:
    """Give every LoRA weight a non-zero value (B starts at zero), so every gradient is non-zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in engine.trainable:
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def lora_state(engine: Engine) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in engine.model.named_parameters() if p.requires_grad}


def save_batch(tmp_path, batch: Batch, name: str = "batch") -> str:
    path = str(tmp_path / f"{name}.safetensors")
    write_batch(path, batch)
    return path
