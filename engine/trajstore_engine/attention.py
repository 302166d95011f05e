"""Attention over packed sequences: several trajectories in one row, no padding.

The engine concatenates a micro-batch's sequences into a single row of T tokens, with
``position_ids`` restarting at 0 for each sequence and the sequence lengths passed alongside.
This module registers an attention implementation with transformers (``PACKED_ATTENTION``) that
keeps every sequence to itself:

- ``varlen``: ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention-2 kernels inside PyTorch,
  CUDA only): one kernel over the whole row, no mask tensor, no wasted blocks.
- ``loop``: ``scaled_dot_product_attention(is_causal=True)`` once per sequence. Any device; on CUDA
  each call still uses the flash kernel, so it is a good fallback for a few long sequences.

Because the name is not one transformers builds masks for, transformers creates no T x T mask at
all (that mask is what makes packing with plain SDPA cost O(T^2) memory).

When no sequence lengths are passed (generation, a plain forward), it falls back to ordinary causal
SDPA, so a model loaded with this implementation still works everywhere else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PACKED_ATTENTION = "trajstore_packed"

# Whether varlen_attn takes fewer k/v heads than q heads (grouped-query attention) natively;
# None until the first call finds out.
_varlen_gqa_native: bool | None = None

# Which kernel packed attention uses: "auto" (varlen on CUDA when available, else loop), "varlen", "loop".
_backend = "auto"


def set_backend(name: str) -> None:
    global _backend
    if name not in ("auto", "varlen", "loop"):
        raise ValueError(f"attention backend must be auto, varlen or loop, not {name!r}")
    _backend = name


def varlen_available() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                     sliding_window=None, **kwargs):
    """transformers attention interface: q [1, Hq, T, D], k/v [1, Hkv, T, D] -> ([1, T, Hq, D], None)."""
    if not kwargs.get("trajstore_packed", False):
        return _plain_causal(query, key, value, attention_mask, scaling, dropout)
    if sliding_window is not None:
        raise NotImplementedError("packed attention does not implement sliding-window layers yet")
    if query.shape[0] != 1:
        raise ValueError("packed attention expects one packed row (batch size 1)")
    backend = _backend
    if backend == "auto":
        backend = "varlen" if (query.is_cuda and varlen_available()) else "loop"
    if backend == "varlen":
        return _varlen(query, key, value, kwargs, scaling), None
    return _loop(query, key, value, kwargs["trajstore_seq_lens"], scaling), None


def _varlen(query, key, value, kwargs, scaling):
    from torch.nn.attention.varlen import varlen_attn

    cu = kwargs["cu_seq_lens_q"]
    max_len = kwargs["max_length_q"]
    # [1, H, T, D] -> [T, H, D]; the kernel wants the last dimension contiguous.
    q = query[0].transpose(0, 1).contiguous()
    k = key[0].transpose(0, 1).contiguous()
    v = value[0].transpose(0, 1).contiguous()
    if k.shape[1] != q.shape[1] and not _varlen_gqa_native:
        n_rep = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(n_rep, dim=1)
        v = v.repeat_interleave(n_rep, dim=1)
    out = varlen_attn(q, k, v, cu, cu, max_len, max_len, scale=scaling, window_size=(-1, 0))
    return out.unsqueeze(0)


def probe_varlen_gqa(device: torch.device) -> bool:
    """Find out once, eagerly, whether varlen_attn takes fewer k/v heads than q heads (saves
    repeating k/v per step). Done outside any torch.compile'd region: a try/except around a
    kernel call inside a compiled layer would break its graph."""
    global _varlen_gqa_native
    if _varlen_gqa_native is None and device.type == "cuda" and varlen_available():
        from torch.nn.attention.varlen import varlen_attn

        q = torch.randn(8, 4, 64, device=device, dtype=torch.bfloat16)
        kv = torch.randn(8, 2, 64, device=device, dtype=torch.bfloat16)
        cu = torch.tensor([0, 8], device=device, dtype=torch.int32)
        try:
            varlen_attn(q, kv, kv, cu, cu, 8, 8, window_size=(-1, 0))
            _varlen_gqa_native = True
        except RuntimeError:
            _varlen_gqa_native = False
    return bool(_varlen_gqa_native)


def _loop(query, key, value, seq_lens, scaling):
    outs = []
    start = 0
    gqa = query.shape[1] != key.shape[1]
    for n in seq_lens:
        end = start + n
        outs.append(
            F.scaled_dot_product_attention(
                query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
                is_causal=True, scale=scaling, enable_gqa=gqa,
            )
        )
        start = end
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.transpose(1, 2)


def _plain_causal(query, key, value, attention_mask, scaling, dropout):
    from transformers.integrations.sdpa_attention import repeat_kv

    if query.shape[1] != key.shape[1]:
        n_rep = query.shape[1] // key.shape[1]
        key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    if attention_mask is None and query.shape[2] not in (1, key.shape[2]):
        raise NotImplementedError("chunked prefill over a cache needs a mask; use attn_implementation='sdpa'")
    is_causal = attention_mask is None and query.shape[2] == key.shape[2] and query.shape[2] > 1
    out = F.scaled_dot_product_attention(
        query, key, value,
        attn_mask=attention_mask if attention_mask is not None else None,
        dropout_p=dropout, is_causal=is_causal, scale=scaling,
    )
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Register ``PACKED_ATTENTION`` with transformers (idempotent); return its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    return PACKED_ATTENTION


def packed_kwargs(seq_lens: list[int], device: torch.device) -> dict:
    """The extra forward() arguments packed attention reads, for one packed row."""
    cu = torch.zeros(len(seq_lens) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(seq_lens, dtype=torch.int32).cumsum(0)
    return {
        "trajstore_packed": True,
        "trajstore_seq_lens": list(seq_lens),
        "cu_seq_lens_q": cu.to(device, non_blocking=True),
        "cu_seq_lens_k": cu.to(device, non_blocking=True),
        "max_length_q": max(seq_lens),
        "max_length_k": max(seq_lens),
    }
