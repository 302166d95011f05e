"""Token logprobs straight from hidden states, in chunks: tokens x vocab logits never exist at once.

``token_logprobs(hidden, weight, targets)`` returns log softmax(hidden @ weight.T / temperature)
at ``targets``, row by row, plus the entropy of each row's distribution. It is an autograd function
that, while it has a chunk's logits in hand, also computes d logprob / d hidden

    d lp_k / d h_k = (W[target_k] - softmax_k @ W) / temperature = -((p_k - onehot_k) @ W) / temperature

and keeps only that [tokens x hidden] tensor for the backward pass. So the backward pass is a
multiply, the lm_head matmul runs twice per token (forward logits, p @ W) and never a third time,
and memory holds at most one chunk of [chunk x vocab] float32 logits. The lm_head weight is frozen
(LoRA), so no gradient for it is needed.

Logits are accumulated in float32 even from bf16 operands (``torch.mm(..., out_dtype=float32)`` on
CUDA), so logprobs are not rounded to bf16 the way a bf16 logits tensor would round them.
"""

from __future__ import annotations

import torch


_use_fused = False


def set_fused(on: bool) -> None:
    """Use the torch.compile'd softmax statistics (fused.softmax_stats) on CUDA."""
    global _use_fused
    _use_fused = on


def _logits_fp32(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if h.dtype == torch.float32 or h.dtype == torch.float64:
        return h @ weight.t().to(h.dtype)
    if h.is_cuda:
        try:
            return torch.mm(h, weight.t(), out_dtype=torch.float32)
        except (RuntimeError, TypeError):
            pass
    return (h @ weight.t()).float()


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size: int, temperature: float, need_grad: bool):
        m = hidden.shape[0]
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        logprobs = torch.empty(m, dtype=acc, device=hidden.device)
        entropy = torch.empty(m, dtype=acc, device=hidden.device)
        grad_h = torch.empty(m, hidden.shape[1], dtype=acc, device=hidden.device) if need_grad else None
        inv_t = 1.0 / temperature
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            for s in range(0, m, chunk_size):
                e = min(s + chunk_size, m)
                logits = _logits_fp32(hidden[s:e], weight).to(acc)
                if temperature != 1.0:
                    logits.mul_(inv_t)
                tgt = targets[s:e]
                if _use_fused and need_grad and logits.is_cuda and acc == torch.float32:
                    from .fused import softmax_stats

                    lp, ent, g = softmax_stats(logits, tgt, 1.0, weight.dtype)  # already / temperature
                    logprobs[s:e] = lp
                    entropy[s:e] = ent
                    grad_h[s:e] = (g @ weight).to(acc).mul_(-inv_t)
                    del logits, g
                    continue
                lse = torch.logsumexp(logits, dim=-1)
                log_p = logits.sub_(lse[:, None])  # in place: the logits become log softmax
                logprobs[s:e] = log_p.gather(1, tgt[:, None])[:, 0]
                p = torch.exp(log_p)
                # entropy = -sum p log p, as a batched dot product (no third [chunk x vocab] buffer)
                entropy[s:e] = -(p.unsqueeze(1) @ log_p.unsqueeze(2)).flatten()
                del log_p, logits
                if need_grad:
                    p[torch.arange(e - s, device=p.device), tgt] -= 1.0  # p - onehot
                    g = p.to(weight.dtype) @ weight
                    grad_h[s:e] = g.to(acc).mul_(-inv_t)
                del p
        if need_grad:
            ctx.save_for_backward(grad_h)
        ctx.hidden_dtype = hidden.dtype
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        (grad_h,) = ctx.saved_tensors
        grad_hidden = (grad_logprobs.to(grad_h.dtype)[:, None] * grad_h).to(ctx.hidden_dtype)
        return grad_hidden, None, None, None, None, None


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                   chunk_size: int = 4096, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(logprobs [m], entropy [m]) of ``targets`` [m] given ``hidden`` [m, H] and lm_head ``weight`` [V, H].

    Differentiable with respect to ``hidden`` only. Results are float32 (float64 for float64 input).
    """
    need_grad = torch.is_grad_enabled() and hidden.requires_grad
    if hidden.shape[0] == 0:
        z = hidden.new_zeros(0, dtype=torch.float32) + hidden.sum() * 0  # keeps the graph connected
        return z, z.detach()
    return _TokenLogprobs.apply(hidden, weight, targets, chunk_size, temperature, need_grad)
