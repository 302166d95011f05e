"""Fused elementwise kernels for the decoder (GPU): RMSNorm, SwiGLU, rotary embeddings.

A LoRA step on a 1-2B model moves more bytes through elementwise ops (RMSNorm's float32 round
trip, rotate_half's cat, silu * up, ...) than it spends in matmuls, because the frozen weights need
no weight gradients. ``torch.compile`` on these small, shape-generic functions (dynamic shapes,
so a new token count does not recompile) fuses each into one kernel forward and one backward.
The decoder layers themselves stay eager, so packing, PEFT and FSDP hooks are untouched.

``patch_model(model)`` swaps the forward of the model's RMSNorm modules and gated MLPs, and its
modeling module's ``apply_rotary_pos_emb``, for the fused versions. It only patches what it
recognizes (Llama/Qwen-style modules) and leaves the rest alone; ``unpatch`` restores the originals.
"""

from __future__ import annotations

import sys
import types

import torch
import torch.nn.functional as F


def _rms_norm(x, weight, eps: float):
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _swiglu(gate, up):
    return F.silu(gate) * up


def _rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def _rope(q, k, cos, sin, unsqueeze_dim: int = 1):
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    return (q * cos) + (_rotate_half(q) * sin), (k * cos) + (_rotate_half(k) * sin)


_compiled: dict[str, object] = {}


def _get(name, fn):
    if name not in _compiled:
        _compiled[name] = torch.compile(fn, dynamic=True, fullgraph=True)
    return _compiled[name]


def rms_norm(x, weight, eps):
    return _get("rms_norm", _rms_norm)(x, weight, eps)


def swiglu(gate, up):
    return _get("swiglu", _swiglu)(gate, up)


def rope(q, k, cos, sin, unsqueeze_dim=1):
    return _get("rope", _rope)(q, k, cos, sin, unsqueeze_dim)


def _norm_forward(self, hidden_states):
    return rms_norm(hidden_states, self.weight, self.variance_epsilon)


def _mlp_forward(self, x):
    return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


_saved: list[tuple[object, str, object]] = []


def patch_model(model) -> dict[str, int]:
    """Use the fused kernels in ``model`` (the transformers model, not a PEFT wrapper; in place).
    Returns how many modules of each kind were patched."""
    counts = {"rms_norm": 0, "mlp": 0, "rope": 0}
    for module in model.modules():
        name = type(module).__name__
        if name.endswith("RMSNorm") and hasattr(module, "variance_epsilon") and hasattr(module, "weight"):
            _saved.append((module, "forward", module.forward))
            module.forward = types.MethodType(_norm_forward, module)
            counts["rms_norm"] += 1
        elif (all(hasattr(module, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn"))
              and isinstance(module.act_fn, torch.nn.SiLU)):
            _saved.append((module, "forward", module.forward))
            module.forward = types.MethodType(_mlp_forward, module)
            counts["mlp"] += 1
    modeling = sys.modules.get(type(model).__module__)
    if modeling is not None and hasattr(modeling, "apply_rotary_pos_emb") and hasattr(modeling, "rotate_half"):
        _saved.append((modeling, "apply_rotary_pos_emb", modeling.apply_rotary_pos_emb))
        modeling.apply_rotary_pos_emb = rope
        counts["rope"] = 1
    return counts


def compile_layers(decoder) -> int:
    """torch.compile each decoder layer's forward (dynamic shapes). The layers share one compiled
    graph (same code, parameters as inputs). Module hooks (FSDP, checkpointing) stay outside."""
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    torch._dynamo.config.accumulated_cache_size_limit = max(
        torch._dynamo.config.accumulated_cache_size_limit, 1024)
    n = 0
    for layer in decoder.layers:
        if "forward" not in layer.__dict__:
            layer.forward = torch.compile(layer.forward, dynamic=True)
            n += 1
    return n


def uncompile_layers(decoder) -> None:
    for layer in decoder.layers:
        if "forward" in layer.__dict__:
            del layer.forward


def unpatch() -> None:
    while _saved:
        obj, attr, value = _saved.pop()
        if attr == "forward" and isinstance(obj, torch.nn.Module):
            del obj.forward  # back to the class's forward
        else:
            setattr(obj, attr, value)


def _softmax_stats(logits, targets, inv_t: float, grad_dtype: torch.dtype):
    """For float32 logits [c, V]: (target logprob [c], entropy [c], (p - onehot) in grad_dtype [c, V])."""
    logits = logits * inv_t
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    log_p = logits - lse
    p = torch.exp(log_p)
    entropy = -(p * log_p).sum(-1)
    hit = torch.arange(logits.shape[-1], device=logits.device)[None, :] == targets[:, None]
    lp = torch.where(hit, log_p, 0.0).sum(-1)
    g = (p - hit.to(p.dtype)).to(grad_dtype)
    return lp, entropy, g


def softmax_stats(logits, targets, inv_t, grad_dtype):
    return _get("softmax_stats", _softmax_stats)(logits, targets, inv_t, grad_dtype)
